//! The dashboard's JSON: the runs list, a run's summary (config, `run.json`, images), a
//! study's status, table and report, and comparisons. Each handler reads the directories
//! afresh, so a page shows what is on disk now; nothing here writes.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::paths::{DirKind, Roots};
use super::wire::{Request, Response};
use crate::compare::facts::{config_table, flatten_config, run_facts};
use crate::compare::{compare, hide_secrets};
use crate::run_dir::{read_run_info, RunLayout, ARTIFACTS_DIR};
use crate::study::export::{study_tables, Cell};
use crate::study::record::read_record;
use crate::study::report::{report_text, study_report};
use crate::study::status::study_status;

/// A running run without progress for this long is flagged on the study page.
const STUCK_AFTER: Duration = Duration::from_secs(30 * 60);
/// Runs compared at most at once.
const MAX_COMPARED: usize = 64;
/// Warning lines of `vigil.log` the run page shows at most.
const LOG_PROBLEMS: usize = 50;
/// Image files the run page shows.
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// `/api/runs`: every run and study under the roots.
pub fn runs(roots: &Roots) -> Response {
    let found = roots.discover();
    let study_totals: std::collections::HashMap<_, _> = found
        .iter()
        .filter(|f| f.kind == DirKind::Study)
        .filter_map(|f| {
            let record = read_record(&f.path).ok()?;
            Some((f.id.clone(), record))
        })
        .collect();
    let mut runs = Vec::new();
    let mut studies = Vec::new();
    for entry in &found {
        match entry.kind {
            DirKind::Study => studies.push(json!({
                "id": entry.id,
                "name": display_name(&entry.id),
                "runs": study_totals.get(&entry.id).map(|r| r.study.runs.len()),
            })),
            DirKind::Run => {
                let study = parent_id(&entry.id).filter(|p| study_totals.contains_key(p));
                let total = study.as_ref().and_then(|study| {
                    let record = &study_totals[study];
                    let name = entry.path.file_name()?.to_str()?;
                    let index = record.study.runs.iter().position(|r| r.name == name)?;
                    record.total_steps.get(index).copied().flatten()
                });
                runs.push(json!({
                    "id": entry.id,
                    "name": display_name(&entry.id),
                    "study": study,
                    "facts": run_facts(&entry.path, total),
                }));
            }
        }
    }
    let roots: Vec<String> = roots
        .dirs()
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    Response::json(&json!({ "roots": roots, "runs": runs, "studies": studies }))
}

/// An id without its root index (`0/study/run` → `study/run`).
fn display_name(id: &str) -> String {
    id.split_once('/').map_or(id, |(_, rest)| rest).to_string()
}

fn parent_id(id: &str) -> Option<String> {
    let (parent, _) = id.rsplit_once('/')?;
    parent
        .contains('/')
        .then(|| parent.to_string())
        .or_else(|| {
            // `0/run`'s parent is the root itself, `0/.`.
            Some(format!("{parent}/."))
        })
}

/// `/api/run?run=ID`: a run's facts, config, `run.json` and images.
pub fn run(roots: &Roots, request: &Request) -> Response {
    let Some((dir, DirKind::Run)) = request.param("run").and_then(|id| roots.resolve(id)) else {
        return Response::not_found();
    };
    let layout = RunLayout::new(&dir);
    let config = hide_secrets(flatten_config(&config_table(&layout.config())));
    let info = read_run_info(&dir).and_then(|info| serde_json::to_value(info).ok());
    Response::json(&json!({
        "id": request.param("run"),
        "name": display_name(request.param("run").unwrap_or_default()),
        "facts": run_facts(&dir, None),
        "config": config,
        "run": info,
        "images": images(&dir),
        "log_problems": log_problems(&layout.log()),
    }))
}

/// Lines of `vigil.log` at WARN or ERROR (anomalies, monitors disabled, unsent data…) among
/// its last 256 KiB, newest last, at most [`LOG_PROBLEMS`]: what went wrong while the run
/// trains, before `run.json` lists its warnings.
fn log_problems(log: &Path) -> Vec<String> {
    // Only the tail: a long run's log can be 100 MB.
    let length = std::fs::metadata(log).map_or(0, |m| m.len());
    let start = length.saturating_sub(256 * 1024);
    let Ok(Some((bytes, _))) = super::series::read_complete_lines(log, start) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut problems: Vec<String> = text
        .lines()
        // A tail's first line may start mid-line.
        .skip(usize::from(start > 0))
        .filter(|line| line.contains("] [WARN] [") || line.contains("] [ERROR] ["))
        .map(str::to_string)
        .collect();
    let keep = problems.len().saturating_sub(LOG_PROBLEMS);
    problems.drain(..keep);
    problems
}

/// The monitors' images under `artifacts/`, each with the epoch its path names
/// (`epoch_003/confusion_matrix.png`), so that the page can offer a slider per image series.
fn images(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let artifacts = dir.join(ARTIFACTS_DIR);
    let mut stack = vec![artifacts.clone()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            let is_image = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            let Ok(relative) = path.strip_prefix(dir) else {
                continue;
            };
            if !kind.is_file() || !is_image {
                continue;
            }
            let parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            // artifacts / [folder /] [epoch_NNN /] … / file: the series is the path without
            // its epoch folder, so that one series has an image per epoch.
            let epoch = parts
                .iter()
                .find_map(|p| p.strip_prefix("epoch_")?.parse::<u64>().ok());
            let series: Vec<&str> = parts[1..]
                .iter()
                .filter(|p| !p.starts_with("epoch_"))
                .map(String::as_str)
                .collect();
            out.push(json!({
                "series": series.join("/"),
                "epoch": epoch,
                "path": relative.to_string_lossy(),
            }));
        }
    }
    out.sort_by(|a, b| {
        (
            a["monitor"].as_str(),
            a["series"].as_str(),
            a["epoch"].as_u64(),
        )
            .cmp(&(
                b["monitor"].as_str(),
                b["series"].as_str(),
                b["epoch"].as_u64(),
            ))
    });
    out
}

