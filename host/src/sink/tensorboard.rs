//! TensorBoard event files (`events.out.tfevents.<time>.<host>`): scalars, images and
//! histograms, written as TFRecords of `tensorflow.Event` protobufs.
//!
//! A record is the payload length (u64, little-endian), the masked CRC-32C of those 8 bytes,
//! the payload, and the masked CRC-32C of the payload; the mask is
//! `((crc >> 15) | (crc << 17)) + 0xa282ead8`. The first event holds `file_version =
//! "brain.Event:2"`. Only the protobuf fields used here are declared.
//!
//! A resumed run opens a new file whose second event is `SessionLog { status: START }` at the
//! checkpoint's step. TensorBoard's reader (for files of version 2) then drops every value at
//! that step or later that it read before the marker: the steps a killed run wrote past its
//! checkpoint. The events the run had written *at* the checkpoint's step before the
//! checkpoint are copied in after the marker ([`TensorBoardSink::resume`]), so that each
//! (tag, step) has exactly one value.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use super::{Histogram, Record, Sink};
use crate::error::{Error, Result};

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
    #[prost(message, optional, tag = "7")]
    pub session_log: Option<SessionLog>,
}

/// `tensorflow.SessionLog`.
#[derive(Clone, PartialEq, Message)]
pub struct SessionLog {
    /// `SessionStatus`: 1 is `START`.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `SessionLog.SessionStatus.START`.
pub const SESSION_START: i32 = 1;

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "4")]
    pub image: Option<SummaryImage>,
    #[prost(message, optional, tag = "5")]
    pub histo: Option<HistogramProto>,
}

/// `tensorflow.Summary.Image`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryImage {
    #[prost(int32, tag = "1")]
    pub height: i32,
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 1 grey, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// `tensorflow.HistogramProto`.
#[derive(Clone, PartialEq, Message)]
pub struct HistogramProto {
    #[prost(double, tag = "1")]
    pub min: f64,
    #[prost(double, tag = "2")]
    pub max: f64,
    #[prost(double, tag = "3")]
    pub num: f64,
    #[prost(double, tag = "4")]
    pub sum: f64,
    #[prost(double, tag = "5")]
    pub sum_squares: f64,
    #[prost(double, repeated, tag = "6")]
    pub bucket_limit: Vec<f64>,
    #[prost(double, repeated, tag = "7")]
    pub bucket: Vec<f64>,
}

/// Where a run's event file stood at a checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorBoardMark {
    /// File name inside the run's `tensorboard/` directory.
    pub file: String,
    pub bytes: u64,
}

/// The CRC-32C of `bytes`, masked as TFRecord does.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends events to one event file.
pub struct TensorBoardSink {
    path: PathBuf,
    writer: BufWriter<File>,
    buffer: Vec<u8>,
}

impl TensorBoardSink {
    /// Continue a run's TensorBoard log after a resume from a checkpoint at `step`, taken when
    /// the file `dir/previous.file` was `previous.bytes` long: a new file, a restart marker at
    /// `step`, then the events at `step` that the previous file held before the checkpoint.
    pub fn resume(dir: &Path, previous: &TensorBoardMark, step: u64) -> Result<Self> {
        let old = dir.join(&previous.file);
        let replay: Vec<Event> = read_records(&old, Some(previous.bytes))?
            .into_iter()
            .filter(|event| event.step == step as i64 && event.summary.is_some())
            .collect();
        let mut sink = Self::create(dir)?;
        sink.write_event(&Event {
            wall_time: super::unix_time(),
            step: step as i64,
            session_log: Some(SessionLog {
                status: SESSION_START,
            }),
            ..Event::default()
        })?;
        for event in &replay {
            sink.write_event(event)?;
        }
        Ok(sink)
    }

    /// Create a new event file in `dir` (created if needed).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::io(dir, source))?;
        let now = super::unix_time();
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        // A resumed run adds a file beside the first; a suffix keeps names apart within a second.
        let stem = format!("events.out.tfevents.{}.{host}", now as u64);
        let mut attempt = 0u32;
        let (path, file) = loop {
            let path = match attempt {
                0 => dir.join(&stem),
                n => dir.join(format!("{stem}.{n}")),
            };
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => break (path, file),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempt < 1000 => {
                    attempt += 1
                }
                Err(source) => return Err(Error::io(&path, source)),
            }
        };
        let mut sink = TensorBoardSink {
            path,
            writer: BufWriter::new(file),
            buffer: Vec::with_capacity(256),
        };
        sink.write_event(&Event {
            wall_time: now,
            file_version: Some("brain.Event:2".into()),
            ..Event::default()
        })?;
        Ok(sink)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, event: &Event) -> Result<()> {
        self.buffer.clear();
        event.encode(&mut self.buffer).map_err(|err| Error::Sink {
            sink: "tensorboard",
            reason: format!("encoding an event: {err}"),
        })?;
        let length = (self.buffer.len() as u64).to_le_bytes();
        let io = |source| Error::io(&self.path, source);
        self.writer.write_all(&length).map_err(io)?;
        self.writer
            .write_all(&masked_crc(&length).to_le_bytes())
            .map_err(io)?;
        self.writer.write_all(&self.buffer).map_err(io)?;
        self.writer
            .write_all(&masked_crc(&self.buffer).to_le_bytes())
            .map_err(io)
    }

    fn summary_event(step: u64, wall_time: f64, value: Vec<SummaryValue>) -> Event {
        Event {
            wall_time,
            step: step as i64,
            summary: Some(Summary { value }),
            ..Event::default()
        }
    }
}

