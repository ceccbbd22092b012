//! The `vigil` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Train classifiers with libtorch; monitors are shared-library plugins.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train the model a config file describes.
    Train {
        /// The experiment config (TOML), e.g. configs/quickstart.toml.
        config: PathBuf,
    },
    /// List the plugins in the plugin directories, checked as `train` would load them.
    Plugins {
        /// A directory to scan (repeatable). Default: <exe dir>/plugins, <exe dir>, ./plugins.
        #[arg(long = "dir", value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
    /// Measure plugin load time and hook dispatch cost through the ABI (use a release build).
    Bench {
        /// A directory with plugins (repeatable). Default: as for `plugins`.
        #[arg(long = "dir", value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// Hook calls per repeat.
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
        /// Repeats; the table shows their median, min and max.
        #[arg(long, default_value_t = 7)]
        repeats: usize,
        /// Also write the results as JSON here.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut message = err.to_string();
            for cause in err.chain().skip(1) {
                message.push_str(": ");
                message.push_str(&cause.to_string());
            }
            eprintln!("error: {message}");
            ExitCode::from(exit_code(&err))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train { config } => {
            let outcome = vigil::train::train_from_file(&config)?;
            if let Some(last) = outcome.summary.last() {
                println!(
                    "done: {} epochs in {:.1} s; test_acc {:.4}, test_loss {:.4}; results in {}",
                    outcome.summary.epochs.len(),
                    outcome.summary.seconds,
                    last.test.accuracy,
                    last.test.loss,
                    outcome.run_dir.display()
                );
            }
            Ok(())
        }
        Command::Bench {
            dirs,
            calls,
            repeats,
            json,
        } => {
            let dirs = if dirs.is_empty() {
                vigil::plugin::default_plugin_dirs()
            } else {
                dirs
            };
            let results = vigil::bench::plugin_costs(&dirs, calls.max(1), repeats.max(1))?;
            print!("{}", vigil::bench::table(&results));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&results)?)
                    .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
            }
            Ok(())
        }
        Command::Plugins { dirs } => {
            let dirs = if dirs.is_empty() {
                vigil::plugin::default_plugin_dirs()
            } else {
                dirs
            };
            print!("{}", vigil::plugin::listing(&dirs));
            Ok(())
        }
    }
}

/// 2 for bad input (config, plugins, data), 3 for a monitor with `on_error = "abort"` that
/// failed, 1 for everything else.
fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<vigil::Error>() {
        Some(
            vigil::Error::Config { .. }
            | vigil::Error::Plugins { .. }
            | vigil::Error::DataMissing { .. }
            | vigil::Error::DataCorrupt { .. },
        ) => 2,
        Some(vigil::Error::MonitorFailed { .. }) => 3,
        _ => 1,
    }
}
