//! The stable boundary between the vigil training host and its monitor plugins.
//!
//! A monitor plugin is a `cdylib` that links this crate and nothing else: it never links
//! libtorch. The host hands a monitor scalars, CPU copies of the data it subscribed to, and
//! capabilities such as a Hessian-vector product; the monitor hands back metrics and
//! artifacts, all through [`Context`].
//!
//! ```no_run
//! use vigil_plugin_api::{export_monitor, monitor, Context, Error, EventKind, EventSet, Monitor,
//!     MonitorInfo, Subscriptions};
//!
//! /// Logs the training loss in bits every `every` steps.
//! pub struct LossInBits {
//!     every: u64,
//! }
//!
//! #[derive(serde::Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct Settings {
//!     every: u64,
//! }
//!
//! impl Default for Settings {
//!     fn default() -> Self {
//!         Settings { every: 10 }
//!     }
//! }
//!
//! #[monitor] // lets the SDK report a hook left out of `events`
//! impl Monitor for LossInBits {
//!     const INFO: MonitorInfo = MonitorInfo {
//!         name: "loss-in-bits",
//!         version: env!("CARGO_PKG_VERSION"),
//!         description: "training loss in bits",
//!         events: EventSet::of(&[EventKind::TRAIN_BATCH_END]),
//!         subscriptions: Subscriptions::NONE,
//!     };
//!
//!     fn new(settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
//!         let settings: Settings = vigil_plugin_api::parse_settings(settings)?;
//!         Ok(LossInBits { every: settings.every.max(1) })
//!     }
//!
//!     fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
//!         if ctx.counters().global_step % self.every == 0 {
//!             if let Some(loss) = ctx.metric("train_loss") {
//!                 ctx.log("example/loss_bits", loss / std::f64::consts::LN_2);
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_monitor!(LossInBits);
//! ```
//!
//! # Testing
//!
//! With the feature `testing`, [`testing`] has a fake host: build the monitor, script counters,
//! metrics, gradients, a Hessian, validation batches and the rest, fire events, and read back
//! what it logged, wrote and warned. No trainer, no libtorch.
//!
//! # Compatibility
//!
//! The types in [`abi`] are frozen for 1.x; the host checks their layout when it loads a
//! plugin and refuses, with a one-line reason, a plugin whose layout does not match. New
//! capabilities arrive as data (new [`EventKind`] values, metric names, [`Subscriptions`]
//! bits, [`query`] names), so a plugin built against any 1.x keeps loading and running in
//! later 1.x hosts, with the behaviour it was built for. The host's tests build plugins against
//! the 1.0.0 and 1.2.0 sources and run them.
//!
//! Added in 1.1: monitor state across `--resume` ([`Monitor::save_state`],
//! [`Monitor::restore_state`], the [`state`] module, event kinds `SAVE_STATE` and
//! `RESTORE_STATE`). A 1.1 host treats a 1.0 plugin as one that keeps no state: on resume it
//! starts fresh.
//!
//! Added in 1.2: the [identity record](identity). [`Monitor::INFO`] is a constant that
//! [`export_monitor!`] writes into the library file, where the host reads it without loading
//! the library; `fn info()` now defaults to it. A plugin that overrides `info()` instead, or
//! one built before 1.2, has no record: the host finds it by its file name
//! (`lib<name with - as _>.so`) and loads it to learn its identity.
//!
//! Added in 1.3: the monitor-author kit. [`Context`]'s data accessors return an error naming
//! the subscription or the event when the data is not there (an `Option` inside where "none"
//! is a right answer) instead of an empty slice; typed methods and the [`query`] module for
//! every query answer; [`monitor`] and the warning about hooks left out of `events`;
//! [`testing`]; `From<String>` and `From<&str>` for [`Error`], which is now
//! `#[non_exhaustive]`. This changed the accessors' signatures (a `?` where they are called),
//! not the ABI: a plugin built against 1.2 runs unchanged.
//!
//! Added in 1.4: statistics of the individual gradients and the parameters' motion
//! ([`per_sample`]; subscriptions `PER_SAMPLE` and `PARAMETER_MOTION`; typed methods such as
//! [`Context::per_sample_stats`]), and histograms for the host's sinks
//! ([`Context::log_histogram`]). Data only: a 1.4 host runs every 1.x plugin.
//!
//! **Semantic versioning, and the one exception.** 1.3.0 changed the return types of six
//! accessors of [`Context`] (`gradient`, `grad_norms`, `weight_norms`, `validation_batch`,
//! `sample_images`, `sampler_draws`): a source break inside 1.x, which semver forbids, so a
//! crate that asked for `vigil-plugin-api = "1"` and built against 1.2 needs the `?` above to
//! build against 1.3. It is kept, not reverted: reverting would break, in the same way, every
//! crate written against 1.3, and the break never reached a built plugin. It is the only one.
//! From 1.3.0 on, CI runs `cargo semver-checks` on this crate against the 1.3.0 sources (the
//! commit named in the repository's `.ci/semver-baseline`), and a change it reports as a
//! break needs 2.0 (a new crate, `vigil-plugin-api-v2`, that the host links beside this one,
//! so that 1.x plugins keep loading).

