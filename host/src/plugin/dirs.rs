//! Where plugins live: the default search directories, and `vigil plugins add`, which installs
//! a checked copy into the per-user one.

use std::path::{Path, PathBuf};

use super::trust::OpenFile;
use crate::error::{Error, Result};

/// `$XDG_DATA_HOME/vigil/plugins` (`~/.local/share/vigil/plugins` when it is unset): where a
/// user drops plugins, and where `vigil plugins add` puts them.
pub fn user_plugin_dir() -> Option<PathBuf> {
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|home| home.is_absolute())
                .map(|home| home.join(".local").join("share"))
        })?;
    Some(data_home.join("vigil").join("plugins"))
}

/// Whether `dir` is a Cargo build directory (`target/debug`, `target/release`), where
/// `cargo build --workspace` puts the workspace's monitors beside the binary.
pub fn is_cargo_build_dir(dir: &Path) -> bool {
    dir.join(".fingerprint").is_dir() && dir.join("deps").is_dir()
}

/// The directories to search for plugins: those a config names, else the defaults.
pub fn search_dirs(configured: Option<&[PathBuf]>) -> Vec<PathBuf> {
    configured.map_or_else(default_plugin_dirs, <[PathBuf]>::to_vec)
}

/// The directories searched when a config names none, in order (the first library that
/// provides a monitor wins): `<exe dir>/plugins` (the shipped monitors of an installed
/// vigil); `<exe dir>` itself only when it is a Cargo build directory (the workspace's
/// monitors after `cargo build --workspace`); and [`user_plugin_dir`]. The working directory
/// is never searched.
pub fn default_plugin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("plugins"));
        if is_cargo_build_dir(&exe_dir) {
            dirs.push(exe_dir);
        }
    }
    dirs.extend(user_plugin_dir());
    dirs
}

/// The file name a monitor's library is found by when it has no identity record:
/// `lib<name with - as _>.so`, as Cargo names a `cdylib`.
pub fn legacy_file_name(monitor: &str) -> String {
    format!("lib{}.so", monitor.replace('-', "_"))
}

/// What `vigil plugins add` installed.
#[derive(Debug, Clone, PartialEq)]
pub struct Added {
    pub path: PathBuf,
    pub sha256: String,
    /// The monitor's name, and its version, from the identity record; `None` for a library
    /// without one.
    pub identity: Option<(String, String)>,
    /// A file of that name was already there and was replaced.
    pub replaced: bool,
}

impl Added {
    /// What to tell the user: where it went, its hash, and the config lines to use it.
    pub fn instructions(&self) -> String {
        let name = match &self.identity {
            Some((name, _)) => name.clone(),
            None => self
                .path
                .file_stem()
                .map(|stem| {
                    stem.to_string_lossy()
                        .trim_start_matches("lib")
                        .replace('_', "-")
                })
                .unwrap_or_default(),
        };
        let mut out = format!(
            "{} {}\nsha256: {}\n",
            if self.replaced {
                "replaced"
            } else {
                "installed"
            },
            self.path.display(),
            self.sha256
        );
        match &self.identity {
            Some((name, version)) => out.push_str(&format!("monitor: {name} {version}\n")),
            None => out.push_str(
                "legacy plugin (no identity record): it is found by its file name, and its name is read by \
                 loading it when a config enables it; check the name below\n",
            ),
        }
        out.push_str(&format!(
            "\nTo enable it, and to refuse any other file under that name, add to your config:\n\n\
             [[monitors]]\nname = \"{name}\"\nsha256 = \"{}\"\n",
            self.sha256
        ));
        out
    }
}

/// Check `file` as a run would (a regular file owned by you, root or vigil's owner and
/// writable by no one else; an ELF library for this machine exporting a vigil plugin of this
/// API major), then copy the bytes that were checked and hashed into `dir` (created if need
/// be) with mode 0644, atomically, under the name a search finds it by. Nothing of the
/// library runs.
pub fn add(file: &Path, dir: &Path) -> Result<Added> {
    let refused = |reason: String| Error::Plugins {
        problems: vec![format!("{}: {reason}", file.display())],
    };
    // The source's directory (often a download directory, or /tmp) is not checked: what is
    // installed is the copy of the bytes hashed here, in a directory of the user's.
    let opened = OpenFile::open_file_only(file).map_err(refused)?;
    let checked = opened.read().map_err(|(reason, _)| refused(reason))?;
    let identity = checked
        .inspection
        .identity
        .as_ref()
        .map(|identity| (identity.name.clone(), identity.version.clone()));
    let file_name = match &identity {
        Some((name, _)) => legacy_file_name(name),
        None => file
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .filter(|name| name.starts_with("lib") && name.ends_with(".so"))
            .ok_or_else(|| {
                refused(
                    "has no identity record, so it is found only by its file name, which must be \
                     lib<monitor name with - as _>.so; rename it or rebuild it against vigil-plugin-api 1.2"
                        .into(),
                )
            })?,
    };
    std::fs::create_dir_all(dir).map_err(|source| Error::io(dir, source))?;
    let target = dir.join(file_name);
    let replaced = target.exists();
    crate::fs::write_atomically_with_mode(&target, checked.bytes(), Some(0o644))?;
    Ok(Added {
        path: target,
        sha256: checked.sha256.clone(),
        identity,
        replaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_names_follow_cargo() {
        assert_eq!(legacy_file_name("loss-slope"), "libloss_slope.so");
        assert_eq!(legacy_file_name("gradient"), "libgradient.so");
    }

    #[test]
    fn a_cargo_build_directory_is_recognised_by_its_bookkeeping() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_cargo_build_dir(dir.path()));
        std::fs::create_dir(dir.path().join("deps")).unwrap();
        std::fs::create_dir(dir.path().join(".fingerprint")).unwrap();
        assert!(is_cargo_build_dir(dir.path()));
    }

    #[test]
    fn the_working_directory_is_never_a_default() {
        for dir in default_plugin_dirs() {
            assert!(dir.is_absolute(), "{}", dir.display());
        }
    }

    #[test]
    fn add_refuses_what_is_not_a_plugin_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("libjunk.so");
        std::fs::write(&junk, b"not a library").unwrap();
        let target = dir.path().join("installed");
        let err = add(&junk, &target).unwrap_err().to_string();
        assert!(err.contains("not a shared library"), "{err}");
        assert!(!target.exists());
    }
}
