//! The safe SDK: implement [`Monitor`], call [`export_monitor!`](crate::export_monitor), done.
//!
//! The SDK turns the one FFI entry point into a method per event, wraps every call in
//! `catch_unwind` (a panic that crossed the FFI boundary would abort the whole training
//! process), and turns panics and errors into error values the host records.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString};

use crate::abi::{
    EventKind, EventSet, HostRef, MonitorBox, MonitorFfi, MonitorFfi_TO, PluginInfo, PluginModule,
    PluginModuleRef, Subscriptions,
};
pub use crate::context::Context;
use crate::query;
use crate::Error;

/// What a monitor says about itself; see [`Monitor::info`].
///
/// ```
/// use vigil_plugin_api::{EventKind, EventSet, MonitorInfo, Subscriptions};
/// const INFO: MonitorInfo = MonitorInfo {
///     name: "grad-watch",
///     version: "0.2.0",
///     description: "largest gradient entry per step",
///     events: EventSet::of(&[EventKind::TRAIN_BATCH_END]),
///     subscriptions: Subscriptions::GRADIENT,
/// };
/// ```
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
///
/// ```
/// use vigil_plugin_api::{export_monitor, monitor, Context, Error, EventKind, EventSet, Monitor,
///     MonitorInfo, Subscriptions};
///
/// pub struct Epochs(u32);
///
/// #[monitor]
/// impl Monitor for Epochs {
///     const INFO: MonitorInfo = MonitorInfo {
///         name: "epochs",
///         version: "0.1.0",
///         description: "counts epochs",
///         events: EventSet::of(&[EventKind::TRAIN_EPOCH_END]),
///         subscriptions: Subscriptions::NONE,
///     };
///     fn new(settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
///         vigil_plugin_api::expect_no_settings(settings)?;
///         Ok(Epochs(0))
///     }
///     fn on_train_epoch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
///         self.0 += 1;
///         ctx.log("epochs_seen", f64::from(self.0));
///         Ok(())
///     }
/// }
///
/// export_monitor!(Epochs);
/// ```
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

    /// The events whose hooks this `impl` overrides, written by
    /// [`#[monitor]`](crate::monitor); `None` without the attribute. The SDK warns, once when
    /// the host loads the monitor, about an overridden hook whose event is not in
    /// [`MonitorInfo::events`]: the host would never call it.
    #[doc(hidden)]
    const IMPLEMENTED_HOOKS: Option<EventSet> = None;

    /// Once, before the first training step (on resume: [`Monitor::restore_state`] instead,
    /// for a monitor that saved state).
    fn on_fit_start(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    /// At the start of each epoch, after the sampler drew its indices
    /// ([`Context::sampler_draws`]).
    fn on_train_epoch_start(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    /// After backward, before gradient clipping and the optimizer step: the gradient is the
    /// one backward produced.
    fn on_train_batch_end(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    /// After each validation batch ([`Context::validation_batch`]).
    fn on_validation_batch_end(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    /// After each validation pass: `val_loss`, `val_acc` and [`Context::sample_images`].
    fn on_validation_end(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    /// At the end of each training epoch.
    fn on_train_epoch_end(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }
    /// Once, after training (also after a failed or stopped run; not after an interrupted
    /// one).
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
///
/// ```
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// #[serde(default, deny_unknown_fields)]
/// struct Settings { every: u64 }
/// impl Default for Settings {
///     fn default() -> Self { Settings { every: 10 } }
/// }
/// use vigil_plugin_api::parse_settings;
/// assert_eq!(parse_settings::<Settings>("")?, Settings { every: 10 });
/// assert_eq!(parse_settings::<Settings>("every = 3")?, Settings { every: 3 });
/// assert!(parse_settings::<Settings>("evry = 3").is_err());
/// # Ok::<(), vigil_plugin_api::Error>(())
/// ```
pub fn parse_settings<T>(settings: &str) -> Result<T, Error>
where
    T: serde::de::DeserializeOwned,
{
    toml::from_str(settings).map_err(|err| Error::Settings(err.message().trim().to_string()))
}

/// For a monitor without settings: accept an empty `[monitors.settings]` table and refuse any
/// key, so that a misplaced setting is an error rather than silently ignored.
///
/// ```
/// use vigil_plugin_api::expect_no_settings;
/// assert!(expect_no_settings("").is_ok());
/// assert!(expect_no_settings("every = 3").is_err());
/// ```
pub fn expect_no_settings(settings: &str) -> Result<(), Error> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoSettings {}
    parse_settings::<NoSettings>(settings).map(|_| ())
}

/// Adapts a [`Monitor`] to the FFI trait.
struct Adapter<M> {
    monitor: M,
    /// What the monitor subscribed to, for [`Context`]'s checks.
    subscriptions: Subscriptions,
}

impl<M: Monitor> MonitorFfi for Adapter<M> {
    fn on_event(&mut self, event: EventKind, host: HostRef<'_>) -> RResult<(), RString> {
        let mut ctx = Context::new(host, Some(event), self.subscriptions);
        let monitor = &mut self.monitor;
        guarded(AssertUnwindSafe(|| match event {
            EventKind::FIT_START => monitor.on_fit_start(&mut ctx),
            EventKind::TRAIN_EPOCH_START => monitor.on_train_epoch_start(&mut ctx),
            EventKind::TRAIN_BATCH_END => monitor.on_train_batch_end(&mut ctx),
            EventKind::VALIDATION_BATCH_END => monitor.on_validation_batch_end(&mut ctx),
            EventKind::VALIDATION_END => monitor.on_validation_end(&mut ctx),
            EventKind::TRAIN_EPOCH_END => monitor.on_train_epoch_end(&mut ctx),
            EventKind::FIT_END => monitor.on_fit_end(&mut ctx),
            EventKind::SAVE_STATE => match monitor.save_state(&mut ctx)? {
                Some(bytes) => ctx.query(query::SAVE_STATE, &bytes).map(drop),
                None => Ok(()),
            },
            EventKind::RESTORE_STATE => {
                let answer = ctx.query(query::SAVED_STATE, &[])?;
                let saved = crate::SavedState::decode(&answer)?;
                monitor.restore_state(saved, &mut ctx)
            }
            other => monitor.on_other_event(other, &mut ctx),
        }))
    }
}

/// Each hook of [`Monitor`], with its event and the event's constant.
const HOOKS: [(EventKind, &str, &str); 7] = [
    (EventKind::FIT_START, "on_fit_start", "FIT_START"),
    (
        EventKind::TRAIN_EPOCH_START,
        "on_train_epoch_start",
        "TRAIN_EPOCH_START",
    ),
    (
        EventKind::TRAIN_BATCH_END,
        "on_train_batch_end",
        "TRAIN_BATCH_END",
    ),
    (
        EventKind::VALIDATION_BATCH_END,
        "on_validation_batch_end",
        "VALIDATION_BATCH_END",
    ),
    (
        EventKind::VALIDATION_END,
        "on_validation_end",
        "VALIDATION_END",
    ),
    (
        EventKind::TRAIN_EPOCH_END,
        "on_train_epoch_end",
        "TRAIN_EPOCH_END",
    ),
    (EventKind::FIT_END, "on_fit_end", "FIT_END"),
];

/// One warning per hook `implemented` overrides whose event `events` leaves out.
pub(crate) fn unlisted_hooks(implemented: EventSet, events: EventSet) -> Vec<String> {
    HOOKS
        .iter()
        .filter(|(kind, _, _)| implemented.contains(*kind) && !events.contains(*kind))
        .map(|(_, hook, constant)| {
            format!(
                "`{hook}` is implemented but `EventKind::{constant}` is not in `MonitorInfo::events`, \
                 so the host never calls it: add the event, or remove the hook"
            )
        })
        .collect()
}

thread_local! {
    /// Where the last panic on this thread happened, recorded by the plugin's panic hook.
    static PANIC_LOCATION: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// Whether this thread is inside [`guarded`] (a call from the host into the monitor).
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Wrap this plugin's panic hook (the plugin has its own copy of std) so that a panic inside a
/// call from the host records its location instead of printing a backtrace over the host's
/// output: the host reports the panic as the monitor's failure, with that location. Other
/// panics (a failing assertion in a unit test beside the monitor) go to the previous hook.
fn install_quiet_panic_hook() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(std::cell::Cell::get) {
                return previous(info);
            }
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
    let outer = GUARDED.with(|flag| flag.replace(true));
    let result = catch_unwind(body);
    GUARDED.with(|flag| flag.set(outer));
    match result {
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

/// The `new_monitor` entry point for monitor type `M`. After building the monitor it warns
/// (through the host, once) about hooks the monitor implements but did not list in its
/// events.
pub extern "C" fn new_monitor_entry<M: Monitor>(
    settings: RStr<'_>,
    host: HostRef<'_>,
) -> RResult<MonitorBox, RString> {
    guarded(AssertUnwindSafe(|| {
        let info = M::info();
        let mut ctx = Context::new(host, None, info.subscriptions);
        let monitor = M::new(settings.as_str(), &mut ctx)?;
        if let Some(implemented) = M::IMPLEMENTED_HOOKS {
            for warning in unlisted_hooks(implemented, info.events) {
                ctx.warn(&warning);
            }
        }
        let adapter = Adapter {
            monitor,
            subscriptions: info.subscriptions,
        };
        Ok(MonitorFfi_TO::from_value(adapter, TD_Opaque))
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
