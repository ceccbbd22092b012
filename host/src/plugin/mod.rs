//! Monitor plugins: find, check, load, build, dispatch, time, isolate.
//!
//! A plugin is a shared library built with `vigil-plugin-api`. The host finds the library of
//! each enabled monitor by the identity record in its file (nothing of the other libraries
//! runs), checks who could change it and its `sha256` pin, loads exactly the bytes it hashed,
//! checks its ABI layout, builds the monitors a config lists, calls them in config order at
//! the events they subscribed to, times every call, and turns a failing or panicking monitor
//! into a disabled one (or a stopped run, if the config says `on_error = "abort"`). Libraries
//! are never unloaded; every monitor sees `fit_end` before the host drops it.

mod artifacts;
mod clock;
pub mod dirs;
mod elf;
mod host_view;
pub mod library;
mod monitor_state;
mod per_sample_query;
mod report;
mod resolve;
mod services;
pub mod trust;

use std::path::PathBuf;
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, RStr};
use vigil_plugin_api::abi::{HostFfi_TO, MonitorBox};
use vigil_plugin_api::{EventKind, EventSet, LogLevel, StepCounters, Subscriptions};

pub use artifacts::ArtifactWriter;
pub use dirs::{default_plugin_dirs, search_dirs, user_plugin_dir};
pub use elf::Inspection;
pub use host_view::{EventData, MetricNames, Outputs, RunFacts, Scalar};
pub use library::{LibraryInfo, LoadFailure, PluginLibrary};
pub use monitor_state::MonitorSnapshot;
pub use resolve::{catalogue, listing, resolve, Listed, PluginSearch};
pub use services::HostServices;

use crate::config::{MonitorSettings, OnError};
use crate::error::{Error, Result};
use clock::HookClock;
use host_view::HostView;

/// Calls and time spent in one hook of one monitor, in [`HookClock`] ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct HookTiming {
    calls: u64,
    ticks: u64,
    max_ticks: u64,
}

impl HookTiming {
    #[inline]
    fn add(&mut self, ticks: u64) {
        self.calls += 1;
        self.ticks += ticks;
        self.max_ticks = self.max_ticks.max(ticks);
    }
}

/// Why a monitor stopped being called.
#[derive(Debug, Clone, PartialEq)]
pub struct Disabled {
    pub event: &'static str,
    pub global_step: u64,
    pub reason: String,
}

struct ActiveMonitor {
    name: String,
    library: PluginLibrary,
    /// `None` once the run is over and the monitor has been dropped.
    handle: Option<MonitorBox>,
    events: EventSet,
    on_error: OnError,
    disabled: Option<Disabled>,
    timings: [HookTiming; EventKind::ALL.len()],
    dropped_non_finite: u64,
    /// A call longer than this is a strike; `strike_limit` strikes disable the monitor.
    budget: Option<Duration>,
    /// The budget in clock ticks.
    budget_ticks: u64,
    strike_limit: u32,
    strikes: u32,
    /// How the monitor came back on resume, for `run.json`.
    resumed: Option<String>,
}

impl ActiveMonitor {
    /// Whether the plugin takes part in saving state (built against API 1.1 or later).
    fn saves_state(&self) -> bool {
        self.events.contains(EventKind::SAVE_STATE)
            && self.events.contains(EventKind::RESTORE_STATE)
    }
}

/// The monitors of one run.
pub struct PluginHost {
    monitors: Vec<ActiveMonitor>,
    facts: RunFacts,
    artifacts: ArtifactWriter,
    outputs: Outputs,
    warnings: Vec<String>,
    /// Union of the enabled monitors' events and subscriptions.
    events: EventSet,
    subscriptions: Subscriptions,
    /// Times hook calls.
    clock: HookClock,
    /// The flattened gradient's allocation, reused from event to event.
    gradient_buffer: Vec<f32>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("monitors", &self.facts.monitor_names)
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// A host with no monitors.
    pub fn empty() -> Self {
        PluginHost {
            monitors: Vec::new(),
            facts: RunFacts::default(),
            artifacts: ArtifactWriter::default(),
            outputs: Outputs::default(),
            warnings: Vec::new(),
            events: EventSet::EMPTY,
            subscriptions: Subscriptions::NONE,
            clock: HookClock::new(),
            gradient_buffer: Vec::new(),
        }
    }

