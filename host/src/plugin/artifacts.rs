//! Files monitors write under `<run_dir>/artifacts/`: replaced atomically or appended to,
//! with the appended files' lengths kept for checkpoints.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use vigil_plugin_api::abi::Artifact;
use vigil_plugin_api::WriteMode;

use crate::fs::write_atomically;

/// Writes artifacts under `<run_dir>/artifacts/`.
///
/// It remembers the files appended to in this run. The first append to a file it does not
/// know starts the file afresh, so that a resumed run never appends after lines written
/// past its checkpoint; the files it knows are cut back to their checkpoint lengths on resume.
#[derive(Debug, Default)]
pub struct ArtifactWriter {
    pub(super) root: Option<PathBuf>,
    /// Appended files (relative paths, `/`-separated).
    appended: RefCell<std::collections::BTreeSet<String>>,
}

impl ArtifactWriter {
    pub fn new(root: Option<PathBuf>) -> Self {
        ArtifactWriter {
            root,
            appended: RefCell::default(),
        }
    }

    /// The appended files with their current lengths, each fsynced (a checkpoint records
    /// them).
    pub fn appended_lengths(&self) -> crate::Result<std::collections::BTreeMap<String, u64>> {
        let Some(root) = &self.root else {
            return Ok(Default::default());
        };
        self.appended
            .borrow()
            .iter()
            .map(|relative| {
                let path = root.join(relative);
                crate::fs::sync_file(&path)?;
                let length = std::fs::metadata(&path)
                    .map_err(|source| crate::Error::io(&path, source))?
                    .len();
                Ok((relative.clone(), length))
            })
            .collect()
    }

    /// Cut appended files back to `lengths` and remember them as appended.
    pub fn restore_appended(
        &self,
        lengths: &std::collections::BTreeMap<String, u64>,
    ) -> crate::Result<()> {
        let Some(root) = &self.root else {
            return Ok(());
        };
        for (relative, &length) in lengths {
            let relative_path =
                checked_relative_path(relative).map_err(crate::Error::Capability)?;
            crate::fs::cut_back(&root.join(relative_path), length)?;
            self.appended.borrow_mut().insert(relative.clone());
        }
        Ok(())
    }

    /// Write one artifact; returns the file written.
    pub(super) fn write(&self, artifact: &Artifact<'_>) -> Result<PathBuf, String> {
        let Some(root) = &self.root else {
            return Err("artifacts cannot be written before training starts".into());
        };
        let relative = checked_relative_path(artifact.path.as_str())?;
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
        }
        let bytes = artifact.bytes.as_slice();
        match artifact.mode {
            WriteMode::APPEND => {
                use std::io::Write;
                // True for a file this run has not appended to yet: start it afresh.
                let fresh = self.appended.borrow_mut().insert(artifact.path.to_string());
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(!fresh)
                    .write(true)
                    .truncate(fresh)
                    .open(&path)
                    .and_then(|mut file| file.write_all(bytes))
                    .map_err(|err| format!("cannot append to {}: {err}", path.display()))?;
            }
            WriteMode::REPLACE => write_atomically(&path, bytes).map_err(|err| err.to_string())?,
            WriteMode(other) => return Err(format!("unknown write mode {other}")),
        }
        Ok(path)
    }
}

/// A relative path with plain components only (the rule the API crate states).
fn checked_relative_path(path: &str) -> Result<&Path, String> {
    vigil_plugin_api::check_artifact_path(path).map(|()| Path::new(path))
}

#[cfg(test)]
mod tests {
    use abi_stable::std_types::{RSlice, RStr};
    use vigil_plugin_api::ArtifactKind;

    use super::*;

    #[test]
    fn artifact_paths_must_stay_inside_the_run() {
        assert!(checked_relative_path("epoch_001/matrix.png").is_ok());
        for bad in ["", "/etc/passwd", "../escape.png", "a/../../b", "./x"] {
            assert!(
                checked_relative_path(bad).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn artifacts_are_replaced_or_appended() {
        let dir = tempfile::tempdir().unwrap();
        let writer = ArtifactWriter::new(Some(dir.path().to_path_buf()));
        let artifact = |bytes: &'static [u8], mode| Artifact {
            path: RStr::from_str("sub/table.csv"),
            bytes: RSlice::from_slice(bytes),
            kind: ArtifactKind::TEXT,
            mode,
        };
        writer.write(&artifact(b"a\n", WriteMode::APPEND)).unwrap();
        writer.write(&artifact(b"b\n", WriteMode::APPEND)).unwrap();
        let path = dir.path().join("sub/table.csv");
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\n");
        writer.write(&artifact(b"c\n", WriteMode::REPLACE)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"c\n");
    }

    #[test]
    fn artifacts_before_the_run_directory_exists_are_refused() {
        let writer = ArtifactWriter::new(None);
        let artifact = Artifact {
            path: RStr::from_str("x.txt"),
            bytes: RSlice::from_slice(b"x"),
            kind: ArtifactKind::TEXT,
            mode: WriteMode::REPLACE,
        };
        assert!(writer.write(&artifact).is_err());
    }

    /// A resume cuts appended files back to the checkpoint, and a file first appended after
    /// the checkpoint starts again from empty instead of collecting lines twice.
    #[test]
    fn appended_files_are_cut_back_and_unknown_ones_start_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let append = |writer: &ArtifactWriter, path: &'static str, bytes: &'static [u8]| {
            writer
                .write(&Artifact {
                    path: RStr::from_str(path),
                    bytes: RSlice::from_slice(bytes),
                    kind: ArtifactKind::TEXT,
                    mode: WriteMode::APPEND,
                })
                .unwrap();
        };
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let before = ArtifactWriter::new(Some(dir.path().to_path_buf()));
        append(&before, "t.csv", b"a\n");
        append(&before, "t.csv", b"b\n");
        let checkpoint = before.appended_lengths().unwrap();
        assert_eq!(
            checkpoint.into_iter().collect::<Vec<_>>(),
            [("t.csv".to_string(), 4)]
        );
        let checkpoint = before.appended_lengths().unwrap();
        append(&before, "t.csv", b"c\n");
        append(&before, "late.csv", b"z\n");

        let resumed = ArtifactWriter::new(Some(dir.path().to_path_buf()));
        resumed.restore_appended(&checkpoint).unwrap();
        assert_eq!(read("t.csv"), "a\nb\n");
        append(&resumed, "t.csv", b"C\n");
        append(&resumed, "late.csv", b"Z\n");
        assert_eq!(read("t.csv"), "a\nb\nC\n");
        assert_eq!(read("late.csv"), "Z\n");
    }
}
