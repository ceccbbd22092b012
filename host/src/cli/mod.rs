//! The commands of the `vigil` binary, one module each: its arguments (clap) and what it
//! prints. The work is the library's; a command turns arguments into a call and the answer
//! into lines and an exit code.

pub mod bench;
pub mod check;
pub mod compare;
pub mod export_model;
pub mod new_monitor;
pub mod plugins;
pub mod serve;
pub mod study;
pub mod sync;
pub mod train;

/// How a command ended without an error.
pub enum RunEnd {
    Done,
    /// Interrupted by a signal after a checkpoint: exit 75.
    Interrupted,
}

/// The flag the signal handlers set ([`vigil::interrupt::install`]).
pub fn install_interrupt() -> anyhow::Result<&'static std::sync::atomic::AtomicUsize> {
    vigil::interrupt::install().map_err(|err| anyhow::anyhow!("installing signal handlers: {err}"))
}

/// 2 for bad input or set-up (config, usage, a run that cannot be resumed or is busy, a
/// program vigil needs, plugins, data, a damaged checkpoint), 3 for a monitor with
/// `on_error = "abort"` that failed, 1 for everything else.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<vigil::Error>() {
        Some(
            vigil::Error::Config { .. }
            | vigil::Error::Usage { .. }
            | vigil::Error::Resume { .. }
            | vigil::Error::Busy { .. }
            | vigil::Error::Subprocess { .. }
            | vigil::Error::Plugins { .. }
            | vigil::Error::DataMissing { .. }
            | vigil::Error::DataCorrupt { .. }
            | vigil::Error::CheckpointDamaged { .. },
        ) => 2,
        Some(vigil::Error::MonitorFailed { .. }) => 3,
        _ => 1,
    }
}
