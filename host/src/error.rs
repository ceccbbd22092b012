//! The one error type of the `vigil` crate.

use std::path::PathBuf;

/// Everything that can go wrong in the host. Each variant names the file (or setting) at fault
/// and says what would be valid, so that the CLI can print it as one clear line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file (or a `--set` override) is not valid TOML, does not match the schema,
    /// or holds a value out of range. `location` is `file:line:column` where known.
    #[error("{location}: {message}")]
    Config { location: String, message: String },

    /// A command was given arguments that do not go together, or lacks one.
    #[error("{command}: {message}")]
    Usage {
        command: &'static str,
        message: String,
    },

    /// A run directory cannot be resumed as asked (another config, an older format, fewer
    /// epochs than trained, no checkpoint).
    #[error("{run_dir}: {message}")]
    Resume { run_dir: PathBuf, message: String },

    /// Another process holds the lock on a run or a study.
    #[error("{path}: {message}")]
    Busy { path: PathBuf, message: String },

    /// A program vigil runs (sbatch, scontrol, a `vigil train` of a study, a Python
    /// baseline) could not be started or failed.
    #[error("{program}: {reason}")]
    Subprocess { program: String, reason: String },

    /// Training that was to run a given number of steps ended before (a monitor stopped it).
    #[error("{what} stopped early: {reason}")]
    StoppedEarly { what: String, reason: String },

    /// Plugins could not be found, loaded or built; one line per problem.
    #[error("cannot set up monitors:\n  {}", problems.join("\n  "))]
    Plugins { problems: Vec<String> },

    /// A monitor with `on_error = "abort"` failed.
    #[error(
        "monitor `{monitor}` failed in {event} at step {step} (on_error = \"abort\"): {reason}"
    )]
    MonitorFailed {
        monitor: String,
        event: &'static str,
        step: u64,
        reason: String,
    },

    /// A dataset file or directory is missing.
    #[error("{path}: {what} not found ({hint})")]
    DataMissing {
        path: PathBuf,
        what: String,
        hint: String,
    },

    /// A dataset file exists but its contents are not what its format promises.
    #[error("{path}: {reason}")]
    DataCorrupt { path: PathBuf, reason: String },

    /// A checkpoint's file no longer matches the checksum recorded when it was written, or
    /// no checkpoint of a run is intact.
    #[error("{path}: {reason}")]
    CheckpointDamaged { path: PathBuf, reason: String },

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Serialising a record failed.
    #[error("cannot encode {what} as JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// A capability a monitor asked for could not be computed (a Hessian-vector product, a
    /// gradient average, a probe batch).
    #[error("{0}")]
    Capability(String),

    /// A metrics sink failed to write.
    #[error("the {sink} sink failed: {reason}")]
    Sink { sink: &'static str, reason: String },

    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// Training produced a value that makes further training meaningless.
    #[error("training diverged at epoch {epoch}, step {step}: {what}")]
    Diverged {
        epoch: usize,
        step: u64,
        what: String,
    },
}

impl Error {
    /// Wrap an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
