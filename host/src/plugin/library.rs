//! Finding plugin libraries and checking them before anything of theirs runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use sha2::{Digest, Sha256};
use vigil_plugin_api::abi::{PluginInfo, PluginModuleRef};
use vigil_plugin_api::{EventSet, Subscriptions};

/// What a loaded plugin says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct LibraryInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub api_version: String,
    pub events: EventSet,
    pub subscriptions: Subscriptions,
}

impl From<PluginInfo> for LibraryInfo {
    fn from(info: PluginInfo) -> Self {
        LibraryInfo {
            name: info.name.into_string(),
            version: info.version.into_string(),
            description: info.description.into_string(),
            api_version: info.api_version.into_string(),
            events: info.events,
            subscriptions: info.subscriptions,
        }
    }
}

/// A plugin library that passed every check.
#[derive(Clone)]
pub struct PluginLibrary {
    pub path: PathBuf,
    pub sha256: String,
    pub info: LibraryInfo,
    pub(super) module: PluginModuleRef,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// A file that could not be used as a plugin, and why (one line).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadFailure {
    pub path: PathBuf,
    pub sha256: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// The outcome of scanning plugin directories.
#[derive(Debug, Default)]
pub struct Scan {
    /// Usable plugins by monitor name; the first directory that provides a name wins.
    pub libraries: BTreeMap<String, PluginLibrary>,
    /// Files that were not usable plugins.
    pub failures: Vec<LoadFailure>,
    /// Plugins hidden by one of the same name in an earlier directory.
    pub shadowed: Vec<PluginLibrary>,
}

/// The directories searched when a config names none: `<exe dir>/plugins`, `<exe dir>`
/// (where `cargo build` puts the workspace's plugins, beside the binary) and `./plugins`.
pub fn default_plugin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("plugins"));
        dirs.push(exe_dir);
    }
    dirs.push(PathBuf::from("plugins"));
    dirs
}

/// Why a file or directory anyone may write to must not be trusted, or `None` if it is fine.
/// Anyone who can replace a plugin, or drop a new one into a scanned directory, can run code
/// inside every training run.
pub fn insecure(path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o002 != 0).then(|| {
        format!(
            "{what} {} is world-writable (mode {:o}): anyone could replace the code vigil runs; \
             `chmod o-w` it, or set allow_insecure_plugins = true",
            path.display(),
            mode & 0o7777
        )
    })
}

/// Load every `*.so` file directly inside `dirs` (missing directories are skipped).
/// Unless `allow_insecure`, world-writable directories and files are refused.
pub fn scan(dirs: &[PathBuf], allow_insecure: bool) -> Scan {
    let mut scan = Scan::default();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let dir_problem = if allow_insecure {
            None
        } else {
            insecure(dir, "plugin directory")
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "so") && path.is_file())
            .collect();
        files.sort();
        for file in files {
            if let Some(reason) = &dir_problem {
                scan.failures.push(LoadFailure {
                    path: file,
                    sha256: None,
                    reason: reason.clone(),
                });
                continue;
            }
            match load(&file, allow_insecure) {
                Ok(library) => {
                    if scan.libraries.contains_key(&library.info.name) {
                        scan.shadowed.push(library);
                    } else {
                        scan.libraries.insert(library.info.name.clone(), library);
                    }
                }
                Err(failure) => scan.failures.push(failure),
            }
        }
    }
    scan
}

/// Open `path`, check that it is a vigil plugin whose ABI matches this host, and read its
/// info. Nothing of the plugin runs before the layout check passes. Unless `allow_insecure`, a
/// world-writable file or parent directory is refused before it is opened.
pub fn load(path: &Path, allow_insecure: bool) -> Result<PluginLibrary, LoadFailure> {
    let failure = |sha256: Option<String>, reason: String| LoadFailure {
        path: path.to_path_buf(),
        sha256,
        reason,
    };
    if !allow_insecure && path.exists() {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Some(reason) =
            insecure(path, "plugin file").or_else(|| insecure(parent, "plugin directory"))
        {
            return Err(failure(None, reason));
        }
    }
    let bytes = std::fs::read(path).map_err(|err| {
        let reason = match err.kind() {
            std::io::ErrorKind::NotFound => "file not found".to_string(),
            _ => format!("cannot read: {err}"),
        };
        failure(None, reason)
    })?;
    let sha256 = hex(&Sha256::digest(&bytes));
    drop(bytes);

    let header = lib_header_from_path(path)
        .map_err(|err| failure(Some(sha256.clone()), open_reason(&err)))?;
    let root_name = header.root_mod_consts().name().as_str();
    if root_name != PluginModuleRef::NAME {
        return Err(failure(
            Some(sha256),
            format!("not a vigil plugin: it exports the abi_stable root module `{root_name}`"),
        ));
    }
    let module = header
        .init_root_module::<PluginModuleRef>()
        .map_err(|err| failure(Some(sha256.clone()), init_reason(&err, path, &sha256)))?;
    let info = LibraryInfo::from((module.info())());
    if info.name.trim().is_empty() {
        return Err(failure(
            Some(sha256),
            "the plugin reports an empty monitor name".into(),
        ));
    }
    Ok(PluginLibrary {
        path: path.to_path_buf(),
        sha256,
        info,
        module,
    })
}

