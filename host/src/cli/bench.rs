//! `vigil bench`: what training and monitoring cost, beside plain PyTorch and Lightning.

use std::path::PathBuf;

/// Measure training speed and monitor overhead (workloads W1 and W2, beside plain PyTorch
/// and Lightning), plugin load time and hook dispatch cost.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A directory with plugins (repeatable). Default: as for `plugins`.
    #[arg(long = "dir", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// A workload to run (repeatable): w1 (small CNN, Fashion-MNIST) or w2 (ResNet-18 at
    /// width 0.5, CIFAR-10). Default: both.
    #[arg(long = "workload", value_name = "W")]
    pub workloads: Vec<vigil::bench::Workload>,
    /// Fashion-MNIST's directory (W1); synthetic 28×28 images are used when it has no dataset.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/usr/share/datasets/fashion-mnist"
    )]
    pub data_dir: PathBuf,
    /// CIFAR-10's binary batches (W2); synthetic 3×32×32 images are used when it has none.
    #[arg(long, value_name = "DIR", default_value = "data/cifar-10-batches-bin")]
    pub cifar_dir: PathBuf,
    /// A monitor to measure (repeatable). Default: every shipped monitor that is found.
    #[arg(long = "monitor", value_name = "NAME")]
    pub monitors: Vec<String>,
    /// Training steps per timed segment (1000 holds one curvature estimate at its default cadence).
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Steps per timed segment of W2 (default: --steps). Below 1000 the configuration with all
    /// monitors holds no curvature estimate and is not judged.
    #[arg(long, value_name = "N")]
    pub w2_steps: Option<u64>,
    /// Steps a configuration trains before the next one takes its turn.
    #[arg(long, default_value_t = 25)]
    pub chunk_steps: u64,
    /// Steps each configuration trains before timing starts.
    #[arg(long, default_value_t = 100)]
    pub warmup_steps: u64,
    /// Timed segments per configuration; the table shows their median, min and max.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// While a target is neither met (upper bound) nor missed (lower bound), repeat all
    /// configurations again, up to this many repeats in all ...
    #[arg(long, default_value_t = 15)]
    pub max_repeats: usize,
    /// ... and this many minutes of timed repeats per workload; then it says "undecided".
    #[arg(long, value_name = "MIN", default_value_t = 60.0)]
    pub time_cap: f64,
    /// Intra-op threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Images per training step, for the host and both baselines alike. The workloads are
    /// defined at 128, and their targets stated for it; another batch is for a quick look.
    #[arg(long, default_value_t = vigil::bench::WORKLOAD_BATCH, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
    pub batch_size: usize,
    /// The Python with PyTorch for bench/python_baseline.py. Default: the one
    /// scripts/bootstrap.sh installs, when present.
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Do not run the Python baseline.
    #[arg(long, conflicts_with = "python")]
    pub no_python: bool,
    /// The Python baseline script.
    #[arg(long, value_name = "FILE", default_value = "bench/python_baseline.py")]
    pub python_script: PathBuf,
    /// The Python with Lightning for bench/lightning_baseline.py (W1, all monitors). Default:
    /// the bench venv that scripts/bench-venv.sh installs, when present.
    #[arg(long, value_name = "PATH")]
    pub lightning: Option<PathBuf>,
    /// Do not run the Lightning baseline.
    #[arg(long, conflicts_with = "lightning")]
    pub no_lightning: bool,
    /// Also measure the bare configuration sending every step to the MLflow tracking server
    /// at this address, with system metrics every 10 s (the defaults), against bare
    /// (target: 1 %).
    #[arg(long, value_name = "URI")]
    pub mlflow: Option<String>,
    /// The Lightning baseline script.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "bench/lightning_baseline.py"
    )]
    pub lightning_script: PathBuf,
    /// Measure the instrument plugins (gradient-tests, step-quality, gradient-histogram)
    /// together every 16 steps and every step on W1 (targets 1 % and 10 %), beside Cockpit's
    /// economy configuration at the same cadences in the plain PyTorch loop (the bench venv's
    /// Python), instead of the other monitors.
    #[arg(long, conflicts_with_all = ["plugins_only", "image_folder", "dashboard"])]
    pub instruments: bool,
    /// With --instruments: do not run Cockpit.
    #[arg(long)]
    pub no_cockpit: bool,
    /// Hook calls per repeat of the dispatch benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    pub calls: u64,
    /// Only measure plugin load time and hook dispatch (seconds instead of minutes).
    #[arg(long)]
    pub plugins_only: bool,
    /// Only measure image folders: decode throughput of 64×64 JPEGs beside torchvision's
    /// ImageFolder + DataLoader (bench/decode_baseline.py in the bench venv), and the training
    /// step on cached image-folder data beside IDX data of the same shape.
    #[arg(long, conflicts_with = "plugins_only")]
    pub image_folder: bool,
    /// Only measure the dashboard (`vigil serve`): its runs list of --dashboard-runs runs and a
    /// run of --dashboard-lines metric lines, answered by the server and drawn in Chromium
    /// (targets 1 s and 2 s).
    #[arg(long, conflicts_with_all = ["plugins_only", "image_folder"])]
    pub dashboard: bool,
    /// Runs in the dashboard benchmark's runs list.
    #[arg(long, default_value_t = 216)]
    pub dashboard_runs: usize,
    /// Lines of `metrics.jsonl` of the dashboard benchmark's big run.
    #[arg(long, default_value_t = 100_000)]
    pub dashboard_lines: usize,
    /// JPEGs the image-folder benchmark writes and decodes.
    #[arg(long, default_value_t = 4000)]
    pub decode_images: usize,
    /// torchvision's decode baseline script.
    #[arg(long, value_name = "FILE", default_value = "bench/decode_baseline.py")]
    pub decode_script: PathBuf,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Run the benchmarks `args` ask for and print their tables.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.dashboard {
        let report = vigil::bench::run_dashboard(
            &vigil::bench::DashboardOptions {
                runs: args.dashboard_runs,
                lines: args.dashboard_lines,
                repeats: args.repeats,
                scratch: std::env::temp_dir()
                    .join(format!("vigil-bench-{}-dashboard", std::process::id())),
            },
            |message| eprintln!("bench dashboard: {message}"),
        )?;
        print!("{}", vigil::bench::dashboard_table(&report));
        if let Some(path) = &args.json {
            let text = serde_json::to_vec_pretty(&serde_json::json!({ "dashboard": report }))?;
            vigil::fs::write_atomically(path, &text)?;
        }
        return Ok(());
    }
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
                    script: args.python_script.clone(),
                }),
                None => {
                    eprintln!("note: no Python with PyTorch found (run scripts/bootstrap.sh, or give --python PATH); skipping the Python baseline");
                    None
                }
            }
        };
        let workloads = if args.instruments {
            vec![vigil::bench::Workload::W1]
        } else if args.workloads.is_empty() {
            vec![vigil::bench::Workload::W1, vigil::bench::Workload::W2]
        } else {
            args.workloads
        };
        if args.instruments {
            if let Some(missing) = vigil::bench::INSTRUMENT_PLUGINS
                .iter()
                .find(|name| !found.iter().any(|f| f == *name))
            {
                anyhow::bail!(vigil::Error::Config {
                    location: "vigil bench --instruments".into(),
                    message: format!("no plugin `{missing}` found; build the monitors with `cargo build --release --workspace` or give --dir"),
                });
            }
        }
        let cockpit = if !args.instruments || args.no_cockpit {
            None
        } else {
            match args
                .lightning
                .clone()
                .or_else(vigil::bench::lightning_python)
            {
                Some(interpreter) => Some(vigil::bench::PythonBaseline {
                    interpreter,
                    script: args.python_script.clone(),
                }),
                None => {
                    eprintln!("note: no bench venv found (run scripts/bench-venv.sh, or give --lightning PATH); skipping Cockpit");
                    None
                }
            }
        };
        let lightning = if args.no_lightning
            || args.instruments
            || !workloads.contains(&vigil::bench::Workload::W1)
        {
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
                max_repeats: args.max_repeats,
                time_cap_s: args.time_cap * 60.0,
                batch_size: args.batch_size,
                threads: args.threads,
                python: python.clone(),
                lightning: lightning.clone(),
                mlflow: args.mlflow.clone(),
                instruments: args.instruments,
                cockpit: cockpit.clone(),
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
