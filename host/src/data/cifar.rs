//! Reader for CIFAR-10's binary batches: `data_batch_{1..5}.bin` and `test_batch.bin`.
//!
//! Each record is one label byte followed by 3 × 32 × 32 pixel bytes (the red plane, then
//! green, then blue). A file must hold a whole number of records with labels below 10.

use std::path::Path;

use crate::data::{Dataset, ImageSet};
use crate::error::{Error, Result};

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
const SIDE: usize = 32;
const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
const RECORD_BYTES: usize = 1 + IMAGE_BYTES;

/// Parse the records of one batch file into `set`; the error is a reason without the path.
pub fn parse_batch(bytes: &[u8], set: &mut ImageSet) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("holds no records".into());
    }
    if bytes.len() % RECORD_BYTES != 0 {
        return Err(format!(
            "truncated or corrupt: {} bytes is not a whole number of {RECORD_BYTES}-byte records ({} whole records and {} bytes over)",
            bytes.len(),
            bytes.len() / RECORD_BYTES,
            bytes.len() % RECORD_BYTES
        ));
    }
    for (index, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = record[0];
        if usize::from(label) >= CIFAR10_CLASSES.len() {
            return Err(format!(
                "label {label} of record {index} is out of range: CIFAR-10 has 10 classes (0-9)"
            ));
        }
        set.labels.push(i64::from(label));
        set.images.extend_from_slice(&record[1..]);
    }
    Ok(())
}

/// Load CIFAR-10 from the directory holding its binary batches.
pub fn load(dir: &Path) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(Error::DataMissing {
            path: dir.to_path_buf(),
            what: "CIFAR-10 data directory".into(),
            hint: "point `data_dir` at the directory holding data_batch_1.bin … test_batch.bin \
                   (the \"binary version\" of CIFAR-10), or set synthetic_fallback = true"
                .into(),
        });
    }
    let split = |files: &[String]| -> Result<ImageSet> {
        let mut set = ImageSet::empty(3, SIDE, SIDE);
        for file in files {
            let path = dir.join(file);
            let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => Error::DataMissing {
                    path: path.clone(),
                    what: "CIFAR-10 batch file".into(),
                    hint: "the directory must hold data_batch_1.bin … data_batch_5.bin and test_batch.bin".into(),
                },
                _ => Error::io(&path, source),
            })?;
            parse_batch(&bytes, &mut set).map_err(|reason| Error::DataCorrupt {
                path: path.clone(),
                reason,
            })?;
        }
        Ok(set)
    };
    let train_files: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
    Ok(Dataset {
        name: "CIFAR-10".into(),
        train: split(&train_files)?,
        test: split(&["test_batch.bin".to_string()])?,
        class_names: CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect(),
        skipped_files: Vec::new(),
    })
}

/// One record with `label` and every pixel set to `value`: for tests and fixtures.
pub fn encode_record(label: u8, value: u8) -> Vec<u8> {
    let mut record = vec![value; RECORD_BYTES];
    record[0] = label;
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_whole_records() {
        let mut bytes = encode_record(3, 7);
        bytes.extend(encode_record(9, 200));
        let mut set = ImageSet::empty(3, 32, 32);
        parse_batch(&bytes, &mut set).unwrap();
        assert_eq!(set.labels, vec![3, 9]);
        assert_eq!(set.images.len(), 2 * 3072);
        assert_eq!(set.images[3072], 200);
    }

    #[test]
    fn rejects_a_partial_record() {
        let mut bytes = encode_record(1, 1);
        bytes.truncate(3000);
        let reason = parse_batch(&bytes, &mut ImageSet::empty(3, 32, 32)).unwrap_err();
        assert!(
            reason.contains("not a whole number of 3073-byte records"),
            "{reason}"
        );
    }

    #[test]
    fn rejects_a_label_out_of_range() {
        let mut bytes = encode_record(1, 1);
        bytes.extend(encode_record(10, 1));
        let reason = parse_batch(&bytes, &mut ImageSet::empty(3, 32, 32)).unwrap_err();
        assert!(reason.contains("label 10 of record 1"), "{reason}");
    }

    #[test]
    fn rejects_an_empty_file() {
        assert_eq!(
            parse_batch(&[], &mut ImageSet::empty(3, 32, 32)).unwrap_err(),
            "holds no records"
        );
    }
}
