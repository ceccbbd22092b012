//! A fake host for monitors' unit tests (feature `testing`): no trainer, no libtorch.
//!
//! [`FakeHost`] implements the host side of the ABI from data a test scripts: step counters
//! and metrics, parameters with gradients and weights, a Hessian-vector product from a given
//! matrix, validation batches, sample images, sampler draws, labels and canned query answers.
//! It records what the monitor logged, wrote, warned and requested. [`Harness`] builds a
//! monitor through the same entry points the real host calls and delivers events to it the
//! way the real host does: only the events the monitor lists, through the SDK's checks.
//!
//! Turn it on for tests only:
//!
//! ```toml
//! [dev-dependencies]
//! vigil-plugin-api = { version = "1.3", features = ["testing"] }
//! ```
//!
//! ```
//! use vigil_plugin_api::testing::{FakeHost, Harness};
//! use vigil_plugin_api::{monitor, Context, Error, EventKind, EventSet, Monitor, MonitorInfo,
//!     Subscriptions};
//!
//! struct Doubler;
//!
//! #[monitor]
//! impl Monitor for Doubler {
//!     const INFO: MonitorInfo = MonitorInfo {
//!         name: "doubler",
//!         version: "0.1.0",
//!         description: "twice the loss",
//!         events: EventSet::of(&[EventKind::TRAIN_BATCH_END]),
//!         subscriptions: Subscriptions::NONE,
//!     };
//!     fn new(settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
//!         vigil_plugin_api::expect_no_settings(settings)?;
//!         Ok(Doubler)
//!     }
//!     fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
//!         let loss = ctx.metric("train_loss").ok_or("no train_loss")?;
//!         ctx.log("doubler/loss", 2.0 * loss);
//!         Ok(())
//!     }
//! }
//!
//! let mut harness = Harness::<Doubler>::new("", FakeHost::new())?;
//! harness.host_mut().at_step(7).metric("train_loss", 0.25);
//! harness.fire(EventKind::TRAIN_BATCH_END)?;
//! assert_eq!(harness.host().logged("doubler/loss"), [(7, 0.5)]);
//! assert!(harness.fire(EventKind::VALIDATION_END).is_err(), "not one of its events");
//! # Ok::<(), String>(())
//! ```

mod fake_host;
mod host_side;

use std::marker::PhantomData;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RStr, RString};

use crate::abi::{HostFfi_TO, MonitorBox, PluginInfo};
use crate::{EventKind, Monitor};

pub use fake_host::{FakeHost, ProductCall, WrittenFile};

/// A monitor built by the SDK's own entry points on a [`FakeHost`], with events delivered as
/// the real host delivers them.
///
/// ```
/// use vigil_plugin_api::testing::{FakeHost, Harness};
/// use vigil_plugin_api::{Context, Error, EventKind, EventSet, Monitor, MonitorInfo, Subscriptions};
///
/// struct Steps(u64);
///
/// impl Monitor for Steps {
///     const INFO: MonitorInfo = MonitorInfo {
///         name: "steps",
///         version: "0.1.0",
///         description: "counts steps",
///         events: EventSet::of(&[EventKind::TRAIN_BATCH_END]),
///         subscriptions: Subscriptions::NONE,
///     };
///     fn new(_settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
///         Ok(Steps(0))
///     }
///     fn on_train_batch_end(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
///         self.0 += 1;
///         Ok(())
///     }
///     fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
///         Ok(Some(self.0.to_le_bytes().to_vec()))
///     }
/// }
///
/// let mut harness = Harness::<Steps>::new("", FakeHost::new())?;
/// harness.fire(EventKind::TRAIN_BATCH_END)?;
/// harness.fire(EventKind::TRAIN_BATCH_END)?;
/// assert_eq!(harness.save_state()?, Some(2u64.to_le_bytes().to_vec()));
/// # Ok::<(), String>(())
/// ```
pub struct Harness<M> {
    host: FakeHost,
    monitor: MonitorBox,
    info: PluginInfo,
    _monitor: PhantomData<M>,
}

impl<M: Monitor> Harness<M> {
    /// Build the monitor from `settings` (TOML text, as in `[monitors.settings]`), as the
    /// host does when it loads the plugin. An error carries the message the host would
    /// report.
    pub fn new(settings: &str, mut host: FakeHost) -> Result<Self, String> {
        let info = crate::sdk::info_entry::<M>();
        if info.name.is_empty() {
            return Err("the monitor has no name: set `Monitor::INFO`".into());
        }
        host.event = None;
        let built = crate::sdk::new_monitor_entry::<M>(
            RStr::from_str(settings),
            HostFfi_TO::from_ptr(&mut host, TD_Opaque),
        );
        let monitor = built.into_result().map_err(RString::into_string)?;
        Ok(Harness {
            host,
            monitor,
            info,
            _monitor: PhantomData,
        })
    }

    /// Build the monitor and restore it from `bytes` that version `plugin_version` saved,
    /// as the host does on `--resume` (`restore_state` instead of `fit_start`).
    pub fn restored(
        settings: &str,
        host: FakeHost,
        plugin_version: &str,
        bytes: Vec<u8>,
    ) -> Result<Self, String> {
        let mut harness = Harness::new(settings, host)?;
        harness.host.restoring = Some((plugin_version.to_string(), bytes));
        harness.fire(EventKind::RESTORE_STATE)?;
        harness.host.restoring = None;
        Ok(harness)
    }

    /// The fake host, to read what the monitor did.
    pub fn host(&self) -> &FakeHost {
        &self.host
    }

    /// The fake host, to script the next event.
    pub fn host_mut(&mut self) -> &mut FakeHost {
        &mut self.host
    }

    /// What the plugin tells the host about itself (its events include the SDK's state
    /// events).
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Whether the host would deliver `kind` to this monitor.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.info.events.contains(kind)
    }

    /// Deliver `kind` with the data scripted now. An error is the message the host would
    /// record (the monitor's error or panic), or says the host would not deliver `kind`
    /// because the monitor does not list it.
    pub fn fire(&mut self, kind: EventKind) -> Result<(), String> {
        if !self.wants(kind) {
            return Err(format!(
                "the host never delivers {} to `{}`: it is not in MonitorInfo::events",
                kind.name(),
                self.info.name
            ));
        }
        self.host.event = Some(kind);
        let result = self
            .monitor
            .on_event(kind, HostFfi_TO::from_ptr(&mut self.host, TD_Opaque));
        self.host.event = None;
        result.into_result().map_err(RString::into_string)
    }

    /// Deliver `save_state` as the host does at a checkpoint: the state the monitor handed
    /// over, or `None` for a monitor that keeps none.
    pub fn save_state(&mut self) -> Result<Option<Vec<u8>>, String> {
        self.host.saved_state = None;
        self.fire(EventKind::SAVE_STATE)?;
        Ok(self.host.saved_state.take())
    }

    /// The fake host, with everything it recorded.
    pub fn into_host(self) -> FakeHost {
        self.host
    }
}
