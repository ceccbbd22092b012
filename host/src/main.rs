//! The `vigil` command line: parse, set up logging, run one command ([`cli`]), exit.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::filter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use cli::RunEnd;

/// Train classifiers with libtorch; monitors are shared-library plugins.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train the model a config file describes, or resume a run. Exits 75 when SIGTERM,
    /// SIGINT or SIGUSR1 interrupted it after writing a checkpoint (resume it to go on).
    Train(cli::train::TrainArgs),
    /// Validate a config, its dataset, its model and its monitors without training: each
    /// enabled monitor's library is found, checked, loaded and the monitor built with its
    /// settings (no hook runs); prints the plan.
    Check(cli::check::CheckArgs),
    /// List every plugin library in the plugin directories with its name, version, sha256
    /// and whether a run could load it. Identities are read from the files without loading
    /// them, except legacy libraries (built against vigil-plugin-api 1.0 or 1.1, with no
    /// identity record): those are loaded, after the owner and permission checks, to read
    /// their name (their initialisers run); --no-load leaves them unopened.
    Plugins(cli::plugins::PluginsArgs),
    /// Write a trained model to a file to deploy: TorchScript for a TorchScript model, ONNX
    /// for the built-in networks, and FILE.json beside it with the input shape, the
    /// normalisation the inputs need and the class names.
    ExportModel(cli::export_model::ExportModelArgs),
    /// Write a new monitor crate to start from: Cargo.toml, src/lib.rs with settings, one
    /// hook, state for resume and a unit test on the API's fake host. `cargo test` tests it
    /// (no libtorch needed); `cargo build --release` builds the plugin.
    NewMonitor(cli::new_monitor::NewMonitorArgs),
    /// Send what runs trained with [mlflow] left unsent (the server was down) to the tracking
    /// server, exactly once: a second sync sends nothing.
    Sync(cli::sync::SyncArgs),
    /// Serve a read-only web dashboard of run and study directories (default `runs`) on
    /// 127.0.0.1:6070: runs list, live charts, images, studies, comparisons.
    Serve(cli::serve::ServeArgs),
    /// Compare runs (or a study's runs): the config keys that differ, then best and final
    /// metrics, steps, time and speed, with each run's difference to the first.
    Compare(cli::compare::CompareArgs),
    /// Plan and run a study: a grid of runs from one study file.
    Study {
        #[command(subcommand)]
        action: cli::study::StudyAction,
    },
    /// Measure training speed and monitor overhead (workloads W1 and W2, beside plain PyTorch
    /// and Lightning), plugin load time and hook dispatch cost (use a release build on an
    /// otherwise idle machine).
    Bench(Box<cli::bench::BenchArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vigil::memory::reuse_freed_buffers();
    // Warnings and monitor messages go to stderr; `RUST_LOG` is not needed for them. Twelve
    // configurations' monitors would repeat their start-up reports twelve times: the benchmark
    // shows warnings only, and keeps no log (nothing it times writes one).
    let bench = matches!(cli.command, Command::Bench(_));
    let console_level = if bench {
        tracing::Level::WARN
    } else {
        tracing::Level::INFO
    };
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_filter(filter::filter_fn(move |metadata| {
            // The lines printed on standard output are for the run's log only.
            *metadata.level() <= console_level
                && metadata.target() != vigil::run_log::CONSOLE_TARGET
        }));
    tracing_subscriber::registry()
        .with(console)
        .with((!bench).then_some(vigil::run_log::RunLogLayer))
        .init();
    let ended = match cli.command {
        Command::Train(args) => cli::train::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::Plugins(args) => cli::plugins::run(args),
        Command::ExportModel(args) => cli::export_model::run(args),
        Command::NewMonitor(args) => cli::new_monitor::run(args),
        Command::Sync(args) => cli::sync::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Compare(args) => cli::compare::run(args),
        Command::Study { action } => cli::study::run(action),
        Command::Bench(args) => cli::bench::run(*args).map(|()| RunEnd::Done),
    };
    match ended {
        Ok(end) => {
            vigil::run_log::close();
            match end {
                RunEnd::Done => ExitCode::SUCCESS,
                RunEnd::Interrupted => ExitCode::from(vigil::interrupt::EXIT_INTERRUPTED),
            }
        }
        Err(err) => {
            let mut message = err.to_string();
            for cause in err.chain().skip(1) {
                message.push_str(": ");
                message.push_str(&cause.to_string());
            }
            eprintln!("error: {message}");
            tracing::error!(target: vigil::run_log::CONSOLE_TARGET, "{message}");
            vigil::run_log::close();
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
