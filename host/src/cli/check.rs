//! `vigil check`: validate a config, its data, model and monitors without training.

use std::path::PathBuf;

use super::RunEnd;

/// Validate a config, its dataset, its model and its monitors without training: each enabled
/// monitor's library is found, checked, loaded and the monitor built with its settings (no
/// hook runs); prints the plan.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    config: PathBuf,
    /// Override a config value, e.g. --set optim.lr=0.1 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// Print the plan of a valid config.
pub fn run(args: CheckArgs) -> anyhow::Result<RunEnd> {
    print!(
        "{}",
        vigil::train::check_config(&args.config, &args.overrides)?
    );
    Ok(RunEnd::Done)
}
