//! Test fixture for the host's fault isolation: a monitor that does what its settings say
//! at a chosen event and step, and otherwise exercises the host's capabilities.

use serde::Deserialize;
use vigil_plugin_api::{
    export_monitor, parse_settings, ArtifactKind, Context, Error, EventKind, EventSet, Monitor,
    MonitorInfo, ProbeSpec, Subscriptions,
};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// "none", "panic", "error", "nan" or "stop".
    fault: String,
    /// The event to misbehave in: "fit_start", "train_batch_end", "validation_end", …
    event: String,
    /// The global step from which to misbehave (at `train_batch_end`).
    at_step: u64,
    /// Fail in `new` instead.
    fail_in_new: bool,
    /// Compute a Hessian-vector product at fit start and log it.
    probe_hvp: bool,
    /// Sleep this long in every `train_batch_end` (to exceed a time budget).
    sleep_ms: u64,
    /// From this global step on, make every later checkpoint write fail by putting a file
    /// where the checkpoint's temporary directory must go (works even as root).
    block_checkpoints_from_step: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            fault: "none".into(),
            event: "train_batch_end".into(),
            at_step: 0,
            fail_in_new: false,
            probe_hvp: false,
            sleep_ms: 0,
            block_checkpoints_from_step: None,
        }
    }
}

pub struct FaultInjector {
    settings: Settings,
    calls: u64,
}

impl FaultInjector {
    fn maybe_fail(&mut self, event: &str, ctx: &mut Context<'_>) -> Result<(), Error> {
        self.calls += 1;
        let step = ctx.counters().global_step;
        ctx.log("fault_injector/calls", self.calls as f64);
        if event != self.settings.event || step < self.settings.at_step {
            return Ok(());
        }
        match self.settings.fault.as_str() {
            "panic" => panic!("injected panic in {event} at step {step}"),
            "error" => Err(Error::Monitor(format!(
                "injected error in {event} at step {step}"
            ))),
            "nan" => {
                ctx.log("fault_injector/bad", f64::NAN);
                ctx.log("fault_injector/bad", f64::INFINITY);
                Ok(())
            }
            // A stop request is made once, at `at_step`: a run resumed after it goes on.
            "stop" if step == self.settings.at_step => {
                ctx.request_stop("injected stop request");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[vigil_plugin_api::monitor]
impl Monitor for FaultInjector {
    const INFO: MonitorInfo = MonitorInfo {
        name: "fault-injector",
        version: env!("CARGO_PKG_VERSION"),
        description: "test fixture: fails, panics or stops on command",
        events: EventSet::of(&EventKind::ALL),
        subscriptions: Subscriptions::NONE,
    };

    fn new(settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        let settings: Settings = parse_settings(settings)?;
        if settings.fail_in_new {
            return Err(Error::Settings("fail_in_new is set".into()));
        }
        Ok(FaultInjector { settings, calls: 0 })
    }

    fn on_fit_start(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let scalars: u64 = ctx.parameters().iter().map(|p| p.numel).sum();
        ctx.log("fault_injector/parameters", scalars as f64);
        ctx.log("fault_injector/classes", ctx.class_names().len() as f64);
        if self.settings.probe_hvp {
            let probe = ProbeSpec {
                samples: 16,
                max_batch_size: 8,
                seed: 1,
            };
            let ones = vec![1.0f32; scalars as usize];
            let mut product = vec![0.0f32; scalars as usize];
            let loss = ctx.hessian_vector_product(probe, &ones, &mut product)?;
            ctx.log("fault_injector/probe_loss", loss);
            ctx.log(
                "fault_injector/hvp_dot",
                product.iter().map(|&v| f64::from(v)).sum(),
            );
        }
        ctx.write_file("fault_injector/hello.txt", ArtifactKind::TEXT, b"hello\n")
            .err()
            .map_or(Ok::<(), Error>(()), |err| {
                // Before the run directory exists this is refused; that is expected here.
                ctx.info(&format!("artifact at fit start: {err}"));
                Ok(())
            })?;
        self.maybe_fail("fit_start", ctx)
    }

    fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        if self.settings.sleep_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(self.settings.sleep_ms));
        }
        let step = ctx.counters().global_step;
        if self.settings.block_checkpoints_from_step == Some(step) {
            let artifacts =
                String::from_utf8(ctx.query("vigil.artifact_dir", &[])?).unwrap_or_default();
            let checkpoints = std::path::Path::new(&artifacts).with_file_name("checkpoints");
            for later in step..step + 2_000 {
                let _ = std::fs::write(
                    checkpoints.join(format!(".tmp-step_{later:09}")),
                    b"blocked",
                );
            }
        }
        let norms: f64 = ctx.grad_norms()?.iter().sum();
        ctx.log("fault_injector/grad_norm_sum", norms);
        self.maybe_fail("train_batch_end", ctx)
    }

    fn on_validation_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        self.maybe_fail("validation_end", ctx)
    }

    fn on_train_epoch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        self.maybe_fail("train_epoch_end", ctx)
    }

    fn on_fit_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        ctx.write_file(
            "fault_injector/fit_end.txt",
            ArtifactKind::TEXT,
            format!("calls {}\n", self.calls).as_bytes(),
        )?;
        self.maybe_fail("fit_end", ctx)
    }
}

export_monitor!(FaultInjector);
