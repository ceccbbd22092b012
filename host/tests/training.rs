//! Real training through the library.

use std::path::Path;

use vigil::config::Settings;
use vigil::data;
use vigil::train::Trainer;

use crate::util::TINY_SYNTHETIC;

#[test]
fn two_epoch_mlp_on_synthetic_data_learns() {
    let settings = Settings::from_toml(TINY_SYNTHETIC, Path::new("tiny.toml")).unwrap();
    let dataset = data::load(&settings.data.source).unwrap();
    let mut trainer = Trainer::new(&settings, &dataset).unwrap();
    let untrained = trainer.evaluate().unwrap();
    let summary = trainer.fit(&mut []).unwrap();
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
            .fit(&mut [])
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
        .fit(&mut [])
        .unwrap();
    assert!(summary.epochs[0].train.loss.is_finite());
}