/// TensorBoard tag for a metric of a record: monitor metrics keep their names; host metrics
/// are grouped (`train/loss`, `val/acc`, `optim/lr`, `epoch/val_loss`, …) so that TensorBoard
/// shows them side by side.
fn tag(record: &Record, metric: &str) -> String {
    if record.source.is_some() {
        return metric.to_string();
    }
    if record.kind == super::RecordKind::Epoch {
        // Epoch means and the epoch's last validation: their own charts, not extra points
        // on the per-batch and per-validation curves.
        return format!("epoch/{metric}");
    }
    for prefix in ["train_", "val_"] {
        if let Some(rest) = metric.strip_prefix(prefix) {
            return format!("{}/{rest}", &prefix[..prefix.len() - 1]);
        }
    }
    match metric {
        "best_val_loss" => "val/best_loss".into(),
        "lr" | "wd" => format!("optim/{metric}"),
        other => format!("{}/{other}", record.kind.as_str()),
    }
}

impl Sink for TensorBoardSink {
    fn write(&mut self, record: &Record) -> Result<()> {
        let values = record
            .metrics
            .iter()
            .filter(|(_, value)| value.is_finite())
            .map(|(name, value)| SummaryValue {
                tag: tag(record, name),
                simple_value: Some(*value as f32),
                image: None,
                histo: None,
            })
            .collect();
        self.write_event(&Self::summary_event(
            record.global_step,
            record.wall_time,
            values,
        ))
    }

    fn image(&mut self, tag: &str, step: u64, wall_time: f64, png: &[u8]) -> Result<()> {
        let Some((width, height, colorspace)) = png_header(png) else {
            return Err(Error::Sink {
                sink: "tensorboard",
                reason: format!("image `{tag}` is not a PNG file"),
            });
        };
        let value = SummaryValue {
            tag: tag.to_string(),
            simple_value: None,
            image: Some(SummaryImage {
                height: height as i32,
                width: width as i32,
                colorspace,
                encoded_image_string: png.to_vec(),
            }),
            histo: None,
        };
        self.write_event(&Self::summary_event(step, wall_time, vec![value]))
    }

    fn histogram(
        &mut self,
        tag: &str,
        step: u64,
        wall_time: f64,
        histogram: &Histogram,
    ) -> Result<()> {
        let value = SummaryValue {
            tag: tag.to_string(),
            simple_value: None,
            image: None,
            histo: Some(HistogramProto {
                min: histogram.min,
                max: histogram.max,
                num: histogram.count,
                sum: histogram.sum,
                sum_squares: histogram.sum_squares,
                bucket_limit: histogram.bucket_limits.clone(),
                bucket: histogram.bucket_counts.clone(),
            }),
        };
        self.write_event(&Self::summary_event(step, wall_time, vec![value]))
    }

    fn flush(&mut self) -> Result<()> {
        self.writer
            .flush()
            .map_err(|source| Error::io(&self.path, source))?;
        self.writer
            .get_ref()
            .sync_data()
            .map_err(|source| Error::io(&self.path, source))
    }
}

/// Width, height and TensorBoard colorspace of a PNG, from its IHDR chunk.
fn png_header(png: &[u8]) -> Option<(u32, u32, i32)> {
    if png.len() < 26 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let height = u32::from_be_bytes(png[20..24].try_into().ok()?);
    let colorspace = match png[25] {
        0 => 1,     // greyscale
        4 => 2,     // greyscale + alpha
        2 | 3 => 3, // RGB, palette
        _ => 4,     // RGBA
    };
    Some((width, height, colorspace))
}

/// Read every event of an event file, checking each record's length and both CRCs.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    read_records(path, None)
}

