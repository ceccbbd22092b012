//! `vigil study export DIR --to FILE`: one row per run (Parquet or CSV), and the long-format
//! trajectories beside it (`<stem>_trajectories.<ext>`), with a data dictionary in the
//! Parquet files' key-value metadata (`vigil.columns`, a JSON object of column → meaning).
//!
//! Parquet is written with the `parquet` crate's column writers (no compression), one row
//! group per file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::record::{read_record, Record};
use super::summary::{summarize_run, Point, RunSummary};
use crate::error::{Error, Result};
use crate::fs::write_atomically;
use crate::run_dir::{read_run, RunLayout};

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Int,
    Float,
    Text,
    Bool,
}

impl ColumnType {
    fn parquet(self) -> &'static str {
        match self {
            ColumnType::Int => "INT64",
            ColumnType::Float => "DOUBLE",
            ColumnType::Text => "BYTE_ARRAY",
            ColumnType::Bool => "BOOLEAN",
        }
    }
}

/// A table: named, typed columns with meanings, and rows.
#[derive(Debug, Clone)]
pub struct Table {
    pub columns: Vec<(String, ColumnType, String)>,
    pub rows: Vec<Vec<Cell>>,
}

/// The fixed summary columns after the grid's: name, type, meaning.
const SUMMARY_COLUMNS: [(&str, ColumnType, &str); 16] = [
    ("alpha_early", ColumnType::Float, "least-squares slope of ln(mean train cross-entropy of the epoch) on ln(epoch) over epochs 5-15"),
    ("alpha_full", ColumnType::Float, "the same slope from the burn-in epoch (knee_epoch) to the last epoch"),
    ("r_squared", ColumnType::Float, "r² of that power-law fit (ln loss on ln epoch) after burn-in"),
    ("knee_epoch", ColumnType::Int, "burn-in: the first epoch whose mean train cross-entropy is <= 1.0 nat"),
    ("burn_in_loss", ColumnType::Float, "that epoch's mean train cross-entropy (nats)"),
    ("best_val_ce", ColumnType::Float, "the lowest validation cross-entropy (nats) of all validations (every 1/4 epoch)"),
    ("best_val_epoch", ColumnType::Int, "the epoch (1-based) of that validation"),
    ("best_val_step", ColumnType::Int, "the optimizer step of that validation"),
    ("final_val_acc", ColumnType::Float, "validation accuracy at the last validation"),
    ("epochs_done", ColumnType::Int, "epochs finished"),
    ("stopped_epoch", ColumnType::Int, "the epoch (1-based) whose validation early stopping stopped the run at; null when it did not stop it"),
    ("global_step", ColumnType::Int, "optimizer steps taken"),
    ("steps_per_s", ColumnType::Float, "optimizer steps per second of training wall time (all attempts, validation and monitors included)"),
    ("tags", ColumnType::Text, "the run's tags, comma-separated"),
    ("retries", ColumnType::Int, "times `vigil study retry` ran the run again after it failed"),
    ("retry_set", ColumnType::Text, "the --set values of its latest retry, space-separated (they override the grid values above)"),
];

/// The column name of a grid key: its last part (`optim.lr` → `lr`), or the whole key with
/// `.` as `_` where two keys share a last part.
fn column_names(keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|key| {
            let last = key.rsplit('.').next().unwrap_or(key);
            let shared = keys
                .iter()
                .filter(|other| other.rsplit('.').next() == Some(last))
                .count()
                > 1;
            if shared || matches!(last, "run_id" | "variant" | "state" | "priority") {
                key.replace('.', "_")
            } else {
                last.to_string()
            }
        })
        .collect()
}

fn cell(value: Option<&toml::Value>) -> Cell {
    match value {
        None => Cell::Null,
        Some(toml::Value::Integer(v)) => Cell::Int(*v),
        Some(toml::Value::Float(v)) => Cell::Float(*v),
        Some(toml::Value::Boolean(v)) => Cell::Bool(*v),
        Some(toml::Value::String(v)) => Cell::Text(v.clone()),
        Some(other) => Cell::Text(other.to_string()),
    }
}

