//! Bounded fuzzing of everything that parses untrusted bytes: the config loader and the IDX
//! and CIFAR-10 readers. Whatever the input, the answer is a value or an error, never a panic.

use std::path::Path;

use proptest::prelude::*;
use vigil::config::Settings;
use vigil::data::cifar::{encode_record, parse_batch};
use vigil::data::idx::{encode_idx, parse_idx};
use vigil::data::ImageSet;

const VALID_CONFIG: &str = r#"
name = "fuzz"
seed = 1
epochs = 2
batch_size = 32
data = "synthetic"
val_check_interval = 0.5
[synthetic]
train_size = 64
classes = 3
[model]
kind = "resnet18"
width_mult = 0.5
[optim]
kind = "adamw"
lr = 0.001
betas = [0.9, 0.99]
[schedule]
kind = "cosine"
warmup_epochs = 1.0
[[monitors]]
name = "gradient"
settings = { log_every_n_steps = 5 }
"#;

/// Apply byte-level edits: (position, kind, byte) with kind 0 = replace, 1 = delete, 2 = insert.
fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for &(position, kind, byte) in edits {
        if bytes.is_empty() {
            bytes.push(byte);
            continue;
        }
        let at = position % bytes.len();
        match kind % 3 {
            0 => bytes[at] = byte,
            1 => {
                bytes.remove(at);
            }
            _ => bytes.insert(at, byte),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_loader_never_panics_on_arbitrary_text(text in ".{0,400}") {
        let _ = Settings::from_toml(&text, Path::new("fuzz.toml"));
    }

    #[test]
    fn config_loader_never_panics_on_mutated_configs(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..12)) {
        let bytes = mutate(VALID_CONFIG.as_bytes(), &edits);
        if let Ok(text) = String::from_utf8(bytes) {
            if let Err(err) = Settings::from_toml(&text, Path::new("fuzz.toml")) {
                // Every error says where.
                prop_assert!(err.to_string().starts_with("fuzz.toml"), "{}", err);
            }
        }
    }

    #[test]
    fn idx_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), rank in 1usize..4) {
        let _ = parse_idx(&bytes, rank);
    }

    #[test]
    fn idx_reader_never_panics_on_mutated_files(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let valid = encode_idx(&[3, 4, 4], &[7u8; 48]);
        let bytes = mutate(&valid, &edits);
        if let Ok(array) = parse_idx(&bytes, 3) {
            prop_assert_eq!(array.data.len(), array.dims.iter().product::<usize>());
        }
    }

    #[test]
    fn cifar_reader_never_panics(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..8)) {
        let mut valid = encode_record(3, 9);
        valid.extend(encode_record(7, 1));
        let bytes = mutate(&valid, &edits);
        let mut set = ImageSet::empty(3, 32, 32);
        if parse_batch(&bytes, &mut set).is_ok() {
            prop_assert_eq!(set.images.len(), set.labels.len() * 3072);
            prop_assert!(set.labels.iter().all(|&l| (0..10).contains(&l)));
        }
    }
}
