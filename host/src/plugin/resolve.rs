//! Which libraries a config's monitors come from. The plugin directories are searched by
//! reading each library's identity record from its file; only the library an enabled
//! monitor needs is then checked (owner, permissions, `sha256` pin) and loaded. Also the table
//! `vigil plugins` prints.

use std::path::{Path, PathBuf};

use super::dirs::legacy_file_name;
use super::library::{self, LoadFailure, PluginLibrary};
use super::trust::OpenFile;
use crate::config::MonitorSettings;
use crate::error::{Error, Result};

/// Where to look for plugins and how strictly.
#[derive(Debug, Clone, Copy)]
pub struct PluginSearch<'a> {
    /// Searched in order for monitors without a `path`.
    pub dirs: &'a [PathBuf],
    /// Accept files and directories others could write to.
    pub allow_insecure: bool,
    /// Where a failed layout check writes its full report (the run directory, if it exists).
    pub report_dir: Option<&'a Path>,
}

/// A `*.so` file in a plugin directory, as read without loading it.
struct Entry {
    file: OpenFile,
    /// The identity record's monitor name, `None` for a library without a record, or why
    /// the file is not a plugin this host could load.
    name: std::result::Result<Option<String>, String>,
}

/// The `*.so` files directly inside `dir`, sorted, opened (not loaded) and read for their
/// identity records. A missing directory has none.
fn entries(dir: &Path) -> Vec<std::result::Result<Entry, LoadFailure>> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = listing
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "so"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| match OpenFile::open_unchecked(&path) {
            Ok(file) => {
                let name = file
                    .inspect()
                    .map(|inspection| inspection.identity.map(|identity| identity.name));
                Some(Ok(Entry { file, name }))
            }
            // A directory that happens to end in `.so`, or a dangling link: not a plugin file.
            Err(reason) if reason == "not a regular file" => None,
            Err(reason) => Some(Err(LoadFailure {
                path,
                sha256: None,
                reason,
            })),
        })
        .collect()
}

/// Find the library of monitor `name` in `dirs`: in each directory in turn, a library whose
/// record names it, else a library without a record called [`legacy_file_name`]. Returns the
/// open file and the other files that also provide the name.
fn find(name: &str, dirs: &[PathBuf]) -> std::result::Result<(OpenFile, Vec<PathBuf>), String> {
    let legacy = legacy_file_name(name);
    let mut found: Option<OpenFile> = None;
    let mut also = Vec::new();
    let mut available = Vec::new();
    let mut without_record = Vec::new();
    for dir in dirs {
        let mut legacy_here = None;
        let mut recorded_here = None;
        for entry in entries(dir).into_iter().flatten() {
            match &entry.name {
                Ok(Some(provided)) if provided == name => {
                    if recorded_here.is_none() && found.is_none() {
                        recorded_here = Some(entry.file);
                    } else {
                        also.push(entry.file.path);
                    }
                }
                Ok(Some(provided)) => available.push(provided.clone()),
                Ok(None) => {
                    let is_legacy = entry.file.path.file_name().is_some_and(|n| *n == *legacy);
                    if is_legacy && found.is_none() && legacy_here.is_none() {
                        legacy_here = Some(entry.file);
                    } else {
                        without_record.push(entry.file.path.display().to_string());
                    }
                }
                Err(_) => {}
            }
        }
        if found.is_none() {
            found = recorded_here.or(legacy_here);
        }
    }
    match found {
        Some(file) => Ok((file, also)),
        None => {
            available.sort();
            available.dedup();
            let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            let mut message = format!(
                "unknown monitor `{name}`; available: {} (searched {})",
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                },
                if searched.is_empty() {
                    "no directories".to_string()
                } else {
                    searched.join(", ")
                }
            );
            if !without_record.is_empty() {
                message.push_str(&format!(
                    "; libraries without an identity record are found only by their file name ({legacy} for this monitor): {}",
                    without_record.join(", ")
                ));
            }
            message.push_str("; `vigil plugins` lists every library it finds");
            Err(message)
        }
    }
}

/// Find, check and load the library of every monitor in `specs` (searching the directories,
/// or opening `path`). For each: the file is opened once; its record must name the monitor,
/// its owner and permissions must pass, its bytes are hashed and must match the `sha256` pin;
/// only then are those same bytes loaded. Every problem is collected; on success, the
/// libraries in `specs` order and warnings about shadowed files.
pub fn resolve(
    specs: &[&MonitorSettings],
    search: &PluginSearch<'_>,
) -> Result<(Vec<PluginLibrary>, Vec<String>)> {
    let mut problems = Vec::new();
    let mut libraries = Vec::new();
    let mut warnings = Vec::new();
    for spec in specs {
        match resolve_one(spec, search) {
            Ok((library, also)) => {
                warnings.extend(also.iter().map(|path| {
                    format!(
                        "{} also provides monitor `{}`; using {}, found first",
                        path.display(),
                        spec.name,
                        library.path.display()
                    )
                }));
                libraries.push(library);
            }
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Plugins { problems });
    }
    Ok((libraries, warnings))
}

