//! The safe SDK: implement [`Monitor`], call [`export_monitor!`](crate::export_monitor), done.
//!
//! The SDK turns the one FFI entry point into a method per event, wraps every call in
//! `catch_unwind` (a panic that crossed the FFI boundary would abort the whole training
//! process), and turns panics and errors into error values the host records.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, RResult, RSlice, RSliceMut, RStr, RString};

use crate::abi::{
    Artifact, ArtifactKind, EventKind, EventSet, HostRef, ImageBatch, LogLevel, MonitorBox,
    MonitorFfi, MonitorFfi_TO, ParameterInfo, PluginInfo, PluginModule, PluginModuleRef, ProbeSpec,
    SamplerDraws, StepCounters, Subscriptions, ValidationBatch, WriteMode,
};
use crate::Error;

/// What a monitor says about itself; see [`Monitor::info`].
#[derive(Debug, Clone, Copy)]
pub struct MonitorInfo {
    /// The name users write in `[[monitors]] name = "…"`.
    pub name: &'static str,
    /// The plugin's version; `env!("CARGO_PKG_VERSION")` is the usual choice.
    pub version: &'static str,
    /// One line for `vigil plugins`.
    pub description: &'static str,
    /// The events the monitor handles; others are never delivered.
    pub events: EventSet,
    /// The data the host should prepare for it.
    pub subscriptions: Subscriptions,
}

impl MonitorInfo {
    /// No identity: the default of [`Monitor::INFO`] for monitors written before 1.2, which
    /// override [`Monitor::info`] instead. Such a library has no identity record; the host
    /// finds it by its file name and loads it to learn its name.
    pub const UNSET: MonitorInfo = MonitorInfo {
        name: "",
        version: "",
        description: "",
        events: EventSet::EMPTY,
        subscriptions: Subscriptions::NONE,
    };
}

