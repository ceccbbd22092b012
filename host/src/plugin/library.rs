//! Loading a checked plugin library, and telling the user why one could not be.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use vigil_plugin_api::abi::{PluginInfo, PluginModuleRef};
use vigil_plugin_api::identity::Identity;
use vigil_plugin_api::{EventSet, Subscriptions};

pub use super::trust::hex;
use super::trust::CheckedBytes;
#[cfg(test)]
use super::trust::OpenFile;

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
    /// The identity record read from the file before it was loaded; `None` for a library
    /// built without one (API 1.0 and 1.1), found by its file name.
    pub identity: Option<Identity>,
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

/// Libraries this process has loaded, by the SHA-256 of their bytes: loading the same bytes
/// again reuses the module (the same code; nothing of it runs again).
static LOADED: Mutex<BTreeMap<String, (PluginModuleRef, LibraryInfo)>> =
    Mutex::new(BTreeMap::new());

/// Load checked bytes: the dynamic loader maps a sealed copy of exactly the bytes that were
/// hashed (so replacing or rewriting the file after its check changes nothing), abi_stable
/// checks the ABI layout before any of the plugin's functions is called, and the library's
/// `info()` must agree with its identity record. The library's ELF initialisers, if it has
/// any, run when it is mapped, before the layout check: that is why only the libraries of
/// enabled monitors, after their owner, permission and pin checks, get here. A failed layout
/// check writes its full report into `report_dir` (the run directory) when there is one.
pub fn load(
    checked: CheckedBytes,
    report_dir: Option<&Path>,
) -> Result<PluginLibrary, LoadFailure> {
    let cached = LOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&checked.sha256)
        .cloned();
    let (module, info) = match cached {
        Some(loaded) => loaded,
        None => {
            let loaded = load_fresh(&checked, report_dir)?;
            LOADED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(checked.sha256.clone(), loaded.clone());
            loaded
        }
    };
    Ok(PluginLibrary {
        path: checked.path.clone(),
        sha256: checked.sha256.clone(),
        identity: checked.inspection.identity.clone(),
        info,
        module,
    })
}

/// Map `checked` with the dynamic loader, always anew ([`super::load_library_afresh`]).
pub fn load_fresh(
    checked: &CheckedBytes,
    report_dir: Option<&Path>,
) -> Result<(PluginModuleRef, LibraryInfo), LoadFailure> {
    let path = checked.path.as_path();
    let sha256 = checked.sha256.as_str();
    let failure = |reason: String| LoadFailure {
        path: path.to_path_buf(),
        sha256: Some(sha256.to_string()),
        reason,
    };
    let copy = checked
        .sealed_copy()
        .map_err(|err| failure(format!("cannot make a sealed copy to load: {err}")))?;
    let loader_path = copy.loader_path();
    let header = lib_header_from_path(&loader_path)
        .map_err(|err| failure(open_reason(&err, &loader_path, path)))?;
    // The library is mapped for good (libraries are never unloaded). Its descriptor stays
    // open with it: the dynamic loader knows a library by the path it was opened with, and a
    // descriptor number used again would make `/proc/self/fd/N` name the old library.
    copy.keep_open();
    let root_name = header.root_mod_consts().name().as_str();
    if root_name != PluginModuleRef::NAME {
        return Err(failure(format!(
            "not a vigil plugin: it exports the abi_stable root module `{root_name}`"
        )));
    }
    let module = header
        .init_root_module::<PluginModuleRef>()
        .map_err(|err| failure(init_reason(&err, path, sha256, report_dir)))?;
    let info = LibraryInfo::from((module.info())());
    if info.name.trim().is_empty() {
        return Err(failure("the plugin reports an empty monitor name".into()));
    }
    if let Some(identity) = &checked.inspection.identity {
        let recorded = (
            identity.name.as_str(),
            identity.version.as_str(),
            identity.events,
            identity.subscriptions,
        );
        let reported = (
            info.name.as_str(),
            info.version.as_str(),
            info.events,
            info.subscriptions,
        );
        if recorded != reported {
            return Err(failure(format!(
                "its identity record (monitor `{}` {}, events {:#x}, data {:#x}) disagrees with what the loaded \
                 library reports (`{}` {}, events {:#x}, data {:#x}): refused; rebuild it with one `Monitor::INFO`",
                identity.name,
                identity.version,
                identity.events.0,
                identity.subscriptions.0,
                info.name,
                info.version,
                info.events.0,
                info.subscriptions.0
            )));
        }
    }
    Ok((module, info))
}

/// `err` in one line, naming the file rather than the sealed copy the loader opened.
fn open_reason(err: &LibraryError, loader_path: &Path, path: &Path) -> String {
    let text = |err: &dyn std::fmt::Display| {
        one_line(
            &err.to_string()
                .replace(&*loader_path.to_string_lossy(), &path.to_string_lossy()),
        )
    };
    match err {
        LibraryError::OpenError { err, .. } => {
            format!("not a loadable shared library ({})", text(err))
        }
        LibraryError::GetSymbolError { .. } => {
            "not a vigil plugin: no abi_stable root module (build it with vigil_plugin_api::export_monitor!)"
                .into()
        }
        // abi_stable's own report of this case is a dump of both headers' bytes.
        LibraryError::InvalidAbiHeader(_) => {
            "not a vigil plugin: it exports abi_stable's root-module symbol, but not a header that \
             abi_stable 0.11 can read (a library of another abi_stable version, or not a plugin); \
             build it with vigil_plugin_api::export_monitor!"
                .into()
        }
        other => text(other),
    }
}