    /// Find, check and build the enabled monitors `specs` lists, in order. Every problem is
    /// collected and reported at once.
    pub fn load(
        specs: &[MonitorSettings],
        search: &PluginSearch<'_>,
        facts: RunFacts,
        services: &dyn HostServices,
        counters: StepCounters,
    ) -> Result<Self> {
        let mut host = PluginHost {
            facts,
            ..PluginHost::empty()
        };
        let enabled: Vec<&MonitorSettings> = specs.iter().filter(|spec| spec.enabled).collect();
        if enabled.is_empty() {
            return Ok(host);
        }
        let (libraries, warnings) = resolve(&enabled, search)?;
        host.warnings = warnings;
        let mut problems = Vec::new();

        host.facts.monitor_names = enabled.iter().map(|spec| spec.name.clone()).collect();
        let event = EventData::new(EventKind::FIT_START, counters, &[]);
        for (index, (spec, library)) in enabled.iter().zip(libraries).enumerate() {
            let mut view = HostView::new(
                &event,
                services,
                &host.facts,
                &host.artifacts,
                &mut host.outputs,
            );
            view.monitor = index;
            let settings = RStr::from_str(&spec.settings_toml);
            let built = (library.module.new_monitor())(
                settings,
                HostFfi_TO::from_ptr(&mut view, TD_Opaque),
            );
            if view.used_probe {
                services.release_probe_state();
            }
            match built.into_result() {
                Ok(handle) => {
                    host.monitors.push(ActiveMonitor {
                        name: spec.name.clone(),
                        events: library.info.events,
                        library,
                        handle: Some(handle),
                        on_error: spec.on_error,
                        disabled: None,
                        timings: Default::default(),
                        dropped_non_finite: 0,
                        budget: spec.hook_budget,
                        budget_ticks: spec
                            .hook_budget
                            .map_or(u64::MAX, |budget| host.clock.ticks(budget)),
                        strike_limit: spec.hook_budget_strikes,
                        strikes: 0,
                        resumed: None,
                    });
                }
                Err(reason) => problems.push(format!(
                    "{}: monitor `{}` could not be built: {reason}",
                    library.path.display(),
                    spec.name
                )),
            }
        }
        if !problems.is_empty() {
            return Err(Error::Plugins { problems });
        }
        host.refresh_interest();
        host.route_outputs(&mut Vec::new());
        Ok(host)
    }

    /// One line per monitor, in config order: name, version, the file it was loaded from and
    /// how it was found, sha256, events and subscribed data (what `vigil check` prints).
    pub fn describe(&self) -> Vec<String> {
        self.monitors
            .iter()
            .map(|monitor| {
                let library = &monitor.library;
                let events: Vec<&str> = EventKind::ALL
                    .iter()
                    .filter(|kind| monitor.events.contains(**kind))
                    .map(|kind| kind.name())
                    .collect();
                let subscriptions: Vec<&str> = [
                    (Subscriptions::GRADIENT, "gradient"),
                    (Subscriptions::VALIDATION_OUTPUTS, "validation_outputs"),
                    (Subscriptions::SAMPLE_IMAGES, "sample_images"),
                    (Subscriptions::SAMPLER, "sampler"),
                    (Subscriptions::PER_SAMPLE, "per_sample"),
                    (Subscriptions::PARAMETER_MOTION, "parameter_motion"),
                ]
                .into_iter()
                .filter(|(bit, _)| library.info.subscriptions.contains(*bit))
                .map(|(_, name)| name)
                .collect();
                format!(
                    "{} {}: {}{}\n      sha256 {}\n      events: {}\n      data: {}",
                    monitor.name,
                    library.info.version,
                    library.path.display(),
                    if library.identity.is_some() {
                        ""
                    } else {
                        " (legacy: no identity record, found by file name)"
                    },
                    library.sha256,
                    events.join(", "),
                    if subscriptions.is_empty() {
                        "none".to_string()
                    } else {
                        subscriptions.join(", ")
                    }
                )
            })
            .collect()
    }