/// The events of the first `limit` bytes of an event file (all of it for `None`).
fn read_records(path: &Path, limit: Option<u64>) -> Result<Vec<Event>> {
    let mut bytes = std::fs::read(path).map_err(|source| Error::io(path, source))?;
    if let Some(limit) = limit {
        if (bytes.len() as u64) < limit {
            return Err(Error::DataCorrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "is {} bytes long, shorter than the {limit} bytes the checkpoint recorded",
                    bytes.len()
                ),
            });
        }
        bytes.truncate(limit as usize);
    }
    let corrupt = |reason: String| Error::DataCorrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut events = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header = bytes
            .get(at..at + 12)
            .ok_or_else(|| corrupt(format!("truncated record header at byte {at}")))?;
        let length_bytes = &header[..8];
        let stored_crc = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        if masked_crc(length_bytes) != stored_crc {
            return Err(corrupt(format!("bad length CRC at byte {at}")));
        }
        let length = u64::from_le_bytes(length_bytes.try_into().unwrap_or_default()) as usize;
        let start = at + 12;
        let payload = bytes
            .get(start..start + length)
            .ok_or_else(|| corrupt(format!("truncated record payload at byte {start}")))?;
        let crc_bytes = bytes
            .get(start + length..start + length + 4)
            .ok_or_else(|| corrupt(format!("missing payload CRC at byte {}", start + length)))?;
        if masked_crc(payload) != u32::from_le_bytes(crc_bytes.try_into().unwrap_or_default()) {
            return Err(corrupt(format!("bad payload CRC at byte {start}")));
        }
        events.push(
            Event::decode(payload)
                .map_err(|err| corrupt(format!("undecodable event at byte {start}: {err}")))?,
        );
        at = start + length + 4;
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::RecordKind;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // CRC-32C("123456789") = 0xe3069283, the standard check value; masked by hand:
        // ((c >> 15) | (c << 17)) + 0xa282ead8 = 0xc78ab0e5.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn scalars_images_and_histograms_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = TensorBoardSink::create(dir.path()).unwrap();
        let record = Record {
            kind: RecordKind::Train,
            source: None,
            epoch: 1,
            global_step: 7,
            wall_time: 1.5,
            metrics: vec![
                ("train_loss".into(), 0.25),
                ("lr".into(), 0.1),
                ("bad".into(), f64::NAN),
            ],
        };
        sink.write(&record).unwrap();
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x03\0\0\0\x02\x08\x02\0\0\0".to_vec();
        sink.image("confusion", 7, 1.5, &png).unwrap();
        let histogram = Histogram::of(&[1.0, 2.0, 2.5, 9.0], 3);
        sink.histogram("weights/fc", 7, 1.5, &histogram).unwrap();
        sink.flush().unwrap();

        let events = read_events(sink.path()).unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        let scalars = &events[1].summary.as_ref().unwrap().value;
        assert_eq!(events[1].step, 7);
        assert_eq!(scalars.len(), 2, "non-finite values are left out");
        assert_eq!(scalars[0].tag, "train/loss");
        assert_eq!(scalars[0].simple_value, Some(0.25));
        assert_eq!(scalars[1].tag, "optim/lr");
        let image = events[2].summary.as_ref().unwrap().value[0]
            .image
            .as_ref()
            .unwrap();
        assert_eq!((image.width, image.height, image.colorspace), (3, 2, 3));
        let histo = events[3].summary.as_ref().unwrap().value[0]
            .histo
            .as_ref()
            .unwrap();
        assert_eq!(histo.num, 4.0);
        assert_eq!(histo.bucket.iter().sum::<f64>(), 4.0);
    }

    #[test]
    fn a_resumed_file_starts_with_a_restart_marker_and_the_checkpoint_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = TensorBoardSink::create(dir.path()).unwrap();
        let record = |step: u64, loss: f64| Record {
            kind: RecordKind::Train,
            source: None,
            epoch: 1,
            global_step: step,
            wall_time: 1.0,
            metrics: vec![("train_loss".into(), loss)],
        };
        first.write(&record(4, 0.4)).unwrap();
        first.write(&record(5, 0.5)).unwrap();
        first.flush().unwrap();
        let mark = TensorBoardMark {
            file: first
                .path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            bytes: std::fs::metadata(first.path()).unwrap().len(),
        };
        // Written after the checkpoint at step 5, then the process dies.
        first.write(&record(5, 9.0)).unwrap();
        first.write(&record(6, 9.0)).unwrap();
        first.flush().unwrap();

        let mut resumed = TensorBoardSink::resume(dir.path(), &mark, 5).unwrap();
        resumed.flush().unwrap();
        assert_ne!(resumed.path(), first.path());
        let events = read_events(resumed.path()).unwrap();
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(events[1].step, 5);
        assert_eq!(
            events[1].session_log.as_ref().unwrap().status,
            SESSION_START
        );
        let replayed = &events[2];
        assert_eq!(replayed.step, 5);
        assert_eq!(
            replayed.summary.as_ref().unwrap().value[0].simple_value,
            Some(0.5),
            "only the value written before the checkpoint"
        );
        let short = TensorBoardMark {
            bytes: mark.bytes * 10,
            ..mark
        };
        assert!(TensorBoardSink::resume(dir.path(), &short, 5).is_err());
    }

    #[test]
    fn a_flipped_bit_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = TensorBoardSink::create(dir.path()).unwrap();
        sink.flush().unwrap();
        let mut bytes = std::fs::read(sink.path()).unwrap();
        bytes[14] ^= 1;
        std::fs::write(sink.path(), bytes).unwrap();
        assert!(read_events(sink.path())
            .unwrap_err()
            .to_string()
            .contains("bad payload CRC"));
    }
}
