//! `[mlflow]` against a real MLflow tracking server (`mlflow server` from the venv that
//! `scripts/mlflow-venv.sh` makes, on 127.0.0.1, stopped by the test), read back with MLflow's
//! own client: every metric history equals `metrics.jsonl`, the params are the effective
//! config, the artifacts are the run's files byte for byte, the status is FINISHED; a run
//! killed and resumed is one MLflow run with no step twice; a run whose server went down
//! trains at full speed, and `vigil sync` completes the server's copy exactly once.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{build_dir, json, records, stderr, stdout, vigil};

/// The venv of `scripts/mlflow-venv.sh`.
fn mlflow_venv() -> PathBuf {
    let cache = std::env::var_os("VIGIL_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap()).join(".cache"))
                .join("vigil")
        });
    let venv = cache.join("mlflow-3.17.2");
    assert!(
        venv.join("bin/mlflow").is_file(),
        "no MLflow venv at {}: run scripts/bootstrap.sh (the README's test command does)",
        venv.display()
    );
    venv
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `mlflow server` on 127.0.0.1 with a SQLite store in `store`, in a process group of its own
/// that is killed when this is dropped.
struct Server {
    child: Option<Child>,
    port: u16,
}

impl Server {
    fn start(store: &Path, port: u16) -> Server {
        std::fs::create_dir_all(store).unwrap();
        let log = std::fs::File::create(store.join(format!("server-{port}.log"))).unwrap();
        let child = Command::new(mlflow_venv().join("bin/mlflow"))
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", store.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(store.join("artifacts"))
            .args(["--workers", "1"])
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let mut server = Server {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        let http = vigil::http::Http::new(Duration::from_secs(2));
        loop {
            let health = http.get(&format!("{}/health", server.uri()), &[], &[]);
            if health.is_ok_and(|r| r.ok()) {
                return server;
            }
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "mlflow server exited ({status}): {}",
                    std::fs::read_to_string(store.join(format!("server-{port}.log")))
                        .unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mlflow server did not answer in 180 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the process group of our own child.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The run as MLflow's client reads it.
fn mlflow_view(uri: &str, run_id: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mlflow_read.py");
    let output = Command::new(mlflow_venv().join("bin/python"))
        .args(["-W", "ignore"])
        .arg(script)
        .args([uri, run_id])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Each metric's history as `metrics.jsonl` has it, under MLflow's names: `epoch/…` for
/// epoch records, `system/…` for system records.
fn expected_histories(run_dir: &Path, with_system: bool) -> BTreeMap<String, Vec<(u64, f64)>> {
    let mut histories: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for record in records(run_dir) {
        let prefix = match record["kind"].as_str().unwrap() {
            "epoch" => "epoch/",
            "system" if !with_system => continue,
            "system" => "system/",
            _ => "",
        };
        let step = record["global_step"].as_u64().unwrap();
        for (key, value) in record.as_object().unwrap() {
            if ["kind", "epoch", "global_step", "wall_time", "monitor"].contains(&key.as_str()) {
                continue;
            }
            if let Some(value) = value.as_f64() {
                histories
                    .entry(format!("{prefix}{key}"))
                    .or_default()
                    .push((step, value));
            }
        }
    }
    for history in histories.values_mut() {
        history.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    }
    histories
}

fn server_histories(view: &Value, with_system: bool) -> BTreeMap<String, Vec<(u64, f64)>> {
    view["metrics"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, _)| with_system || !key.starts_with("system/"))
        .map(|(key, points)| {
            let mut history: Vec<(u64, f64)> = points
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
                .collect();
            history.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            (key.clone(), history)
        })
        .collect()
}

/// The effective config's leaves by dotted key, as the README says params are named: tables
/// by `.`, arrays of tables and of scalars by `.i` with `.len`, `model.hidden` and
/// `class_weights` whole; strings without quotes.
fn config_leaves(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                config_leaves(&key, value, out);
            }
        }
        toml::Value::Array(items) if prefix != "class_weights" && !prefix.ends_with("hidden") => {
            out.insert(format!("{prefix}.len"), items.len().to_string());
            for (index, item) in items.iter().enumerate() {
                config_leaves(&format!("{prefix}.{index}"), item, out);
            }
        }
        toml::Value::String(text) => {
            out.insert(prefix.to_string(), text.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn config(uri: &str, extra: &str) -> String {
    format!(
        r#"seed = 2
epochs = 3
batch_size = 32
data = "synthetic"
threads = 1
system_metrics_every_s = 0.5
plugin_dirs = [{:?}, {:?}]
{extra}

[synthetic]
train_size = 512
test_size = 128
classes = 4
image_size = 12

[model]
kind = "mlp"
hidden = [32]

[mlflow]
tracking_uri = "{uri}"
experiment = "vigil-tests"
tags = {{ purpose = "test" }}

[[monitors]]
name = "training-history"

[[monitors]]
name = "confusion-matrix"
"#,
        build_dir().display().to_string(),
        crate::util::fixture_dir().display().to_string()
    )
}

fn run_id(run_dir: &Path) -> String {
    json(run_dir.join("run.json"))["mlflow"]["run_id"]
        .as_str()
        .expect("run.json names the MLflow run")
        .to_string()
}

/// Everything about one finished run on the server is what the run directory holds (with
/// `with_system`, system metrics too; and the fault-injector fixture's call counter, which
/// is not kept across a resume, only when `with_system`).
fn assert_same_as_server(uri: &str, run_dir: &Path, with_system: bool) -> Value {
    let view = mlflow_view(uri, &run_id(run_dir));
    assert_eq!(view["status"], "FINISHED");
    assert_eq!(view["experiment"], "vigil-tests");
    let measured =
        |histories: BTreeMap<String, Vec<(u64, f64)>>| -> BTreeMap<String, Vec<(u64, f64)>> {
            histories
                .into_iter()
                .filter(|(key, _)| with_system || !key.starts_with("fault_injector/"))
                .collect()
        };
    let (ours, theirs) = (
        measured(expected_histories(run_dir, with_system)),
        measured(server_histories(&view, with_system)),
    );
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (key, history) in &ours {
        assert_eq!(history, &theirs[key], "history of {key}");
    }
    // Params: the effective config.
    let text = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    let mut leaves = BTreeMap::new();
    let document: toml::Table = toml::from_str(&text).unwrap();
    config_leaves("", &toml::Value::Table(document), &mut leaves);
    let params: BTreeMap<String, String> = view["params"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(params, leaves);
    assert_eq!(view["tags"]["purpose"], "test");
    assert_eq!(view["tags"]["vigil.model"], "mlp");
    // Artifacts: the run's files, byte for byte.
    let artifacts = view["artifacts"].as_object().unwrap();
    for name in ["config.toml", "inputs.json", "run.json"] {
        assert!(artifacts.contains_key(name), "{name} in {artifacts:?}");
    }
    assert!(
        artifacts
            .keys()
            .any(|k| k.starts_with("artifacts/") && k.ends_with(".png")),
        "the monitors' images: {artifacts:?}"
    );
    for (path, digest) in artifacts {
        let local = std::fs::read(run_dir.join(path)).unwrap();
        assert_eq!(digest.as_str().unwrap(), sha256_hex(&local), "{path}");
    }
    view
}

#[test]
fn a_run_and_a_killed_and_resumed_run_reach_mlflow_as_one_run_each() {
    let store = tempfile::tempdir().unwrap();
    let server = Server::start(store.path(), free_port());
    let dir = tempfile::tempdir().unwrap();

    std::fs::write(dir.path().join("c.toml"), config(&server.uri(), "")).unwrap();
    let output = vigil(dir.path(), &["train", "c.toml", "--set", "run_dir=a"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = json(dir.path().join("a/run.json"));
    assert_eq!(summary["mlflow"]["unsent_operations"], 0, "{summary}");
    assert_same_as_server(&server.uri(), &dir.path().join("a"), true);

    // Killed once the server has points from past the newest checkpoint, then resumed: one
    // MLflow run, no step twice in a history, every history (system metrics aside) equal to
    // the resumed run's metrics.jsonl. Steps of 250 ms and a checkpoint an epoch (16 steps),
    // so that a send (every 10 s) lands between two checkpoints.
    let slow = "[[monitors]]\nname = \"fault-injector\"\nsettings = { sleep_ms = 250 }";
    std::fs::write(
        dir.path().join("k.toml"),
        config(&server.uri(), "val_check_interval = 1.0").replace(
            "[[monitors]]\nname = \"training-history\"",
            &format!("{slow}\n\n[[monitors]]\nname = \"training-history\""),
        ),
    )
    .unwrap();
    let run_b = dir.path().join("b");
    let mut child = crate::resume::start(dir.path(), &["train", "k.toml", "--set", "run_dir=b"]);
    let sent_past_checkpoint = || {
        let checkpoint = vigil::train::checkpoint::latest(&run_b)
            .map(|(_, state)| state.global_step)
            .unwrap_or(u64::MAX);
        let state: Value = std::fs::read(run_b.join("mlflow/state.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or(Value::Null);
        state["max_steps"]["train_loss"]
            .as_u64()
            .is_some_and(|sent| sent > checkpoint)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sent_past_checkpoint() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended first");
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    child.wait_with_output().unwrap();
    let state: Value =
        serde_json::from_slice(&std::fs::read(run_b.join("mlflow/state.json")).unwrap()).unwrap();
    let first_run = state["run_id"].as_str().unwrap().to_string();
    let resumed = vigil(dir.path(), &["train", "--resume", "b"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(
        run_id(&run_b),
        first_run,
        "the resumed run continues the MLflow run"
    );
    let view = assert_same_as_server(&server.uri(), &run_b, false);
    // The host's metrics have one value a step (or a validation, or an epoch); so they do on
    // the server, across the kill.
    for key in [
        "train_loss",
        "lr",
        "val_loss",
        "epoch/val_acc",
        "training_history/best_val_loss",
    ] {
        let Some(points) = view["metrics"][key].as_array() else {
            assert!(
                !key.starts_with("train_") && !key.starts_with("val"),
                "{key} missing"
            );
            continue;
        };
        let steps: Vec<u64> = points.iter().map(|p| p[0].as_u64().unwrap()).collect();
        assert!(
            steps.windows(2).all(|w| w[0] < w[1]),
            "{key} has a step twice: {steps:?}"
        );
    }
}

#[test]
fn a_server_down_during_the_run_costs_no_time_and_sync_completes_it_once() {
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(store.path(), port);
    let dir = tempfile::tempdir().unwrap();
    let slow = "[[monitors]]\nname = \"fault-injector\"\nsettings = { sleep_ms = 20 }";
    let text = config(&server.uri(), "").replace(
        "[[monitors]]\nname = \"training-history\"",
        &format!("{slow}\n\n[[monitors]]\nname = \"training-history\""),
    );
    std::fs::write(dir.path().join("c.toml"), &text).unwrap();
    // The same run without MLflow, for the time it takes.
    let plain: String = text.split("[mlflow]").next().unwrap().to_string()
        + &text[text.find("[[monitors]]").unwrap()..];
    std::fs::write(dir.path().join("plain.toml"), plain).unwrap();
    let output = vigil(
        dir.path(),
        &["train", "plain.toml", "--set", "run_dir=plain"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let plain_seconds = json(dir.path().join("plain/run.json"))["wall_time_s"]
        .as_f64()
        .unwrap();

    let run_dir = dir.path().join("r");
    let mut child = crate::resume::start(dir.path(), &["train", "c.toml", "--set", "run_dir=r"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while vigil::train::checkpoint::latest(&run_dir).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended first");
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    server.stop();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = json(run_dir.join("run.json"));
    assert_eq!(summary["status"], "completed");
    assert!(
        summary["mlflow"]["unsent_operations"].as_u64().unwrap() > 0,
        "{summary}"
    );
    let seconds = summary["wall_time_s"].as_f64().unwrap();
    assert!(
        seconds <= plain_seconds * 1.25 + 0.5,
        "{seconds} s with the server down against {plain_seconds} s without MLflow"
    );
    assert!(
        summary["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("vigil sync")),
        "{summary}"
    );

    let _server = Server::start(store.path(), port);
    let synced = vigil(dir.path(), &["sync", "r"]);
    assert!(synced.status.success(), "{}", stderr(&synced));
    assert!(stdout(&synced).contains("r: sent "), "{}", stdout(&synced));
    assert_same_as_server(&server.uri(), &run_dir, true);
    assert_eq!(
        json(run_dir.join("run.json"))["mlflow"]["unsent_operations"],
        0
    );
    let again = vigil(dir.path(), &["sync", "r"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("nothing to send"),
        "{}",
        stdout(&again)
    );

    // A directory that never had MLflow is a clear error.
    let output = vigil(dir.path(), &["sync", "plain"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("[mlflow]"), "{}", stderr(&output));
}
