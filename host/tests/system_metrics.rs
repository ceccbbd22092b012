//! System metrics: `system` records at the configured interval, whose process memory is what
//! the kernel says of the training process (read by the test from `/proc/<pid>/status` while
//! it trains), in `metrics.jsonl`, TensorBoard (read by TensorBoard's own reader) and on the
//! console's validation lines.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::resume::tensorboard_view;
use crate::util::{plugin_dirs_toml, records, stderr};

const EVERY_S: f64 = 0.25;

fn config() -> String {
    format!(
        r#"seed = 1
epochs = 3
batch_size = 32
data = "synthetic"
threads = 1
run_dir = "r"
system_metrics_every_s = {EVERY_S}
{}

[synthetic]
train_size = 1024
test_size = 64
classes = 4
image_size = 12

[model]
kind = "mlp"
hidden = [64]

[[monitors]]
name = "fault-injector"
settings = {{ sleep_ms = 12 }}
"#,
        plugin_dirs_toml()
    )
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// VmRSS of `pid` in bytes, as the kernel reports it.
fn rss_bytes(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024.0)
}

#[test]
fn system_records_come_at_their_interval_with_the_process_memory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), config()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["train", "c.toml"])
        .current_dir(dir.path())
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The kernel's view of the process's memory, read every few milliseconds.
    let mut readings: Vec<(f64, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the run took over 300 s");
        if let Some(rss) = rss_bytes(child.id()) {
            readings.push((unix_now(), rss));
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));

    let run_dir = dir.path().join("r");
    let system: Vec<Value> = records(&run_dir)
        .into_iter()
        .filter(|r| r["kind"] == "system")
        .collect();
    assert!(system.len() >= 6, "{} system records", system.len());
    let times: Vec<f64> = system
        .iter()
        .map(|r| r["wall_time"].as_f64().unwrap())
        .collect();
    let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    let median = gaps[gaps.len() / 2];
    assert!(
        (median - EVERY_S).abs() <= 0.1 * EVERY_S,
        "samples {median} s apart, configured {EVERY_S} s: {gaps:?}"
    );
    assert!(
        gaps.iter()
            .all(|&gap| gap > 0.5 * EVERY_S && gap < 4.0 * EVERY_S),
        "{gaps:?}"
    );

    // Each sample's RSS against the kernel's reading nearest in time.
    let mut compared = 0;
    for record in &system {
        let (time, rss) = (
            record["wall_time"].as_f64().unwrap(),
            record["process_memory_rss_megabytes"].as_f64().unwrap() * 1e6,
        );
        let Some(&(when, kernel)) = readings
            .iter()
            .min_by(|a, b| (a.0 - time).abs().total_cmp(&(b.0 - time).abs()))
        else {
            continue;
        };
        if (when - time).abs() > 0.05 {
            continue;
        }
        assert!(
            (rss - kernel).abs() <= 0.1 * kernel,
            "RSS {rss} B in the record, {kernel} B in /proc at that time"
        );
        let peak = record["process_memory_peak_rss_megabytes"]
            .as_f64()
            .unwrap()
            * 1e6;
        assert!(peak >= rss);
        compared += 1;
    }
    assert!(
        compared >= 3,
        "only {compared} samples had a reading near them"
    );
    for record in &system[1..] {
        let cpu = record["process_cpu_percentage"].as_f64().unwrap();
        assert!((0.0..=100.0 * 64.0).contains(&cpu), "{cpu}");
        assert!(
            record["system_memory_available_megabytes"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        assert!(record["disk_available_megabytes"].as_f64().unwrap() > 0.0);
        let utilization = record["cpu_utilization_percentage"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&utilization), "{utilization}");
    }

    let console = String::from_utf8_lossy(&output.stdout);
    let validation = console
        .lines()
        .find(|line| line.contains("validation at step"))
        .unwrap();
    assert!(
        validation.contains(" RAM ") && validation.ends_with(" GB"),
        "{validation}"
    );

    let view = tensorboard_view(&[&run_dir]);
    let scalars = &view[run_dir.join("tensorboard").display().to_string()]["scalars"];
    let rss = scalars["system/process_memory_rss_megabytes"]
        .as_array()
        .expect("TensorBoard has system/process_memory_rss_megabytes");
    assert_eq!(rss.len(), system.len());
}

#[test]
fn zero_turns_system_metrics_off() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        config().replace(&format!("= {EVERY_S}"), "= 0"),
    )
    .unwrap();
    let output = crate::util::vigil(dir.path(), &["train", "c.toml", "--set", "epochs=1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(records(&dir.path().join("r"))
        .iter()
        .all(|r| r["kind"] != "system"));
}
