//! A plugin's identity, readable from the library file without loading it.
//!
//! [`export_monitor!`](crate::export_monitor) places one record in an ELF section of its own,
//! [`SECTION`], built at compile time from the monitor's [`Monitor::INFO`](crate::Monitor::INFO).
//! The host reads it with an ELF parser, so that listing a plugin directory, or searching it
//! for the monitor a config names, runs none of the libraries' code: only the library of an
//! enabled monitor is ever loaded, after its checks.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | [`MAGIC`] |
//! | 2 | record format, [`FORMAT`] |
//! | 2 | API major version the plugin was built against |
//! | 4 | length of the whole record in bytes |
//! | 8 | events ([`EventSet`] bits, the SDK's state events included) |
//! | 8 | subscriptions ([`Subscriptions`] bits) |
//! | 4 × (2 + n) | API version, name, version, description: each a `u16` length and UTF-8 bytes |
//!
//! A record with an empty name means the monitor set no [`Monitor::INFO`](crate::Monitor::INFO)
//! (it overrides `info()` only): the host checks its API version, and otherwise treats the
//! library as one without a record.

use crate::sdk::{MonitorInfo, STATE_EVENTS};
use crate::{EventSet, Subscriptions};

/// The ELF section that holds the record.
pub const SECTION: &str = ".vigil_plugin";

/// The first bytes of a record.
pub const MAGIC: [u8; 8] = *b"VIGILPLG";

/// The record format this crate writes and reads.
pub const FORMAT: u16 = 1;

/// Bytes before the strings.
const FIXED: usize = 8 + 2 + 2 + 4 + 8 + 8;

/// The longest string a record holds; longer ones are cut (at a character boundary).
pub const MAX_STRING: usize = 1024;

/// What a plugin library says about itself, read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The API major version the plugin was built against.
    pub api_major: u16,
    /// The full `vigil-plugin-api` version it was built against.
    pub api_version: String,
    /// The monitor's name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// One line for `vigil plugins`.
    pub description: String,
    /// The events it handles.
    pub events: EventSet,
    /// The data it asks for.
    pub subscriptions: Subscriptions,
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("identity record is {0} bytes, too short")]
    /// Fewer bytes than a record needs.
    Truncated(usize),
    #[error("identity record does not start with the vigil magic")]
    /// Not a vigil identity record.
    Magic,
    #[error("identity record format {0} is newer than this host reads ({FORMAT})")]
    /// A record format this crate does not know.
    Format(u16),
    #[error("identity record {0} is not UTF-8")]
    /// A string field that is not UTF-8.
    Utf8(&'static str),
}

/// The events the record lists: the monitor's own plus the SDK's state events, as
/// `info()` reports them to the host.
const fn record_events(info: &MonitorInfo) -> u64 {
    info.events.0 | STATE_EVENTS.0
}

/// The length of `text` as stored: at most [`MAX_STRING`] bytes, cut at a character boundary.
const fn stored_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    if bytes.len() <= MAX_STRING {
        return bytes.len();
    }
    let mut end = MAX_STRING;
    // A UTF-8 continuation byte is 0b10xx_xxxx.
    while end > 0 && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    end
}

/// The record's length for `info`; [`export_monitor!`](crate::export_monitor) sizes the
/// static with it.
pub const fn encoded_len(info: &MonitorInfo) -> usize {
    FIXED
        + 2
        + stored_len(crate::API_VERSION)
        + 2
        + stored_len(info.name)
        + 2
        + stored_len(info.version)
        + 2
        + stored_len(info.description)
}

/// The record for `info`, at compile time. `N` must be [`encoded_len`]`(info)`.
pub const fn encode<const N: usize>(info: &MonitorInfo) -> [u8; N] {
    assert!(N == encoded_len(info), "identity record size mismatch");
    let mut out = [0u8; N];
    let mut at = put(&mut out, 0, &MAGIC);
    at = put(&mut out, at, &FORMAT.to_le_bytes());
    at = put(
        &mut out,
        at,
        &(crate::API_MAJOR_VERSION as u16).to_le_bytes(),
    );
    at = put(&mut out, at, &(N as u32).to_le_bytes());
    at = put(&mut out, at, &record_events(info).to_le_bytes());
    at = put(&mut out, at, &info.subscriptions.0.to_le_bytes());
    at = put_str(&mut out, at, crate::API_VERSION);
    at = put_str(&mut out, at, info.name);
    at = put_str(&mut out, at, info.version);
    at = put_str(&mut out, at, info.description);
    assert!(at == N, "identity record size mismatch");
    out
}

const fn put<const N: usize>(out: &mut [u8; N], at: usize, bytes: &[u8]) -> usize {
    let mut index = 0;
    while index < bytes.len() {
        out[at + index] = bytes[index];
        index += 1;
    }
    at + bytes.len()
}

