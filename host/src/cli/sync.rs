//! `vigil sync`: send what runs trained with `[mlflow]` left unsent.

use std::path::PathBuf;

use super::RunEnd;

/// Send the unsent part of each run's MLflow outbox to its tracking server.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// Run directories (each trained with [mlflow]).
    #[arg(required = true, value_name = "RUN_DIR")]
    run_dirs: Vec<PathBuf>,
}

/// Sync each run in turn; the first that fails ends the command with its error, after the
/// ones before it were synced.
pub fn run(args: SyncArgs) -> anyhow::Result<RunEnd> {
    for run_dir in &args.run_dirs {
        let synced = vigil::mlflow::sync(run_dir)?;
        let report = &synced.report;
        if synced.operations == 0 {
            println!(
                "{}: nothing to send (MLflow run {})",
                run_dir.display(),
                report.run_id.as_deref().unwrap_or("not created")
            );
        } else {
            println!(
                "{}: sent {} operations ({} metric points, {} files) to MLflow run {} at {}",
                run_dir.display(),
                synced.operations,
                synced.points,
                synced.artifacts,
                report.run_id.as_deref().unwrap_or("?"),
                report.tracking_uri
            );
        }
    }
    Ok(RunEnd::Done)
}
