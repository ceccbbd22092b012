//! `metrics.jsonl`: one JSON object per line.
//!
//! Schema: `{"kind": "train" | "validation" | "epoch" | "monitor", ["monitor": <name>,]
//! "epoch": 1, "global_step": 938, "wall_time": 1763900000.5, <metric>: <number>, …}`. Non-finite values are written as `null`. Each line is written
//! with a single `write` call and flushed, so a crash never leaves a torn line behind a
//! complete one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Number, Value};

use super::{Record, Sink};
use crate::error::{Error, Result};

/// Appends records to a JSONL file.
pub struct JsonlSink {
    path: PathBuf,
    file: File,
    line: Vec<u8>,
}

impl JsonlSink {
    /// Create `path`; refuses to overwrite an existing file.
    pub fn create(path: &Path) -> Result<Self> {
        Self::open(path, OpenOptions::new().write(true).create_new(true))
    }

    /// Append to `path` (a resumed run).
    pub fn append(path: &Path) -> Result<Self> {
        Self::open(path, OpenOptions::new().append(true).create(true))
    }

    fn open(path: &Path, options: &OpenOptions) -> Result<Self> {
        let file = options
            .open(path)
            .map_err(|source| Error::io(path, source))?;
        Ok(JsonlSink {
            path: path.to_path_buf(),
            file,
            line: Vec::with_capacity(512),
        })
    }
}

/// The JSON object for a record.
pub fn record_to_json(record: &Record) -> Value {
    let mut object = Map::new();
    object.insert("kind".into(), record.kind.as_str().into());
    if let Some(source) = &record.source {
        object.insert("monitor".into(), source.as_str().into());
    }
    object.insert("epoch".into(), record.epoch.into());
    object.insert("global_step".into(), record.global_step.into());
    object.insert("wall_time".into(), number(record.wall_time));
    for (name, value) in &record.metrics {
        object.insert(name.clone(), number(*value));
    }
    Value::Object(object)
}

fn number(value: f64) -> Value {
    Number::from_f64(value).map_or(Value::Null, Value::Number)
}

impl Sink for JsonlSink {
    fn write(&mut self, record: &Record) -> Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, &record_to_json(record)).map_err(|source| {
            Error::Json {
                what: format!("{} record", record.kind.as_str()),
                source,
            }
        })?;
        self.line.push(b'\n');
        self.file
            .write_all(&self.line)
            .map_err(|source| Error::io(&self.path, source))
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|source| Error::io(&self.path, source))
    }
}
