//! Reliability: hostile or broken plugins, time budgets, kill -9 at random moments, checkpoint
//! writes that fail. Real processes where it matters.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::util::{build_dir, json, stderr, stdout, vigil};

fn plugin(name: &str) -> PathBuf {
    build_dir().join(format!("lib{}.so", name.replace('-', "_")))
}

/// A small CNN run: 64 steps an epoch, validation (and a checkpoint) every 16 steps.
fn small(epochs: u32, extra: &str) -> String {
    format!(
        "seed = 9\nepochs = {epochs}\nbatch_size = 32\ndata = \"synthetic\"\n{}\n{extra}\n\
         [synthetic]\ntrain_size = 2048\ntest_size = 64\nclasses = 4\nimage_size = 12\n[model]\nkind = \"cnn\"\n[optim]\nlr = 0.02\n",
        crate::util::plugin_dirs_toml()
    )
}

fn run(dir: &Path, config: &str, args: &[&str]) -> std::process::Output {
    std::fs::write(dir.join("run.toml"), config).unwrap();
    let mut all = vec!["train", "run.toml"];
    all.extend_from_slice(args);
    vigil(dir, &all)
}

#[test]
fn a_monitor_over_its_time_budget_is_warned_then_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let monitors = "[[monitors]]\nname = \"fault-injector\"\nhook_budget_ms = 5\nhook_budget_strikes = 3\nsettings = { sleep_ms = 20 }";
    let output = run(
        dir.path(),
        &small(1, &format!("run_dir = \"o\"\n{monitors}")),
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = json(dir.path().join("o/run.json"));
    let report = &summary["monitors"][0];
    assert_eq!(report["status"], "disabled");
    // The sleeping hook is train_batch_end; the first strikes can also come from a slow first
    // call (fit_start in a debug build), so the step is 2 at the latest.
    assert_eq!(report["disabled"]["event"], "train_batch_end");
    assert!(
        report["disabled"]["global_step"].as_u64().unwrap() <= 2,
        "{report}"
    );
    let reason = report["disabled"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("over its time budget 3 times; last took "),
        "{reason}"
    );
    let warnings: Vec<&str> = crate::util::strs(&summary["warnings"]);
    assert!(
        warnings[0].contains("strike 1 of 3") && warnings[1].contains("strike 2 of 3"),
        "{warnings:?}"
    );
    assert_eq!(summary["status"], "completed");
}

#[test]
fn world_writable_plugins_are_refused_unless_allowed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let copy = plugins.join("libexample_loss_ema.so");
    std::fs::copy(plugin("example-loss-ema"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o666)).unwrap();
    let monitors = format!(
        "[[monitors]]\nname = \"example-loss-ema\"\npath = {:?}",
        copy.display().to_string()
    );
    let output = run(dir.path(), &small(1, &monitors), &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("plugin file")
            && stderr(&output).contains("is world-writable (mode 666)"),
        "{}",
        stderr(&output)
    );
    assert!(!dir.path().join("runs").exists());

    let allowed = run(
        dir.path(),
        &small(1, &format!("allow_insecure_plugins = true\n{monitors}")),
        &[],
    );
    assert!(allowed.status.success(), "{}", stderr(&allowed));
}

