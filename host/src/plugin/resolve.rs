//! Which libraries a config's monitors come from: searching the plugin directories, checking
//! each file, its `sha256` pin and its name; and the table `vigil plugins` prints.

use std::path::PathBuf;

use super::library::{self, LoadFailure, PluginLibrary};
use crate::config::MonitorSettings;
use crate::error::{Error, Result};

/// The table `vigil plugins` prints: every `*.so` in `dirs` with its name, versions, file,
/// sha256 and status.
pub fn listing(dirs: &[PathBuf], allow_insecure: bool) -> String {
    let scan = library::scan(dirs, allow_insecure);
    let mut rows: Vec<[String; 6]> = Vec::new();
    let mut add = |library: &PluginLibrary, status: String| {
        rows.push([
            library.info.name.clone(),
            library.info.version.clone(),
            library.info.api_version.clone(),
            library.path.display().to_string(),
            library.sha256.clone(),
            status,
        ]);
    };
    for library in scan.libraries.values() {
        add(library, "ok".into());
    }
    for library in &scan.shadowed {
        add(library, "shadowed by an earlier directory".into());
    }
    for failure in &scan.failures {
        rows.push([
            "-".into(),
            "-".into(),
            "-".into(),
            failure.path.display().to_string(),
            failure.sha256.clone().unwrap_or_else(|| "-".into()),
            failure.reason.clone(),
        ]);
    }
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

/// Find and check the library of every monitor in `specs` (searching `plugin_dirs`, or
/// opening `path`), with its `sha256` pin. Every problem is collected; on success, the
/// libraries in `specs` order and warnings about skipped or shadowed files.
pub fn resolve(
    specs: &[&MonitorSettings],
    plugin_dirs: &[PathBuf],
    allow_insecure: bool,
) -> Result<(Vec<PluginLibrary>, Vec<String>)> {
    let scan = if specs.iter().any(|spec| spec.path.is_none()) {
        library::scan(plugin_dirs, allow_insecure)
    } else {
        library::Scan::default()
    };
    let mut problems = Vec::new();
    let mut libraries = Vec::new();
    for spec in specs {
        let found = match &spec.path {
            Some(path) => library::load(path, allow_insecure)
                .map_err(|failure| failure.to_string())
                .and_then(|library| {
                    if library.info.name == spec.name {
                        Ok(library)
                    } else {
                        Err(format!(
                            "{}: provides monitor `{}`, not `{}`",
                            path.display(),
                            library.info.name,
                            spec.name
                        ))
                    }
                }),
            None => scan
                .libraries
                .get(&spec.name)
                .cloned()
                .ok_or_else(|| unknown_monitor(&spec.name, &scan, plugin_dirs)),
        };
        let pinned = found.and_then(|library| match &spec.sha256 {
            Some(expected) if *expected != library.sha256 => Err(format!(
                "{}: sha256 mismatch for monitor `{}`: the config pins {expected}, the file is {}; \
                 if the new file is trusted, update `sha256`",
                library.path.display(),
                spec.name,
                library.sha256
            )),
            _ => Ok(library),
        });
        match pinned {
            Ok(library) => libraries.push(library),
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Plugins { problems });
    }
    let mut warnings: Vec<String> = scan
        .failures
        .iter()
        .map(|f| format!("skipped plugin file {f}"))
        .collect();
    warnings.extend(scan.shadowed.iter().map(|shadowed| {
        format!(
            "{} also provides monitor `{}`; using the one found first",
            shadowed.path.display(),
            shadowed.info.name
        )
    }));
    Ok((libraries, warnings))
}

fn unknown_monitor(name: &str, scan: &library::Scan, dirs: &[PathBuf]) -> String {
    let available: Vec<&str> = scan.libraries.keys().map(String::as_str).collect();
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let mut message = format!(
        "unknown monitor `{name}`; available: {} (searched {})",
        if available.is_empty() {
            "none".to_string()
        } else {
            available.join(", ")
        },
        searched.join(", ")
    );
    if !scan.failures.is_empty() {
        let failed: Vec<String> = scan.failures.iter().map(LoadFailure::to_string).collect();
        message.push_str(&format!(
            "; files that failed to load: {}",
            failed.join("; ")
        ));
    }
    message
}