fn open_reason(err: &LibraryError) -> String {
    match err {
        LibraryError::OpenError { err, .. } => {
            format!("not a loadable shared library ({})", one_line(&err.to_string()))
        }
        LibraryError::GetSymbolError { .. } => {
            "not a vigil plugin: no abi_stable root module (build it with vigil_plugin_api::export_monitor!)"
                .into()
        }
        other => one_line(&other.to_string()),
    }
}

fn init_reason(err: &LibraryError, path: &Path, sha256: &str) -> String {
    match err {
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "built against vigil-plugin-api {actual_version}; this host loads {}.x (expected {expected_version}): rebuild the plugin",
            expected_version.major
        ),
        LibraryError::AbiInstability(_) | LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            let report = err.to_string();
            let summary = layout_summary(&report);
            match write_report(path, sha256, &report) {
                Some(file) => format!(
                    "incompatible plugin API layout ({summary}); rebuild the plugin against this host's vigil-plugin-api; full report: {}",
                    file.display()
                ),
                None => format!(
                    "incompatible plugin API layout ({summary}); rebuild the plugin against this host's vigil-plugin-api"
                ),
            }
        }
        other => one_line(&other.to_string()),
    }
}

/// The most specific mismatch of a (possibly thousand-line) layout report: the innermost
/// type it compared, and the errors listed last with their expected and found values, e.g.
/// "`StepCounters`: incompatible type size (expected 40, found 48)".
fn layout_summary(report: &str) -> String {
    let lines: Vec<&str> = report
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let last_layout = lines
        .iter()
        .rposition(|l| l.starts_with("Layout of expected type"));
    let type_name = last_layout.and_then(|end| {
        lines[..end]
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("type:").map(str::trim))
    });
    let value_after = |index: usize, label: &str| -> Option<&str> {
        let at = lines[index..].iter().position(|l| l.starts_with(label))? + index;
        let inline = lines[at][label.len()..].trim();
        if inline.is_empty() {
            lines.get(at + 1).copied()
        } else {
            Some(inline)
        }
    };
    let errors: Vec<String> = lines
        .iter()
        .enumerate()
        .skip(last_layout.unwrap_or(0))
        .filter_map(|(index, line)| {
            let error = line.strip_prefix("Error:")?.trim();
            Some(
                match (
                    value_after(index, "Expected:"),
                    value_after(index, "Found:"),
                ) {
                    (Some(expected), Some(found)) => format!(
                        "{error} (expected {}, found {})",
                        truncate(expected, 60),
                        truncate(found, 60)
                    ),
                    _ => error.to_string(),
                },
            )
        })
        .collect();
    let details = if errors.is_empty() {
        truncate(lines.first().copied().unwrap_or("no details"), 200)
    } else {
        errors.join("; ")
    };
    match type_name {
        Some(name) => format!("`{name}`: {details}"),
        None => details,
    }
}

/// Write the full layout report where the user can read it; returns its path.
fn write_report(path: &Path, sha256: &str, report: &str) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join("vigil-plugin-reports");
    std::fs::create_dir_all(&dir).ok()?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = dir.join(format!("{stem}-{}.txt", &sha256[..12.min(sha256.len())]));
    let text = format!("plugin: {}\nsha256: {sha256}\n\n{report}\n", path.display());
    std::fs::write(&file, text).ok()?;
    Some(file)
}

fn one_line(text: &str) -> String {
    truncate(&text.split_whitespace().collect::<Vec<_>>().join(" "), 300)
}

fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        text.to_string()
    } else {
        let cut: String = text.chars().take(limit).collect();
        format!("{cut}…")
    }
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_summary_names_the_innermost_type_and_its_errors() {
        let report = "Layout of expected type:\n  type:PluginModule\n\n    field_name:__returns\n    type:StepCounters\n\
                      Layout of expected type:\n    null\nLayout of found type:\n    null\n\n\
                      Error:incompatible type size\nExpected:\n    40\nFound:\n    48\n\n\
                      Error:too many fields\nExpected:\n    8\nFound:\n    9\n";
        assert_eq!(
            layout_summary(report),
            "`StepCounters`: incompatible type size (expected 40, found 48); too many fields (expected 8, found 9)"
        );
    }

    #[test]
    fn a_missing_file_is_reported_plainly() {
        let failure = load(Path::new("/no/such/plugin.so"), false).unwrap_err();
        assert_eq!(failure.reason, "file not found");
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libfake.so");
        std::fs::write(&path, b"definitely not ELF").unwrap();
        let failure = load(&path, false).unwrap_err();
        assert!(
            failure.reason.starts_with("not a loadable shared library"),
            "{}",
            failure.reason
        );
        assert_eq!(failure.sha256.as_deref().map(str::len), Some(64));
    }

    #[test]
    fn world_writable_files_and_directories_are_refused_unless_allowed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libopen.so");
        std::fs::write(&path, b"junk").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let reason = load(&path, false).unwrap_err().reason;
        assert!(
            reason.starts_with("plugin file") && reason.contains("world-writable (mode 666)"),
            "{reason}"
        );
        assert!(load(&path, true)
            .unwrap_err()
            .reason
            .starts_with("not a loadable shared library"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let reason = load(&path, false).unwrap_err().reason;
        assert!(reason.starts_with("plugin directory"), "{reason}");
        let scanned = scan(&[dir.path().to_path_buf()], false);
        assert!(
            scanned.failures[0].reason.starts_with("plugin directory"),
            "{:?}",
            scanned.failures
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn hex_is_lower_case_and_padded() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
