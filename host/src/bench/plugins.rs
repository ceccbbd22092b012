//! Plugin load time and hook dispatch cost, measured on real plugin libraries.
//!
//! Hook dispatch is measured through the same path training uses: [`PluginHost::dispatch`]
//! with a `train_batch_end` event, a `HostFfi` view, the abi_stable vtable call, the SDK's
//! `catch_unwind` and per-call timing. Results are the median of several repeats.

use std::path::PathBuf;
use std::time::Instant;

use vigil_plugin_api::{EventKind, ProbeSpec, StepCounters};

use super::Measurement;
use crate::config::{MonitorSettings, OnError};
use crate::error::{Error, Result};
use crate::plugin::{
    catalogue, load_library_afresh, EventData, HostServices, PluginHost, PluginSearch, RunFacts,
};

/// The monitor used to measure dispatch: it reads a metric and updates an average per call.
pub const DISPATCH_PLUGIN: &str = "example-loss-ema";

/// Services for a benchmark without a model: any capability call fails.
struct NoModel;

impl HostServices for NoModel {
    fn grad_norms(&self) -> Result<Vec<f64>> {
        Err(Error::Capability(
            "no model in the dispatch benchmark".into(),
        ))
    }
    fn weight_norms(&self) -> Result<Vec<f64>> {
        self.grad_norms()
    }
    fn gradient_into(&self, _: &mut Vec<f32>) -> Result<()> {
        Err(Error::Capability(
            "no model in the dispatch benchmark".into(),
        ))
    }
    fn hessian_vector_product(&self, _: &ProbeSpec, _: &[f32], _: &mut [f32]) -> Result<f64> {
        Err(Error::Capability(
            "no model in the dispatch benchmark".into(),
        ))
    }
    fn probe_loss(&self, _: &ProbeSpec) -> Result<f64> {
        Err(Error::Capability(
            "no model in the dispatch benchmark".into(),
        ))
    }
}

/// Time to open, check and read the info of each plugin in `dirs` (ms), and the cost of one
/// hook call through the ABI (ns), over `calls` calls per repeat.
pub fn plugin_costs(dirs: &[PathBuf], calls: u64, repeats: usize) -> Result<Vec<Measurement>> {
    let found: Vec<(String, PathBuf)> = catalogue(dirs, false, false)
        .into_iter()
        .filter(|row| row.status == "ok")
        .filter_map(|row| Some((row.name?, row.path)))
        .collect();
    let mut results = Vec::new();
    for (name, path) in &found {
        // Everything a run does for one library: open, check owner and permissions, read and
        // hash, read the record, make the sealed copy, map it (always anew), check the layout.
        let mut samples = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let started = Instant::now();
            load_library_afresh(path, false)?;
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        results.push(Measurement::of(&format!("load {name}"), "ms", samples));
    }

    let Some((_, dispatch_path)) = found.iter().find(|(name, _)| name == DISPATCH_PLUGIN) else {
        return Err(Error::Plugins {
            problems: vec![format!(
                "the dispatch benchmark needs the `{DISPATCH_PLUGIN}` plugin; build it with `cargo build --release --workspace`"
            )],
        });
    };
    // The no-output path (the monitor updates its average and logs nothing) and the
    // logging path (it logs two values every call, which the host routes to its sinks).
    for (label, every) in [("no output", u64::MAX), ("logs 2 values", 1)] {
        results.push(dispatch_cost(dispatch_path, label, every, calls, repeats)?);
    }
    Ok(results)
}

/// ns per `train_batch_end` dispatch to [`DISPATCH_PLUGIN`] with `log_every_n_steps = every`.
fn dispatch_cost(
    path: &std::path::Path,
    label: &str,
    every: u64,
    calls: u64,
    repeats: usize,
) -> Result<Measurement> {
    let spec = MonitorSettings {
        name: DISPATCH_PLUGIN.into(),
        enabled: true,
        on_error: OnError::Disable,
        path: Some(path.to_path_buf()),
        sha256: None,
        hook_budget: None,
        hook_budget_strikes: 3,
        settings_toml: format!("log_every_n_steps = {every}\n"),
    };
    let services = NoModel;
    let counters = StepCounters {
        global_step: 1,
        epoch: 1,
        total_epochs: 1,
        batches_per_epoch: 1,
        batch_size: 1,
        ..StepCounters::default()
    };
    let mut host = PluginHost::load(
        &[spec],
        &PluginSearch {
            dirs: &[],
            allow_insecure: false,
            report_dir: None,
        },
        RunFacts::default(),
        &services,
        counters,
    )?;
    let metrics = [("train_loss", 0.5), ("lr", 0.1)];
    let event = EventData::new(EventKind::TRAIN_BATCH_END, counters, &metrics);
    let mut scalars = Vec::new();
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..=repeats {
        let started = Instant::now();
        for _ in 0..calls {
            host.dispatch(&event, &services, &mut scalars)?;
            // The trainer hands each step's scalars to the sinks and starts empty again.
            scalars.clear();
        }
        samples.push(started.elapsed().as_secs_f64() * 1e9 / calls as f64);
    }
    samples.remove(0); // warm-up
    Ok(Measurement::of(
        &format!("hook dispatch (train_batch_end, 1 monitor, {label})"),
        "ns/call",
        samples,
    ))
}
