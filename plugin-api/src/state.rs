//! Monitor state across `--resume` (API 1.1), and the byte layouts it travels in.
//!
//! At every checkpoint the host sends [`EventKind::SAVE_STATE`](crate::EventKind::SAVE_STATE);
//! the SDK calls [`Monitor::save_state`](crate::Monitor::save_state) and hands the bytes over
//! with the query [`SAVE_QUERY`]. The host stores them in the checkpoint beside the model, with
//! the plugin's name and version. On resume it sends
//! [`EventKind::RESTORE_STATE`](crate::EventKind::RESTORE_STATE) *instead of* `FIT_START` to
//! each monitor that saved state; the SDK asks [`SAVED_QUERY`], decodes the answer with
//! [`SavedState::decode`] and calls [`Monitor::restore_state`](crate::Monitor::restore_state).
//!
//! The bytes are the monitor's own. [`StateWriter`] and [`StateReader`] are a small
//! little-endian encoding that keeps floats bit for bit:
//!
//! ```
//! use vigil_plugin_api::state::{StateReader, StateWriter};
//!
//! let mut writer = StateWriter::new();
//! writer.u64(3).f64(0.25).f64s(&[1.0, 2.0]).str("epoch");
//! let bytes = writer.finish();
//!
//! let mut reader = StateReader::new(&bytes);
//! assert_eq!(reader.u64()?, 3);
//! assert_eq!(reader.f64()?, 0.25);
//! assert_eq!(reader.f64s()?, vec![1.0, 2.0]);
//! assert_eq!(reader.str()?, "epoch");
//! reader.finish()?;
//! # Ok::<(), vigil_plugin_api::Error>(())
//! ```

use crate::Error;

/// Query a monitor makes during `SAVE_STATE`, with its state as the input bytes.
pub const SAVE_QUERY: &str = "vigil.state.save";
/// Query a monitor makes during `RESTORE_STATE`; the answer is a [`SavedState`] encoded by
/// [`SavedState::encode`].
pub const SAVED_QUERY: &str = "vigil.state.saved";

/// What a monitor saved at the checkpoint a run resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedState<'a> {
    /// The version of the plugin that saved it ([`MonitorInfo::version`](crate::MonitorInfo)):
    /// a plugin of another version gets the bytes and decides what to do with them.
    pub plugin_version: &'a str,
    /// What [`Monitor::save_state`](crate::Monitor::save_state) returned.
    pub bytes: &'a [u8],
}

impl<'a> SavedState<'a> {
    /// The answer to [`SAVED_QUERY`]: the version's length (u32, little-endian), the version
    /// (UTF-8), then the state bytes.
    pub fn encode(&self) -> Vec<u8> {
        let version = self.plugin_version.as_bytes();
        let mut out = Vec::with_capacity(4 + version.len() + self.bytes.len());
        out.extend_from_slice(&(version.len() as u32).to_le_bytes());
        out.extend_from_slice(version);
        out.extend_from_slice(self.bytes);
        out
    }

    /// Read what [`SavedState::encode`] wrote.
    pub fn decode(answer: &'a [u8]) -> Result<Self, Error> {
        let bad = || {
            Error::Host(format!(
                "malformed `{SAVED_QUERY}` answer ({} bytes)",
                answer.len()
            ))
        };
        let length = answer
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(bad)? as usize;
        let version = answer.get(4..4 + length).ok_or_else(bad)?;
        Ok(SavedState {
            plugin_version: std::str::from_utf8(version).map_err(|_| bad())?,
            bytes: &answer[4 + length..],
        })
    }
}

/// Builds a state blob: fixed-width little-endian numbers, length-prefixed slices and strings.
#[derive(Debug, Default, Clone)]
pub struct StateWriter {
    bytes: Vec<u8>,
}

impl StateWriter {
    /// An empty blob.
    pub fn new() -> Self {
        StateWriter::default()
    }

    /// A `u64`, 8 bytes.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// An `f64`, bit for bit (NaN payloads too).
    pub fn f64(&mut self, value: f64) -> &mut Self {
        self.u64(value.to_bits())
    }

    /// A `bool`, one byte.
    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.bytes.push(u8::from(value));
        self
    }

    /// An optional value: a flag, then the value when there is one.
    pub fn option<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) -> &mut Self {
        self.bool(value.is_some());
        if let Some(value) = value {
            write(self, value);
        }
        self
    }

    /// A length, then the values.
    pub fn f64s(&mut self, values: &[f64]) -> &mut Self {
        self.u64(values.len() as u64);
        for &value in values {
            self.f64(value);
        }
        self
    }

    /// A length, then the values, 4 bytes each.
    pub fn f32s(&mut self, values: &[f32]) -> &mut Self {
        self.u64(values.len() as u64);
        for value in values {
            self.bytes.extend_from_slice(&value.to_bits().to_le_bytes());
        }
        self
    }

    /// A length, then the values.
    pub fn u64s(&mut self, values: &[u64]) -> &mut Self {
        self.u64(values.len() as u64);
        for &value in values {
            self.u64(value);
        }
        self
    }

    /// A length, then the bytes.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.u64(bytes.len() as u64);
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// A string: its UTF-8 bytes, length first.
    pub fn str(&mut self, text: &str) -> &mut Self {
        self.bytes(text.as_bytes())
    }

    /// The blob; the writer is empty again.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }
}