fn init_reason(err: &LibraryError, path: &Path, sha256: &str, report_dir: Option<&Path>) -> String {
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
            match write_report(path, sha256, &report, report_dir) {
                Ok(file) => format!(
                    "incompatible plugin API layout ({summary}); rebuild the plugin against this host's vigil-plugin-api; full report: {}",
                    file.display()
                ),
                Err(err) => format!(
                    "incompatible plugin API layout ({summary}); rebuild the plugin against this host's vigil-plugin-api \
                     (the full report could not be written: {err})"
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

/// Write the full layout report where the user can read it, and return its path: into
/// `report_dir` (the run directory) when it exists, replacing whatever entry had the name
/// (a planted symlink is replaced, not followed); else a new file in the temp directory,
/// created exclusively with mode 0600, never through an existing name.
fn write_report(
    path: &Path,
    sha256: &str,
    report: &str,
    report_dir: Option<&Path>,
) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let short = &sha256[..12.min(sha256.len())];
    let text = format!("plugin: {}\nsha256: {sha256}\n\n{report}\n", path.display());
    let create = |file: &Path, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(file)
    };
    if let Some(dir) = report_dir.filter(|dir| dir.is_dir()) {
        let target = dir.join(format!("plugin-layout-{stem}-{short}.txt"));
        let temporary = dir.join(format!(
            ".plugin-layout-{stem}-{short}.{}.tmp",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&temporary);
        let mut file = create(&temporary, 0o644)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &target)?;
        return Ok(std::path::absolute(&target).unwrap_or(target));
    }
    let base = std::env::temp_dir().join(format!("vigil-plugin-layout-{stem}-{short}"));
    let mut last = None;
    for attempt in 0..64u32 {
        let candidate = if attempt == 0 {
            base.with_extension("txt")
        } else {
            PathBuf::from(format!("{}-{attempt}.txt", base.display()))
        };
        match create(&candidate, 0o600) {
            Ok(mut file) => {
                file.write_all(text.as_bytes())?;
                return Ok(candidate);
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => last = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free report name")))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Open `path`, check it, and load it, as a search does for the file it chose.
    fn open_and_load(
        path: &Path,
        allow_insecure: bool,
        report_dir: Option<&Path>,
    ) -> Result<PluginLibrary, LoadFailure> {
        let failure = |reason: String, sha256: Option<String>| LoadFailure {
            path: path.to_path_buf(),
            sha256,
            reason,
        };
        let file = OpenFile::open(path, allow_insecure).map_err(|reason| failure(reason, None))?;
        let checked = file
            .read()
            .map_err(|(reason, sha256)| failure(reason, sha256))?;
        load(checked, report_dir)
    }

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
    fn a_file_that_is_not_a_library_is_refused_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libfake.so");
        std::fs::write(&path, b"definitely not ELF").unwrap();
        let failure = open_and_load(&path, false, None).unwrap_err();
        assert!(
            failure.reason.starts_with("not a shared library"),
            "{}",
            failure.reason
        );
        assert_eq!(failure.sha256.as_deref().map(str::len), Some(64));
        assert_eq!(
            open_and_load(&dir.path().join("libnone.so"), false, None)
                .unwrap_err()
                .reason,
            "file not found"
        );
    }

    #[test]
    fn a_report_in_the_run_directory_replaces_a_planted_symlink_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "precious").unwrap();
        let planted = dir.path().join("plugin-layout-libx-0123456789ab.txt");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let written = write_report(
            Path::new("/p/libx.so"),
            "0123456789abcdef",
            "the report",
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!(written, std::path::absolute(&planted).unwrap());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&written)
            .unwrap()
            .file_type()
            .is_file());
        assert!(std::fs::read_to_string(&written)
            .unwrap()
            .contains("the report"));
    }

    #[test]
    fn a_report_without_a_run_directory_is_a_new_private_file_never_a_planted_name() {
        use std::os::unix::fs::PermissionsExt;
        let victim_dir = tempfile::tempdir().unwrap();
        let victim = victim_dir.path().join("victim.txt");
        std::fs::write(&victim, "precious").unwrap();
        // The first name the host would try, planted as a symlink by someone else.
        let sha = format!("{:012x}", std::process::id() as u64 * 7919 + 17);
        let planted =
            std::env::temp_dir().join(format!("vigil-plugin-layout-libplanted-{sha}.txt"));
        let _ = std::fs::remove_file(&planted);
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let written =
            write_report(Path::new("/p/libplanted.so"), &sha, "the report", None).unwrap();
        assert_ne!(written, planted);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let metadata = std::fs::symlink_metadata(&written).unwrap();
        assert!(metadata.file_type().is_file());
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        std::fs::remove_file(&written).unwrap();
        std::fs::remove_file(&planted).unwrap();
    }

    #[test]
    fn hex_is_lower_case_and_padded() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
