//! Studies: the plan, the local executor (with a kill mid-way), run names and directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{json, plugin_dirs_toml, records_without_time, stderr, stdout, vigil};

/// A small MLP study: 2 variants × 2 learning rates × 2 seeds, each run `epochs` epochs of
/// 16 steps on synthetic data, with the gradient monitor.
pub fn write_small_study(dir: &Path, epochs: usize, batch_size: usize) -> PathBuf {
    let variant = |hidden: &str| {
        format!(
            "epochs = {epochs}\nbatch_size = {batch_size}\ndata = \"synthetic\"\n{}\n\
             [synthetic]\ntrain_size = 512\ntest_size = 128\nclasses = 4\nimage_size = 12\n\
             [model]\nkind = \"mlp\"\nhidden = [{hidden}]\n[optim]\nlr = 0.05\n\
             [checkpoint]\nkeep_best = 1\n",
            plugin_dirs_toml()
        )
    };
    std::fs::write(dir.join("wide.toml"), variant("64")).unwrap();
    std::fs::write(dir.join("narrow.toml"), variant("16")).unwrap();
    let study = dir.join("study.toml");
    std::fs::write(
        &study,
        "name = \"small\"\nroot = \"studies\"\nvariants = { wide = \"wide.toml\", narrow = \"narrow.toml\" }\n\
         threads = 1\n\
         [grid]\n\"optim.lr\" = [0.05, 0.1]\nseed = [0, 1]\n\
         [set]\nmonitors = [{ name = \"gradient\", settings = { log_every_n_steps = 4 } }]\n\
         [[rules]]\nmatch = { variant = \"narrow\", seed = 1 }\npriority = 5\n",
    )
    .unwrap();
    study
}

