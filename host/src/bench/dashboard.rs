//! `vigil bench --dashboard`: how fast `vigil serve` answers and its page renders, on
//! generated run directories: a runs list of 216 runs (12 of them training: this process
//! holds their locks, as a training process would) and a run with 100k lines of
//! `metrics.jsonl`.
//!
//! Each repeat starts a fresh server (so the 100k lines are parsed, not read from the
//! server's cache) and, where Chromium and ChromeDriver are installed, loads the page afresh;
//! the page records when it finished drawing a view (`window.vigilRendered`, milliseconds
//! from the start of navigation), which is what is reported. Targets: the runs list within
//! 1 s, the big run within 2 s.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::webdriver::{self, Browser};
use super::Measurement;
use crate::error::{Error, Result};
use crate::run_dir::{Attempt, FinalMetrics, LockFacts, RunInfo, RunLock};
use crate::serve::{ServeOptions, Server};

/// What the dashboard benchmark measures.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    pub runs: usize,
    /// Lines of the big run's `metrics.jsonl`.
    pub lines: usize,
    pub repeats: usize,
    /// Where the generated directories go (removed at the end).
    pub scratch: PathBuf,
}

/// One measured quantity with its target.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardRow {
    pub measurement: Measurement,
    /// Seconds.
    pub target: Option<f64>,
}

/// The benchmark's results.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardReport {
    pub runs: usize,
    pub lines: usize,
    pub metrics_bytes: u64,
    pub rows: Vec<DashboardRow>,
    /// Why the browser timings are missing, when they are.
    pub note: Option<String>,
}

/// Runs that are training while the list is measured.
const RUNNING: usize = 12;
/// Lines of each of the list's runs (more than the 256 KiB a running run's tail read takes).
const LIST_RUN_LINES: usize = 2000;

/// Generate the directories and measure.
pub fn run_dashboard(
    options: &DashboardOptions,
    progress: impl Fn(&str),
) -> Result<DashboardReport> {
    let root = options.scratch.join("runs");
    let _ = std::fs::remove_dir_all(&options.scratch);
    let _scratch = RemovedOnDrop(options.scratch.clone());
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    progress(&format!(
        "writing {} runs and one of {} metric lines to {}",
        options.runs,
        options.lines,
        root.display()
    ));
    let mut locks = Vec::new();
    // The big run is one of the list's runs.
    for index in 0..options.runs.saturating_sub(1) {
        let running = index < RUNNING;
        let dir = root.join(format!("study/run-{index:03}"));
        write_run(&dir, LIST_RUN_LINES, index as u64, running)?;
        if running {
            locks.push(hold(&dir)?);
        }
    }
    let big = root.join("big");
    let metrics_bytes = write_run(&big, options.lines, 7, false)?;
    let ids = ("0/big", "#/run/0%2Fbig");

    let mut list_api = Vec::new();
    let mut metrics_api = Vec::new();
    let mut list_page = Vec::new();
    let mut run_page = Vec::new();
    let browser = webdriver::available().then(Browser::start);
    for repeat in 0..options.repeats.max(1) {
        progress(&format!(
            "repeat {} of {}",
            repeat + 1,
            options.repeats.max(1)
        ));
        let port = start_server(&root)?;
        metrics_api.push(time_get(
            port,
            &format!("/api/metrics?run={}", ids.0.replace('/', "%2F")),
        )?);
        list_api.push(time_get(port, "/api/runs")?);
        if let Some(browser) = &browser {
            // A fresh server again, so that the page's own request parses the big run.
            let port = start_server(&root)?;
            list_page.push(page_seconds(browser, port, "#/", options.runs)?);
            run_page.push(page_seconds(browser, port, ids.1, 0)?);
        }
    }
    drop(locks);
    let mut rows = vec![
        DashboardRow {
            measurement: Measurement::of(
                &format!("/api/runs, {} runs ({RUNNING} training)", options.runs),
                "s",
                list_api,
            ),
            target: None,
        },
        DashboardRow {
            measurement: Measurement::of(
                &format!("/api/metrics, {} lines, parsed afresh", options.lines),
                "s",
                metrics_api,
            ),
            target: None,
        },
    ];
    let note = if browser.is_some() {
        rows.push(DashboardRow {
            measurement: Measurement::of(
                &format!("page: runs list of {} runs drawn", options.runs),
                "s",
                list_page,
            ),
            target: Some(1.0),
        });
        rows.push(DashboardRow {
            measurement: Measurement::of(
                &format!("page: run of {} lines drawn", options.lines),
                "s",
                run_page,
            ),
            target: Some(2.0),
        });
        None
    } else {
        Some("chromium and chromedriver are not on PATH: the page timings need them (scripts/bootstrap.sh installs them)".into())
    };
    Ok(DashboardReport {
        runs: options.runs,
        lines: options.lines,
        metrics_bytes,
        rows,
        note,
    })
}

