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
    }
}

/// 2 for bad input (config, data), 1 for everything else.
fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<vigil::Error>() {
        Some(
            vigil::Error::Config { .. }
            | vigil::Error::DataMissing { .. }
            | vigil::Error::DataCorrupt { .. },
        ) => 2,
        _ => 1,
    }
}