fn resolve_one(
    spec: &MonitorSettings,
    search: &PluginSearch<'_>,
) -> std::result::Result<(PluginLibrary, Vec<PathBuf>), String> {
    let (file, also) = match &spec.path {
        Some(path) => (
            OpenFile::open_unchecked(path)
                .map_err(|reason| format!("{}: {reason}", path.display()))?,
            Vec::new(),
        ),
        None => find(&spec.name, search.dirs)?,
    };
    let path = file.path.clone();
    let problem = |reason: String| format!("{}: {reason}", path.display());
    if !search.allow_insecure {
        file.check_trust(true).map_err(problem)?;
    }
    let checked = file.read().map_err(|(reason, _)| problem(reason))?;
    if let Some(identity) = &checked.inspection.identity {
        if identity.name != spec.name {
            return Err(problem(format!(
                "provides monitor `{}`, not `{}`",
                identity.name, spec.name
            )));
        }
    }
    if let Some(expected) = &spec.sha256 {
        if *expected != checked.sha256 {
            return Err(problem(format!(
                "sha256 mismatch for monitor `{}`: the config pins {expected}, the file is {}; \
                 it was not loaded; if the new file is trusted, update `sha256`",
                spec.name, checked.sha256
            )));
        }
    }
    let library = library::load(checked, search.report_dir).map_err(|f| f.to_string())?;
    if library.info.name != spec.name {
        return Err(problem(format!(
            "provides monitor `{}`, not `{}`",
            library.info.name, spec.name
        )));
    }
    Ok((library, also))
}

/// One `*.so` file of the plugin directories, as `vigil plugins` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub path: PathBuf,
    pub sha256: Option<String>,
    /// Name, version and API version, when known.
    pub name: Option<String>,
    pub version: Option<String>,
    pub api_version: Option<String>,
    /// "ok", "legacy: identity read by loading", "shadowed by …", or why it is unusable.
    pub status: String,
}

/// Every `*.so` file in `dirs`, with its identity read from its record. A library without
/// one (built against API 1.0 or 1.1) is loaded to learn its identity, after the same owner
/// and permission checks a run makes, when `load_legacy`.
pub fn catalogue(dirs: &[PathBuf], allow_insecure: bool, load_legacy: bool) -> Vec<Listed> {
    let mut listed: Vec<Listed> = Vec::new();
    let mut seen: Vec<(String, PathBuf)> = Vec::new();
    for dir in dirs {
        for entry in entries(dir) {
            let entry = match entry {
                Ok(entry) => entry,
                Err(failure) => {
                    listed.push(Listed {
                        path: failure.path,
                        sha256: None,
                        name: None,
                        version: None,
                        api_version: None,
                        status: failure.reason,
                    });
                    continue;
                }
            };
            let path = entry.file.path.clone();
            let trust = if allow_insecure {
                Ok(())
            } else {
                entry.file.check_trust(true)
            };
            let mut row = Listed {
                path: path.clone(),
                sha256: None,
                name: None,
                version: None,
                api_version: None,
                status: String::new(),
            };
            let checked = match entry.file.read() {
                Ok(checked) => checked,
                Err((reason, sha256)) => {
                    row.sha256 = sha256;
                    row.status = reason;
                    listed.push(row);
                    continue;
                }
            };
            row.sha256 = Some(checked.sha256.clone());
            match &checked.inspection.identity {
                Some(identity) => {
                    row.name = Some(identity.name.clone());
                    row.version = Some(identity.version.clone());
                    row.api_version = Some(identity.api_version.clone());
                    row.status = match &trust {
                        Ok(()) => "ok".into(),
                        Err(reason) => reason.clone(),
                    };
                }
                None => match (&trust, load_legacy) {
                    (Err(reason), _) => row.status = reason.clone(),
                    (Ok(()), false) => {
                        row.status = "legacy: no identity record (not loaded)".into();
                    }
                    (Ok(()), true) => match library::load(checked, None) {
                        Ok(library) => {
                            row.name = Some(library.info.name.clone());
                            row.version = Some(library.info.version.clone());
                            row.api_version = Some(library.info.api_version.clone());
                            row.status = "legacy: identity read by loading".into();
                            if path
                                .file_name()
                                .is_some_and(|n| *n != *legacy_file_name(&library.info.name))
                            {
                                row.status.push_str(&format!(
                                    "; a search finds it only as {}",
                                    legacy_file_name(&library.info.name)
                                ));
                            }
                        }
                        Err(failure) => row.status = failure.reason,
                    },
                },
            }
            if let Some(name) = &row.name {
                if let Some((_, first)) = seen.iter().find(|(seen, _)| seen == name) {
                    row.status = format!("shadowed by {}", first.display());
                } else if row.status == "ok" || row.status.starts_with("legacy") {
                    seen.push((name.clone(), path));
                }
            }
            listed.push(row);
        }
    }
    listed
}

/// The table `vigil plugins` prints: every `*.so` in `dirs` with its name, versions, file,
/// sha256 and status.
pub fn listing(dirs: &[PathBuf], allow_insecure: bool, load_legacy: bool) -> String {
    let rows: Vec<[String; 6]> = catalogue(dirs, allow_insecure, load_legacy)
        .into_iter()
        .map(|row| {
            let dash = || "-".to_string();
            [
                row.name.unwrap_or_else(dash),
                row.version.unwrap_or_else(dash),
                row.api_version.unwrap_or_else(dash),
                row.path.display().to_string(),
                row.sha256.unwrap_or_else(dash),
                row.status,
            ]
        })
        .collect();
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    if rows.is_empty() {
        return format!("no plugin files (*.so) in {}\n", searched.join(", "));
    }
    let header = ["NAME", "VERSION", "API", "FILE", "SHA256", "STATUS"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                if column == 5 {
                    cell.clone()
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!("searched: {}\n", searched.join(", ")));
    out
}