/// The report as a table, with a verdict where there is a target: met when the slowest
/// repeat meets it, missed when the fastest misses it.
pub fn dashboard_table(report: &DashboardReport) -> String {
    let width = report
        .rows
        .iter()
        .map(|r| r.measurement.name.len())
        .max()
        .unwrap_or(10);
    let mut out = format!(
        "dashboard ({} runs; the big run's metrics.jsonl is {:.1} MB)\n{:<width$}  {:>8}  {:>8}  {:>8}  {:>7}  verdict\n",
        report.runs,
        report.metrics_bytes as f64 / 1e6,
        "measure",
        "median",
        "min",
        "max",
        "target"
    );
    for row in &report.rows {
        let m = &row.measurement;
        let (target, verdict) = match row.target {
            Some(t) if m.max <= t => (format!("{t:.1}"), "met"),
            Some(t) if m.min > t => (format!("{t:.1}"), "missed"),
            Some(t) => (format!("{t:.1}"), "undecided"),
            None => ("—".into(), ""),
        };
        out.push_str(&format!(
            "{:<width$}  {:>8.3}  {:>8.3}  {:>8.3}  {:>7}  {verdict}\n",
            m.name, m.median, m.min, m.max, target
        ));
    }
    if let Some(note) = &report.note {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

/// A directory removed when dropped, however the benchmark ends.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_server(root: &Path) -> Result<u16> {
    let server = Server::bind(&ServeOptions {
        dirs: vec![root.to_path_buf()],
        host: std::net::IpAddr::from([127, 0, 0, 1]),
        port: 0,
        token: None,
    })?;
    let port = server.local_addr().map_or(0, |a| a.port());
    // Serves until the process ends; each repeat's server is idle after its repeat.
    std::thread::spawn(move || server.run());
    Ok(port)
}

/// Seconds from sending a GET to reading the whole answer.
fn time_get(port: u16, target: &str) -> Result<f64> {
    let started = Instant::now();
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| Error::io(Path::new(target), e))?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .map_err(|e| Error::io(Path::new(target), e))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| Error::io(Path::new(target), e))?;
    let seconds = started.elapsed().as_secs_f64();
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(Error::Usage {
            command: "bench",
            message: format!(
                "{target} answered {}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ),
        });
    }
    Ok(seconds)
}

/// Load a view afresh and read when the page finished drawing it; for the runs list, check
/// that every run is in the table.
fn page_seconds(browser: &Browser, port: u16, hash: &str, rows: usize) -> Result<f64> {
    browser.goto("about:blank");
    browser.goto(&format!("http://127.0.0.1:{port}/{hash}"));
    let rendered = browser.wait(
        "return window.vigilRendered || 0",
        "the page to draw",
        Duration::from_secs(60),
    );
    if rows > 0 {
        let shown = browser
            .eval("return document.querySelectorAll('[data-table=\"runs\"] tbody tr').length");
        if shown.as_u64() != Some(rows as u64) {
            return Err(Error::Usage {
                command: "bench",
                message: format!("the runs list shows {shown} rows, expected {rows}"),
            });
        }
    }
    Ok(rendered.as_f64().unwrap_or(f64::NAN) / 1000.0)
}

/// Hold a run's lock as its training process would, and describe the run in it.
fn hold(dir: &Path) -> Result<RunLock> {
    let lock = crate::run_dir::lock_run_dir(dir)?;
    lock.describe(&LockFacts {
        pid: std::process::id(),
        dataset: "Fashion-MNIST".into(),
        total_steps: 3 * LIST_RUN_LINES as u64,
        steps_per_epoch: LIST_RUN_LINES as u64,
    });
    Ok(lock)
}