#[test]
fn a_sha256_pin_refuses_any_other_file() {
    let dir = tempfile::tempdir().unwrap();
    let listing = vigil(
        dir.path(),
        &["plugins", "--dir", &build_dir().display().to_string()],
    );
    let line = stdout(&listing)
        .lines()
        .find(|l| l.starts_with("example-loss-ema"))
        .unwrap()
        .to_string();
    let hash = line
        .split_whitespace()
        .find(|w| w.len() == 64)
        .unwrap()
        .to_string();
    let pinned = |hash: &str| {
        format!(
            "run_dir = \"o{}\"\n[[monitors]]\nname = \"example-loss-ema\"\nsha256 = \"{hash}\"",
            &hash[..4]
        )
    };
    let ok = run(dir.path(), &small(1, &pinned(&hash.to_uppercase())), &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let wrong = "0".repeat(64);
    let refused = run(dir.path(), &small(1, &pinned(&wrong)), &[]);
    assert_eq!(refused.status.code(), Some(2));
    let message = stderr(&refused);
    assert!(message.contains(&format!("sha256 mismatch for monitor `example-loss-ema`: the config pins {wrong}, the file is {hash}")), "{message}");
    // `vigil check` resolves monitors as `train` does, pin included.
    let checked = vigil(dir.path(), &["check", "run.toml"]);
    assert_eq!(checked.status.code(), Some(2), "{}", stdout(&checked));
    assert!(
        stderr(&checked).contains("sha256 mismatch for monitor `example-loss-ema`"),
        "{}",
        stderr(&checked)
    );
    let malformed = run(
        dir.path(),
        &small(
            1,
            "[[monitors]]\nname = \"example-loss-ema\"\nsha256 = \"abc\"",
        ),
        &[],
    );
    assert!(
        stderr(&malformed).contains("`monitors[0].sha256` must be 64 hexadecimal digits"),
        "{}",
        stderr(&malformed)
    );
}

#[test]
fn a_library_for_another_architecture_or_truncated_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(plugin("example-loss-ema")).unwrap();
    let mut other_arch = original.clone();
    // ELF e_machine (bytes 18-19): 0xB7 is AArch64.
    other_arch[18] = 0xb7;
    other_arch[19] = 0x00;
    std::fs::write(dir.path().join("libarm.so"), &other_arch).unwrap();
    std::fs::write(
        dir.path().join("libcut.so"),
        &original[..original.len() / 3],
    )
    .unwrap();
    let monitors = "[[monitors]]\nname = \"arm\"\npath = \"libarm.so\"\n[[monitors]]\nname = \"cut\"\npath = \"libcut.so\"";
    let output = run(dir.path(), &small(1, monitors), &[]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 3, "{message}");
    assert!(
        lines[1].contains("libarm.so: built for Aarch64 (64-bit); this host runs on X86_64"),
        "{message}"
    );
    assert!(
        lines[2].contains("libcut.so: not a shared library: a truncated or damaged ELF file"),
        "{message}"
    );
}

/// A library that exports abi_stable's root-module symbol but is no vigil plugin (here a C
/// library whose symbol points at zeros; in the wild, a library of another abi_stable
/// version), enabled by path without a pin: one line naming the file, not abi_stable's dump
/// of two headers.
#[test]
fn a_library_that_is_not_a_vigil_plugin_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fake.c"),
        "static const char zeros[256] = {0};\n\
         const void *_1as_0lib_1header_0root_bmodule_bloader = zeros;\n",
    )
    .unwrap();
    let built = std::process::Command::new("cc")
        .current_dir(dir.path())
        .args(["-shared", "-fPIC", "-o", "libfake.so", "fake.c"])
        .status()
        .unwrap();
    assert!(built.success());
    let monitors = "[[monitors]]\nname = \"fake\"\npath = \"libfake.so\"";
    let output = run(dir.path(), &small(1, monitors), &[]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 2, "{message}");
    assert!(
        lines[1]
            .contains("libfake.so: not a vigil plugin: it exports abi_stable's root-module symbol"),
        "{message}"
    );
    assert!(!message.contains("AbiHeader"), "{message}");
}

#[test]
fn a_failing_checkpoint_write_keeps_the_previous_one_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let monitors =
        "[[monitors]]\nname = \"fault-injector\"\nsettings = { block_checkpoints_from_step = 20 }";
    let output = run(
        dir.path(),
        &small(1, &format!("run_dir = \"o\"\n{monitors}")),
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = json(dir.path().join("o/run.json"));
    let warnings: Vec<&str> = crate::util::strs(&summary["warnings"]);
    // Checkpoints at steps 16 (written), 32, 48, 64 (blocked).
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings[0].starts_with("checkpoint at step 32 not written (the previous one is intact)"),
        "{warnings:?}"
    );
    assert_eq!(summary["checkpoints"]["last"]["global_step"], 16);
    let (checkpoint, state) = vigil::train::checkpoint::latest(&dir.path().join("o")).unwrap();
    assert_eq!(state.global_step, 16);
    assert!(
        tch::Tensor::read_safetensors(checkpoint.join("model.safetensors"))
            .unwrap()
            .len()
            == 8
    );
}