const fn put_str<const N: usize>(out: &mut [u8; N], at: usize, text: &str) -> usize {
    let len = stored_len(text);
    let at = put(out, at, &(len as u16).to_le_bytes());
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < len {
        out[at + index] = bytes[index];
        index += 1;
    }
    at + len
}

impl Identity {
    /// Whether the record names a monitor; one with an empty name comes from a monitor that
    /// set no [`Monitor::INFO`](crate::Monitor::INFO), and only its API version means anything.
    pub fn is_set(&self) -> bool {
        !self.name.is_empty()
    }
}

/// Read a record from the start of `bytes` (a section may be padded after it).
pub fn decode(bytes: &[u8]) -> Result<Identity, DecodeError> {
    if bytes.len() < FIXED {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    if bytes[..8] != MAGIC {
        return Err(DecodeError::Magic);
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let format = u16_at(8);
    if format != FORMAT {
        return Err(DecodeError::Format(format));
    }
    let api_major = u16_at(10);
    let total = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    if total < FIXED || total > bytes.len() {
        return Err(DecodeError::Truncated(bytes.len().min(total)));
    }
    let record = &bytes[..total];
    let events = EventSet(u64_at(16));
    let subscriptions = Subscriptions(u64_at(24));
    let mut at = FIXED;
    let mut next = |what: &'static str| -> Result<String, DecodeError> {
        let len_bytes = record
            .get(at..at + 2)
            .ok_or(DecodeError::Truncated(total))?;
        let len = u16::from_le_bytes([len_bytes[0], len_bytes[1]]) as usize;
        let text = record
            .get(at + 2..at + 2 + len)
            .ok_or(DecodeError::Truncated(total))?;
        at += 2 + len;
        String::from_utf8(text.to_vec()).map_err(|_| DecodeError::Utf8(what))
    };
    let api_version = next("API version")?;
    let name = next("name")?;
    let version = next("version")?;
    let description = next("description")?;
    Ok(Identity {
        api_major,
        api_version,
        name,
        version,
        description,
        events,
        subscriptions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventKind;

    const INFO: MonitorInfo = MonitorInfo {
        name: "grad-ñorm",
        version: "2.3.4",
        description: "a description",
        events: EventSet::of(&[EventKind::TRAIN_BATCH_END]),
        subscriptions: Subscriptions::GRADIENT,
    };
    const LEN: usize = encoded_len(&INFO);
    static RECORD: [u8; LEN] = encode::<LEN>(&INFO);

    #[test]
    fn a_record_reads_back_as_written() {
        let identity = decode(&RECORD).unwrap();
        assert!(identity.is_set());
        assert_eq!(
            identity,
            Identity {
                api_major: crate::API_MAJOR_VERSION as u16,
                api_version: crate::API_VERSION.into(),
                name: "grad-ñorm".into(),
                version: "2.3.4".into(),
                description: "a description".into(),
                events: EventSet(INFO.events.0 | STATE_EVENTS.0),
                subscriptions: Subscriptions::GRADIENT,
            }
        );
        // Padding after the record is ignored.
        let mut padded = RECORD.to_vec();
        padded.extend([0u8; 16]);
        assert_eq!(decode(&padded).unwrap(), decode(&RECORD).unwrap());
    }

    #[test]
    fn an_unset_info_gives_no_identity() {
        const LEN: usize = encoded_len(&MonitorInfo::UNSET);
        static UNSET: [u8; LEN] = encode::<LEN>(&MonitorInfo::UNSET);
        let unset = decode(&UNSET).unwrap();
        assert!(!unset.is_set());
        assert_eq!(unset.api_version, crate::API_VERSION);
    }

    #[test]
    fn long_strings_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_STRING); // 2 bytes each
        assert_eq!(stored_len(&long), MAX_STRING);
        let odd = format!("x{long}");
        assert_eq!(stored_len(&odd), MAX_STRING - 1);
        assert!(odd.is_char_boundary(stored_len(&odd)));
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        assert_eq!(decode(&RECORD[..10]), Err(DecodeError::Truncated(10)));
        let mut wrong = RECORD.to_vec();
        wrong[0] = b'X';
        assert_eq!(decode(&wrong), Err(DecodeError::Magic));
        let mut newer = RECORD.to_vec();
        newer[8] = 2;
        assert_eq!(decode(&newer), Err(DecodeError::Format(2)));
        // Every truncation and every single-byte change either decodes or errs.
        for cut in 0..RECORD.len() {
            let _ = decode(&RECORD[..cut]);
        }
        for index in 0..RECORD.len() {
            let mut changed = RECORD.to_vec();
            changed[index] ^= 0xFF;
            let _ = decode(&changed);
        }
    }
}
