//! `vigil serve` in a real headless Chromium (a run page that updates while the run trains,
//! its images, a study page, a compare page), what the server refuses (paths out of its
//! directories, foreign hosts, writes, a missing token), and `vigil compare`.
//!
//! Screenshots go to `<target>/tmp/dashboard/`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::study::run_small_study;
use crate::util::{json, plugin_dirs_toml, stderr, stdout, vigil};
use vigil::bench::webdriver::{free_port, Browser};

/// A `vigil serve` process in a process group of its own, killed when dropped.
struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    fn start(dir: &Path, args: &[&str]) -> Serve {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("serve")
            .args(args)
            .args(["--port", &port.to_string()])
            .current_dir(dir)
            .env_remove("VIGIL_SERVE_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "vigil serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Serve { child, port }
    }

    fn url(&self, hash: &str) -> String {
        format!("http://127.0.0.1:{}/{hash}", self.port)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: a signal to the process group this struct started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One request written by hand (so that nothing normalises the path), and the whole answer.
fn exchange(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A request's status and body.
fn raw(port: u16, method: &str, target: &str, host: &str, extra: &str) -> (u16, String) {
    let text = exchange(
        port,
        &format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
    );
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn get(port: u16, target: &str) -> (u16, String) {
    raw(port, "GET", target, &format!("127.0.0.1:{port}"), "")
}

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard")
}

fn number(browser: &Browser, script: &str) -> f64 {
    browser.eval(script).as_f64().unwrap_or(0.0)
}

#[test]
fn the_run_page_draws_a_training_run_live_with_its_images() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "name = \"live\"\nseed = 0\nepochs = 3\nbatch_size = 32\ndata = \"synthetic\"\n{}\n\
         [synthetic]\ntrain_size = 1024\ntest_size = 256\nclasses = 4\nimage_size = 12\n\
         [model]\nkind = \"mlp\"\nhidden = [32]\n[optim]\nlr = 0.05\n\
         [[monitors]]\nname = \"fault-injector\"\nsettings = {{ sleep_ms = 120 }}\n\
         [[monitors]]\nname = \"confusion-matrix\"\n\
         [[monitors]]\nname = \"gradient\"\nsettings = {{ log_every_n_steps = 4 }}\n",
        plugin_dirs_toml()
    );
    std::fs::write(dir.path().join("live.toml"), config).unwrap();
    let mut training = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["train", "live.toml", "--set", "run_dir=runs/live"])
        .current_dir(dir.path())
        .env("XDG_DATA_HOME", dir.path().join(".xdg-data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("runs/live/metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.matches("\"train\"").count()) < 3 {
        assert!(Instant::now() < deadline, "the run did not start");
        assert!(
            training.try_wait().unwrap().is_none(),
            "the run ended early"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let serve = Serve::start(dir.path(), &["runs"]);
    let browser = Browser::start();
    browser.goto(&serve.url("#/run/0%2Flive"));
    let loss_points =
        "return Number(document.querySelector('[data-chart=\"loss\"]')?.dataset.points || 0)";
    let first = browser
        .wait(loss_points, "the loss chart", Duration::from_secs(30))
        .as_f64()
        .unwrap();
    let page_load = browser.eval("return window.vigilPageLoad");
    browser.wait(
        &format!("return Number(document.querySelector('[data-chart=\"loss\"]').dataset.points) > {first} + 10"),
        "the loss chart to gain points",
        Duration::from_secs(60),
    );
    assert_eq!(
        browser.eval("return window.vigilPageLoad"),
        page_load,
        "no reload"
    );
    assert_eq!(
        browser.eval("return performance.getEntriesByType('navigation').length"),
        1
    );
    assert_eq!(
        browser.eval("return document.querySelector('h1 .badge').textContent"),
        "running"
    );
    // The confusion matrix of each validation, as it is written.
    browser.wait(
        "return [...document.querySelectorAll('img[data-image]')].some(i => i.complete && i.naturalWidth > 0)",
        "a monitor's image",
        Duration::from_secs(90),
    );
    let output = training.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The end of the run reaches the page too: its status, and the chart has every line.
    browser.wait(
        "return document.querySelector('h1 .badge').textContent === 'completed'",
        "the run's status to become completed",
        Duration::from_secs(30),
    );
    let train_lines = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"train\""))
        .count();
    let validations = std::fs::read_to_string(&metrics)
        .unwrap()
        .matches("\"kind\":\"validation\"")
        .count();
    // raw and smoothed train loss, and the validation loss.
    browser.wait(
        &format!(
            "return Number(document.querySelector('[data-chart=\"loss\"]').dataset.points) === {}",
            2 * train_lines + validations
        ),
        "every line in the loss chart",
        Duration::from_secs(30),
    );
    assert!(
        number(
            &browser,
            "return document.querySelectorAll('[data-chart]').length"
        ) >= 4.0,
        "loss, accuracy, learning rate and the gradient monitor's charts"
    );
    browser.wait(
        "return document.querySelector('[data-epoch-slider]') !== null",
        "an epoch slider over the confusion matrices",
        Duration::from_secs(20),
    );
    browser.screenshot(&screenshots().join("run.png"));
    browser.goto(&serve.url("#/"));
    browser.wait(
        "return document.querySelectorAll('[data-table=\"runs\"] tbody tr').length === 1",
        "the runs list",
        Duration::from_secs(20),
    );
    browser.screenshot(&screenshots().join("runs.png"));
}

#[test]
fn the_study_and_compare_pages_show_a_studys_runs_flags_and_differences() {
    let dir = tempfile::tempdir().unwrap();
    let study_dir = run_small_study(dir.path(), 1);
    // One run logged a value that was not finite: the study flags it.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(study_dir.join("wide-lr0.1-s0/metrics.jsonl"))
        .unwrap();
    file.write_all(b"{\"kind\":\"train\",\"epoch\":1,\"global_step\":16,\"train_loss\":null,\"wall_time\":1.0}\n")
        .unwrap();
    let status = vigil(
        dir.path(),
        &["study", "status", study_dir.to_str().unwrap(), "--json"],
    );
    let status: Value = serde_json::from_str(&stdout(&status)).unwrap();
    let flags = status["flags"].as_array().unwrap().len();
    assert!(flags >= 1, "{status}");

    let serve = Serve::start(dir.path(), &["studies"]);
    let browser = Browser::start();
    browser.goto(&serve.url("#/study/0%2Fsmall"));
    browser.wait(
        "return document.querySelectorAll('[data-table=\"study\"] tbody tr').length === 8",
        "the study's eight runs",
        Duration::from_secs(30),
    );
    assert_eq!(
        number(
            &browser,
            "return document.querySelectorAll('[data-table=\"flags\"] tbody tr').length"
        ),
        flags as f64
    );
    let flagged = browser.eval("return document.querySelector('[data-table=\"flags\"]').innerText");
    assert!(
        flagged.as_str().unwrap().contains("wide-lr0.1-s0"),
        "{flagged}"
    );
    assert!(browser
        .eval("return document.querySelector('[data-report]').textContent")
        .as_str()
        .unwrap()
        .contains("H2"));
    browser.eval(
        "const x = document.querySelector('[data-x]'); x.value = 'lr'; x.dispatchEvent(new Event('change')); return true",
    );
    browser.wait(
        "return document.querySelector('[data-chart=\"scatter\"]').dataset.points === '8'",
        "a scatter of lr against best_val_ce",
        Duration::from_secs(10),
    );
    browser.screenshot(&screenshots().join("study.png"));

    let (a, b) = ("wide-lr0.05-s0", "wide-lr0.1-s1");
    browser.goto(&serve.url(&format!(
        "#/compare?run=0%2Fsmall%2F{a}&run=0%2Fsmall%2F{b}"
    )));
    let keys = browser.wait(
        "const rows = [...document.querySelectorAll('[data-key]')].map(r => r.dataset.key); return rows.length ? rows : null",
        "the keys that differ",
        Duration::from_secs(30),
    );
    assert_eq!(keys, serde_json::json!(["optim.lr", "seed"]));
    browser.wait(
        "return Number(document.querySelector('[data-chart=\"overlay\"]')?.dataset.points || 0) > 0",
        "the overlaid validation loss",
        Duration::from_secs(20),
    );
    browser.screenshot(&screenshots().join("compare.png"));

    // The same two runs in the terminal: exactly the grid keys that differ, then the metrics.
    let (dir_a, dir_b) = (study_dir.join(a), study_dir.join(b));
    let args = |extra: &[&str]| {
        let mut all = vec![
            "compare".to_string(),
            dir_a.display().to_string(),
            dir_b.display().to_string(),
        ];
        all.extend(extra.iter().map(|s| s.to_string()));
        all
    };
    let run = |extra: &[&str]| {
        let args = args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = vigil(dir.path(), &args);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    let text = run(&[]);
    let keys_shown: Vec<&str> = text
        .lines()
        .skip(3)
        .take_while(|line| !line.starts_with('-'))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(keys_shown, ["optim.lr", "seed"], "{text}");
    let lr_line = text.lines().find(|l| l.starts_with("optim.lr")).unwrap();
    assert_eq!(
        lr_line.split_whitespace().collect::<Vec<_>>(),
        ["optim.lr", "0.05", "0.1"]
    );
    let best = |run: &Path| {
        json(run.join("run.json"))["best_val_loss"]
            .as_f64()
            .unwrap()
    };
    let compared: Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!(config_keys(&compared), ["optim.lr", "seed"]);
    let best_row = &compared["metrics"][0];
    assert_eq!(best_row["metric"], "best_val_loss");
    assert_eq!(best_row["values"][0].as_f64(), Some(best(&dir_a)));
    assert_eq!(best_row["values"][1].as_f64(), Some(best(&dir_b)));
    assert_eq!(
        best_row["deltas"][1].as_f64(),
        Some(best(&dir_b) - best(&dir_a))
    );
    let best_line = text
        .lines()
        .find(|l| l.starts_with("best_val_loss"))
        .unwrap();
    assert!(
        best_line.contains(&format!("{:.4}", best(&dir_a))[..5]),
        "{best_line}"
    );
    assert!(run(&["--md"])
        .starts_with("|  | small/wide-lr0.05-s0 | small/wide-lr0.1-s1 |\n|---|---|---|\n"));
    // A study directory stands for its runs; the variants' own difference shows.
    let whole = vigil(
        dir.path(),
        &["compare", study_dir.to_str().unwrap(), "--json"],
    );
    let whole: Value = serde_json::from_str(&stdout(&whole)).unwrap();
    assert_eq!(whole["runs"].as_array().unwrap().len(), 8);
    assert_eq!(
        config_keys(&whole),
        ["model.hidden", "name", "optim.lr", "seed"]
    );
    let bad = vigil(dir.path(), &["compare", dir.path().to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("neither a run directory"),
        "{}",
        stderr(&bad)
    );
}

/// The config keys of `vigil compare --json`'s answer.
fn config_keys(compared: &Value) -> Vec<&str> {
    compared["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["key"].as_str().unwrap())
        .collect()
}

#[test]
fn nothing_outside_the_served_directories_is_read_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let run = runs.join("r");
    std::fs::create_dir_all(run.join("artifacts/m")).unwrap();
    std::fs::write(run.join("config.toml"), "epochs = 1\n").unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"kind\":\"train\",\"global_step\":1,\"train_loss\":1.0}\n{\"kind\":\"tr",
    )
    .unwrap();
    std::fs::write(run.join("artifacts/m/ok.png"), b"\x89PNG fake").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "TOP-SECRET").unwrap();
    std::fs::create_dir_all(dir.path().join("outside")).unwrap();
    std::fs::write(dir.path().join("outside/config.toml"), "TOP-SECRET = 1\n").unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("secret.txt"),
        run.join("artifacts/m/link.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), runs.join("link")).unwrap();
    let before = listing(dir.path());
    let serve = Serve::start(dir.path(), &["runs"]);
    let port = serve.port;

    let (status, body) = get(port, "/api/file?run=0%2Fr&path=artifacts%2Fm%2Fok.png");
    assert_eq!((status, body.as_str()), (200, "\u{fffd}PNG fake"));
    for target in [
        "/api/file?run=0%2Fr&path=..%2F..%2Fsecret.txt",
        "/api/file?run=0%2Fr&path=%2e%2e%2f%2e%2e%2fsecret.txt",
        "/api/file?run=0%2Fr&path=%2E%2E/%2E%2E/secret.txt",
        "/api/file?run=0%2Fr&path=artifacts/../../../secret.txt",
        &format!(
            "/api/file?run=0%2Fr&path={}",
            dir.path().join("secret.txt").display()
        ),
        "/api/file?run=0%2Fr&path=artifacts%2Fm%2Flink.txt",
        "/api/file?run=0%2F..&path=secret.txt",
        "/api/file?run=0%2F..%2F..&path=secret.txt",
        "/api/run?run=0%2Flink",
        "/api/run?run=0%2F..%2Foutside",
        "/api/run?run=0%2F%2e%2e%2Foutside",
        &format!("/api/run?run=0%2F{}", dir.path().join("outside").display()),
        "/api/metrics?run=0%2F..%2Foutside",
        "/api/events?run=0%2F..%2Foutside",
        "/../secret.txt",
        "/%2e%2e/%2e%2e/secret.txt",
        "/..%2f..%2fsecret.txt",
        "/etc/passwd",
        "/vendor/../../secret.txt",
        "/api/file?run=0%2Fr&path=config.toml%00.png",
    ] {
        let (status, body) = get(port, target);
        assert_eq!(status, 404, "{target}: {body}");
        assert!(!body.contains("TOP-SECRET"), "{target}: {body}");
    }
    let (status, body) = get(port, "/api/runs");
    assert_eq!(status, 200);
    assert!(
        !body.contains("outside") && !body.contains("TOP-SECRET"),
        "{body}"
    );
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        listed["runs"].as_array().unwrap().len(),
        1,
        "the symlinked directory is not listed"
    );

    // A torn last line is left out; a stream from past the end says the file was cut back.
    let (_, body) = get(port, "/api/metrics?run=0%2Fr");
    let metrics: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(metrics["lines"], 1);
    assert_eq!(
        metrics["series"]["train/train_loss"]["y"],
        serde_json::json!([1.0])
    );
    let (status, body) = get(port, "/api/events?run=0%2Fr&offset=100000");
    assert_eq!(status, 200);
    assert!(body.contains("event: reset"), "{body}");
    let (_, body) = get(port, "/api/events?run=0%2Fr&offset=0");
    assert!(
        body.contains("event: records") && body.contains("event: end"),
        "{body}"
    );

    // A page of another site that rebinds its name to 127.0.0.1 is refused; so are writes.
    let (status, _) = raw(port, "GET", "/api/runs", "evil.example:80", "");
    assert_eq!(status, 421);
    for method in ["POST", "PUT", "DELETE"] {
        let (status, _) = raw(
            port,
            method,
            "/api/runs",
            &format!("127.0.0.1:{port}"),
            "Content-Length: 0\r\n",
        );
        assert_eq!(status, 405, "{method}");
    }
    drop(serve);
    assert_eq!(listing(dir.path()), before, "the server wrote nothing");
}

/// Every path under `dir` with its size and modification time.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.push((entry.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn serving_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runs")).unwrap();
    let refused = vigil(
        dir.path(),
        &["serve", "runs", "--host", "0.0.0.0", "--port", "1"],
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("--token"), "{}", stderr(&refused));
    let short = vigil(
        dir.path(),
        &["serve", "runs", "--host", "0.0.0.0", "--token", "short"],
    );
    assert_eq!(short.status.code(), Some(2));

    let token = "a-long-enough-token-1234";
    let serve = Serve::start(dir.path(), &["runs", "--host", "0.0.0.0", "--token", token]);
    let port = serve.port;
    assert_eq!(get(port, "/api/runs").0, 401);
    assert_eq!(get(port, "/?token=wrong-token-of-some-length").0, 401);
    let host = format!("127.0.0.1:{port}");
    for header in [
        format!("Authorization: Bearer {token}\r\n"),
        format!("Cookie: vigil_token={token}\r\n"),
    ] {
        assert_eq!(
            raw(port, "GET", "/api/runs", &host, &header).0,
            200,
            "{header}"
        );
    }
    // The first visit sets the cookie the page's own requests then carry.
    let answer = exchange(
        port,
        &format!("GET /?token={token} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!(
            "Set-Cookie: vigil_token={token}; HttpOnly; SameSite=Strict"
        )),
        "{answer}"
    );
}