/// A monitor. Override the hooks you listed in [`MonitorInfo::events`]; the rest default to
/// doing nothing. Return an error (or panic) and the host disables the monitor or aborts the
/// run, as the user configured.
pub trait Monitor: Sized + 'static {
    /// Describe the monitor. [`export_monitor!`](crate::export_monitor) writes this into the
    /// library file as its [identity record](crate::identity), which the host reads without
    /// loading the library: set it (a `const`), and leave [`Monitor::info`] alone.
    const INFO: MonitorInfo = MonitorInfo::UNSET;

    /// What the host is told when it loads the library: [`Monitor::INFO`]. Monitors written
    /// before 1.2 override this instead; the host checks that a library's record and its
    /// `info()` agree.
    fn info() -> MonitorInfo {
        Self::INFO
    }

    /// Build the monitor from its settings: the `[monitors.settings]` table as TOML text
    /// (empty when there is none). [`parse_settings`] does the usual thing.
    fn new(settings: &str, ctx: &mut Context<'_>) -> Result<Self, Error>;

    fn on_fit_start(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    fn on_train_epoch_start(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    /// After backward, before gradient clipping and the optimizer step: the gradient is the
    /// one backward produced.
    fn on_train_batch_end(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    fn on_validation_batch_end(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    fn on_validation_end(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    fn on_train_epoch_end(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    fn on_fit_end(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    /// An event kind this SDK version does not know (from a newer host). Ignored by default.
    fn on_other_event(&mut self, _kind: EventKind, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }

    /// The state to carry across `--resume`, asked for at every checkpoint (API 1.1).
    ///
    /// `None`, the default, says the monitor keeps no state: on resume it starts fresh, and
    /// sees `fit_start` again (plus `train_epoch_start` when the run resumes mid-epoch), as a
    /// new run's monitor would. `Some(bytes)` (empty is fine, for a monitor whose only state is
    /// "started") says: on resume, call [`Monitor::restore_state`] with these bytes
    /// *instead of* [`Monitor::on_fit_start`]. Save everything a later hook reads (counts,
    /// buffers, random generators, what was already written), so that the resumed run logs and
    /// writes what the uninterrupted one would. [`crate::StateWriter`] encodes it.
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        Ok(None)
    }

    /// On resume, with what [`Monitor::save_state`] returned at the checkpoint, in place of
    /// `on_fit_start`. `saved.plugin_version` says which version of the plugin saved it; a
    /// monitor that cannot read another version's bytes returns an error (the host then
    /// disables it or stops, as `on_error` says) or starts afresh and says so with
    /// [`Context::warn`].
    fn restore_state(
        &mut self,
        _saved: crate::SavedState<'_>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), Error> {
        Ok(())
    }
}

/// Parse settings TOML into `T`, with `T::default()` for an empty table. Use
/// `#[serde(default, deny_unknown_fields)]` on `T` so that typos are errors.
pub fn parse_settings<T>(settings: &str) -> Result<T, Error>
where
    T: serde::de::DeserializeOwned,
{
    toml::from_str(settings).map_err(|err| Error::Settings(err.message().trim().to_string()))
}

/// For a monitor without settings: accept an empty `[monitors.settings]` table and refuse any
/// key, so that a misplaced setting is an error rather than silently ignored.
pub fn expect_no_settings(settings: &str) -> Result<(), Error> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoSettings {}
    parse_settings::<NoSettings>(settings).map(|_| ())
}

/// The host, as a monitor sees it during one call.
pub struct Context<'a> {
    host: HostRef<'a>,
}

impl<'a> Context<'a> {
    /// Wrap a host handle. The SDK does this for you.
    pub fn new(host: HostRef<'a>) -> Self {
        Context { host }
    }

    /// Where training is.
    pub fn counters(&self) -> StepCounters {
        self.host.counters()
    }

    /// A scalar metric of the current event (`train_loss`, `lr`, `val_loss`, …).
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.host.metric(RStr::from_str(name)).into_option()
    }

    /// The model's trainable parameters, in the order of every per-parameter slice.
    pub fn parameters(&self) -> &[ParameterInfo] {
        self.host.parameters().as_slice()
    }

    /// Per-parameter gradient L2 norms (at `TRAIN_BATCH_END`).
    pub fn grad_norms(&self) -> &[f64] {
        self.host.grad_norms().as_slice()
    }

    /// Per-parameter weight L2 norms.
    pub fn weight_norms(&self) -> &[f64] {
        self.host.weight_norms().as_slice()
    }

    /// The flattened gradient (at `TRAIN_BATCH_END`, subscription `GRADIENT`).
    pub fn gradient(&self) -> &[f32] {
        self.host.gradient().as_slice()
    }

    /// `out = H · vector` on the probe subsample; returns the probe loss.
    pub fn hessian_vector_product(
        &mut self,
        probe: ProbeSpec,
        vector: &[f32],
        out: &mut [f32],
    ) -> Result<f64, Error> {
        self.host
            .hessian_vector_product(
                probe,
                RSlice::from_slice(vector),
                RSliceMut::from_mut_slice(out),
            )
            .into_result()
            .map_err(|reason| Error::Host(reason.into_string()))
    }

    /// Mean loss on the probe subsample.
    pub fn probe_loss(&mut self, probe: ProbeSpec) -> Result<f64, Error> {
        self.host
            .probe_loss(probe)
            .into_result()
            .map_err(|reason| Error::Host(reason.into_string()))
    }

    /// The current validation batch (subscription `VALIDATION_OUTPUTS`).
    pub fn validation_batch(&self) -> ValidationBatch<'_> {
        self.host.validation_batch()
    }

    /// Sample validation images (subscription `SAMPLE_IMAGES`).
    pub fn sample_images(&self) -> ImageBatch<'_> {
        self.host.sample_images()
    }

    /// Class names, indexed by label.
    pub fn class_names(&self) -> Vec<&str> {
        self.host
            .class_names()
            .as_slice()
            .iter()
            .map(RString::as_str)
            .collect()
    }

    /// The sampler's draws for this epoch (subscription `SAMPLER`).
    pub fn sampler_draws(&self) -> SamplerDraws<'_> {
        self.host.sampler_draws()
    }

    /// Record a scalar metric at the current step.
    pub fn log(&mut self, name: &str, value: f64) {
        self.host.log_scalar(RStr::from_str(name), value);
    }

    /// Write (replace) a file under the run's artifact directory.
    pub fn write_file(
        &mut self,
        path: &str,
        kind: ArtifactKind,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.write_artifact(path, kind, WriteMode::REPLACE, bytes)
    }

    /// Append to a file under the run's artifact directory.
    pub fn append_file(
        &mut self,
        path: &str,
        kind: ArtifactKind,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.write_artifact(path, kind, WriteMode::APPEND, bytes)
    }

    fn write_artifact(
        &mut self,
        path: &str,
        kind: ArtifactKind,
        mode: WriteMode,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.host
            .write_artifact(Artifact {
                path: RStr::from_str(path),
                bytes: RSlice::from_slice(bytes),
                kind,
                mode,
            })
            .into_result()
            .map_err(|reason| Error::Host(reason.into_string()))
    }

    /// Log a message under the monitor's name.
    pub fn info(&mut self, message: &str) {
        self.host
            .log_message(LogLevel::INFO, RStr::from_str(message));
    }

    /// Log a warning under the monitor's name (also listed in `run.json`).
    pub fn warn(&mut self, message: &str) {
        self.host
            .log_message(LogLevel::WARN, RStr::from_str(message));
    }

    /// Ask the host to stop training after the current step.
    pub fn request_stop(&mut self, reason: &str) {
        self.host.request_stop(RStr::from_str(reason));
    }

    /// A capability by name (see the host's documentation for the names it knows).
    pub fn query(&mut self, name: &str, input: &[u8]) -> Result<Vec<u8>, Error> {
        self.host
            .query(RStr::from_str(name), RSlice::from_slice(input))
            .into_result()
            .map(|bytes| bytes.into_vec())
            .map_err(|reason| Error::Host(reason.into_string()))
    }
}