/// `vigil train` killed with SIGKILL at random moments, then resumed: no torn metrics line,
/// the newest complete checkpoint loads, and the resumed run completes with every training
/// step recorded exactly once. Every kill must land mid-training after a checkpoint (the case
/// that matters); a trial whose run finished before its kill is run again.
#[test]
fn kill_9_at_random_moments_loses_nothing_that_was_written() {
    const TRIALS: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut outcomes = Vec::new();
    let mut landed = 0;
    for trial in 0..TRIALS {
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            rng >> 33
        };
        // A moment during training, past the first checkpoint (step 16): when the run has
        // trained to a random step, plus up to 30 ms.
        let (target, jitter) = (20 + next() % 165, Duration::from_millis(next() % 30));
        let run_dir = format!("kill{trial}");
        std::fs::write(
            dir.path().join("run.toml"),
            small(3, &format!("run_dir = {run_dir:?}")),
        )
        .unwrap();
        let path = dir.path().join(&run_dir);
        let mut killed = false;
        for _retry in 0..3 {
            let _ = std::fs::remove_dir_all(&path);
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
                .args(["train", "run.toml"])
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while child.try_wait().unwrap().is_none()
                && crate::util::trained_to(&path) < target
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(jitter);
            let finished_first = child.try_wait().unwrap().is_some();
            let _ = child.kill(); // SIGKILL
            let status = child.wait().unwrap();
            use std::os::unix::process::ExitStatusExt;
            killed = !finished_first && status.signal() == Some(libc::SIGKILL);
            if killed {
                break;
            }
            eprintln!("trial {trial}: the run finished before the kill; trying again");
        }

        let metrics = std::fs::read_to_string(path.join("metrics.jsonl")).unwrap_or_default();
        for (number, line) in metrics.lines().enumerate() {
            assert!(
                serde_json::from_str::<Value>(line).is_ok(),
                "trial {trial}: line {} is torn: {line:?}",
                number + 1
            );
        }
        let checkpoint = vigil::train::checkpoint::latest(&path);
        if let Ok((checkpoint_dir, _)) = &checkpoint {
            assert!(
                tch::Tensor::read_safetensors(checkpoint_dir.join("model.safetensors")).is_ok(),
                "trial {trial}"
            );
        }
        let resumed = vigil(dir.path(), &["train", "--resume", &run_dir]);
        let outcome = match &checkpoint {
            Ok((_, state)) => {
                assert!(
                    resumed.status.success(),
                    "trial {trial}: {}",
                    stderr(&resumed)
                );
                if killed && state.global_step < 192 {
                    landed += 1;
                    format!(
                        "killed mid-training after the checkpoint at step {}, resumed",
                        state.global_step
                    )
                } else {
                    format!(
                        "not killed mid-training (checkpoint at step {})",
                        state.global_step
                    )
                }
            }
            Err(_) => {
                assert_eq!(
                    resumed.status.code(),
                    Some(2),
                    "trial {trial}: {}",
                    stderr(&resumed)
                );
                assert!(
                    stderr(&resumed).contains("no checkpoints/")
                        || stderr(&resumed).contains("no complete checkpoint"),
                    "{}",
                    stderr(&resumed)
                );
                "killed before the first checkpoint; resume said so".to_string()
            }
        };
        if checkpoint.is_ok() {
            let summary = json(path.join("run.json"));
            assert_eq!(summary["status"], "completed", "trial {trial}");
            let steps: Vec<u64> = std::fs::read_to_string(path.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|r| r["kind"] == "train")
                .map(|r| r["global_step"].as_u64().unwrap())
                .collect();
            assert_eq!(
                steps,
                (1..=192).collect::<Vec<u64>>(),
                "trial {trial}: every step exactly once"
            );
            let of_kind = |kind: &str| -> Vec<u64> {
                std::fs::read_to_string(path.join("metrics.jsonl"))
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap())
                    .filter(|r| r["kind"] == kind)
                    .map(|r| r["global_step"].as_u64().unwrap())
                    .collect()
            };
            assert_eq!(
                of_kind("validation"),
                (1..=12).map(|k| 16 * k).collect::<Vec<u64>>(),
                "trial {trial}: every validation exactly once"
            );
            assert_eq!(
                of_kind("epoch"),
                vec![64, 128, 192],
                "trial {trial}: every epoch record exactly once"
            );
        }
        outcomes.push(outcome);
    }
    eprintln!("kill -9 trials:\n  {}", outcomes.join("\n  "));
    assert!(
        landed == TRIALS,
        "only {landed} of {TRIALS} kills landed mid-training after a checkpoint:\n  {}",
        outcomes.join("\n  ")
    );
}