/// `/api/file?run=ID&path=P`: a file of a run (images, CSV, JSON, text), read-only.
pub fn file(roots: &Roots, request: &Request) -> Response {
    let (Some((dir, DirKind::Run)), Some(relative)) = (
        request.param("run").and_then(|id| roots.resolve(id)),
        request.param("path"),
    ) else {
        return Response::not_found();
    };
    let Some(path) = roots.file_in(&dir, relative) else {
        return Response::not_found();
    };
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let content_type = match extension.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("json") => "application/json",
        Some("csv" | "txt" | "toml" | "jsonl" | "log") => "text/plain; charset=utf-8",
        _ => return Response::not_found(),
    };
    match std::fs::read(&path) {
        Ok(bytes) => Response::new(200, content_type, bytes),
        Err(_) => Response::not_found(),
    }
}

fn cell(cell: &Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Int(v) => json!(v),
        Cell::Float(v) => json!(v),
        Cell::Text(v) => json!(v),
        Cell::Bool(v) => json!(v),
    }
}

/// `/api/study?study=ID`: counts, flags, the export's table and the H1/H2 report.
pub fn study(roots: &Roots, request: &Request) -> Response {
    let Some(id) = request.param("study") else {
        return Response::not_found();
    };
    let Some((dir, DirKind::Study)) = roots.resolve(id) else {
        return Response::not_found();
    };
    let status = match study_status(&dir, STUCK_AFTER) {
        Ok(status) => status,
        Err(err) => return Response::text(500, format!("{err}\n")),
    };
    let table = study_tables(&dir).ok().map(|(table, _)| {
        json!({
            "columns": table.columns.iter().map(|(name, _, meaning)| json!({"name": name, "meaning": meaning})).collect::<Vec<_>>(),
            "rows": table.rows.iter().map(|row| row.iter().map(cell).collect::<Vec<_>>()).collect::<Vec<_>>(),
        })
    });
    let report = study_report(&dir)
        .ok()
        .map(|(h, completed, total)| report_text(&status.name, &h, completed, total));
    Response::json(&json!({
        "id": id,
        "name": display_name(id),
        "status": status,
        "table": table,
        "report": report,
    }))
}

/// `/api/compare?run=ID&run=ID…[&all=1]`, or `?study=ID` for a study's runs.
pub fn compare_runs(roots: &Roots, request: &Request) -> Response {
    let mut ids: Vec<String> = request.params("run").map(str::to_string).collect();
    if let Some(study) = request.param("study") {
        let Some((dir, DirKind::Study)) = roots.resolve(study) else {
            return Response::not_found();
        };
        if let Ok(record) = read_record(&dir) {
            ids.extend(
                record
                    .study
                    .runs
                    .iter()
                    .map(|r| format!("{study}/{}", r.name)),
            );
        }
    }
    let mut dirs = Vec::new();
    let mut kept = Vec::new();
    for id in ids.iter().take(MAX_COMPARED) {
        if let Some((dir, DirKind::Run)) = roots.resolve(id) {
            dirs.push(dir);
            kept.push(id.clone());
        } else if request.param("study").is_none() {
            return Response::not_found();
        }
    }
    if dirs.is_empty() {
        return Response::text(400, "pick at least one run to compare\n");
    }
    match compare(&dirs, request.param("all").is_some_and(|v| v == "1")) {
        Ok(comparison) => {
            let mut value = serde_json::to_value(&comparison).unwrap_or(Value::Null);
            // The page names runs by id; directories stay on the server.
            if let Some(runs) = value["runs"].as_array_mut() {
                for (run, id) in runs.iter_mut().zip(&kept) {
                    run["id"] = json!(id);
                    run["name"] = json!(display_name(id));
                    if let Some(object) = run.as_object_mut() {
                        object.remove("dir");
                    }
                }
            }
            Response::json(&value)
        }
        Err(err) => Response::text(400, format!("{err}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_logs_warnings_and_errors_newest_last() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vigil.log");
        let mut text = String::new();
        for i in 0..60 {
            text.push_str(&format!(
                "[t] [INFO] [console] line {i}\n[t] [WARN] [hub] warning {i}\n"
            ));
        }
        text.push_str("[t] [ERROR] [console] failed\n[t] [WARN] [hub] being writt");
        std::fs::write(&log, text).unwrap();
        let problems = log_problems(&log);
        assert_eq!(problems.len(), LOG_PROBLEMS);
        assert_eq!(problems.last().unwrap(), "[t] [ERROR] [console] failed");
        assert_eq!(problems[0], "[t] [WARN] [hub] warning 11");
        assert!(log_problems(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn parents_of_ids() {
        assert_eq!(parent_id("0/s/r").as_deref(), Some("0/s"));
        assert_eq!(parent_id("0/r").as_deref(), Some("0/."));
        assert_eq!(display_name("0/s/r"), "s/r");
    }
}