    /// Where artifacts go, once the run directory exists.
    pub fn set_artifact_dir(&mut self, dir: PathBuf) {
        self.artifacts = ArtifactWriter::new(Some(dir));
    }

    /// The artifacts monitors append to, with their lengths (fsynced), for a checkpoint.
    pub fn appended_artifacts(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        self.artifacts.appended_lengths()
    }

    /// On resume: cut each appended artifact back to its length at the checkpoint; an
    /// artifact first appended after the checkpoint starts again from empty.
    pub fn restore_appended_artifacts(
        &mut self,
        lengths: &std::collections::BTreeMap<String, u64>,
    ) -> Result<()> {
        self.artifacts.restore_appended(lengths)
    }

    /// Whether any enabled monitor wants `kind`; the trainer skips preparing events nobody
    /// wants.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(kind)
    }

    /// Whether any enabled monitor subscribed to `data`.
    pub fn subscribes(&self, data: Subscriptions) -> bool {
        self.subscriptions.contains(data)
    }

    /// The enabled monitors that subscribed to `data`, by name.
    pub fn subscribers(&self, data: Subscriptions) -> Vec<String> {
        self.monitors
            .iter()
            .filter(|m| m.disabled.is_none() && m.handle.is_some())
            .filter(|m| m.library.info.subscriptions.contains(data))
            .map(|m| m.name.clone())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.monitors.is_empty()
    }

    /// A scalar's monitor and metric names.
    pub fn scalar_names(&self, (monitor, metric, _): Scalar) -> (&str, &str) {
        (
            self.facts
                .monitor_names
                .get(monitor)
                .map_or("", String::as_str),
            self.outputs.metric_names.name(metric),
        )
    }

    /// Scalars with their names (monitor, metric, value).
    pub fn named(&self, scalars: &[Scalar]) -> Vec<(String, String, f64)> {
        scalars
            .iter()
            .map(|&scalar| {
                let (monitor, metric) = self.scalar_names(scalar);
                (monitor.to_string(), metric.to_string(), scalar.2)
            })
            .collect()
    }

    /// Call every enabled monitor that wants `event.kind`, in config order. Scalars they log
    /// are appended to `scalars` as (monitor index, metric id, value); [`Self::scalar_names`]
    /// names them. Returns an error only when a monitor with `on_error = "abort"` failed.
    pub fn dispatch(
        &mut self,
        event: &EventData<'_>,
        services: &dyn HostServices,
        scalars: &mut Vec<Scalar>,
    ) -> Result<()> {
        self.dispatch_where(event, services, scalars, |_| true)
    }

    /// [`PluginHost::dispatch`] to the monitors (by index) `chosen` accepts.
    fn dispatch_where(
        &mut self,
        event: &EventData<'_>,
        services: &dyn HostServices,
        scalars: &mut Vec<Scalar>,
        chosen: impl Fn(usize) -> bool,
    ) -> Result<()> {
        if !self.events.contains(event.kind) {
            return Ok(());
        }
        let hook = hook_index(event.kind);
        let mut failures = Vec::new();
        let mut slow = Vec::new();
        let lazy_errors = {
            let mut view = HostView::new(
                event,
                services,
                &self.facts,
                &self.artifacts,
                &mut self.outputs,
            );
            // Only a train-batch event with a gradient subscriber can fill the buffer.
            let lend_gradient = event.kind == EventKind::TRAIN_BATCH_END
                && self.subscriptions.contains(Subscriptions::GRADIENT);
            if lend_gradient {
                view.gradient_buffer
                    .set(std::mem::take(&mut self.gradient_buffer));
            }
            for (index, monitor) in self.monitors.iter_mut().enumerate() {
                let Some(handle) = monitor.handle.as_mut() else {
                    continue;
                };
                if monitor.disabled.is_some()
                    || !monitor.events.contains(event.kind)
                    || !chosen(index)
                {
                    continue;
                }
                view.monitor = index;
                let started = self.clock.now();
                let result =
                    handle.on_event(event.kind, HostFfi_TO::from_ptr(&mut view, TD_Opaque));
                let ticks = self.clock.now().saturating_sub(started);
                if view.used_probe {
                    view.used_probe = false;
                    services.release_probe_state();
                }
                if let Some(timing) = hook.and_then(|hook| monitor.timings.get_mut(hook)) {
                    timing.add(ticks);
                }
                if let RErr(reason) = result {
                    failures.push((index, reason.into_string()));
                } else if ticks > monitor.budget_ticks {
                    let budget = monitor.budget.unwrap_or_default();
                    let elapsed = self.clock.duration(ticks);
                    monitor.strikes += 1;
                    let took = format!(
                        "took {:.1} ms in {} (budget {:.1} ms)",
                        elapsed.as_secs_f64() * 1e3,
                        event.kind.name(),
                        budget.as_secs_f64() * 1e3
                    );
                    if monitor.strikes >= monitor.strike_limit {
                        failures.push((
                            index,
                            format!(
                                "over its time budget {} times; last {took}",
                                monitor.strikes
                            ),
                        ));
                    } else {
                        slow.push(format!(
                            "monitor `{}` {took}: strike {} of {}",
                            monitor.name, monitor.strikes, monitor.strike_limit
                        ));
                    }
                }
            }
            if lend_gradient {
                self.gradient_buffer = view.take_gradient_buffer();
            }
            view.errors.take()
        };
        for error in lazy_errors {
            self.warn(format!("{}: {error}", event.kind.name()));
        }
        for message in slow {
            self.warn(message);
        }
        let mut abort = None;
        let any_failed = !failures.is_empty();
        for (index, reason) in failures {
            let monitor = &mut self.monitors[index];
            let step = event.counters.global_step;
            match monitor.on_error {
                OnError::Disable => {
                    let message = format!(
                        "monitor `{}` disabled: failed in {} at step {step}: {reason}",
                        monitor.name,
                        event.kind.name()
                    );
                    monitor.disabled = Some(Disabled {
                        event: event.kind.name(),
                        global_step: step,
                        reason,
                    });
                    self.warn(message);
                }
                OnError::Abort => {
                    monitor.disabled = Some(Disabled {
                        event: event.kind.name(),
                        global_step: step,
                        reason: reason.clone(),
                    });
                    abort.get_or_insert(Error::MonitorFailed {
                        monitor: monitor.name.clone(),
                        event: event.kind.name(),
                        step,
                        reason,
                    });
                }
            }
        }
        if any_failed {
            self.refresh_interest();
        }
        self.route_outputs(scalars);
        abort.map_or(Ok(()), Err)
    }

    /// A monitor asked to stop the run: (monitor, reason).
    pub fn take_stop_request(&mut self) -> Option<(String, String)> {
        self.outputs
            .stop_request
            .take()
            .map(|(index, reason)| (self.facts.monitor_names[index].clone(), reason))
    }

    /// Histograms monitors logged since the last call: (monitor, histogram).
    pub fn take_histograms(
        &mut self,
    ) -> Vec<(String, vigil_plugin_api::per_sample::HistogramRecord)> {
        let names = &self.facts.monitor_names;
        self.outputs
            .histograms
            .drain(..)
            .map(|(index, record)| (names[index].clone(), record))
            .collect()
    }

    /// The enabled monitors that subscribed to `data`, by index (the index hooks see).
    pub fn subscriber_indices(&self, data: Subscriptions) -> Vec<usize> {
        self.monitors
            .iter()
            .enumerate()
            .filter(|(_, m)| m.disabled.is_none() && m.handle.is_some())
            .filter(|(_, m)| m.library.info.subscriptions.contains(data))
            .map(|(index, _)| index)
            .collect()
    }

    /// Artifacts written since the last call: (monitor, file, kind).
    pub fn take_artifacts(&mut self) -> Vec<(String, PathBuf, vigil_plugin_api::ArtifactKind)> {
        let names = &self.facts.monitor_names;
        self.outputs
            .artifacts
            .drain(..)
            .map(|(index, path, kind)| (names[index].clone(), path, kind))
            .collect()
    }

    /// Send `fit_end` to every enabled monitor that wants it, then drop all monitors (their
    /// libraries stay loaded).
    pub fn finish(
        &mut self,
        event: &EventData<'_>,
        services: &dyn HostServices,
        scalars: &mut Vec<Scalar>,
    ) -> Result<()> {
        let result = self.dispatch(event, services, scalars);
        for monitor in &mut self.monitors {
            monitor.handle = None;
        }
        self.events = EventSet::EMPTY;
        self.subscriptions = Subscriptions::NONE;
        result
    }

    /// How many monitors have been disabled so far.
    pub fn disabled_count(&self) -> usize {
        self.monitors
            .iter()
            .filter(|m| m.disabled.is_some())
            .count()
    }

    /// Warnings so far (skipped files, disabled monitors, dropped values, monitor warnings).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Seconds spent inside the monitors' hooks so far, all monitors and events together.
    pub fn hook_seconds(&self) -> f64 {
        self.monitors
            .iter()
            .flat_map(|monitor| &monitor.timings)
            .map(|timing| self.clock.duration(timing.ticks).as_secs_f64())
            .sum()
    }

    fn warn(&mut self, message: String) {
        tracing::warn!("{message}");
        self.warnings.push(message);
    }

    fn refresh_interest(&mut self) {
        let enabled = self
            .monitors
            .iter()
            .filter(|m| m.disabled.is_none() && m.handle.is_some());
        let (events, subscriptions) =
            enabled.fold((0u64, Subscriptions::NONE), |(events, subs), m| {
                (
                    events | m.events.0,
                    subs.union(m.library.info.subscriptions),
                )
            });
        self.events = EventSet(events);
        self.subscriptions = subscriptions;
    }

    /// Move what monitors produced to the caller (scalars), the console (messages) and the
    /// warning list.
    fn route_outputs(&mut self, scalars: &mut Vec<Scalar>) {
        let outputs = &self.outputs;
        if outputs.scalars.is_empty()
            && outputs.messages.is_empty()
            && outputs.dropped_non_finite.is_empty()
        {
            return;
        }
        let names = &self.facts.monitor_names;
        scalars.append(&mut self.outputs.scalars);
        let mut warnings = Vec::new();
        for (index, level, message) in self.outputs.messages.drain(..) {
            let name = &names[index];
            match level {
                LogLevel::WARN => warnings.push(format!("[{name}] {message}")),
                LogLevel::DEBUG => tracing::debug!("[{name}] {message}"),
                _ => tracing::info!("[{name}] {message}"),
            }
        }
        for (index, metric, value) in self.outputs.dropped_non_finite.drain(..) {
            let monitor = &mut self.monitors[index];
            monitor.dropped_non_finite += 1;
            if monitor.dropped_non_finite == 1 {
                warnings.push(format!(
                    "[{}] dropped non-finite metric `{metric}` = {value} (further ones are only counted)",
                    monitor.name
                ));
            }
        }
        for warning in warnings {
            self.warn(warning);
        }
    }
}

/// Everything a run does to load one plugin library, with a fresh mapping each time: open it,
/// check its owner and permissions, read and hash it, read its identity record, make the
/// sealed copy, map it and check its ABI layout. What `vigil bench` times as a plugin's load
/// cost; the library stays mapped (libraries are never unloaded).
pub fn load_library_afresh(path: &std::path::Path, allow_insecure: bool) -> Result<LibraryInfo> {
    let failed = |reason: String| Error::Plugins {
        problems: vec![format!("{}: {reason}", path.display())],
    };
    let checked = trust::OpenFile::open(path, allow_insecure)
        .map_err(failed)?
        .read()
        .map_err(|(reason, _)| failed(reason))?;
    library::load_fresh(&checked, None)
        .map(|(_, info)| info)
        .map_err(|failure| Error::Plugins {
            problems: vec![failure.to_string()],
        })
}

fn hook_index(kind: EventKind) -> Option<usize> {
    EventKind::ALL.iter().position(|&known| known == kind)
}