#![warn(missing_docs)]

pub mod abi;
mod context;
pub mod identity;
pub mod per_sample;
pub mod query;
pub mod sdk;
pub mod state;
#[cfg(any(feature = "testing", doc))]
pub mod testing;

pub use abi::{
    ArtifactKind, EventKind, EventSet, ImageBatch, LogLevel, ParameterInfo, ProbeSpec,
    SamplerDraws, StepCounters, Subscriptions, ValidationBatch, WriteMode,
};
pub use context::{check_artifact_path, Context};
pub use query::{GradientEma, ParameterCount};
pub use sdk::{expect_no_settings, parse_settings, Monitor, MonitorInfo};
pub use state::{SavedState, StateReader, StateWriter};
/// Put on `impl Monitor for YourMonitor { … }`: it records which hooks the block overrides,
/// so that the SDK can report, once when the host loads the monitor, a hook whose event is not
/// in [`MonitorInfo::events`] (the host would never call it). Nothing else changes.
///
/// ```
/// use vigil_plugin_api::{monitor, Context, Error, EventKind, EventSet, Monitor, MonitorInfo,
///     Subscriptions};
///
/// struct Quiet;
///
/// #[monitor]
/// impl Monitor for Quiet {
///     const INFO: MonitorInfo = MonitorInfo {
///         name: "quiet",
///         version: "0.1.0",
///         description: "says nothing",
///         events: EventSet::of(&[EventKind::FIT_END]),
///         subscriptions: Subscriptions::NONE,
///     };
///     fn new(_settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
///         Ok(Quiet)
///     }
///     fn on_fit_end(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
///         Ok(())
///     }
/// }
/// ```
pub use vigil_plugin_api_macros::monitor;

/// Re-exported for [`export_monitor!`]; plugins need not depend on abi_stable themselves.
#[doc(hidden)]
pub use abi_stable;

/// Re-exported so that a plugin can derive its settings without depending on serde itself:
/// `#[derive(vigil_plugin_api::serde::Deserialize)]` with
/// `#[serde(crate = "vigil_plugin_api::serde")]`.
pub use serde;

/// The major version of the plugin interface. A host loads plugins of the same major version.
pub const API_MAJOR_VERSION: u32 = 1;

/// This crate's version, as the host reports it in `vigil plugins`.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a monitor could not do what was asked.
///
/// A hook returns it; the host records the message and disables the monitor or stops the
/// run, as the user configured. A message converts with `?` or `.into()`:
///
/// ```
/// use vigil_plugin_api::Error;
///
/// fn check(loss: f64) -> Result<(), Error> {
///     if !loss.is_finite() {
///         return Err(format!("the loss is {loss}").into());
///     }
///     Ok(())
/// }
/// assert_eq!(check(f64::NAN).unwrap_err().to_string(), "the loss is NaN");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The monitor's settings are invalid.
    #[error("invalid settings: {0}")]
    Settings(String),
    /// The host refused or failed a request (an artifact write, a Hessian-vector product…).
    #[error("host: {0}")]
    Host(String),
    /// The monitor itself failed.
    #[error("{0}")]
    Monitor(String),
    /// The monitor read data it did not subscribe to (added in 1.3).
    #[error("`Context::{data}` needs the subscription `Subscriptions::{subscription}` in the monitor's `MonitorInfo::subscriptions`")]
    NotSubscribed {
        /// The [`Context`] method called.
        data: &'static str,
        /// The [`Subscriptions`] constant it needs.
        subscription: &'static str,
    },
    /// The monitor read data that does not exist at the current event (added in 1.3).
    #[error("`Context::{data}` has no data at {event}; it is there at {available}")]
    NotAtThisEvent {
        /// The [`Context`] method called.
        data: &'static str,
        /// Where the monitor is: an event name, or `Monitor::new`.
        event: &'static str,
        /// The events where the data exists.
        available: &'static str,
    },
}

impl From<String> for Error {
    /// [`Error::Monitor`] with this message.
    fn from(message: String) -> Self {
        Error::Monitor(message)
    }
}

impl From<&str> for Error {
    /// [`Error::Monitor`] with this message.
    fn from(message: &str) -> Self {
        Error::Monitor(message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_matches_the_crate_version() {
        let major: u32 = API_VERSION
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert_eq!(major, API_MAJOR_VERSION);
    }

    #[test]
    fn event_sets_hold_their_members_only() {
        let set = EventSet::of(&[EventKind::FIT_START, EventKind::VALIDATION_END]);
        assert!(set.contains(EventKind::FIT_START));
        assert!(set.contains(EventKind::VALIDATION_END));
        assert!(!set.contains(EventKind::TRAIN_BATCH_END));
        assert!(!set.contains(EventKind(99)));
    }
}
