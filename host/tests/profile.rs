//! What a run's time went to: `run.json`'s step breakdown covers the training loop, each
//! monitor's hooks + service account for what it added to the run, and `--profile` writes the
//! table and a flame graph.

use std::path::Path;

use serde_json::Value;

use crate::util::{json, plugin_dirs_toml, stderr, stdout, vigil};

/// One intra-op thread: with a pool, a hook that holds the training thread for 20 ms lets the
/// pool's threads go to sleep, and the next forward and backward pay to wake them, a cost that
/// lands outside the monitors' time (`vigil bench` measures it; this test checks the
/// accounting, on a machine whose other tests run beside it).
fn config(monitors: &str) -> String {
    format!(
        "name = \"cost\"\nseed = 0\nepochs = 2\nbatch_size = 32\nthreads = 1\ndata = \"synthetic\"\n{}\n\
         [synthetic]\ntrain_size = 1024\ntest_size = 256\nclasses = 4\nimage_size = 12\n\
         [model]\nkind = \"mlp\"\nhidden = [64]\n[optim]\nlr = 0.05\n\
         [checkpoint]\nenabled = false\n{monitors}",
        plugin_dirs_toml()
    )
}

fn train(dir: &Path, name: &str, monitors: &str, profile: bool) -> Value {
    std::fs::write(dir.join(format!("{name}.toml")), config(monitors)).unwrap();
    let run_dir = format!("run_dir=runs/{name}");
    let mut args = vec!["train", &*format!("{name}.toml"), "--set", &run_dir]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    if profile {
        args.push("--profile".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = vigil(dir, &args);
    assert!(output.status.success(), "{}", stderr(&output));
    if profile {
        assert!(stdout(&output).contains("profile:") || stderr(&output).contains("profile:"));
    }
    json(dir.join("runs").join(name).join("run.json"))
}

fn ms(value: &Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

#[test]
fn hooks_and_service_account_for_what_the_monitors_add_and_the_parts_cover_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    // 64 steps; the fault injector sleeps 20 ms in each train_batch_end: about 1.3 s of
    // hooks. The gradient monitor reads the flattened gradient (a service); the confusion
    // matrix draws a PNG per validation, which the host routes to TensorBoard (a service).
    let monitors = "[[monitors]]\nname = \"fault-injector\"\nsettings = { sleep_ms = 20 }\n\
                    [[monitors]]\nname = \"gradient\"\nsettings = { log_every_n_steps = 1 }\n\
                    [[monitors]]\nname = \"confusion-matrix\"\n";
    let bare = train(dir.path(), "bare", "", false);
    let watched = train(dir.path(), "watched", monitors, true);
    for run in [&bare, &watched] {
        let loop_ms = ms(&run["wall_time_s"]) * 1e3;
        let parts: f64 = run["step_breakdown"]
            .as_object()
            .unwrap()
            .values()
            .map(|part| ms(&part["total_ms"]))
            .sum();
        assert!(
            parts <= loop_ms * 1.001,
            "parts {parts} ms > loop {loop_ms} ms"
        );
        assert!(
            parts >= loop_ms * 0.9,
            "the parts cover {parts} ms of a {loop_ms} ms loop: time is missing"
        );
    }
    let monitors = watched["monitors"].as_array().unwrap();
    let hooks: f64 = monitors.iter().map(|m| ms(&m["total_ms"])).sum();
    let service: f64 = monitors.iter().map(|m| ms(&m["service_ms"])).sum();
    assert!(hooks >= 64.0 * 20.0, "hooks {hooks} ms");
    assert!(
        service > 0.0,
        "routing the gradient monitor's records and the images costs something"
    );
    let gradient = monitors.iter().find(|m| m["name"] == "gradient").unwrap();
    assert!(ms(&gradient["service_ms"]) > 0.0, "{gradient}");
    let matrix = monitors
        .iter()
        .find(|m| m["name"] == "confusion-matrix")
        .unwrap();
    assert!(ms(&matrix["service_ms"]) > 0.0, "{matrix}");
    // What the monitors added to the loop, measured, against what was accounted to them.
    let added = (ms(&watched["wall_time_s"]) - ms(&bare["wall_time_s"])) * 1e3;
    let accounted = hooks + service;
    assert!(
        (added - accounted).abs() <= 0.25 * accounted + 400.0,
        "the monitors added {added:.0} ms; hooks {hooks:.0} + service {service:.0} = {accounted:.0} ms"
    );
    // --profile: the table and the flame graph.
    let profile = dir.path().join("runs/watched/profile");
    let table = std::fs::read_to_string(profile.join("breakdown.txt")).unwrap();
    for row in [
        "forward",
        "backward",
        "monitors",
        "fault-injector",
        "confusion-matrix",
    ] {
        assert!(table.contains(row), "{row}: {table}");
    }
    let svg = std::fs::read_to_string(profile.join("flamegraph.svg")).unwrap();
    assert!(svg.contains("fault-injector") && svg.contains("backward"));
    let svg = std::fs::read_to_string(profile.join("monitors.svg")).unwrap();
    assert!(svg.contains("fault-injector") && !svg.contains("backward"));
    let folded = std::fs::read_to_string(profile.join("stacks.folded")).unwrap();
    let injector: u64 = folded
        .lines()
        .filter(|l| l.contains("fault-injector;hooks"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert!(injector as f64 >= 64.0 * 20.0 * 1e3, "{folded}");
}
