//! `vigil sync RUN_DIR`: send what a run left in its outbox, exactly once.

use std::path::{Path, PathBuf};

use super::outbox::{Files, Op, Pump, Pumped};
use super::{report, MlflowReport, DIR};
use crate::error::{Error, Result};
use crate::run_dir::{RunLayout, RUN_FILE};

/// What `vigil sync` did for one run directory.
#[derive(Debug, Clone)]
pub struct Synced {
    pub run_dir: PathBuf,
    pub points: u64,
    pub artifacts: u64,
    pub operations: u64,
    pub report: MlflowReport,
}

/// `vigil sync RUN_DIR`: send what the run left unsent. Exactly once: the offset in
/// `mlflow/state.json` moves past each batch the server took, so a second sync sends nothing.
/// A run being trained (its lock held) is refused.
pub fn sync(run_dir: &Path) -> Result<Synced> {
    let files = Files {
        run_dir: run_dir.to_path_buf(),
    };
    let state = files.read_state().ok_or_else(|| Error::Usage {
        command: "vigil sync",
        message: format!(
            "{} has no {DIR}/state.json: it was not trained with [mlflow] (or is not a run directory)",
            run_dir.display()
        ),
    })?;
    let layout = RunLayout::new(run_dir);
    if crate::fs::is_locked(&layout.lock()) {
        return Err(crate::run_dir::busy(run_dir));
    }
    let _lock = crate::run_dir::lock_run_dir(run_dir)?;
    let before = (state.points_sent, state.artifacts_sent);
    let mut pump = Pump::new(files.clone(), state);
    let operations_before = pump.unsent().operations;
    let pumped = pump.pump()?;
    for warning in &pump.warnings {
        tracing::warn!("{warning}");
    }
    if let Pumped::Unreachable(why) = pumped {
        return Err(Error::Sink {
            sink: "mlflow",
            reason: format!(
                "{} could not be reached ({why}); {} operations of {} stay unsent: run `vigil sync` again",
                pump.state.tracking_uri,
                pump.unsent().operations,
                run_dir.display()
            ),
        });
    }
    let mut unsent = pump.unsent();
    let mut report = report(&pump.state.tracking_uri, &pump.state, unsent);
    let operations = operations_before - unsent.operations;
    if operations > 0 {
        // run.json said what was unsent; now nothing is: say so, and upload it again.
        if let Some(mut info) = crate::run_dir::read_run_info(run_dir) {
            info.mlflow = Some(report.clone());
            let text = serde_json::to_vec_pretty(&info).map_err(|source| Error::Json {
                what: "run summary".into(),
                source,
            })?;
            crate::fs::write_atomically(&layout.run_info(), &text)?;
            let upload = Op::Artifact {
                file: RUN_FILE.into(),
                path: RUN_FILE.into(),
            };
            files.append(&[upload])?;
            if let Pumped::Unreachable(why) = pump.pump()? {
                tracing::warn!(
                    "run.json could not be uploaded again ({why}); run `vigil sync` again"
                );
            }
            unsent = pump.unsent();
            report = self::report(&pump.state.tracking_uri, &pump.state, unsent);
        }
    }
    Ok(Synced {
        run_dir: run_dir.to_path_buf(),
        points: pump.state.points_sent - before.0,
        artifacts: pump.state.artifacts_sent - before.1,
        operations,
        report,
    })
}