/// Reads a blob [`StateWriter`] built; every read checks the length left.
#[derive(Debug, Clone)]
pub struct StateReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> StateReader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        StateReader { bytes, at: 0 }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], Error> {
        let end = self
            .at
            .checked_add(count)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(Error::Monitor(format!(
                "saved state is truncated: wanted {count} bytes at offset {} of {}",
                self.at,
                self.bytes.len()
            )));
        };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn word(&mut self) -> Result<[u8; 8], Error> {
        Ok(self.take(8)?.try_into().unwrap_or_default())
    }

    /// A length that must fit in what is left, at `unit` bytes per item.
    fn length(&mut self, unit: usize) -> Result<usize, Error> {
        let length = self.u64()?;
        let left = (self.bytes.len() - self.at) / unit.max(1);
        usize::try_from(length)
            .ok()
            .filter(|&length| length <= left)
            .ok_or_else(|| {
                Error::Monitor(format!(
                    "saved state has a length of {length} where {left} items are left"
                ))
            })
    }

    /// What [`StateWriter::u64`] wrote.
    pub fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.word()?))
    }

    /// What [`StateWriter::f64`] wrote.
    pub fn f64(&mut self) -> Result<f64, Error> {
        Ok(f64::from_bits(self.u64()?))
    }

    /// What [`StateWriter::bool`] wrote.
    pub fn bool(&mut self) -> Result<bool, Error> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(Error::Monitor(format!(
                "saved state has {other} where a flag belongs"
            ))),
        }
    }

    /// An optional value written by [`StateWriter::option`].
    pub fn option<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, Error>,
    ) -> Result<Option<T>, Error> {
        if self.bool()? {
            read(self).map(Some)
        } else {
            Ok(None)
        }
    }

    /// What [`StateWriter::f64s`] wrote.
    pub fn f64s(&mut self) -> Result<Vec<f64>, Error> {
        let length = self.length(8)?;
        (0..length).map(|_| self.f64()).collect()
    }

    /// What [`StateWriter::f32s`] wrote.
    pub fn f32s(&mut self) -> Result<Vec<f32>, Error> {
        let length = self.length(4)?;
        let bytes = self.take(length * 4)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_bits(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect())
    }

    /// What [`StateWriter::u64s`] wrote.
    pub fn u64s(&mut self) -> Result<Vec<u64>, Error> {
        let length = self.length(8)?;
        (0..length).map(|_| self.u64()).collect()
    }

    /// What [`StateWriter::bytes`] wrote.
    pub fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let length = self.length(1)?;
        self.take(length)
    }

    /// What [`StateWriter::str`] wrote.
    pub fn str(&mut self) -> Result<&'a str, Error> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| Error::Monitor("saved state has a string that is not UTF-8".into()))
    }

    /// Check that every byte was read: a blob of another layout is an error, not a guess.
    pub fn finish(&self) -> Result<(), Error> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(Error::Monitor(format!(
                "saved state has {} bytes left over after reading {}; was it saved by another version?",
                self.bytes.len() - self.at,
                self.at
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_round_trips_and_rejects_garbage() {
        let saved = SavedState {
            plugin_version: "1.2.3",
            bytes: &[9, 8, 7],
        };
        let encoded = saved.encode();
        assert_eq!(&encoded[..4], &5u32.to_le_bytes());
        assert_eq!(SavedState::decode(&encoded).unwrap(), saved);
        assert!(SavedState::decode(&[1, 0]).is_err());
        assert!(SavedState::decode(&[9, 0, 0, 0, b'x']).is_err());
    }

    #[test]
    fn every_kind_round_trips_bit_for_bit() {
        let floats = [0.1, -0.0, f64::NAN, f64::INFINITY, 1e-310];
        let mut writer = StateWriter::new();
        writer
            .u64(u64::MAX)
            .f64(std::f64::consts::PI)
            .bool(true)
            .option(Some(7u64), |w, v| {
                w.u64(v);
            })
            .option(None::<u64>, |w, v| {
                w.u64(v);
            })
            .f64s(&floats)
            .f32s(&[1.5, f32::MIN_POSITIVE])
            .u64s(&[1, 2])
            .bytes(b"raw")
            .str("name");
        let bytes = writer.finish();
        let mut reader = StateReader::new(&bytes);
        assert_eq!(reader.u64().unwrap(), u64::MAX);
        assert_eq!(reader.f64().unwrap(), std::f64::consts::PI);
        assert!(reader.bool().unwrap());
        assert_eq!(reader.option(|r| r.u64()).unwrap(), Some(7));
        assert_eq!(reader.option(|r| r.u64()).unwrap(), None);
        let read = reader.f64s().unwrap();
        assert!(read
            .iter()
            .zip(&floats)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(reader.f32s().unwrap(), [1.5, f32::MIN_POSITIVE]);
        assert_eq!(reader.u64s().unwrap(), [1, 2]);
        assert_eq!(reader.bytes().unwrap(), b"raw");
        assert_eq!(reader.str().unwrap(), "name");
        reader.finish().unwrap();
    }

    #[test]
    fn truncated_or_longer_blobs_are_errors() {
        let mut writer = StateWriter::new();
        writer.f64s(&[1.0, 2.0]).u64(5);
        let bytes = writer.finish();
        assert!(StateReader::new(&bytes[..10]).f64s().is_err());
        let mut reader = StateReader::new(&bytes);
        reader.f64s().unwrap();
        assert!(reader
            .finish()
            .unwrap_err()
            .to_string()
            .contains("8 bytes left over"));
        // A length larger than the blob is refused before anything is allocated.
        let huge = u64::MAX.to_le_bytes();
        assert!(StateReader::new(&huge).f64s().is_err());
    }
}
