//! `vigil compare RUN_DIR…` and the dashboard's compare page: runs side by side, the config
//! keys that differ (or all of them), then their best and final metrics, steps, time and
//! speed, each with its difference to the first run. A study directory stands for its runs.
//!
//! - [`facts`]: what one run directory says about its run (also the dashboard's runs list).

pub mod facts;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::run_dir::{RunLayout, CONFIG_FILE, METRICS_FILE, STUDY_FILE};
use facts::{config_table, flatten_config, run_facts, RunFacts};

/// Keys that differ between any two runs by construction, and are not compared.
const NOT_COMPARED: [&str; 1] = ["run_dir"];

/// The value shown for a secret (a notification target's URL).
pub const HIDDEN: &str = "(hidden)";

/// One run of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ComparedRun {
    pub name: String,
    pub dir: PathBuf,
    pub facts: RunFacts,
}

/// One config key across the runs.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigRow {
    pub key: String,
    /// Each run's value; `None` where the run's config does not have the key.
    pub values: Vec<Option<String>>,
    pub differs: bool,
}

/// One metric across the runs, with each run's difference to the first run's.
#[derive(Debug, Clone, Serialize)]
pub struct MetricRow {
    pub metric: String,
    pub values: Vec<Option<f64>>,
    pub deltas: Vec<Option<f64>>,
}

/// Runs side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub runs: Vec<ComparedRun>,
    /// The keys that differ, or every key with `all`.
    pub config: Vec<ConfigRow>,
    pub metrics: Vec<MetricRow>,
}

/// The run directories that `dirs` name: a run directory stands for itself, a study
/// directory for its runs (in the study's order, those that have a directory).
pub fn run_dirs(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for dir in dirs {
        if dir.join(STUDY_FILE).is_file() {
            let record = crate::study::record::read_record(dir)?;
            out.extend(
                record
                    .study
                    .runs
                    .iter()
                    .map(|run| dir.join(&run.name))
                    .filter(|run| run.join(CONFIG_FILE).is_file()),
            );
        } else if dir.join(CONFIG_FILE).is_file() || dir.join(METRICS_FILE).is_file() {
            out.push(dir.clone());
        } else {
            return Err(Error::Usage {
 command: "compare",
                message: format!(
                    "{} is neither a run directory (no {CONFIG_FILE}) nor a study directory (no {STUDY_FILE})",
                    dir.display()
                ),
            });
        }
    }
    Ok(out)
}

/// Compare runs (at least one; a study's runs count each).
pub fn compare(dirs: &[PathBuf], all: bool) -> Result<Comparison> {
    let runs: Vec<ComparedRun> = dirs
        .iter()
        .map(|dir| ComparedRun {
            name: run_name(dir),
            dir: dir.clone(),
            facts: run_facts(dir, None),
        })
        .collect();
    let configs: Vec<BTreeMap<String, String>> = dirs
        .iter()
        .map(|dir| hide_secrets(flatten_config(&config_table(&RunLayout::new(dir).config()))))
        .collect();
    let keys: BTreeSet<&String> = configs.iter().flat_map(BTreeMap::keys).collect();
    let config = keys
        .into_iter()
        .filter(|key| !NOT_COMPARED.contains(&key.as_str()))
        .filter_map(|key| {
            let values: Vec<Option<String>> = configs.iter().map(|c| c.get(key).cloned()).collect();
            let differs = values.iter().any(|v| v != &values[0]);
            (all || differs).then(|| ConfigRow {
                key: key.clone(),
                values,
                differs,
            })
        })
        .collect();
    let metrics = metric_rows(&runs);
    Ok(Comparison {
        runs,
        config,
        metrics,
    })
}

/// A run's name: its directory's, with its study's before it (`study/run`).
fn run_name(dir: &Path) -> String {
    let name = dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match dir.parent().filter(|p| p.join(STUDY_FILE).is_file()) {
        Some(study) => match study.file_name() {
            Some(study) => format!("{}/{name}", study.to_string_lossy()),
            None => name,
        },
        None => name,
    }
}

/// Notification URLs are secrets: they are shown as [`HIDDEN`].
pub fn hide_secrets(mut config: BTreeMap<String, String>) -> BTreeMap<String, String> {
    for (key, value) in config.iter_mut() {
        if key.starts_with("notify.") && key.ends_with(".url") {
            *value = HIDDEN.to_string();
        }
    }
    config
}

fn metric_rows(runs: &[ComparedRun]) -> Vec<MetricRow> {
    type Get = fn(&RunFacts) -> Option<f64>;
    let rows: [(&str, Get); 8] = [
        ("best_val_loss", |f| f.best_val_loss),
        ("last_val_loss", |f| f.last_val_loss),
        ("last_val_acc", |f| f.last_val_acc),
        ("final_train_loss", |f| f.final_train_loss),
        ("epochs_done", |f| f.epoch.map(|e| e as f64)),
        ("global_step", |f| f.global_step.map(|s| s as f64)),
        ("time_s", |f| f.duration_s),
        ("steps_per_s", |f| f.steps_per_second),
    ];
    rows.iter()
        .map(|(metric, get)| {
            let values: Vec<Option<f64>> = runs.iter().map(|r| get(&r.facts)).collect();
            let deltas = values
                .iter()
                .map(|v| v.zip(values[0]).map(|(v, first)| v - first))
                .collect();
            MetricRow {
                metric: metric.to_string(),
                values,
                deltas,
            }
        })
        .collect()
}

