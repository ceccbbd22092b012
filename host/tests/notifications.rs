//! `[[notify]]`: a local HTTP server started by the test records what vigil sends. A failed run
//! sends exactly one `failed` message with its error; a finished run one `finished`; an event
//! that repeats is sent once within `min_interval_s`; an unreachable webhook leaves the run
//! completed with a warning; a `url_env` address is written to no file of the run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::util::{json, stderr};

/// An HTTP server on 127.0.0.1 that answers 200 to everything and keeps each request's path
/// and JSON body; it stops when dropped.
pub struct Recorder {
    pub port: u16,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    if let Some(request) = answer(stream) {
                        kept.lock().unwrap().push(request);
                    }
                }
            }
        });
        Recorder {
            port,
            requests,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The JSON bodies received so far.
    pub fn bodies(&self) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body)| body.clone())
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn answer(stream: TcpStream) -> Option<(String, Value)> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = reader.into_inner();
    let _ =
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    Some((path, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// An MLP whose learning rate makes the loss not finite after a step or two.
fn diverging(policy: &str, notify: &str) -> String {
    format!(
        "anomaly_policy = \"{policy}\"\nseed = 1\nepochs = 1\nbatch_size = 32\ndata = \"synthetic\"\n\
         run_dir = \"o\"\n\
         [synthetic]\ntrain_size = 256\ntest_size = 64\nclasses = 4\nimage_size = 8\n\
         [model]\nkind = \"mlp\"\nhidden = [16]\n[optim]\nlr = 1e12\nmomentum = 0.0\n{notify}"
    )
}

fn train(dir: &Path, config: &str, env: &[(&str, &str)]) -> std::process::Output {
    std::fs::write(dir.join("c.toml"), config).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"));
    command
        .args(["train", "c.toml"])
        .current_dir(dir)
        .env_remove("LD_LIBRARY_PATH");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn events(bodies: &[Value]) -> Vec<&str> {
    bodies
        .iter()
        .map(|b| b["event"].as_str().unwrap())
        .collect()
}

#[test]
fn a_failed_run_sends_one_failed_message_with_its_error() {
    let server = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let notify = format!("[[notify]]\nurl = \"{}\"\n", server.url("/hook"));
    let output = train(dir.path(), &diverging("stop", &notify), &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let bodies = server.bodies();
    assert_eq!(events(&bodies), ["failed"], "{bodies:?}");
    let failed = &bodies[0];
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("training loss is"),
        "{failed}"
    );
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["run"], "c");
    assert!(failed["run_dir"].as_str().unwrap().ends_with("/o"));
    assert!(!failed["error_lines"].as_array().unwrap().is_empty());
    assert!(failed["step"].is_u64() && failed["host"].is_string());
    assert_eq!(json(dir.path().join("o/run.json"))["status"], "failed");
}

#[test]
fn a_finished_run_says_so_once_and_a_repeated_anomaly_is_throttled() {
    let server = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    // Every batch but the first is skipped as not finite: 7 anomalies, one message.
    let notify = format!(
        "[[notify]]\nurl = \"{}\"\nformat = \"json\"\nmin_interval_s = 3600\n\
         [[notify]]\nurl = \"{}\"\nformat = \"slack\"\non = [\"finished\"]\n",
        server.url("/json"),
        server.url("/slack")
    );
    let output = train(dir.path(), &diverging("skip_batch", &notify), &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = json(dir.path().join("o/run.json"));
    let anomalies = summary["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w.as_str().unwrap().contains("batch skipped"))
        .count();
    assert!(anomalies >= 2, "the run must repeat the anomaly: {summary}");
    let requests = server.requests.lock().unwrap().clone();
    let json_events: Vec<&str> = requests
        .iter()
        .filter(|(path, _)| path == "/json")
        .map(|(_, body)| body["event"].as_str().unwrap())
        .collect();
    assert_eq!(json_events, ["anomaly", "finished"], "{requests:?}");
    let slack: Vec<&Value> = requests
        .iter()
        .filter(|(path, _)| path == "/slack")
        .map(|(_, body)| body)
        .collect();
    assert_eq!(slack.len(), 1, "{requests:?}");
    assert!(slack[0]["text"].as_str().unwrap().contains("finished"));
}

#[test]
fn an_unreachable_webhook_leaves_the_run_completed_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let notify = format!("[[notify]]\nurl = \"http://127.0.0.1:{port}/gone\"\n");
    let output = train(
        dir.path(),
        &diverging("warn", &notify).replace("lr = 1e12", "lr = 0.01"),
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = json(dir.path().join("o/run.json"));
    assert_eq!(summary["status"], "completed");
    let warnings: Vec<&str> = summary["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("`finished` notification") && w.contains("could not be sent")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().all(|w| !w.contains("/gone")),
        "{warnings:?}"
    );
}

#[test]
fn a_url_from_url_env_is_written_nowhere() {
    let server = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = server.url("/services/T000/B000/s3cr3t-token");
    let notify = "[[notify]]\nurl_env = \"VIGIL_TEST_HOOK\"\nformat = \"discord\"\n";
    let output = train(
        dir.path(),
        &diverging("warn", notify).replace("lr = 1e12", "lr = 0.01"),
        &[("VIGIL_TEST_HOOK", &secret)],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let bodies = server.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0]["content"].as_str().unwrap().contains("finished"));
    for (path, file) in crate::resume::files(&dir.path().join("o")) {
        let text = String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned();
        assert!(
            !text.contains("s3cr3t-token"),
            "{path} holds the webhook's address"
        );
    }
    assert!(
        !stderr(&output).contains("s3cr3t") && !crate::util::stdout(&output).contains("s3cr3t")
    );

    // Unset, the variable is a clear error before anything is written.
    let again = tempfile::tempdir().unwrap();
    let output = train(again.path(), &diverging("warn", notify), &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("VIGIL_TEST_HOOK"),
        "{}",
        stderr(&output)
    );
    assert!(!again.path().join("o").exists());
}

#[test]
fn a_study_says_once_that_it_fails_too_often_and_once_that_it_finished() {
    let server = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    // Two runs at once; the one with lr 1e30 fails at its first step (anomaly_policy "stop").
    let variant = format!(
        "epochs = 1\nbatch_size = 32\ndata = \"synthetic\"\n\
         [synthetic]\ntrain_size = 256\ntest_size = 64\nclasses = 4\nimage_size = 8\n\
         [model]\nkind = \"mlp\"\nhidden = [16]\n[optim]\nlr = 0.05\n\
         [[notify]]\nurl = \"{}\"\non = [\"study_finished\", \"study_failure_rate\", \"failed\"]\n",
        server.url("/study")
    );
    std::fs::write(dir.path().join("v.toml"), variant).unwrap();
    std::fs::write(
        dir.path().join("study.toml"),
        "name = \"tiny\"\nroot = \"studies\"\nvariants = { v = \"v.toml\" }\nthreads = 1\n\
         [grid]\n\"optim.lr\" = [0.05, 1e30]\n",
    )
    .unwrap();
    let output = crate::util::vigil(dir.path(), &["study", "run", "study.toml", "--jobs", "2"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let bodies = server.bodies();
    let mut seen = events(&bodies);
    seen.sort_unstable();
    assert_eq!(
        seen,
        ["failed", "study_failure_rate", "study_finished"],
        "{bodies:?}"
    );
    let finished = bodies
        .iter()
        .find(|b| b["event"] == "study_finished")
        .unwrap();
    assert_eq!(finished["study"], "tiny");
    assert_eq!(finished["metrics"]["runs"], 2.0);
    assert_eq!(finished["metrics"]["failed"], 1.0);
    assert!(finished["run_dir"]
        .as_str()
        .unwrap()
        .ends_with("studies/tiny"));

    // Run again: nothing is left to run, and nothing is sent twice.
    let again = crate::util::vigil(dir.path(), &["study", "run", "study.toml"]);
    assert!(again.status.code().is_some(), "{}", stderr(&again));
    assert_eq!(server.bodies().len(), bodies.len());
}

#[test]
fn a_disabled_monitor_and_an_interruption_are_told() {
    let server = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "seed = 1\nepochs = 500\nbatch_size = 32\ndata = \"synthetic\"\nrun_dir = \"o\"\n{}\n\
         [synthetic]\ntrain_size = 256\ntest_size = 64\nclasses = 4\nimage_size = 8\n\
         [model]\nkind = \"mlp\"\nhidden = [16]\n\
         [[monitors]]\nname = \"fault-injector\"\n\
         settings = {{ fault = \"panic\", event = \"train_batch_end\", at_step = 3 }}\n\
         [[notify]]\nurl = \"{}\"\n",
        crate::util::plugin_dirs_toml(),
        server.url("/hook")
    );
    std::fs::write(dir.path().join("c.toml"), config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["train", "c.toml"])
        .current_dir(dir.path())
        .env_remove("LD_LIBRARY_PATH")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the monitor has been disabled (its message has arrived).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !events(&server.bodies()).contains(&"monitor_disabled") {
        assert!(child.try_wait().unwrap().is_none(), "the run ended first");
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(75), "{}", stderr(&output));
    let bodies = server.bodies();
    assert_eq!(
        events(&bodies),
        ["monitor_disabled", "interrupted"],
        "{bodies:?}"
    );
    assert!(bodies[0]["message"]
        .as_str()
        .unwrap()
        .contains("monitor `fault-injector` disabled"));
    assert_eq!(bodies[1]["status"], "interrupted");
}
