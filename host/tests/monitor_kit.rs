//! The monitor-author kit from the outside: `vigil new-monitor` gives a crate that tests, builds
//! and trains as generated; a hook left out of `events` is reported once; and a plugin built
//! against API 1.2.0, before the kit, still loads, runs and resumes in this host.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::plugin_loading::{
    api_copy, build_external, external_crate, test_external, workspace_root,
};
use crate::util::{json, records, stderr, stdout, vigil, TINY_SYNTHETIC};

/// A config training `TINY_SYNTHETIC` into `r` with the one monitor `name` from `library`.
fn config_with(name: &str, library: &Path, epochs: u32) -> String {
    format!(
        "run_dir = \"r\"\nplugin_dirs = []\n{}\n[[monitors]]\nname = \"{name}\"\npath = {:?}\n",
        TINY_SYNTHETIC.replace("epochs = 2", &format!("epochs = {epochs}")),
        library.display().to_string()
    )
}

/// `(global step, value)` of `metric` logged by `monitor`.
fn logged(records: &[Value], monitor: &str, metric: &str) -> Vec<(u64, f64)> {
    records
        .iter()
        .filter(|r| r["monitor"] == monitor && r.get(metric).is_some())
        .map(|r| {
            (
                r["global_step"].as_u64().unwrap(),
                r[metric].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_new_monitor_tests_builds_and_trains_as_generated() {
    let root = tempfile::tempdir().unwrap();
    assert!(!root.path().starts_with(workspace_root()));
    let crate_dir = root.path().join("demo");
    let made = vigil(
        root.path(),
        &["new-monitor", "demo", "--dir", crate_dir.to_str().unwrap()],
    );
    assert!(made.status.success(), "{}", stderr(&made));
    assert!(stdout(&made).contains("cargo test"), "{}", stdout(&made));
    let generated: Vec<(PathBuf, String)> = ["Cargo.toml", "src/lib.rs", ".gitignore"]
        .iter()
        .map(|file| {
            let path = crate_dir.join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text)
        })
        .collect();

    // Its unit test, on the fake host (with the workspace's Cargo.lock beside it, so that
    // Cargo resolves the same versions offline; the generated files stay as they are).
    let tested = test_external(&crate_dir);
    assert!(tested.contains("test result: ok. 2 passed"), "{tested}");

    // The plugin, in a real training run.
    let library = build_external(&crate_dir, "demo");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.toml"), config_with("demo", &library, 2)).unwrap();
    let trained = vigil(dir.path(), &["train", "t.toml"]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    let records = records(&dir.path().join("r"));
    let means = logged(&records, "demo", "demo/mean_loss");
    assert_eq!(
        means.iter().map(|m| m.0).collect::<Vec<_>>(),
        [0, 10, 20, 30],
        "every 10 of 32 steps"
    );
    // The monitor's step s sees the loss of training step s + 1 (1-based in the records).
    let losses: Vec<f64> = records
        .iter()
        .filter(|r| r["kind"] == "train")
        .map(|r| r["train_loss"].as_f64().unwrap())
        .collect();
    for (step, mean) in means {
        let seen = &losses[..=step as usize];
        let expected = seen.iter().sum::<f64>() / seen.len() as f64;
        assert!(
            (mean - expected).abs() < 1e-12,
            "step {step}: {mean} vs {expected}"
        );
    }
    let summary = json(dir.path().join("r/run.json"));
    assert_eq!(summary["monitors"][0]["status"], "ok");
    assert_eq!(summary["monitors"][0]["saves_state"], true);
    assert!(
        summary["warnings"].as_array().unwrap().is_empty(),
        "{summary}"
    );
    for (path, text) in generated {
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "{}",
            path.display()
        );
    }

    let again = vigil(
        root.path(),
        &["new-monitor", "demo", "--dir", crate_dir.to_str().unwrap()],
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
}

const FORGETFUL: &str = r#"
use vigil_plugin_api::{export_monitor, monitor, Context, Error, EventKind, EventSet, Monitor, MonitorInfo, Subscriptions};

pub struct Forgetful;

#[monitor]
impl Monitor for Forgetful {
    const INFO: MonitorInfo = MonitorInfo {
        name: "forgetful",
        version: "0.1.0",
        description: "implements on_validation_end but lists only train_epoch_end",
        events: EventSet::of(&[EventKind::TRAIN_EPOCH_END]),
        subscriptions: Subscriptions::NONE,
    };

    fn new(_settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        Ok(Forgetful)
    }

    fn on_train_epoch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        ctx.log("epochs", 1.0);
        Ok(())
    }

    fn on_validation_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        ctx.log("never", 1.0);
        Ok(())
    }
}

export_monitor!(Forgetful);
"#;

#[test]
fn a_hook_left_out_of_events_is_reported_once_when_the_monitor_loads() {
    let root = tempfile::tempdir().unwrap();
    let api = workspace_root().join("plugin-api");
    let crate_dir = external_crate(root.path(), "forgetful", &api, FORGETFUL);
    let library = build_external(&crate_dir, "forgetful");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.toml"),
        config_with("forgetful", &library, 2),
    )
    .unwrap();
    let warning = "`on_validation_end` is implemented but `EventKind::VALIDATION_END` is not in `MonitorInfo::events`";
    let checked = vigil(dir.path(), &["check", "t.toml"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert_eq!(
        stderr(&checked).matches(warning).count(),
        1,
        "{}",
        stderr(&checked)
    );

    let trained = vigil(dir.path(), &["train", "t.toml"]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    let summary = json(dir.path().join("r/run.json"));
    let warnings: Vec<&str> = crate::util::strs(&summary["warnings"]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("[forgetful] ") && warnings[0].contains(warning));
    let records = records(&dir.path().join("r"));
    assert_eq!(logged(&records, "forgetful", "epochs").len(), 2);
    assert!(logged(&records, "forgetful", "never").is_empty());
}

/// The compatibility probe (tests/fixtures/compat-probe-1.2.0.rs) built against API 1.2.0.
fn build_api_1_2_0_probe(root: &Path) -> PathBuf {
    let fixtures = workspace_root().join("host/tests/fixtures");
    let api = api_copy(root, &fixtures.join("plugin-api-1.2.0"), "1.2.0", |abi| abi);
    let source = std::fs::read_to_string(fixtures.join("compat-probe-1.2.0.rs")).unwrap();
    let probe = external_crate(root, "compat-probe", &api, &source);
    build_external(&probe, "compat_probe")
}

#[test]
fn a_plugin_built_against_api_1_2_0_loads_runs_and_resumes_as_it_did() {
    let root = tempfile::tempdir().unwrap();
    let library = build_api_1_2_0_probe(root.path());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.toml"),
        config_with("compat-probe", &library, 1),
    )
    .unwrap();
    let first = vigil(dir.path(), &["train", "t.toml"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let report = &json(dir.path().join("r/run.json"))["monitors"][0];
    assert_eq!(report["api_version"], "1.2.0");
    assert_eq!(report["status"], "ok", "{report}");
    let resumed = vigil(dir.path(), &["train", "--resume", "r", "--set", "epochs=2"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let summary = json(dir.path().join("r/run.json"));
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["monitors"][0]["status"], "ok");

    let records = records(&dir.path().join("r"));
    let probe = |metric: &str| logged(&records, "compat-probe", metric);
    // The MLP 144 → 32 → 4: 4772 trainable scalars and no buffers; 512 training labels.
    assert_eq!(probe("compat/trainable"), [(0, 4772.0)]);
    assert_eq!(probe("compat/total"), [(0, 4772.0)]);
    assert_eq!(probe("compat/train_labels"), [(0, 512.0)]);
    // Gradient slice, norms and averages at every step of both parts; the state carried
    // the step count across the resume.
    let steps = probe("compat/steps");
    assert_eq!(steps.len(), 32);
    for (index, &(step, count)) in steps.iter().enumerate() {
        assert_eq!((step, count), (index as u64, (index + 1) as f64));
    }
    let from_gradient = probe("compat/grad_norm_from_gradient");
    let from_norms = probe("compat/grad_norm_from_norms");
    assert_eq!(from_gradient.len(), 32);
    for (a, b) in from_gradient.iter().zip(&from_norms) {
        assert!(
            a.1 > 0.0 && (a.1 - b.1).abs() <= 1e-5 * b.1,
            "{a:?} vs {b:?}"
        );
    }
    assert_eq!(probe("compat/ema_updates").last(), Some(&(31, 32.0)));
    // 1.2's behaviour where there is no data: an empty slice, not an error.
    let at_validation = probe("compat/gradient_len_at_validation");
    assert_eq!(at_validation.len(), 8, "every quarter epoch of two epochs");
    assert!(at_validation.iter().all(|&(_, len)| len == 0.0));
}