/// Write the small study and run it here, two runs at a time; its directory.
pub fn run_small_study(dir: &Path, epochs: usize) -> PathBuf {
    let study = write_small_study(dir, epochs, 32);
    let output = vigil(
        dir,
        &["study", "run", study.to_str().unwrap(), "--jobs", "2"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    dir.join("studies/small")
}

const NAMES: [&str; 8] = [
    "narrow-lr0.05-s0",
    "narrow-lr0.05-s1",
    "narrow-lr0.1-s0",
    "narrow-lr0.1-s1",
    "wide-lr0.05-s0",
    "wide-lr0.05-s1",
    "wide-lr0.1-s0",
    "wide-lr0.1-s1",
];

#[test]
fn the_plan_lists_and_checks_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let study = write_small_study(dir.path(), 1, 32);
    let output = vigil(dir.path(), &["study", "plan", study.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let plan = stdout(&output);
    for name in NAMES {
        assert!(plan.contains(name), "no {name} in\n{plan}");
    }
    assert!(plan.contains("--set optim.lr=0.1 --set seed=1"), "{plan}");
    assert!(plan.contains("priority 5"), "{plan}");
    assert!(plan.contains("all 8 runs checked"), "{plan}");
    // Nothing was started.
    assert!(!dir.path().join("studies").exists());

    // A run whose config is bad is named before anything starts.
    std::fs::write(
        dir.path().join("bad.toml"),
        "name = \"bad\"\nbase = \"wide.toml\"\n[grid]\n\"optim.lr\" = [0.1, -1.0]\n",
    )
    .unwrap();
    let output = vigil(dir.path(), &["study", "plan", "bad.toml"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("study run `base-lr-1`"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("--set optim.lr=-1"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_loss_slope_study_has_216_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let study = vigil::study::Study::load(&root.join("configs/studies/loss_slope.toml")).unwrap();
    assert_eq!(study.runs.len(), 216);
    let names: std::collections::HashSet<&str> =
        study.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), 216);
    assert!(names.contains("base-lr0.1-wd0.001-s3"));
    assert!(names.contains("adamw-lr0.2-wd0.01-s5"));
    assert_eq!(
        study.runs.iter().filter(|r| r.priority == 1).count(),
        36,
        "seed 0 of every grid point first"
    );
}

#[test]
fn the_loss_slope_plan_checks_all_216_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["study", "plan"])
        .arg(root.join("configs/studies/loss_slope.toml"))
        .current_dir(dir.path())
        .env("XDG_DATA_HOME", dir.path().join(".xdg-data"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let plan = stdout(&output);
    assert!(plan.contains("study `loss_slope`: 216 runs"), "{plan}");
    assert!(plan.contains("all 216 runs checked"), "{plan}");
    assert_eq!(
        plan.lines()
            .filter(|l| l.contains("[adamw: resnet18"))
            .count(),
        54
    );
}

fn run_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("studies/small"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("config.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_local_executor_runs_every_run_and_a_second_run_repeats_none() {
    let dir = tempfile::tempdir().unwrap();
    let study = write_small_study(dir.path(), 1, 32);
    let output = vigil(
        dir.path(),
        &["study", "run", study.to_str().unwrap(), "--jobs", "2"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("8 of 8 runs completed"),
        "{}",
        stdout(&output)
    );
    assert_eq!(run_dirs(dir.path()), NAMES);
    let study_dir = dir.path().join("studies/small");
    for name in NAMES {
        let run = json(study_dir.join(name).join("run.json"));
        assert_eq!(run["status"], "completed", "{name}");
        // The grid point is the run's config.
        let config: toml::Table = toml::from_str(
            &std::fs::read_to_string(study_dir.join(name).join("config.toml")).unwrap(),
        )
        .unwrap();
        let lr = config["optim"]["lr"].as_float().unwrap();
        assert_eq!(name.contains("lr0.1"), lr == 0.1, "{name}: lr {lr}");
        let seed = config["seed"].as_integer().unwrap();
        assert!(name.ends_with(&format!("s{seed}")), "{name}: seed {seed}");
        assert_eq!(config["threads"].as_integer(), Some(1));
        assert_eq!(config["monitors"][0]["name"].as_str(), Some("gradient"));
    }
    // The highest priority started first: the two narrow seed-1 runs (priority 5).
    let log = stderr(&output);
    let started: Vec<&str> = log
        .lines()
        .filter_map(|line| line.split_once("started ").map(|(_, name)| name.trim()))
        .collect();
    assert_eq!(started.len(), 8, "{log}");
    let mut first_two = started[..2].to_vec();
    first_two.sort();
    assert_eq!(first_two, ["narrow-lr0.05-s1", "narrow-lr0.1-s1"], "{log}");
    assert_eq!(
        json(study_dir.join("study.json"))["study"]["runs"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    let before: Vec<Vec<u8>> = NAMES
        .iter()
        .map(|n| std::fs::read(study_dir.join(n).join("metrics.jsonl")).unwrap())
        .collect();
    let status = vigil(
        dir.path(),
        &["study", "status", study_dir.to_str().unwrap(), "--json"],
    );
    assert!(status.status.success(), "{}", stderr(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["counts"][2],
        serde_json::json!(["completed", 8]),
        "{status}"
    );
    let again = vigil(
        dir.path(),
        &["study", "run", study.to_str().unwrap(), "--jobs", "2"],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("8 completed"), "{}", stderr(&again));
    for (name, bytes) in NAMES.iter().zip(before) {
        assert_eq!(
            std::fs::read(study_dir.join(name).join("metrics.jsonl")).unwrap(),
            bytes,
            "{name} was touched"
        );
        assert_eq!(
            json(study_dir.join(name).join("run.json"))["attempts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}

#[test]
fn killing_the_executor_mid_way_and_starting_it_again_completes_the_study_once() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough runs that the kill lands while some train: 6 epochs of 32 steps.
    let study = write_small_study(dir.path(), 6, 16);
    let study_dir = dir.path().join("studies/small");
    let mut executor = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["study", "run"])
        .arg(&study)
        .args(["--jobs", "2"])
        .current_dir(dir.path())
        .env("XDG_DATA_HOME", dir.path().join(".xdg-data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until one run has completed and another is training past its first checkpoint.
    let deadline = Instant::now() + Duration::from_secs(300);
    let (completed_early, training) = loop {
        assert!(Instant::now() < deadline, "the study made no progress");
        let states: Vec<(String, vigil::run_dir::RunState)> = NAMES
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    vigil::run_dir::read_run(&study_dir.join(n)).state,
                )
            })
            .collect();
        let completed: Vec<String> = states
            .iter()
            .filter(|(_, s)| *s == vigil::run_dir::RunState::Completed)
            .map(|(n, _)| n.clone())
            .collect();
        let training: Vec<String> = states
            .iter()
            .filter(|(n, s)| {
                // Past its first checkpoint and far from its end, so that the kill lands
                // mid-training.
                let step = vigil::run_dir::read_run(&study_dir.join(n))
                    .last_record
                    .and_then(|r| r["global_step"].as_u64())
                    .unwrap_or(0);
                *s == vigil::run_dir::RunState::Running
                    && study_dir.join(n).join("checkpoints").exists()
                    && step < 96
            })
            .map(|(n, _)| n.clone())
            .collect();
        if !completed.is_empty() && !training.is_empty() {
            break (completed, training);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    executor.kill().unwrap();
    executor.wait().unwrap();
    // The runs it was training got SIGTERM as it died, checkpointed and stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    while training.iter().any(|n| {
        vigil::run_dir::read_run(&study_dir.join(n)).state == vigil::run_dir::RunState::Running
    }) {
        assert!(
            Instant::now() < deadline,
            "a run kept training after the executor died"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for name in &training {
        let run = json(study_dir.join(name).join("run.json"));
        assert_eq!(run["status"], "interrupted", "{name}: {run}");
        assert_eq!(run["interrupted_by"], "SIGTERM", "{name}");
    }
    let before: Vec<Vec<u8>> = completed_early
        .iter()
        .map(|n| std::fs::read(study_dir.join(n).join("metrics.jsonl")).unwrap())
        .collect();

    let output = vigil(
        dir.path(),
        &["study", "run", study.to_str().unwrap(), "--jobs", "2"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("8 of 8 runs completed"),
        "{}",
        stdout(&output)
    );
    for (name, bytes) in completed_early.iter().zip(before) {
        assert_eq!(
            std::fs::read(study_dir.join(name).join("metrics.jsonl")).unwrap(),
            bytes,
            "{name} was run again"
        );
    }
    for name in &training {
        let run = json(study_dir.join(name).join("run.json"));
        assert_eq!(run["status"], "completed");
        let attempts = run["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{name}: resumed, not restarted: {run}");
        assert!(attempts[1]["from_step"].as_u64().unwrap() > 0);
    }
    // Every run trained its 6 epochs of 32 steps exactly once.
    for name in NAMES {
        let run = json(study_dir.join(name).join("run.json"));
        assert_eq!(run["global_step"], 192, "{name}");
    }
}

#[test]
fn status_flags_each_problem_with_its_run() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let study = write_small_study(dir.path(), 1, 32);
    let study_dir = dir.path().join("studies/small");
    // Two runs, by hand, as an executor would leave them.
    let mut record = vigil::study::Study::load(&study).unwrap();
    record.dir = study_dir.clone();
    std::fs::create_dir_all(&study_dir).unwrap();
    vigil::study::record::write_record(
        &record,
        vigil::study::record::Executor::Local,
        &[Some(16); 8],
    )
    .unwrap();
    let line = |kind: &str, step: u64, wall: f64, extra: &str| {
        format!("{{\"kind\":\"{kind}\",\"epoch\":1,\"global_step\":{step},\"wall_time\":{wall}{extra}}}\n")
    };
    // A failed run whose validation accuracy is out of range and whose loss went missing.
    let failed = study_dir.join("wide-lr0.1-s1");
    std::fs::create_dir_all(&failed).unwrap();
    std::fs::write(
        failed.join("metrics.jsonl"),
        line("train", 1, 100.0, ",\"train_loss\":2.0,\"train_acc\":0.2")
            + &line(
                "validation",
                1,
                101.0,
                ",\"val_loss\":null,\"val_acc\":1.25",
            ),
    )
    .unwrap();
    std::fs::write(failed.join("run.json"), "{\"status\": \"failed\"}").unwrap();
    // A running run (its lock held here) whose last metric is an hour old.
    let stuck = study_dir.join("narrow-lr0.05-s0");
    std::fs::create_dir_all(&stuck).unwrap();
    let old = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 3600.0;
    std::fs::write(
        stuck.join("metrics.jsonl"),
        line("train", 4, old - 2.0, ",\"train_loss\":1.5")
            + &line("train", 8, old, ",\"train_loss\":1.4"),
    )
    .unwrap();
    let lock = std::fs::File::create(stuck.join(vigil::run_dir::LOCK_FILE)).unwrap();
    // SAFETY: flock on our own descriptor.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    let output = vigil(
        dir.path(),
        &["study", "status", study_dir.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("queued 6 · running 1 · completed 0 · failed 1 · interrupted 0"),
        "{text}"
    );
    assert!(text.contains("ETA "), "{text}");
    for expected in [
        "FLAG wide-lr0.1-s1: accuracy out of [0, 1]: val_acc at epoch 1, step 1 (validation) = 1.25",
        "FLAG wide-lr0.1-s1: non-finite metric: val_loss",
        "FLAG narrow-lr0.05-s0: stuck: no progress for 1h00m",
        "FLAG study: failure rate above 10 %: 1 of 1 ended runs failed",
    ] {
        assert!(text.contains(expected), "no `{expected}` in\n{text}");
    }
    assert!(
        text.contains("running     narrow-lr0.05-s0 step 8/16, 2.0 steps/s"),
        "{text}"
    );
    drop(lock);
}

/// Bring up the single-node SLURM the project ships (idempotent; `.ci/run` stops it).
fn slurm_up() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-local.sh");
    let output = Command::new("bash").arg(script).arg("up").output().unwrap();
    assert!(
        output.status.success(),
        "scripts/slurm-local.sh up failed (it needs root or password-less sudo, and apt): {}",
        stderr(&output)
    );
}

#[test]
fn a_study_on_slurm_survives_a_requeue_and_equals_the_local_executors() {
    slurm_up();
    let dir = tempfile::tempdir().unwrap();
    // Runs of 100 epochs of 32 steps (several seconds each), so that a signal lands mid-run
    // on a task SLURM has finished starting.
    let study = write_small_study(dir.path(), 100, 16);
    let text = std::fs::read_to_string(&study).unwrap();
    let slurm_study = dir.path().join("slurm.toml");
    // The SLURM study's runs also tell a webhook when the study has finished: the last task to
    // end sends it, once.
    let webhook = crate::notifications::Recorder::start();
    std::fs::write(
        &slurm_study,
        text.replace("root = \"studies\"", "root = \"on-slurm\"").replace(
            "[set]\n",
            &format!(
                "[set]\nnotify = [{{ url = \"{}\", on = [\"study_finished\"] }}]\n",
                webhook.url("/study")
            ),
        ) + "[slurm]\nmax_running = 2\ncpus_per_task = 1\ntime = \"00:20:00\"\nsignal_seconds = 60\n",
    )
    .unwrap();
    let output = vigil(
        dir.path(),
        &["study", "submit", slurm_study.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    let job = printed
        .split("SLURM job ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id in {printed}"))
        .to_string();
    let script =
        std::fs::read_to_string(dir.path().join("on-slurm/small/slurm/array.sbatch")).unwrap();
    for line in [
        "#SBATCH --array=0-7%2",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@60",
    ] {
        assert!(script.contains(line), "no `{line}` in\n{script}");
    }
    let study_dir = dir.path().join("on-slurm/small");
    let state = |name: &str| vigil::run_dir::read_run(&study_dir.join(name)).state;
    use vigil::run_dir::RunState;
    // Signal a task whose run is training past its first checkpoint, as SLURM does before the
    // time limit: it writes a checkpoint and requeues itself.
    let deadline = Instant::now() + Duration::from_secs(300);
    let (signalled, index) = loop {
        assert!(Instant::now() < deadline, "no task started training");
        if let Some((index, name)) = NAMES.iter().enumerate().find(|(_, n)| {
            let step = vigil::run_dir::read_run(&study_dir.join(n))
                .last_record
                .and_then(|r| r["global_step"].as_u64())
                .unwrap_or(0);
            state(n) == RunState::Running
                && study_dir.join(n).join("checkpoints").exists()
                && (400..1600).contains(&step)
        }) {
            break (name.to_string(), index);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Plan indices follow the variants' order in the file: narrow first (sorted).
    // Assert what happened, not scancel's exit status: for an array task, slurmctld can
    // deliver the signal and still answer "Job can not be altered now". The run's record says
    // whether SIGUSR1 reached it; until it does, signal again.
    let interrupted_by_usr1 = || {
        std::fs::read(study_dir.join(&signalled).join("run.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .is_some_and(|run| run["attempts"][0]["signal"] == "SIGUSR1")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !interrupted_by_usr1() {
        assert!(
            Instant::now() < deadline && state(&signalled) != RunState::Completed,
            "SIGUSR1 never reached {signalled}"
        );
        let _ = Command::new("scancel")
            .args(["-b", "--signal=USR1", &format!("{job}_{index}")])
            .output()
            .unwrap();
        let wait = Instant::now() + Duration::from_secs(3);
        while Instant::now() < wait && !interrupted_by_usr1() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while NAMES.iter().any(|n| state(n) != RunState::Completed) {
        assert!(
            Instant::now() < deadline,
            "the study did not complete on SLURM: {}",
            stdout(&vigil(
                dir.path(),
                &["study", "status", study_dir.to_str().unwrap()]
            ))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while webhook.bodies().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no study_finished from the SLURM tasks"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every task has ended; none sends it again.
    std::thread::sleep(Duration::from_secs(2));
    let told = webhook.bodies();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["event"], "study_finished");
    assert_eq!(told[0]["metrics"]["completed"], 8.0, "{told:?}");
    assert!(told[0]["run_dir"]
        .as_str()
        .unwrap()
        .ends_with("on-slurm/small"));
    let run = json(study_dir.join(&signalled).join("run.json"));
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{signalled} was not requeued: {run}");
    assert_eq!(attempts[0]["signal"], "SIGUSR1", "{run}");
    assert!(attempts[1]["from_step"].as_u64().unwrap() > 0);
    let status = vigil(
        dir.path(),
        &["study", "status", study_dir.to_str().unwrap()],
    );
    assert!(
        stdout(&status).contains(&format!("SLURM job {job}")),
        "{}",
        stdout(&status)
    );

    // The same study by the local executor gives the same metrics, record for record.
    let output = vigil(
        dir.path(),
        &["study", "run", study.to_str().unwrap(), "--jobs", "2"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    for name in NAMES {
        let on_slurm = records_without_time(&study_dir.join(name).join("metrics.jsonl"));
        let local = records_without_time(
            &dir.path()
                .join("studies/small")
                .join(name)
                .join("metrics.jsonl"),
        );
        assert_eq!(on_slurm.len(), local.len(), "{name}");
        assert!(
            on_slurm == local,
            "{name}: the SLURM run's metrics differ from the local run's"
        );
    }
}

#[test]
fn export_writes_a_typed_table_that_pyarrow_reads_and_the_report_tests_both_hypotheses() {
    let dir = tempfile::tempdir().unwrap();
    let study_dir = run_small_study(dir.path(), 6);
    let table = dir.path().join("study.parquet");
    let output = vigil(
        dir.path(),
        &[
            "study",
            "export",
            study_dir.to_str().unwrap(),
            "--to",
            table.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let script = r#"
import json, sys
import pyarrow.parquet as pq
out = {}
for name in sys.argv[1:]:
    t = pq.read_table(name)
    meta = t.schema.metadata or {}
    out[name] = {
        "types": {f.name: str(f.type) for f in t.schema},
        "rows": t.to_pylist(),
        "dictionary": json.loads(meta[b"vigil.columns"]),
    }
print(json.dumps(out))
"#;
    let trajectories = dir.path().join("study_trajectories.parquet");
    let output = Command::new(crate::util::pytorch_python())
        .args(["-c", script])
        .arg(&table)
        .arg(&trajectories)
        .output()
        .unwrap();
    assert!(output.status.success(), "pyarrow: {}", stderr(&output));
    let read: Value = serde_json::from_slice(&output.stdout).unwrap();
    let summary = &read[table.to_str().unwrap()];
    let types = summary["types"].as_object().unwrap();
    for (column, kind) in [
        ("run_id", "string"),
        ("variant", "string"),
        ("state", "string"),
        ("lr", "double"),
        ("seed", "int64"),
        ("alpha_early", "double"),
        ("alpha_full", "double"),
        ("r_squared", "double"),
        ("knee_epoch", "int64"),
        ("burn_in_loss", "double"),
        ("best_val_ce", "double"),
        ("best_val_epoch", "int64"),
        ("final_val_acc", "double"),
        ("steps_per_s", "double"),
    ] {
        assert_eq!(types[column], kind, "{column}: {types:?}");
        assert!(
            summary["dictionary"][column]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "no meaning for {column}"
        );
    }
    let rows = summary["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    for row in rows {
        let name = row["run_id"].as_str().unwrap();
        assert_eq!(row["state"], "completed");
        assert_eq!(
            row["seed"].as_i64().unwrap(),
            if name.ends_with("s1") { 1 } else { 0 }
        );
        // alpha_early another way: the slope through the two epochs of 5–15 that exist,
        // from the epoch records of metrics.jsonl.
        let losses: Vec<(f64, f64)> =
            std::fs::read_to_string(study_dir.join(name).join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|r| r["kind"] == "epoch")
                .map(|r| {
                    (
                        r["epoch"].as_f64().unwrap(),
                        r["train_loss"].as_f64().unwrap(),
                    )
                })
                .filter(|(e, _)| (5.0..=15.0).contains(e))
                .collect();
        assert_eq!(losses.len(), 2, "{name}");
        let reference =
            (losses[1].1.ln() - losses[0].1.ln()) / (losses[1].0.ln() - losses[0].0.ln());
        let alpha = row["alpha_early"].as_f64().unwrap();
        assert!(
            (alpha - reference).abs() <= 1e-9,
            "{name}: {alpha} vs {reference}"
        );
        let best = json(study_dir.join(name).join("run.json"))["best_val_loss"]
            .as_f64()
            .unwrap();
        assert_eq!(row["best_val_ce"].as_f64().unwrap(), best, "{name}");
    }
    let points = read[trajectories.to_str().unwrap()]["rows"]
        .as_array()
        .unwrap();
    // Every run validates 4 times an epoch for 6 epochs: train and validation loss and
    // accuracy at each.
    assert_eq!(points.len(), 8 * 24 * 4, "{}", points.len());
    assert!(points
        .iter()
        .any(|p| p["kind"] == "validation" && p["metric"] == "val_loss"));

    // CSV too.
    let csv = dir.path().join("study.csv");
    let output = vigil(
        dir.path(),
        &[
            "study",
            "export",
            study_dir.to_str().unwrap(),
            "--to",
            csv.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with("run_id,variant,state,priority,lr,seed,alpha_early,"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 9);
    assert!(dir.path().join("study_trajectories.csv").exists());

    let output = vigil(
        dir.path(),
        &["study", "report", study_dir.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let report = stdout(&output);
    assert!(report.contains("8 of 8 runs completed"), "{report}");
    assert!(report.contains("H1 (power laws are prevalent"), "{report}");
    assert!(
        report.contains("H2 (the early slope predicts the result"),
        "{report}"
    );
}

#[test]
fn retry_runs_the_failed_runs_again_with_other_settings_and_keeps_the_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let study = write_small_study(dir.path(), 1, 32);
    // One learning rate diverges: the loss becomes NaN and the run stops as failed.
    let text = std::fs::read_to_string(&study)
        .unwrap()
        .replace("\"optim.lr\" = [0.05, 0.1]", "\"optim.lr\" = [0.05, 1e30]");
    std::fs::write(&study, text).unwrap();
    let output = vigil(
        dir.path(),
        &["study", "run", study.to_str().unwrap(), "--jobs", "2"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let study_dir = dir.path().join("studies/small");
    let status = stdout(&vigil(
        dir.path(),
        &["study", "status", study_dir.to_str().unwrap()],
    ));
    assert!(status.contains("completed 4 · failed 4"), "{status}");
    assert!(
        status.contains("FLAG study: failure rate above 10 %"),
        "{status}"
    );
    let diverged = "wide-lr1e30-s0";
    let failed_with = json(study_dir.join(diverged).join("run.json"))["error"]
        .as_str()
        .unwrap()
        .to_string();

    let output = vigil(
        dir.path(),
        &[
            "study",
            "retry",
            study_dir.to_str().unwrap(),
            "--set",
            "optim.lr=0.01",
            "--reason",
            "diverged: lr too large",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("8 of 8 runs completed"),
        "{}",
        stdout(&output)
    );
    let config: toml::Table = toml::from_str(
        &std::fs::read_to_string(study_dir.join(diverged).join("config.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["optim"]["lr"].as_float(), Some(0.01));
    // The failed attempt is kept, and the retry recorded with its reason.
    assert!(study_dir
        .join("retired")
        .join(format!("{diverged}.1"))
        .join("run.json")
        .exists());
    let retries = json(study_dir.join("retries.json"));
    let retry = retries
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run"] == diverged)
        .unwrap();
    assert_eq!(retry["reason"], "diverged: lr too large");
    assert_eq!(retry["set"], serde_json::json!(["optim.lr=0.01"]));
    assert_eq!(retry["failed_with"].as_str().unwrap(), failed_with);
    assert_eq!(retries.as_array().unwrap().len(), 4);
    // Nothing is left to retry.
    let again = vigil(dir.path(), &["study", "retry", study_dir.to_str().unwrap()]);
    assert!(
        stdout(&again).contains("nothing to retry"),
        "{}",
        stdout(&again)
    );
    let csv = dir.path().join("s.csv");
    let output = vigil(
        dir.path(),
        &[
            "study",
            "export",
            study_dir.to_str().unwrap(),
            "--to",
            csv.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = std::fs::read_to_string(csv).unwrap();
    let line = text.lines().find(|l| l.starts_with(diverged)).unwrap();
    assert!(line.ends_with(",1,optim.lr=0.01"), "{line}");
}
