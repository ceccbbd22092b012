//! `vigil compare`: runs side by side in the terminal.

use std::path::PathBuf;

use super::RunEnd;

/// How the comparison is printed.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
    Md,
}

/// Compare runs: the config keys that differ, then best and final metrics, steps, time and
/// speed, each with its difference to the first run.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Run directories, or study directories (each stands for its runs).
    #[arg(required = true, value_name = "RUN_DIR")]
    dirs: Vec<PathBuf>,
    /// Show every config key, not only those that differ.
    #[arg(long)]
    all: bool,
    /// Print JSON (the same content as the table).
    #[arg(long, conflicts_with = "md")]
    json: bool,
    /// Print a Markdown table.
    #[arg(long)]
    md: bool,
}

pub fn run(args: CompareArgs) -> anyhow::Result<RunEnd> {
    let format = match (args.json, args.md) {
        (true, _) => Format::Json,
        (_, true) => Format::Md,
        _ => Format::Text,
    };
    let dirs = vigil::compare::run_dirs(&args.dirs)?;
    if dirs.is_empty() {
        anyhow::bail!(vigil::Error::Usage {
            command: "compare",
            message: "no runs to compare: the study directories given have no run directories yet"
                .into()
        });
    }
    let comparison = vigil::compare::compare(&dirs, args.all)?;
    match format {
        Format::Text => print!("{}", vigil::compare::text(&comparison)),
        Format::Md => print!("{}", vigil::compare::markdown(&comparison)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&comparison)?),
    }
    Ok(RunEnd::Done)
}
