//! The `vigil` command line.

use std::io::IsTerminal;
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
    /// Train the model a config file describes, or resume a run.
    Train {
        /// The experiment config (TOML), e.g. configs/quickstart.toml.
        #[arg(required_unless_present = "resume", conflicts_with = "resume")]
        config: Option<PathBuf>,
        /// Continue the run in RUN_DIR from its newest checkpoint.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// Override a config value, e.g. --set optim.lr=0.1 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Validate a config, its dataset and its monitors' plugins without training.
    Check {
        config: PathBuf,
        /// Override a config value, e.g. --set optim.lr=0.1 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
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
    // Warnings and monitor messages go to stderr; `RUST_LOG` is not needed for them.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_max_level(tracing::Level::INFO)
        .init();
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
        Command::Train {
            config,
            resume,
            overrides,
        } => {
            let request = vigil::train::TrainRequest {
                config,
                resume,
                overrides,
            };
            let outcome = vigil::train::train(&request)?;
            if let Some(last) = outcome.summary.last() {
                println!(
                    "done: epoch {} in {:.1} s; val_acc {:.4}, val_loss {:.4}, best_val_loss {:.4}; results in {}",
                    last.epoch,
                    outcome.summary.seconds,
                    last.val.accuracy,
                    last.val.loss,
                    outcome.best_val_loss.unwrap_or(f64::NAN),
                    outcome.run_dir.display()
                );
            }
            Ok(())
        }
        Command::Check { config, overrides } => {
            print!("{}", vigil::train::check_config(&config, &overrides)?);
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
            print!("{}", vigil::plugin::listing(&dirs, false));
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