/// Adapts a [`Monitor`] to the FFI trait.
struct Adapter<M>(M);

impl<M: Monitor> MonitorFfi for Adapter<M> {
    fn on_event(&mut self, event: EventKind, host: HostRef<'_>) -> RResult<(), RString> {
        let mut ctx = Context::new(host);
        let monitor = &mut self.0;
        guarded(AssertUnwindSafe(|| match event {
            EventKind::FIT_START => monitor.on_fit_start(&mut ctx),
            EventKind::TRAIN_EPOCH_START => monitor.on_train_epoch_start(&mut ctx),
            EventKind::TRAIN_BATCH_END => monitor.on_train_batch_end(&mut ctx),
            EventKind::VALIDATION_BATCH_END => monitor.on_validation_batch_end(&mut ctx),
            EventKind::VALIDATION_END => monitor.on_validation_end(&mut ctx),
            EventKind::TRAIN_EPOCH_END => monitor.on_train_epoch_end(&mut ctx),
            EventKind::FIT_END => monitor.on_fit_end(&mut ctx),
            EventKind::SAVE_STATE => match monitor.save_state(&mut ctx)? {
                Some(bytes) => ctx.query(crate::state::SAVE_QUERY, &bytes).map(drop),
                None => Ok(()),
            },
            EventKind::RESTORE_STATE => {
                let answer = ctx.query(crate::state::SAVED_QUERY, &[])?;
                let saved = crate::SavedState::decode(&answer)?;
                monitor.restore_state(saved, &mut ctx)
            }
            other => monitor.on_other_event(other, &mut ctx),
        }))
    }
}

thread_local! {
    /// Where the last panic on this thread happened, recorded by the plugin's panic hook.
    static PANIC_LOCATION: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Replace this plugin's panic hook (the plugin has its own copy of std) with one that
/// records the location instead of printing a backtrace over the host's output: the host
/// reports the panic as the monitor's failure, with that location.
fn install_quiet_panic_hook() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            PANIC_LOCATION.with(|slot| *slot.borrow_mut() = location);
        }));
    });
}

