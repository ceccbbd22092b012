//! The run's MLflow link ([`crate::mlflow`]): opened with the run directory, a sink of the
//! hub's like the others, its outbox marked at every checkpoint, finished around `run.json`.

use super::RunHub;
use crate::config::Settings;
use crate::error::Result;
use crate::mlflow::{MlflowLink, MlflowReport, RunFacts};
use crate::sink::Background;

impl RunHub {
    /// With `[mlflow]`, open the run's outbox (a resumed run's cut back to its checkpoint's
    /// `(mark, step)`) and start sending. Needs [`RunHub::open_run_dir`].
    pub fn open_mlflow(
        &mut self,
        settings: &Settings,
        facts: &RunFacts,
        resume: Option<(Option<u64>, u64)>,
    ) -> Result<()> {
        let (Some(mlflow), Some(layout)) = (&settings.mlflow, &self.layout) else {
            return Ok(());
        };
        let (link, recorder) = MlflowLink::open(settings, mlflow, layout, resume, facts)?;
        self.sinks
            .push(Box::new(Background::spawn("mlflow", Box::new(recorder))));
        self.mlflow = Some(link);
        Ok(())
    }

    /// Before `run.json`: queue the run's files, send within a bounded time, and say what is
    /// left unsent (`None` without `[mlflow]`).
    pub fn mlflow_before_run_json(&mut self) -> Option<MlflowReport> {
        self.mlflow.as_mut().map(MlflowLink::finish_before_run_json)
    }

    /// After `run.json`: upload it and set the final status (`FINISHED`, `FAILED`, `KILLED`).
    pub fn mlflow_after_run_json(&mut self, status: &str) {
        if let Some(link) = &mut self.mlflow {
            link.finish_after_run_json(status);
        }
    }

    /// Warnings of the MLflow link so far.
    pub fn take_mlflow_warnings(&mut self) -> Vec<String> {
        self.mlflow
            .as_mut()
            .map(MlflowLink::take_warnings)
            .unwrap_or_default()
    }
}
