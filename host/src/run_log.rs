//! `vigil.log`: the run's console lines and its debug detail, with time, level and module,
//! in the run directory, rotated by size.
//!
//! One line per event: `[YYYY-MM-DD HH:MM:SS.mmm] [LEVEL] [module] message`, the time in UTC.
//! The lines come from `tracing` through [`RunLogLayer`], which the `vigil` binary adds to its
//! subscriber beside the console's: every event at DEBUG and above, the warnings and monitor
//! messages the console shows on standard error, and the lines it prints on standard output
//! ([`say`], target [`CONSOLE_TARGET`]). Lines from before the run directory exists (the data
//! and model lines) are kept, a bounded number of them, and written when the log opens.
//!
//! When the file passes `log_max_mb` it is rotated: `vigil.log` becomes `vigil.log.1.gz`
//! (gzip-compressed), the older ones move up a number, and only `log_backups` of them are
//! kept. A resumed run appends to the same log. Rotation is the `file-rotate` crate's.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::error::{Error, Result};

/// The target of the lines the console prints on standard output ([`say`]): the log keeps
/// them, the console's own subscriber layer leaves them out (they are printed already).
pub const CONSOLE_TARGET: &str = "vigil::console";

/// Lines kept from before a log is open, at most.
const EARLY_LINES: usize = 1000;

/// The open log, if any, and the lines waiting for one.
struct Sink {
    file: Option<FileRotate<AppendCount>>,
    early: VecDeque<String>,
}

static LOG: Mutex<Sink> = Mutex::new(Sink {
    file: None,
    early: VecDeque::new(),
});

fn with_log<T>(f: impl FnOnce(&mut Sink) -> T) -> T {
    let mut log = LOG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(&mut log)
}

/// How large the log grows before it is rotated, and how many rotated files are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub backups: usize,
}

/// Open (or, on resume, continue) the log at `path`; from now on every event goes there, the
/// lines kept from before first. A log already open is closed.
pub fn open(path: &Path, rotation: Rotation) -> Result<()> {
    // The file-rotate crate panics when it cannot create the directory; it exists already.
    let directory = path.parent().unwrap_or(Path::new("."));
    if !directory.is_dir() {
        return Err(Error::io(
            directory,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no run directory for the log"),
        ));
    }
    let file = std::panic::catch_unwind(|| {
        FileRotate::new(
            path,
            AppendCount::new(rotation.backups),
            ContentLimit::BytesSurpassed(rotation.max_bytes.max(1) as usize),
            Compression::OnRotate(0),
            None,
        )
    })
    .map_err(|_| {
        Error::io(
            path,
            std::io::Error::other("the log file could not be opened for rotation"),
        )
    })?;
    with_log(|log| {
        let mut file = file;
        for line in log.early.drain(..) {
            let _ = file.write_all(line.as_bytes());
        }
        let _ = file.flush();
        log.file = Some(file);
    });
    Ok(())
}

/// Flush and close the open log (the next event is kept for the next one).
pub fn close() {
    with_log(|log| {
        if let Some(mut file) = log.file.take() {
            let _ = file.flush();
        }
    });
}

/// Print `line` on standard output and keep it in the log.
pub fn say(line: &str) {
    println!("{line}");
    tracing::info!(target: CONSOLE_TARGET, "{line}");
}

/// The `tracing` layer that writes events to the open log.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunLogLayer;

impl<S: Subscriber> Layer<S> for RunLogLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        // vigil's own events, DEBUG and above. (A layer's `enabled` would filter the console's
        // layer too, so the choice is made here.)
        if *metadata.level() > Level::DEBUG || !metadata.target().starts_with("vigil") {
            return;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let module = metadata
            .target()
            .strip_prefix("vigil::")
            .unwrap_or(metadata.target());
        let line = format!(
            "[{}] [{}] [{module}] {}\n",
            timestamp(),
            metadata.level(),
            message.0
        );
        let urgent = *metadata.level() <= Level::WARN;
        with_log(|log| match &mut log.file {
            Some(file) => {
                // The rotation crate panics where it cannot recreate the directory (a run
                // directory removed while training): the log stops, training goes on.
                let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _ = file.write_all(line.as_bytes());
                    // Warnings and errors reach the disk at once: they are what a reader of a
                    // crashed run looks for.
                    if urgent {
                        let _ = file.flush();
                    }
                }));
                if written.is_err() {
                    log.file = None;
                }
            }
            None => {
                if log.early.len() == EARLY_LINES {
                    log.early.pop_front();
                }
                log.early.push_back(line);
            }
        });
    }
}

/// An event's message, and its other fields as ` key=value`.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

/// Now in UTC, `YYYY-MM-DD HH:MM:SS.mmm`.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = now.as_secs();
    let (year, month, day) = crate::run_dir::civil_from_days((seconds / 86_400) as i64);
    let time = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        time / 3600,
        time / 60 % 60,
        time % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_has_the_documented_shape() {
        let stamp = timestamp();
        assert_eq!(stamp.len(), 23, "{stamp}");
        assert_eq!(&stamp[4..5], "-");
        assert_eq!(&stamp[10..11], " ");
        assert_eq!(&stamp[19..20], ".");
    }
}