/// The type that holds every value of a column: integers stay integers unless a float is
/// among them.
fn column_type(cells: &[&Cell]) -> ColumnType {
    let (mut int, mut float, mut boolean, mut text) = (false, false, false, false);
    for c in cells {
        match c {
            Cell::Int(_) => int = true,
            Cell::Float(_) => float = true,
            Cell::Bool(_) => boolean = true,
            Cell::Text(_) => text = true,
            Cell::Null => {}
        }
    }
    match (int, float, boolean, text) {
        (_, _, _, true) => ColumnType::Text,
        (true, false, false, false) => ColumnType::Int,
        (false, false, true, false) => ColumnType::Bool,
        (_, _, true, _) => ColumnType::Text,
        _ => ColumnType::Float,
    }
}

fn coerce(cell: Cell, to: ColumnType) -> Cell {
    match (cell, to) {
        (Cell::Int(v), ColumnType::Float) => Cell::Float(v as f64),
        (Cell::Int(v), ColumnType::Text) => Cell::Text(v.to_string()),
        (Cell::Float(v), ColumnType::Text) => Cell::Text(v.to_string()),
        (Cell::Bool(v), ColumnType::Text) => Cell::Text(v.to_string()),
        (cell, _) => cell,
    }
}

fn float(value: Option<f64>) -> Cell {
    value
        .filter(|v| v.is_finite())
        .map_or(Cell::Null, Cell::Float)
}

fn int(value: Option<i64>) -> Cell {
    value.map_or(Cell::Null, Cell::Int)
}

