//! What the dashboard may read: the run and study directories found under the directories it
//! was given, and the files inside them. Every path a request names is resolved here, and
//! resolved paths that lead outside (`..`, an absolute path, a symlink out) are refused.
//!
//! A run or study is named by an id, `<root index>/<path relative to that root>` (the root
//! itself is `<root index>/.`); nothing else a request says becomes part of a path.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::run_dir::{ARTIFACTS_DIR, CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, STUDY_FILE};

/// How deep under a root runs are looked for (a study's runs sit at depth 2).
const MAX_DEPTH: usize = 4;

/// What a directory is to the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    Run,
    Study,
}

/// The directories the dashboard serves, canonical.
#[derive(Debug, Clone)]
pub struct Roots {
    roots: Vec<PathBuf>,
}

/// A run or study directory found under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    pub path: PathBuf,
    pub kind: DirKind,
}

impl Roots {
    /// Canonicalise the given directories; each must exist.
    pub fn new(dirs: &[PathBuf]) -> Result<Self> {
        let roots = dirs
            .iter()
            .map(|dir| {
                let canonical = dir.canonicalize().map_err(|err| Error::Usage {
 command: "serve",
                    message: format!(
                        "cannot serve {}: {err} (give a directory that holds run or study directories)",
                        dir.display()
                    ),
                })?;
                if !canonical.is_dir() {
                    return Err(Error::Usage {
 command: "serve",
                        message: format!("cannot serve {}: not a directory", dir.display()),
                    });
                }
                Ok(canonical)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Roots { roots })
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Every run and study directory under the roots, by id. Symlinks are not followed.
    pub fn discover(&self) -> Vec<Found> {
        let mut found = Vec::new();
        for (index, root) in self.roots.iter().enumerate() {
            walk(index, root, Path::new(""), 0, &mut found);
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found
    }

    /// The directory an id names, if it is a run or study directory inside its root.
    pub fn resolve(&self, id: &str) -> Option<(PathBuf, DirKind)> {
        let (index, relative) = id.split_once('/')?;
        let root = self.roots.get(index.parse::<usize>().ok()?)?;
        let path = inside(root, Path::new(relative))?;
        let kind = dir_kind(&path)?;
        Some((path, kind))
    }

    /// A regular file inside a run directory, by its path relative to the run.
    pub fn file_in(&self, run: &Path, relative: &str) -> Option<PathBuf> {
        let path = inside(run, Path::new(relative))?;
        path.is_file().then_some(path)
    }
}

/// `base/relative`, canonical, when `relative` holds only plain names (or is `.`) and the
/// result, symlinks resolved, is still inside `base` (itself canonical).
fn inside(base: &Path, relative: &Path) -> Option<PathBuf> {
    for component in relative.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    let path = base.join(relative).canonicalize().ok()?;
    path.starts_with(base).then_some(path)
}

fn dir_kind(path: &Path) -> Option<DirKind> {
    if path.join(STUDY_FILE).is_file() {
        Some(DirKind::Study)
    } else if path.join(METRICS_FILE).is_file() || path.join(CONFIG_FILE).is_file() {
        Some(DirKind::Run)
    } else {
        None
    }
}

fn walk(index: usize, dir: &Path, relative: &Path, depth: usize, found: &mut Vec<Found>) {
    if let Some(kind) = dir_kind(dir) {
        let shown = if relative.as_os_str().is_empty() {
            ".".to_string()
        } else {
            relative.to_string_lossy().into_owned()
        };
        found.push(Found {
            id: format!("{index}/{shown}"),
            path: dir.to_path_buf(),
            kind,
        });
        if kind == DirKind::Run {
            return;
        }
    }
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(text) = name.to_str() else { continue };
        let skipped = text.starts_with('.') || text == ARTIFACTS_DIR || text == CHECKPOINT_DIR;
        // `file_type` does not follow symlinks: a symlinked directory is not entered.
        if skipped || !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        walk(index, &entry.path(), &relative.join(text), depth + 1, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(METRICS_FILE), "").unwrap();
    }

    #[test]
    fn runs_and_studies_are_found_and_resolved_by_id() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("runs");
        run(&root.join("a"));
        std::fs::create_dir_all(root.join("s")).unwrap();
        std::fs::write(root.join("s").join(STUDY_FILE), "{}").unwrap();
        run(&root.join("s/r1"));
        run(&root.join("a/checkpoints/nested"));
        let roots = Roots::new(std::slice::from_ref(&root)).unwrap();
        let ids: Vec<_> = roots.discover().into_iter().map(|f| f.id).collect();
        assert_eq!(ids, ["0/a", "0/s", "0/s/r1"]);
        assert_eq!(roots.resolve("0/a").unwrap().1, DirKind::Run);
        assert_eq!(roots.resolve("0/s").unwrap().1, DirKind::Study);
        assert!(roots.resolve("1/a").is_none());
        assert!(roots.resolve("0/missing").is_none());
        let single = Roots::new(&[root.join("a")]).unwrap();
        assert_eq!(single.discover()[0].id, "0/.");
        assert!(single.resolve("0/.").is_some());
    }

    #[test]
    fn nothing_outside_a_root_resolves() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("runs");
        run(&root.join("a"));
        run(&tmp.path().join("outside"));
        std::fs::write(tmp.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), root.join("a/secret")).unwrap();
        let roots = Roots::new(std::slice::from_ref(&root)).unwrap();
        for id in [
            "0/../outside",
            "0/a/../../outside",
            "0//tmp",
            "0/link",
            "x/a",
            "0",
        ] {
            assert!(roots.resolve(id).is_none(), "{id}");
        }
        let ids: Vec<_> = roots.discover().into_iter().map(|f| f.id).collect();
        assert_eq!(ids, ["0/a"], "a symlinked directory is not listed");
        let (a, _) = roots.resolve("0/a").unwrap();
        assert!(roots.file_in(&a, METRICS_FILE).is_some());
        for path in ["secret", "../../secret", "/etc/passwd", ".", "missing"] {
            assert!(roots.file_in(&a, path).is_none(), "{path}");
        }
    }
}