/// Run `body`, turning an error or a panic into `RErr` with a readable reason.
fn guarded<T>(
    body: impl FnOnce() -> Result<T, Error> + std::panic::UnwindSafe,
) -> RResult<T, RString> {
    install_quiet_panic_hook();
    match catch_unwind(body) {
        Ok(Ok(value)) => ROk(value),
        Ok(Err(err)) => RErr(RString::from(err.to_string())),
        Err(payload) => {
            let location = PANIC_LOCATION.with(|slot| slot.borrow_mut().take());
            let message = panic_message(&*payload);
            RErr(RString::from(match location {
                Some(location) => format!("panicked at {location}: {message}"),
                None => format!("panicked: {message}"),
            }))
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic with a non-string payload)")
}

/// The events of the state protocol, which the SDK adds to every monitor's events.
pub const STATE_EVENTS: EventSet = EventSet::of(&[EventKind::SAVE_STATE, EventKind::RESTORE_STATE]);

/// The `info` entry point for monitor type `M`.
pub extern "C" fn info_entry<M: Monitor>() -> PluginInfo {
    // `M::info()` only builds a struct of constants; if it panics anyway, report an empty
    // name, which the host rejects with a clear message instead of the process aborting.
    let info = catch_unwind(M::info).ok();
    PluginInfo {
        name: info.map_or("", |i| i.name).into(),
        version: info.map_or("", |i| i.version).into(),
        description: info
            .map_or("Monitor::info panicked", |i| i.description)
            .into(),
        api_version: crate::API_VERSION.into(),
        // Every monitor of this SDK takes part in saving state; the host tells a plugin built
        // before 1.1 by these bits missing.
        events: info.map_or(EventSet::EMPTY, |i| EventSet(i.events.0 | STATE_EVENTS.0)),
        subscriptions: info.map_or(Subscriptions::NONE, |i| i.subscriptions),
    }
}

/// The `new_monitor` entry point for monitor type `M`.
pub extern "C" fn new_monitor_entry<M: Monitor>(
    settings: RStr<'_>,
    host: HostRef<'_>,
) -> RResult<MonitorBox, RString> {
    let mut ctx = Context::new(host);
    guarded(AssertUnwindSafe(|| {
        let monitor = M::new(settings.as_str(), &mut ctx)?;
        Ok(MonitorFfi_TO::from_value(Adapter(monitor), TD_Opaque))
    }))
}

/// The root module for monitor type `M`; [`export_monitor!`](crate::export_monitor) exports it.
pub fn root_module<M: Monitor>() -> PluginModuleRef {
    PluginModule {
        info: info_entry::<M>,
        new_monitor: new_monitor_entry::<M>,
    }
    .leak_into_prefix()
}

/// Export `$monitor` (a type implementing [`Monitor`]) as this library's vigil plugin.
/// Use it once, in the plugin crate's `lib.rs`; the crate must be a `cdylib`.
///
/// This emits the same library header as abi_stable's `#[export_root_module]`, but through
/// this crate's re-export of abi_stable, so that a plugin depends on `vigil-plugin-api` only;
/// and the [identity record](crate::identity) built from [`Monitor::INFO`] in the section
/// [`identity::SECTION`](crate::identity::SECTION), exported as `vigil_plugin_identity` so
/// that no linker drops it.
#[macro_export]
macro_rules! export_monitor {
    ($monitor:ty) => {
        #[doc(hidden)]
        const VIGIL_PLUGIN_IDENTITY_LEN: usize =
            $crate::identity::encoded_len(&<$monitor as $crate::sdk::Monitor>::INFO);
        #[doc(hidden)]
        #[unsafe(no_mangle)]
        #[unsafe(link_section = ".vigil_plugin")]
        #[used]
        #[allow(non_upper_case_globals)]
        pub static vigil_plugin_identity: [u8; VIGIL_PLUGIN_IDENTITY_LEN] =
            $crate::identity::encode::<VIGIL_PLUGIN_IDENTITY_LEN>(
                &<$monitor as $crate::sdk::Monitor>::INFO,
            );

        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static VIGIL_PLUGIN_LIB_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased_root_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(
                    $crate::sdk::root_module::<$monitor>,
                )
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<
                    $crate::abi::PluginModuleRef,
                >(
                    erased_root_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exported_symbol_is_the_one_abi_stable_looks_up() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn panics_and_errors_become_error_values() {
        let panicked = guarded(|| -> Result<(), Error> { panic!("boom") });
        let reason = panicked.unwrap_err();
        assert!(
            reason
                .as_str()
                .starts_with("panicked at plugin-api/src/sdk.rs:"),
            "{reason}"
        );
        assert!(reason.as_str().ends_with(": boom"), "{reason}");
        let failed = guarded(|| -> Result<(), Error> { Err(Error::Monitor("no data".into())) });
        assert_eq!(failed.unwrap_err().as_str(), "no data");
        let formatted = guarded(|| -> Result<(), Error> { panic!("value {}", 3) });
        assert!(formatted.unwrap_err().as_str().ends_with(": value 3"));
    }

    #[test]
    fn a_monitor_without_settings_refuses_any_key() {
        assert!(expect_no_settings("").is_ok());
        let err = expect_no_settings("every = 5").unwrap_err().to_string();
        assert!(err.contains("unknown field `every`"), "{err}");
    }

    #[test]
    fn settings_parse_with_defaults_and_reject_unknown_keys() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        #[serde(default, deny_unknown_fields)]
        struct Settings {
            every: u32,
        }
        impl Default for Settings {
            fn default() -> Self {
                Settings { every: 50 }
            }
        }
        assert_eq!(
            parse_settings::<Settings>("").unwrap(),
            Settings { every: 50 }
        );
        assert_eq!(
            parse_settings::<Settings>("every = 5").unwrap(),
            Settings { every: 5 }
        );
        let err = parse_settings::<Settings>("evry = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `evry`"), "{err}");
    }
}