/// The study's tables: one row per run, and the trajectories.
pub fn study_tables(dir: &Path) -> Result<(Table, Table)> {
    let record: Record = read_record(dir)?;
    let study = &record.study;
    // The grid's keys, then the extra runs' keys not in the grid.
    let mut keys = study.grid_keys.clone();
    for run in &study.runs {
        for (key, _) in &run.overrides {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
    }
    let names = column_names(&keys);
    let mut key_cells: Vec<Vec<Cell>> = study
        .runs
        .iter()
        .map(|run| {
            keys.iter()
                .map(|key| cell(run.value(key).as_ref()))
                .collect()
        })
        .collect();
    let mut columns = vec![
        (
            "run_id".to_string(),
            ColumnType::Text,
            "the run's name, also its directory in the study's".to_string(),
        ),
        (
            "variant".to_string(),
            ColumnType::Text,
            "the study variant (config) the run uses".to_string(),
        ),
        (
            "state".to_string(),
            ColumnType::Text,
            "queued, running, completed, failed or interrupted".to_string(),
        ),
        (
            "priority".to_string(),
            ColumnType::Int,
            "the run's priority in the study".to_string(),
        ),
    ];
    for (index, (key, name)) in keys.iter().zip(&names).enumerate() {
        let cells: Vec<&Cell> = key_cells.iter().map(|row| &row[index]).collect();
        let kind = column_type(&cells);
        for row in &mut key_cells {
            row[index] = coerce(std::mem::replace(&mut row[index], Cell::Null), kind);
        }
        columns.push((
            name.clone(),
            kind,
            format!("the run's `{key}` (grid or run setting)"),
        ));
    }
    for (name, kind, meaning) in SUMMARY_COLUMNS {
        columns.push((name.to_string(), kind, meaning.to_string()));
    }
    let retries = super::retry::read_retries(dir)?;
    let mut rows = Vec::new();
    let mut points_rows = Vec::new();
    for ((index, run), grid) in study.runs.iter().enumerate().zip(key_cells) {
        let run_dir = dir.join(&run.name);
        let state = read_run(&run_dir).state;
        let epochs = std::fs::read_to_string(RunLayout::new(&run_dir).config())
            .ok()
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
            .and_then(|t| t.get("epochs").and_then(toml::Value::as_integer));
        let batches = record
            .total_steps
            .get(index)
            .copied()
            .flatten()
            .zip(epochs)
            .map(|(steps, epochs)| steps as f64 / epochs.max(1) as f64);
        let (summary, points): (RunSummary, Vec<Point>) = summarize_run(&run_dir, batches);
        let mut row = vec![
            Cell::Text(run.name.clone()),
            Cell::Text(run.variant.clone()),
            Cell::Text(state.name().into()),
            Cell::Int(run.priority),
        ];
        row.extend(grid);
        row.extend([
            float(summary.alpha_early),
            float(summary.alpha_full),
            float(summary.r_squared),
            int(summary.knee_epoch),
            float(summary.burn_in_loss),
            float(summary.best_val_ce),
            int(summary.best_val_epoch),
            int(summary.best_val_step),
            float(summary.final_val_acc),
            int(summary.epochs_done),
            int(crate::run_dir::read_run_info(&run_dir)
                .and_then(|info| info.early_stopping)
                .and_then(|early| early.stopped_epoch)
                .map(|epoch| epoch as i64)),
            int(summary.global_step),
            float(summary.steps_per_second),
            Cell::Text(run.tags.join(",")),
            Cell::Int(retries.iter().filter(|r| r.run == run.name).count() as i64),
            Cell::Text(
                run.retry
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        ]);
        rows.push(row);
        for point in points {
            points_rows.push(vec![
                Cell::Text(run.name.clone()),
                Cell::Text(point.kind.into()),
                Cell::Int(point.step),
                float(Some(point.epoch)),
                Cell::Text(point.metric),
                float(Some(point.value)),
            ]);
        }
    }
    let trajectories = Table {
        columns: vec![
            ("run_id".into(), ColumnType::Text, "the run's name".into()),
            ("kind".into(), ColumnType::Text, "train (means over the steps since the last validation), validation, or curvature (the curvature monitor's estimates)".into()),
            ("step".into(), ColumnType::Int, "optimizer steps taken".into()),
            ("epoch".into(), ColumnType::Float, "fractional epochs: step / batches per epoch".into()),
            ("metric".into(), ColumnType::Text, "train_loss, train_acc, val_loss, val_acc (cross-entropy in nats, accuracy in [0, 1]), lambda_max or hutch_trace".into()),
            ("value".into(), ColumnType::Float, "the metric's value".into()),
        ],
        rows: points_rows,
    };
    Ok((Table { columns, rows }, trajectories))
}

/// Write `table` as Parquet to `path` (atomically), with its data dictionary.
pub fn write_parquet(path: &Path, table: &Table, study: &str) -> Result<()> {
    let failed = |err: parquet::errors::ParquetError| Error::Config {
        location: path.display().to_string(),
        message: format!("cannot write Parquet: {err}"),
    };
    let fields: Vec<String> = table
        .columns
        .iter()
        .map(|(name, kind, _)| {
            let logical = if *kind == ColumnType::Text {
                " (STRING)"
            } else {
                ""
            };
            format!("  OPTIONAL {} {name}{logical};", kind.parquet())
        })
        .collect();
    let schema = parse_message_type(&format!("message study {{\n{}\n}}", fields.join("\n")))
        .map_err(failed)?;
    let dictionary: serde_json::Map<String, serde_json::Value> = table
        .columns
        .iter()
        .map(|(name, _, meaning)| (name.clone(), meaning.clone().into()))
        .collect();
    let properties = WriterProperties::builder()
        .set_key_value_metadata(Some(vec![
            KeyValue::new(
                "vigil.columns".into(),
                serde_json::Value::Object(dictionary).to_string(),
            ),
            KeyValue::new("vigil.study".into(), study.to_string()),
            KeyValue::new(
                "vigil.version".into(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
        ]))
        .build();
    let mut bytes = Vec::new();
    {
        let mut writer =
            SerializedFileWriter::new(&mut bytes, Arc::new(schema), Arc::new(properties))
                .map_err(failed)?;
        let mut group = writer.next_row_group().map_err(failed)?;
        let mut column = 0;
        while let Some(mut out) = group.next_column().map_err(failed)? {
            let kind = table.columns[column].1;
            let cells = table.rows.iter().map(|row| &row[column]);
            let levels: Vec<i16> = cells.clone().map(|c| i16::from(*c != Cell::Null)).collect();
            match kind {
                ColumnType::Int => {
                    let values: Vec<i64> = cells
                        .filter_map(|c| if let Cell::Int(v) = c { Some(*v) } else { None })
                        .collect();
                    out.typed::<Int64Type>()
                        .write_batch(&values, Some(&levels), None)
                        .map_err(failed)?;
                }
                ColumnType::Float => {
                    let values: Vec<f64> = cells
                        .filter_map(|c| {
                            if let Cell::Float(v) = c {
                                Some(*v)
                            } else {
                                None
                            }
                        })
                        .collect();
                    out.typed::<DoubleType>()
                        .write_batch(&values, Some(&levels), None)
                        .map_err(failed)?;
                }
                ColumnType::Bool => {
                    let values: Vec<bool> = cells
                        .filter_map(|c| {
                            if let Cell::Bool(v) = c {
                                Some(*v)
                            } else {
                                None
                            }
                        })
                        .collect();
                    out.typed::<BoolType>()
                        .write_batch(&values, Some(&levels), None)
                        .map_err(failed)?;
                }
                ColumnType::Text => {
                    let values: Vec<ByteArray> = cells
                        .filter_map(|c| {
                            if let Cell::Text(v) = c {
                                Some(ByteArray::from(v.as_str()))
                            } else {
                                None
                            }
                        })
                        .collect();
                    out.typed::<ByteArrayType>()
                        .write_batch(&values, Some(&levels), None)
                        .map_err(failed)?;
                }
            }
            out.close().map_err(failed)?;
            column += 1;
        }
        group.close().map_err(failed)?;
        writer.close().map_err(failed)?;
    }
    write_atomically(path, &bytes)
}

/// Write `table` as CSV (RFC 4180 quoting; empty for missing) to `path`, atomically.
pub fn write_csv(path: &Path, table: &Table) -> Result<()> {
    let quote = |text: &str| {
        if text.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_string()
        }
    };
    let mut out = table
        .columns
        .iter()
        .map(|(name, _, _)| quote(name))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for row in &table.rows {
        let fields: Vec<String> = row
            .iter()
            .map(|c| match c {
                Cell::Null => String::new(),
                Cell::Int(v) => v.to_string(),
                // Shortest text that reads back as the same f64.
                Cell::Float(v) => format!("{v:?}"),
                Cell::Bool(v) => v.to_string(),
                Cell::Text(v) => quote(v),
            })
            .collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    write_atomically(path, out.as_bytes())
}

/// Where the trajectories go beside `to`: `<stem>_trajectories.<ext>`.
pub fn trajectories_path(to: &Path) -> PathBuf {
    let stem = to
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = to
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    to.with_file_name(format!("{stem}_trajectories.{ext}"))
}

/// Export the study in `dir` to `to` (`.parquet` or `.csv`) and its trajectories beside it;
/// returns (rows, trajectory points, the trajectories' path).
pub fn export(dir: &Path, to: &Path) -> Result<(usize, usize, PathBuf)> {
    let (table, trajectories) = study_tables(dir)?;
    let study = read_record(dir)?.study.name;
    let beside = trajectories_path(to);
    match to.extension().and_then(|e| e.to_str()) {
        Some("parquet") => {
            write_parquet(to, &table, &study)?;
            write_parquet(&beside, &trajectories, &study)?;
        }
        Some("csv") => {
            write_csv(to, &table)?;
            write_csv(&beside, &trajectories)?;
        }
        _ => {
            return Err(Error::Config {
                location: to.display().to_string(),
                message:
                    "export writes .parquet or .csv: name the file with one of those extensions"
                        .into(),
            })
        }
    }
    Ok((table.rows.len(), trajectories.rows.len(), beside))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_columns_are_named_by_their_last_part_unless_two_share_it() {
        let keys: Vec<String> = ["optim.lr", "seed", "a.width", "b.width"]
            .map(String::from)
            .to_vec();
        assert_eq!(column_names(&keys), ["lr", "seed", "a_width", "b_width"]);
    }

    #[test]
    fn column_types_hold_every_value() {
        assert_eq!(column_type(&[&Cell::Int(1), &Cell::Null]), ColumnType::Int);
        assert_eq!(
            column_type(&[&Cell::Int(1), &Cell::Float(0.5)]),
            ColumnType::Float
        );
        assert_eq!(
            column_type(&[&Cell::Text("a".into()), &Cell::Int(1)]),
            ColumnType::Text
        );
        assert_eq!(column_type(&[&Cell::Bool(true)]), ColumnType::Bool);
        assert_eq!(
            trajectories_path(Path::new("/x/study.parquet")),
            Path::new("/x/study_trajectories.parquet")
        );
    }

    #[test]
    fn csv_quotes_what_needs_it_and_keeps_floats_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let table = Table {
            columns: vec![
                ("a".into(), ColumnType::Text, String::new()),
                ("b".into(), ColumnType::Float, String::new()),
            ],
            rows: vec![
                vec![Cell::Text("x,\"y\"".into()), Cell::Float(0.1)],
                vec![Cell::Null, Cell::Null],
            ],
        };
        write_csv(&path, &table).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a,b\n\"x,\"\"y\"\"\",0.1\n,\n"
        );
    }
}
