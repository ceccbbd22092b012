//! Real training through the library.

use std::path::Path;

use vigil::config::Settings;
use vigil::data;
use vigil::hub::RunHub;
use vigil::train::Trainer;

use crate::util::TINY_SYNTHETIC;

#[test]
fn two_epoch_mlp_on_synthetic_data_learns() {
    let settings = Settings::from_toml(TINY_SYNTHETIC, Path::new("tiny.toml")).unwrap();
    let dataset = data::load(&settings.data.source).unwrap();
    let mut trainer = Trainer::new(&settings, &dataset).unwrap();
    let untrained = trainer.evaluate().unwrap();
    let summary = trainer.fit(&mut RunHub::empty()).unwrap();
    let [first, second] = summary.epochs[..] else {
        panic!("expected two epochs, got {:?}", summary.epochs);
    };
    assert!(
        second.train.loss < first.train.loss,
        "{first:?} then {second:?}"
    );
    assert!(
        second.val.loss < untrained.loss,
        "{untrained:?} then {second:?}"
    );
    // Four classes: chance is 0.25.
    assert!(second.val.accuracy > 0.5, "{second:?}");
}

#[test]
fn same_seed_gives_the_same_run() {
    let settings = Settings::from_toml(TINY_SYNTHETIC, Path::new("tiny.toml")).unwrap();
    let dataset = data::load(&settings.data.source).unwrap();
    let run = || {
        Trainer::new(&settings, &dataset)
            .unwrap()
            .fit(&mut RunHub::empty())
            .unwrap()
            .epochs
    };
    let (a, b) = (run(), run());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.train.loss, y.train.loss);
        assert_eq!(x.val.accuracy, y.val.accuracy);
    }
}

#[test]
fn the_small_cnn_trains_on_color_images() {
    let text = TINY_SYNTHETIC
        .replace("kind = \"mlp\"", "kind = \"cnn\"")
        .replace("hidden = [32]", "")
        .replace("classes = 4", "classes = 4\nchannels = 3")
        .replace("epochs = 2", "epochs = 1");
    let settings = Settings::from_toml(&text, Path::new("cnn.toml")).unwrap();
    let dataset = data::load(&settings.data.source).unwrap();
    let summary = Trainer::new(&settings, &dataset)
        .unwrap()
        .fit(&mut RunHub::empty())
        .unwrap();
    assert!(summary.epochs[0].train.loss.is_finite());
}

#[test]
fn monitors_see_the_gradient_before_clipping_and_the_clipped_norm_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "run_dir = \"r\"\nplugin_dirs = [{:?}]\n{}clip_grad_norm = 0.01\n\n\
         [[monitors]]\nname = \"gradient\"\n[monitors.settings]\nlog_every_n_steps = 1\n",
        crate::util::build_dir().display().to_string(),
        TINY_SYNTHETIC.replace("epochs = 2", "epochs = 1")
    );
    std::fs::write(dir.path().join("c.toml"), config).unwrap();
    let output = crate::util::vigil(dir.path(), &["train", "c.toml"]);
    assert!(output.status.success(), "{}", crate::util::stderr(&output));
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("r/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
    let mut compared = 0;
    for monitor in records
        .iter()
        .filter(|r| r["kind"] == "monitor" && r["monitor"] == "gradient")
    {
        let Some(seen) = monitor["grad_norm/total"].as_f64() else {
            continue;
        };
        // The monitor's record carries the step before the batch's update; the batch's own
        // record, the step after it.
        let step = monitor["global_step"].as_u64().unwrap() + 1;
        let train = records
            .iter()
            .find(|r| r["kind"] == "train" && r["global_step"] == step)
            .unwrap();
        let before = train["grad_norm_before_clip"].as_f64().unwrap();
        let after = train["grad_norm_after_clip"].as_f64().unwrap();
        assert!(
            (seen / before - 1.0).abs() < 1e-4,
            "step {step}: the monitor saw {seen}, the norm before clipping was {before}"
        );
        assert!(
            seen > 0.01,
            "step {step}: {seen} is not above the clipping threshold"
        );
        assert!(
            (after - 0.01).abs() < 1e-6,
            "step {step}: clipped to {after}"
        );
        compared += 1;
    }
    assert_eq!(compared, 16, "one comparison per step of the epoch");
}