/// A number as the tables show it: up to 6 significant digits.
fn number(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        return format!("{value:.0}");
    }
    if value.abs() < 1e-3 || value.abs() >= 1e9 {
        // 6.83528e-5: six significant digits, as below.
        let text = format!("{value:.5e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exponent}");
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = (5 - magnitude).clamp(0, 12) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn signed(value: f64) -> String {
    if value >= 0.0 {
        format!("+{}", number(value))
    } else {
        number(value)
    }
}

/// The comparison's cells: a header row, then one row per config key and metric.
fn cells(comparison: &Comparison) -> Vec<Vec<String>> {
    let mut rows = vec![std::iter::once("".to_string())
        .chain(comparison.runs.iter().map(|r| r.name.clone()))
        .collect::<Vec<_>>()];
    rows.push(
        std::iter::once("status".to_string())
            .chain(comparison.runs.iter().map(|r| r.facts.status.clone()))
            .collect(),
    );
    for row in &comparison.config {
        rows.push(
            std::iter::once(row.key.clone())
                .chain(
                    row.values
                        .iter()
                        .map(|v| v.clone().unwrap_or_else(|| "—".into())),
                )
                .collect(),
        );
    }
    for row in &comparison.metrics {
        rows.push(
            std::iter::once(row.metric.clone())
                .chain(
                    row.values.iter().zip(&row.deltas).enumerate().map(
                        |(i, (value, delta))| match (value, delta) {
                            (None, _) => "—".to_string(),
                            (Some(v), Some(d)) if i > 0 => {
                                format!("{} ({})", number(*v), signed(*d))
                            }
                            (Some(v), _) => number(*v),
                        },
                    ),
                )
                .collect(),
        );
    }
    rows
}

/// The comparison as aligned plain text, one column per run.
pub fn text(comparison: &Comparison) -> String {
    let rows = cells(comparison);
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let config_rows = comparison.config.len();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 1 || i == 1 + config_rows {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
            out.push('\n');
        }
    }
    if config_rows == 0 {
        out.push_str("(the configs do not differ)\n");
    }
    out
}

/// The comparison as a Markdown table.
pub fn markdown(comparison: &Comparison) -> String {
    let rows = cells(comparison);
    let escape = |cell: &str| cell.replace('|', "\\|");
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|c| escape(c)).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            out.push_str(&format!("|{}\n", "---|".repeat(row.len())));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(root: &Path, name: &str, config: &str, best: f64) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CONFIG_FILE), config).unwrap();
        std::fs::write(
            dir.join(crate::run_dir::RUN_FILE),
            format!(
                "{{\"status\":\"completed\",\"best_val_loss\":{best},\"global_step\":100,\
                 \"attempts\":[{{\"from_step\":0,\"to_step\":100,\"wall_time_s\":10.0,\"status\":\"completed\"}}]}}"
            ),
        )
        .unwrap();
        dir
    }

    #[test]
    fn only_differing_keys_unless_all_and_deltas_to_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let a = run(tmp.path(), "a", "run_dir = \"a\"\nseed = 1\n[optim]\nlr = 0.1\n[[notify]]\nurl = \"https://secret/1\"\n", 0.5);
        let b = run(tmp.path(), "b", "run_dir = \"b\"\nseed = 1\n[optim]\nlr = 0.2\n[[notify]]\nurl = \"https://secret/2\"\n", 0.25);
        let comparison = compare(&[a.clone(), b.clone()], false).unwrap();
        let keys: Vec<_> = comparison.config.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            ["optim.lr"],
            "run_dir is not compared; secrets are hidden alike"
        );
        let best = &comparison.metrics[0];
        assert_eq!(best.values, [Some(0.5), Some(0.25)]);
        assert_eq!(best.deltas, [Some(0.0), Some(-0.25)]);
        let all = compare(&[a, b], true).unwrap();
        let keys: Vec<_> = all.config.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["notify.0.url", "optim.lr", "seed"]);
        assert_eq!(all.config[0].values[0].as_deref(), Some(HIDDEN));
        let shown = text(&comparison);
        assert!(shown.contains("optim.lr"), "{shown}");
        assert!(shown.contains("0.25 (-0.25)"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
        let md = markdown(&comparison);
        assert!(md.starts_with("|  | a | b |\n|---|---|---|\n"), "{md}");
    }

    #[test]
    fn a_directory_that_is_neither_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = run_dirs(&[tmp.path().to_path_buf()]).unwrap_err();
        assert!(err.to_string().contains("neither a run directory"), "{err}");
    }

    #[test]
    fn numbers_keep_six_significant_digits() {
        assert_eq!(number(100.0), "100");
        assert_eq!(number(0.123456789), "0.123457");
        assert_eq!(number(12.3456789), "12.3457");
        assert_eq!(signed(-0.25), "-0.25");
        assert_eq!(number(0.0000683528123), "6.83528e-5");
        assert_eq!(number(2.5e-7), "2.5e-7");
    }
}
