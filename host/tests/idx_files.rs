//! The IDX reader on files the tests write: plain, gzip, and every kind of damage.

use std::path::Path;

use vigil::config::DataKind;
use vigil::data::idx::{encode_idx, read_idx};
use vigil::data::load_idx_dataset;
use vigil::Error;

use crate::util::{gzip, write_idx_dataset};

fn reason(err: Error) -> String {
    match err {
        Error::DataCorrupt { reason, .. } => reason,
        other => panic!("expected DataCorrupt, got {other:?}"),
    }
}

#[test]
fn reads_plain_and_gzip_files_alike() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = encode_idx(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    std::fs::write(dir.path().join("plain"), &bytes).unwrap();
    std::fs::write(dir.path().join("packed.gz"), gzip(&bytes)).unwrap();
    let plain = read_idx(&dir.path().join("plain"), 3).unwrap();
    let packed = read_idx(&dir.path().join("packed.gz"), 3).unwrap();
    assert_eq!(plain, packed);
    assert_eq!(plain.dims, vec![2, 2, 3]);
}

#[test]
fn truncated_gzip_stream_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gz");
    let packed = gzip(&encode_idx(&[100, 8, 8], &[7; 6400]));
    std::fs::write(&path, &packed[..packed.len() / 2]).unwrap();
    let err = read_idx(&path, 3).unwrap_err();
    assert!(
        err.to_string().starts_with(&path.display().to_string()),
        "{err}"
    );
    assert!(reason(err).contains("gzip stream is truncated"));
}

#[test]
fn truncated_data_inside_a_valid_gzip_is_reported_with_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.gz");
    let mut bytes = encode_idx(&[10, 4, 4], &[0; 160]);
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&path, gzip(&bytes)).unwrap();
    let reason = reason(read_idx(&path, 3).unwrap_err());
    assert!(reason.contains("10×4×4 = 160 bytes"), "{reason}");
    assert!(reason.contains("has 150"), "{reason}");
}

#[test]
fn a_label_file_where_images_belong_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels");
    std::fs::write(&path, encode_idx(&[3], &[0, 1, 2])).unwrap();
    assert!(reason(read_idx(&path, 3).unwrap_err()).contains("expected 3"));
}

#[test]
fn loads_a_whole_dataset_and_checks_its_splits() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dataset(dir.path(), 30, 10, 6);
    let dataset = load_idx_dataset(DataKind::FashionMnist, dir.path()).unwrap();
    assert_eq!(dataset.train.len(), 30);
    assert_eq!(dataset.test.len(), 10);
    assert_eq!((dataset.train.height, dataset.train.width), (6, 6));
    assert_eq!(dataset.train.labels[13], 3);
    assert_eq!(dataset.class_names[9], "Ankle boot");
}

#[test]
fn label_out_of_range_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dataset(dir.path(), 5, 5, 4);
    let labels = dir.path().join("train-labels-idx1-ubyte.gz");
    std::fs::write(&labels, gzip(&encode_idx(&[5], &[0, 1, 12, 3, 4]))).unwrap();
    let reason = reason(load_idx_dataset(DataKind::Mnist, dir.path()).unwrap_err());
    assert!(
        reason.contains("label 12 at index 2 is out of range"),
        "{reason}"
    );
}

#[test]
fn image_and_label_counts_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dataset(dir.path(), 5, 5, 4);
    let labels = dir.path().join("t10k-labels-idx1-ubyte.gz");
    std::fs::write(&labels, gzip(&encode_idx(&[4], &[0, 1, 2, 3]))).unwrap();
    let reason = reason(load_idx_dataset(DataKind::Mnist, dir.path()).unwrap_err());
    assert!(reason.contains("holds 4 labels"), "{reason}");
}

#[test]
fn missing_directory_and_missing_file_say_what_to_do() {
    let err = load_idx_dataset(DataKind::FashionMnist, Path::new("/no/such/dir")).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("/no/such/dir: Fashion-MNIST data directory not found"),
        "{message}"
    );
    assert!(
        message.contains("apt-get install dataset-fashion-mnist"),
        "{message}"
    );

    let dir = tempfile::tempdir().unwrap();
    let [_, _, test_images, _] = write_idx_dataset(dir.path(), 5, 5, 4);
    std::fs::remove_file(&test_images).unwrap();
    let message = load_idx_dataset(DataKind::Mnist, dir.path())
        .unwrap_err()
        .to_string();
    assert!(message.contains("t10k-images-idx3-ubyte.gz"), "{message}");
    assert!(message.contains("not found"), "{message}");
}

#[test]
fn a_zero_size_split_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dataset(dir.path(), 0, 5, 4);
    let err = load_idx_dataset(DataKind::Mnist, dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("train-images-idx3-ubyte.gz: holds zero images"),
        "{message}"
    );
}
