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
    /// Train the model a config file describes, or resume a run. Exits 75 when SIGTERM,
    /// SIGINT or SIGUSR1 interrupted it after writing a checkpoint (resume it to go on).
    Train {
        /// The experiment config (TOML), e.g. configs/quickstart.toml.
        #[arg(required_unless_present = "resume")]
        config: Option<PathBuf>,
        /// Continue the run in RUN_DIR from its newest checkpoint, with the config it keeps
        /// (`--set epochs=N` trains it longer). With a CONFIG, `--resume auto` continues the
        /// run in the config's `run_dir` if it holds one, else starts it there.
        #[arg(long, value_name = "RUN_DIR|auto")]
        resume: Option<PathBuf>,
        /// Override a config value, e.g. --set optim.lr=0.1 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Validate a config, its dataset, its model and its monitors without training: each
    /// enabled monitor's library is found, checked, loaded and the monitor built with its
    /// settings (no hook runs); prints the plan.
    Check {
        config: PathBuf,
        /// Override a config value, e.g. --set optim.lr=0.1 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// List every plugin library in the plugin directories with its name, version, sha256
    /// and whether a run could load it. Identities are read from the files without loading
    /// them, except legacy libraries (built against vigil-plugin-api 1.0 or 1.1, with no
    /// identity record): those are loaded, after the owner and permission checks, to read
    /// their name (their initialisers run); --no-load leaves them unopened.
    Plugins {
        #[command(subcommand)]
        action: Option<PluginsAction>,
        /// A directory to list (repeatable). Default: <exe dir>/plugins, <exe dir> when it is
        /// a Cargo build directory, and $XDG_DATA_HOME/vigil/plugins (~/.local/share/vigil/plugins).
        #[arg(long = "dir", value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// Do not load legacy libraries to read their identity.
        #[arg(long)]
        no_load: bool,
    },
    /// Write a trained model to a file to deploy: TorchScript for a TorchScript model, ONNX
    /// for the built-in networks, and FILE.json beside it with the input shape, the
    /// normalisation the inputs need and the class names.
    ExportModel {
        /// The run directory (it holds checkpoints/ and inputs.json).
        run_dir: PathBuf,
        /// Which checkpoint: best (by validation loss), last, or step_N.
        #[arg(long, default_value = "best", value_name = "best|last|step_N")]
        checkpoint: vigil::export::Which,
        /// Where to write the model (e.g. model.onnx or model.pt).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Write a new monitor crate to start from: Cargo.toml, src/lib.rs with settings, one
    /// hook, state for resume and a unit test on the API's fake host. `cargo test` tests it
    /// (no libtorch needed); `cargo build --release` builds the plugin.
    NewMonitor {
        /// The monitor's name (lowercase letters, digits and `-`), also the crate's.
        name: String,
        /// Where to write the crate (default: ./NAME); must not exist or be empty.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Depend on vigil-plugin-api in this directory (a vigil checkout or its plugin-api/).
        /// Default: the source this vigil was built from, when it is still there.
        #[arg(long, value_name = "PATH", conflicts_with = "api_version")]
        api_path: Option<PathBuf>,
        /// Depend on this version of vigil-plugin-api from the registry instead (e.g. 1.3).
        #[arg(long, value_name = "VERSION")]
        api_version: Option<String>,
    },
    /// Plan and run a study: a grid of runs from one study file.
    Study {
        #[command(subcommand)]
        action: StudyAction,
    },
    /// Measure training speed and monitor overhead (workloads W1 and W2, beside plain PyTorch
    /// and Lightning), plugin load time and hook dispatch cost (use a release build on an
    /// otherwise idle machine).
    Bench(Box<BenchArgs>),
}

#[derive(Debug, Subcommand)]
enum StudyAction {
    /// Print every run of the study with its overrides, each config checked exactly as `vigil
    /// check` checks one (settings, data, model, monitors), before anything starts.
    Plan {
        /// The study file (TOML).
        file: PathBuf,
    },
    /// Run the study on this machine, N runs at a time, highest priority first: completed
    /// runs are skipped, interrupted ones resumed. Ctrl-C stops every run with a checkpoint.
    /// Exits 0 when every run completed, 75 when stopped by a signal, 1 when a run failed.
    Run {
        /// The study file (TOML).
        file: PathBuf,
        /// Runs at a time (default: the study's `local.jobs`, else 1); the cores are split
        /// among them as intra-op threads.
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
    },
    /// Submit the study to SLURM as one job array of the runs not yet completed (at most
    /// `slurm.max_running` at once); each task resumes or starts its run, checkpoints and
    /// requeues itself before its time limit.
    Submit {
        /// The study file (TOML).
        file: PathBuf,
        /// Check the runs and write the sbatch script, but do not submit it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Train one run of a submitted study (what each SLURM array task runs).
    #[command(hide = true)]
    Task {
        /// The study's directory.
        dir: PathBuf,
        /// The run's plan index (`$SLURM_ARRAY_TASK_ID`).
        index: usize,
    },
    /// Write one row per run (run id, variant, state, every grid key as a typed column, the
    /// loss-curve summary columns) to FILE (.parquet or .csv), and the train/validation and
    /// curvature trajectories, long format, beside it (<stem>_trajectories.<ext>).
    Export {
        /// The study's directory.
        dir: PathBuf,
        /// The table to write: a .parquet or .csv file.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Run the failed runs again (all, or those named), optionally with other settings,
    /// recording why: each failed attempt is kept in <study>/retired/, the retry in
    /// <study>/retries.json; then the study runs with the executor that ran it last.
    Retry {
        /// The study's directory.
        dir: PathBuf,
        /// Only this run (repeatable).
        #[arg(long = "run", value_name = "NAME")]
        runs: Vec<String>,
        /// A setting for the retried runs, e.g. `--set optim.lr=0.05` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Why, for the record.
        #[arg(long, default_value = "retried")]
        reason: String,
        /// Runs at a time, when the study runs on this machine.
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
    },
    /// H1 (power laws: r² ≥ 0.98 after burn-in in > 90 % of runs) and H2 (correlation of
    /// alpha_early with best_val_ce ≥ 0.7) over the completed runs, with counts.
    Report {
        /// The study's directory.
        dir: PathBuf,
    },
    /// Counts by state, an ETA, and the study's data-quality checks (loss out of [0, 10],
    /// accuracy out of [0, 1], non-finite metrics, a burn-in epoch outside [1, 20], stuck
    /// runs, a failure rate above 10 %), each flagged with its run.
    Status {
        /// The study's directory (`<root>/<name>`).
        dir: PathBuf,
        /// A running run without a new metric for this many minutes is flagged as stuck.
        #[arg(long, value_name = "MINUTES", default_value_t = 30.0)]
        stuck_after: f64,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PluginsAction {
    /// Check a plugin library (owner, permissions, an ELF library for this machine exporting a
    /// vigil plugin of this API) without running any of it, copy it into your plugin
    /// directory ($XDG_DATA_HOME/vigil/plugins) with mode 0644, and print its sha256 and the
    /// config lines that enable and pin it.
    Add {
        /// The plugin's .so file.
        file: PathBuf,
        /// Install into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// A directory with plugins (repeatable). Default: as for `plugins`.
    #[arg(long = "dir", value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// A workload to run (repeatable): w1 (small CNN, Fashion-MNIST) or w2 (ResNet-18 at
    /// width 0.5, CIFAR-10). Default: both.
    #[arg(long = "workload", value_name = "W")]
    workloads: Vec<vigil::bench::Workload>,
    /// Fashion-MNIST's directory (W1); synthetic 28×28 images are used when it has no dataset.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/usr/share/datasets/fashion-mnist"
    )]
    data_dir: PathBuf,
    /// CIFAR-10's binary batches (W2); synthetic 3×32×32 images are used when it has none.
    #[arg(long, value_name = "DIR", default_value = "data/cifar-10-batches-bin")]
    cifar_dir: PathBuf,
    /// A monitor to measure (repeatable). Default: every shipped monitor that is found.
    #[arg(long = "monitor", value_name = "NAME")]
    monitors: Vec<String>,
    /// Training steps per timed segment (1000 holds one curvature estimate at its default cadence).
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Steps per timed segment of W2 (default: --steps). Below 1000 the configuration with all
    /// monitors holds no curvature estimate and is not judged.
    #[arg(long, value_name = "N")]
    w2_steps: Option<u64>,
    /// Steps a configuration trains before the next one takes its turn.
    #[arg(long, default_value_t = 25)]
    chunk_steps: u64,
    /// Steps each configuration trains before timing starts.
    #[arg(long, default_value_t = 100)]
    warmup_steps: u64,
    /// Timed segments per configuration; the table shows their median, min and max.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Images per training step, for the host and both baselines alike. The workloads are
    /// defined at 128, and their targets stated for it; another batch is for a quick look.
    #[arg(long, default_value_t = vigil::bench::WORKLOAD_BATCH, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
    batch_size: usize,
    /// The Python with PyTorch for bench/python_baseline.py. Default: the one
    /// scripts/bootstrap.sh installs, when present.
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// Do not run the Python baseline.
    #[arg(long, conflicts_with = "python")]
    no_python: bool,
    /// The Python baseline script.
    #[arg(long, value_name = "FILE", default_value = "bench/python_baseline.py")]
    python_script: PathBuf,
    /// The Python with Lightning for bench/lightning_baseline.py (W1, all monitors). Default:
    /// the bench venv that scripts/bench-venv.sh installs, when present.
    #[arg(long, value_name = "PATH")]
    lightning: Option<PathBuf>,
    /// Do not run the Lightning baseline.
    #[arg(long, conflicts_with = "lightning")]
    no_lightning: bool,
    /// The Lightning baseline script.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "bench/lightning_baseline.py"
    )]
    lightning_script: PathBuf,
    /// Hook calls per repeat of the dispatch benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    calls: u64,
    /// Only measure plugin load time and hook dispatch (seconds instead of minutes).
    #[arg(long)]
    plugins_only: bool,
    /// Only measure image folders: decode throughput of 64×64 JPEGs beside torchvision's
    /// ImageFolder + DataLoader (bench/decode_baseline.py in the bench venv), and the training
    /// step on cached image-folder data beside IDX data of the same shape.
    #[arg(long, conflicts_with = "plugins_only")]
    image_folder: bool,
    /// JPEGs the image-folder benchmark writes and decodes.
    #[arg(long, default_value_t = 4000)]
    decode_images: usize,
    /// torchvision's decode baseline script.
    #[arg(long, value_name = "FILE", default_value = "bench/decode_baseline.py")]
    decode_script: PathBuf,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// How a command ended without an error.
enum RunEnd {
    Done,
    /// Interrupted by a signal after a checkpoint: exit 75.
    Interrupted,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vigil::memory::reuse_freed_buffers();
    // Warnings and monitor messages go to stderr; `RUST_LOG` is not needed for them.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_max_level(match cli.command {
            // Twelve configurations' monitors would repeat their start-up reports twelve
            // times; the benchmark shows warnings only.
            Command::Bench(_) => tracing::Level::WARN,
            _ => tracing::Level::INFO,
        })
        .init();
    match run(cli) {
        Ok(RunEnd::Done) => ExitCode::SUCCESS,
        Ok(RunEnd::Interrupted) => ExitCode::from(vigil::interrupt::EXIT_INTERRUPTED),
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

fn run(cli: Cli) -> anyhow::Result<RunEnd> {
    match cli.command {
        Command::Train {
            config,
            resume,
            overrides,
        } => {
            let resume = match (&config, resume) {
                (Some(_), Some(word)) if word.as_os_str() == "auto" => {
                    Some(vigil::train::Resume::Auto)
                }
                (Some(_), Some(_)) => anyhow::bail!(vigil::Error::Config {
                    location: "vigil train".into(),
                    message: "with a CONFIG, --resume takes only `auto`; to continue a run directory,                               give `--resume RUN_DIR` without a CONFIG"
                        .into(),
                }),
                (None, Some(word)) if word.as_os_str() == "auto" => {
                    anyhow::bail!(vigil::Error::Config {
                        location: "vigil train".into(),
                        message: "`--resume auto` needs the CONFIG whose `run_dir` it continues: \
                                  vigil train CONFIG --resume auto (for a directory named auto, give ./auto)"
                            .into(),
                    })
                }
                (None, dir) => dir.map(vigil::train::Resume::Dir),
                (Some(_), None) => None,
            };
            let interrupt = vigil::interrupt::install()
                .map_err(|err| anyhow::anyhow!("installing signal handlers: {err}"))?;
            let request = vigil::train::TrainRequest {
                config,
                resume,
                overrides,
                interrupt: Some(interrupt),
            };
            let outcome = vigil::train::train(&request)?;
            if let Some(signal) = outcome.interrupted {
                let signal = vigil::train::signal_name(signal);
                let run_dir = outcome.run_dir.display();
                match outcome.checkpoint_step {
                    Some(step) if step == outcome.global_step => println!(
                        "interrupted by {signal} at step {step}: checkpoint written; continue with `vigil train --resume {run_dir}`"
                    ),
                    Some(step) => println!(
                        "interrupted by {signal} at step {}: the checkpoint could not be written (see run.json); \
                         `vigil train --resume {run_dir}` continues from step {step}",
                        outcome.global_step
                    ),
                    None => println!(
                        "interrupted by {signal} at step {}: checkpoints are disabled (checkpoint.enabled = false), \
                         so this run cannot be resumed",
                        outcome.global_step
                    ),
                }
                return Ok(RunEnd::Interrupted);
            }
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
            Ok(RunEnd::Done)
        }
        Command::Check { config, overrides } => {
            print!("{}", vigil::train::check_config(&config, &overrides)?);
            Ok(RunEnd::Done)
        }
        Command::Bench(args) => bench(*args).map(|()| RunEnd::Done),
        Command::ExportModel {
            run_dir,
            checkpoint,
            out,
        } => {
            let exported = vigil::export::export_model(&run_dir, checkpoint, &out)?;
            println!(
                "{}: {} model from {}; inputs, normalisation and class names in {}",
                exported.file.display(),
                exported.format,
                exported.checkpoint.display(),
                exported.inputs_file.display()
            );
            Ok(RunEnd::Done)
        }
        Command::NewMonitor {
            name,
            dir,
            api_path,
            api_version,
        } => {
            let api = match (api_path, api_version) {
                (Some(path), _) => vigil::scaffold::ApiSource::Path(path),
                (None, Some(version)) => vigil::scaffold::ApiSource::Version(version),
                (None, None) => vigil::scaffold::ApiSource::default_for_this_build(),
            };
            let made = vigil::scaffold::new_monitor(&name, dir.as_deref(), api)?;
            print!("{}", made.instructions());
            Ok(RunEnd::Done)
        }
        Command::Study { action } => study(action),
        Command::Plugins {
            action: Some(PluginsAction::Add { file, dir }),
            ..
        } => {
            let dir = dir.or_else(vigil::plugin::user_plugin_dir).ok_or_else(|| {
                anyhow::anyhow!(vigil::Error::Config {
                    location: "vigil plugins add".into(),
                    message:
                        "neither XDG_DATA_HOME nor HOME is set to an absolute path; give --dir DIR"
                            .into(),
                })
            })?;
            let added = vigil::plugin::dirs::add(&file, &dir)?;
            print!("{}", added.instructions());
            Ok(RunEnd::Done)
        }
        Command::Plugins {
            action: None,
            dirs,
            no_load,
        } => {
            let dirs = if dirs.is_empty() {
                vigil::plugin::default_plugin_dirs()
            } else {
                dirs
            };
            print!("{}", vigil::plugin::listing(&dirs, false, !no_load));
            Ok(RunEnd::Done)
        }
    }
}

fn study(action: StudyAction) -> anyhow::Result<RunEnd> {
    match action {
        StudyAction::Plan { file } => {
            let study = vigil::study::Study::load(&file)?;
            print!("{}", vigil::study::check_plan(&study)?);
            Ok(RunEnd::Done)
        }
        StudyAction::Submit { file, dry_run } => {
            let study = vigil::study::Study::load(&file)?;
            let submitted =
                vigil::study::slurm::submit(&study, &std::env::current_exe()?, dry_run)?;
            match &submitted.job {
                Some(job) => println!(
                    "submitted {} runs as SLURM job {job} ({}); watch it with `vigil study status {}`",
                    submitted.indices.len(),
                    submitted.script.display(),
                    study.dir.display()
                ),
                None if submitted.indices.is_empty() => {
                    println!("every run of `{}` is completed or running; nothing to submit", study.name)
                }
                None => println!(
                    "wrote {} for {} runs (not submitted: --dry-run)",
                    submitted.script.display(),
                    submitted.indices.len()
                ),
            }
            Ok(RunEnd::Done)
        }
        StudyAction::Task { dir, index } => {
            let (study, run) = vigil::study::slurm::task_run(&dir, index)?;
            let threads = vigil::study::plan::started_threads(&study.run_dir(&run))
                .unwrap_or(study.slurm.cpus_per_task.max(1));
            let interrupt = vigil::interrupt::install()
                .map_err(|err| anyhow::anyhow!("installing signal handlers: {err}"))?;
            println!("study `{}` task {index}: run {}", study.name, run.name);
            let request = vigil::train::TrainRequest {
                config: Some(run.config.clone()),
                resume: Some(vigil::train::Resume::Auto),
                overrides: study.set_arguments(&run, Some(threads)),
                interrupt: Some(interrupt),
            };
            let outcome = vigil::train::train(&request)?;
            match outcome.interrupted {
                Some(signal) if signal == libc::SIGUSR1 as usize => {
                    println!(
                        "SIGUSR1 before the time limit: checkpoint written; requeueing this task"
                    );
                    vigil::study::slurm::requeue_self()?;
                    Ok(RunEnd::Interrupted)
                }
                Some(_) => Ok(RunEnd::Interrupted),
                None => Ok(RunEnd::Done),
            }
        }
        StudyAction::Export { dir, to } => {
            let (rows, points, beside) = vigil::study::export::export(&dir, &to)?;
            println!(
                "wrote {} ({rows} runs) and {} ({points} trajectory points)",
                to.display(),
                beside.display()
            );
            Ok(RunEnd::Done)
        }
        StudyAction::Report { dir } => {
            let (h, completed, total) = vigil::study::report::study_report(&dir)?;
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            print!(
                "{}",
                vigil::study::report::report_text(&name, &h, completed, total)
            );
            Ok(RunEnd::Done)
        }
        StudyAction::Status {
            dir,
            stuck_after,
            json,
        } => {
            let stuck_after = std::time::Duration::from_secs_f64(stuck_after.max(0.0) * 60.0);
            let status = vigil::study::study_status(&dir, stuck_after)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", vigil::study::status_text(&status));
            }
            Ok(RunEnd::Done)
        }
        StudyAction::Retry {
            dir,
            runs,
            sets,
            reason,
            jobs,
        } => {
            let record = vigil::study::record::read_record(&dir)?;
            let retried = vigil::study::retry::prepare_retry(&dir, &runs, &sets, &reason)?;
            if retried.is_empty() {
                println!("no failed runs in {}; nothing to retry", dir.display());
                return Ok(RunEnd::Done);
            }
            println!("retrying {}: {}", retried.len(), retried.join(", "));
            match record.executor {
                vigil::study::record::Executor::Slurm => study(StudyAction::Submit {
                    file: record.study.file,
                    dry_run: false,
                }),
                vigil::study::record::Executor::Local => study(StudyAction::Run {
                    file: record.study.file,
                    jobs,
                }),
            }
        }
        StudyAction::Run { file, jobs } => {
            let study = vigil::study::Study::load(&file)?;
            let signal = vigil::interrupt::install()
                .map_err(|err| anyhow::anyhow!("installing signal handlers: {err}"))?;
            let options = vigil::study::LocalOptions {
                jobs,
                exe: std::env::current_exe()?,
                progress_every: std::time::Duration::from_secs(10),
            };
            let outcome = vigil::study::run_local(&study, &options, signal, |line| {
                eprintln!("study: {line}")
            })?;
            println!(
                "study `{}`: {} of {} runs completed, {} failed, {} interrupted; results in {}",
                study.name,
                outcome.completed,
                study.runs.len(),
                outcome.failed.len() + outcome.skipped_failed.len(),
                outcome.interrupted.len(),
                study.dir.display()
            );
            if outcome.signal.is_some() {
                return Ok(RunEnd::Interrupted);
            }
            if !outcome.failed.is_empty() || !outcome.skipped_failed.is_empty() {
                anyhow::bail!(
                    "failed runs: {}; their output is in {}/logs",
                    outcome
                        .failed
                        .iter()
                        .chain(&outcome.skipped_failed)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    study.dir.display()
                );
            }
            Ok(RunEnd::Done)
        }
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.image_folder {
        let python = if args.no_lightning {
            None
        } else {
            let found = args
                .lightning
                .clone()
                .or_else(vigil::bench::lightning_python);
            if found.is_none() {
                eprintln!("note: no bench venv with torchvision found (run scripts/bench-venv.sh, or give --lightning PATH); skipping torchvision");
            }
            found
        };
        let report = vigil::bench::run_image_folder(&vigil::bench::ImageFolderOptions {
            images: args.decode_images,
            threads: args.threads,
            repeats: args.repeats,
            steps: args.steps.min(200),
            python,
            script: args.decode_script,
        })?;
        print!("{}", vigil::bench::image_folder_table(&report));
        if let Some(path) = &args.json {
            let text = serde_json::to_vec_pretty(&serde_json::json!({ "image_folder": report }))?;
            vigil::fs::write_atomically(path, &text)?;
        }
        return Ok(());
    }
    let dirs = if args.dirs.is_empty() {
        vigil::plugin::default_plugin_dirs()
    } else {
        args.dirs
    };
    // A monitor asked for by name that no directory holds is an error before anything is
    // measured.
    if !args.monitors.is_empty() {
        let found: Vec<String> = vigil::plugin::catalogue(&dirs, false, false)
            .into_iter()
            .filter(|row| row.status == "ok")
            .filter_map(|row| row.name)
            .collect();
        if let Some(missing) = args.monitors.iter().find(|m| !found.contains(m)) {
            anyhow::bail!(vigil::Error::Config {
                location: format!("vigil bench --monitor {missing}"),
                message: format!(
                    "no plugin of that name in {} (found: {}); build the monitors with \
                     `cargo build --release --workspace` or give --dir",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if found.is_empty() {
                        "none".to_string()
                    } else {
                        found.join(", ")
                    }
                ),
            });
        }
    }
    // Load and dispatch first: they take seconds, and measure the ABI path on a machine not
    // yet warmed by twenty minutes of training.
    let plugins = vigil::bench::plugin_costs(&dirs, args.calls.max(1), args.repeats.max(1))?;
    print!("{}", vigil::bench::table(&plugins));
    let mut reports = Vec::new();
    if !args.plugins_only {
        let found: Vec<String> = vigil::plugin::catalogue(&dirs, false, false)
            .into_iter()
            .filter(|row| row.status == "ok")
            .filter_map(|row| row.name)
            .collect();
        let monitors = if args.monitors.is_empty() {
            let shipped: Vec<String> = vigil::bench::SHIPPED_MONITORS
                .iter()
                .filter(|name| found.iter().any(|found| found == **name))
                .map(|name| name.to_string())
                .collect();
            if shipped.len() < vigil::bench::SHIPPED_MONITORS.len() {
                eprintln!(
                    "note: found {} of the {} shipped monitors in {}; build them with `cargo build --release --workspace`",
                    shipped.len(),
                    vigil::bench::SHIPPED_MONITORS.len(),
                    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                );
            }
            shipped
        } else {
            args.monitors
        };
        let python = if args.no_python {
            None
        } else {
            match args.python.or_else(vigil::bench::bootstrap_python) {
                Some(interpreter) => Some(vigil::bench::PythonBaseline {
                    interpreter,
                    script: args.python_script,
                }),
                None => {
                    eprintln!("note: no Python with PyTorch found (run scripts/bootstrap.sh, or give --python PATH); skipping the Python baseline");
                    None
                }
            }
        };
        let workloads = if args.workloads.is_empty() {
            vec![vigil::bench::Workload::W1, vigil::bench::Workload::W2]
        } else {
            args.workloads
        };
        let lightning = if args.no_lightning || !workloads.contains(&vigil::bench::Workload::W1) {
            None
        } else {
            match args.lightning.or_else(vigil::bench::lightning_python) {
                Some(interpreter) => Some(vigil::bench::PythonBaseline {
                    interpreter,
                    script: args.lightning_script,
                }),
                None => {
                    eprintln!("note: no bench venv with Lightning found (run scripts/bench-venv.sh, or give --lightning PATH); skipping the Lightning baseline");
                    None
                }
            }
        };
        for workload in workloads {
            println!();
            let w2 = workload == vigil::bench::Workload::W2;
            let options = vigil::bench::WorkloadOptions {
                workload,
                data_dir: if w2 {
                    args.cifar_dir.clone()
                } else {
                    args.data_dir.clone()
                },
                plugin_dirs: dirs.clone(),
                monitors: monitors.clone(),
                steps: if w2 {
                    args.w2_steps.unwrap_or(args.steps)
                } else {
                    args.steps
                },
                chunk_steps: args.chunk_steps,
                warmup_steps: args.warmup_steps,
                repeats: args.repeats,
                batch_size: args.batch_size,
                threads: args.threads,
                python: python.clone(),
                lightning: lightning.clone(),
                scratch: std::env::temp_dir().join(format!(
                    "vigil-bench-{}-{}",
                    std::process::id(),
                    workload.key()
                )),
            };
            let key = workload.key().to_uppercase();
            let report = vigil::bench::run_workload(&options, |message| {
                eprintln!("bench {key}: {message}")
            })?;
            print!("{}", vigil::bench::workload_table(&report));
            reports.push(report);
        }
    }
    if let Some(path) = args.json {
        let json = serde_json::json!({ "workloads": reports, "plugins": plugins });
        std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
            .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
    }
    Ok(())
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