/// A run directory: config, `metrics.jsonl` with `lines` lines (train records every step,
/// a validation every 250 steps, the gradient monitor's 9 values every 50, curvature every
/// 500), and `run.json` unless it is `running`. Returns the metrics' size in bytes.
fn write_run(dir: &Path, lines: usize, seed: u64, running: bool) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config = format!(
        "name = \"bench\"\nseed = {seed}\nepochs = 3\nbatch_size = 128\ndata = \"fashion-mnist\"\n\
         [model]\nkind = \"cnn\"\n[optim]\nkind = \"sgd\"\nlr = {}\n",
        0.01 * (1 + seed % 5) as f64
    );
    std::fs::write(dir.join(crate::run_dir::CONFIG_FILE), config).map_err(|e| Error::io(dir, e))?;
    let mut text = String::with_capacity(lines * 200);
    let (mut step, mut written) = (0u64, 0usize);
    let start = 1.8e9 + seed as f64 * 100.0;
    let mut best = f64::INFINITY;
    while written < lines {
        step += 1;
        let t = start + step as f64 * 0.04;
        let loss =
            2.3 / (1.0 + step as f64 / 200.0) + 0.05 * ((step * 7919 + seed) % 13) as f64 / 13.0;
        let epoch = 1 + (step - 1) / 2000;
        text.push_str(&format!(
            "{{\"epoch\":{epoch},\"global_step\":{step},\"kind\":\"train\",\"lr\":0.02,\"train_acc\":{:.4},\"train_loss\":{loss},\"wall_time\":{t},\"wd\":0.0}}\n",
            1.0 - loss / 2.5
        ));
        written += 1;
        if step % 50 == 0 && written < lines {
            let norms: Vec<String> = [
                "conv1.weight",
                "conv1.bias",
                "conv2.weight",
                "conv2.bias",
                "fc1.weight",
                "fc1.bias",
                "classifier.weight",
                "classifier.bias",
                "total",
            ]
            .iter()
            .enumerate()
            .map(|(i, name)| format!("\"grad_norm/{name}\":{}", loss * (1.0 + i as f64 / 4.0)))
            .collect();
            text.push_str(&format!(
                "{{\"epoch\":{epoch},\"global_step\":{step},\"kind\":\"monitor\",\"monitor\":\"gradient\",{},\"wall_time\":{t}}}\n",
                norms.join(",")
            ));
            written += 1;
        }
        if step % 250 == 0 && written < lines {
            let val = loss * 1.1;
            best = best.min(val);
            text.push_str(&format!(
                "{{\"best_val_loss\":{best},\"epoch\":{epoch},\"global_step\":{step},\"kind\":\"validation\",\"val_acc\":{:.4},\"val_loss\":{val},\"wall_time\":{t}}}\n",
                1.0 - val / 2.5
            ));
            written += 1;
        }
        if step % 500 == 0 && written < lines {
            text.push_str(&format!(
                "{{\"curvature/hutch_trace\":{},\"curvature/hutch_trace_stderr\":{},\"curvature/lambda_max\":{},\"epoch\":{epoch},\"global_step\":{step},\"kind\":\"monitor\",\"monitor\":\"curvature\",\"wall_time\":{t}}}\n",
                50.0 + step as f64 / 100.0, 3.0, 5.0 + step as f64 / 1000.0
            ));
            written += 1;
        }
    }
    let metrics = dir.join(crate::run_dir::METRICS_FILE);
    std::fs::write(&metrics, &text).map_err(|e| Error::io(&metrics, e))?;
    if !running {
        let info = RunInfo {
            status: RunInfo::COMPLETED.into(),
            model: "cnn".into(),
            dataset: "Fashion-MNIST".into(),
            global_step: step,
            best_val_loss: Some(best),
            epochs: 3,
            attempts: vec![Attempt {
                from_step: 0,
                to_step: step,
                wall_time_s: step as f64 * 0.04,
                status: RunInfo::COMPLETED.into(),
                ..Attempt::default()
            }],
            final_metrics: Some(FinalMetrics {
                epoch: 3,
                train_acc: 0.9,
                train_loss: 0.3,
                val_acc: 0.88,
                val_loss: best,
            }),
            ..RunInfo::default()
        };
        let bytes = serde_json::to_vec_pretty(&info).unwrap_or_default();
        std::fs::write(dir.join(crate::run_dir::RUN_FILE), bytes).map_err(|e| Error::io(dir, e))?;
    }
    Ok(text.len() as u64)
}
