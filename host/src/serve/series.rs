//! `metrics.jsonl` as chart series: every numeric field of every record, named
//! `<kind or monitor>/<field>` against the global step, read incrementally (a run that grows
//! is read from where the last read stopped; one cut back by a resume is read again) and
//! thinned for drawing by keeping each bucket's lowest and highest point.
//!
//! Only complete lines count: a line being written (no newline yet) is left for the next
//! read, and a line that is not a JSON object is skipped.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

/// The fields of a record that are coordinates or labels, not values.
const NOT_VALUES: [&str; 5] = ["kind", "monitor", "epoch", "global_step", "wall_time"];

/// One series: x (global step) and y, in the order written.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Series {
    pub x: Vec<f64>,
    /// `None` for a value that was not finite (written as `null`).
    pub y: Vec<Option<f64>>,
}

/// A run's series, and how far into `metrics.jsonl` they reach.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// The byte just past the last complete line read.
    pub offset: u64,
    pub series: BTreeMap<String, Series>,
    /// Complete lines read.
    pub lines: u64,
}

/// The name of a record's series prefix: the monitor's name for monitor records, else the
/// record's kind. The page's script names series the same way.
pub fn prefix(record: &serde_json::Map<String, serde_json::Value>) -> Option<&str> {
    match record.get("kind")?.as_str()? {
        "monitor" => record.get("monitor")?.as_str(),
        kind => Some(kind),
    }
}

/// A series' name: `<prefix>/<field>`, or the field alone where it already starts with the
/// prefix (the curvature monitor logs `curvature/lambda_max`).
pub fn series_name(prefix: &str, key: &str) -> String {
    match key.strip_prefix(prefix) {
        Some(rest) if rest.starts_with('/') => key.to_string(),
        _ => format!("{prefix}/{key}"),
    }
}

impl Metrics {
    /// Read what was appended to `path` since the last read; `false` when the file is now
    /// shorter than what was read (a resume cut it back) and must be read afresh.
    pub fn read_more(&mut self, path: &Path) -> std::io::Result<bool> {
        let Some((bytes, offset)) = read_complete_lines(path, self.offset)? else {
            return Ok(false);
        };
        self.offset = offset;
        for line in bytes.split(|&b| b == b'\n') {
            let Ok(serde_json::Value::Object(record)) = serde_json::from_slice(line) else {
                continue;
            };
            self.lines += 1;
            self.add(&record);
        }
        Ok(true)
    }

    fn add(&mut self, record: &serde_json::Map<String, serde_json::Value>) {
        let (Some(prefix), Some(step)) = (
            prefix(record),
            record.get("global_step").and_then(|v| v.as_f64()),
        ) else {
            return;
        };
        for (key, value) in record {
            if NOT_VALUES.contains(&key.as_str()) || !(value.is_number() || value.is_null()) {
                continue;
            }
            let series = self.series.entry(series_name(prefix, key)).or_default();
            series.x.push(step);
            series.y.push(value.as_f64());
        }
    }
}

/// The complete lines of `path` from byte `from` on, and the byte past the last of them;
/// `None` when the file is shorter than `from`.
pub fn read_complete_lines(path: &Path, from: u64) -> std::io::Result<Option<(Vec<u8>, u64)>> {
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    if length < from {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::with_capacity((length - from) as usize);
    file.take(length - from).read_to_end(&mut bytes)?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(complete);
    Ok(Some((bytes, from + complete as u64)))
}

/// The points of `series` with x in `[x0, x1]`, at most about `max_points` of them: when there
/// are more, the range is cut into `max_points / 2` buckets and each keeps its lowest and
/// highest value (so spikes survive), plus the first and last point.
pub fn thin(series: &Series, x0: f64, x1: f64, max_points: usize) -> (Series, usize) {
    let start = series.x.partition_point(|&x| x < x0);
    let end = series.x.partition_point(|&x| x <= x1).max(start);
    let count = end - start;
    let (xs, ys) = (&series.x[start..end], &series.y[start..end]);
    if count <= max_points.max(4) {
        return (
            Series {
                x: xs.to_vec(),
                y: ys.to_vec(),
            },
            count,
        );
    }
    let buckets = (max_points / 2).max(2);
    let mut out = Series::default();
    let push = |i: usize, out: &mut Series| {
        if out.x.last() != Some(&xs[i]) || out.y.last() != Some(&ys[i]) {
            out.x.push(xs[i]);
            out.y.push(ys[i]);
        }
    };
    push(0, &mut out);
    for bucket in 0..buckets {
        let (lo, hi) = (bucket * count / buckets, (bucket + 1) * count / buckets);
        let mut low: Option<(usize, f64)> = None;
        let mut high: Option<(usize, f64)> = None;
        for (i, y) in ys.iter().enumerate().take(hi).skip(lo) {
            let Some(y) = *y else { continue };
            if low.is_none_or(|(_, v)| y < v) {
                low = Some((i, y));
            }
            if high.is_none_or(|(_, v)| y > v) {
                high = Some((i, y));
            }
        }
        let mut picks: Vec<usize> = low.into_iter().chain(high).map(|(i, _)| i).collect();
        picks.sort_unstable();
        picks.dedup();
        for i in picks {
            push(i, &mut out);
        }
    }
    push(count - 1, &mut out);
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_grow_with_complete_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            "{\"kind\":\"train\",\"global_step\":1,\"epoch\":1,\"train_loss\":2.0,\"lr\":0.1,\"wall_time\":5}\n\
             {\"kind\":\"monitor\",\"monitor\":\"gradient-norm\",\"global_step\":1,\"total\":null}\n\
             not json\n\
             {\"kind\":\"train\",\"global_step\":2,\"train_lo",
        )
        .unwrap();
        let mut metrics = Metrics::default();
        metrics.read_more(&path).unwrap();
        assert_eq!(metrics.lines, 2);
        assert_eq!(
            metrics.series.keys().collect::<Vec<_>>(),
            ["gradient-norm/total", "train/lr", "train/train_loss"]
        );
        assert_eq!(metrics.series["gradient-norm/total"].y, [None]);
        assert_eq!(
            series_name("curvature", "curvature/lambda_max"),
            "curvature/lambda_max"
        );
        assert_eq!(
            series_name("curvature", "curvaturex"),
            "curvature/curvaturex"
        );
        let before = metrics.offset;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"ss\":1.5}\n").unwrap();
        metrics.read_more(&path).unwrap();
        assert!(metrics.offset > before);
        assert_eq!(metrics.series["train/train_loss"].x, [1.0, 2.0]);
        assert_eq!(metrics.series["train/train_loss"].y, [Some(2.0), Some(1.5)]);
        std::fs::write(&path, "").unwrap();
        assert!(
            !metrics.read_more(&path).unwrap(),
            "a shrunk file is reported"
        );
    }

    #[test]
    fn thinning_keeps_extremes_and_ends() {
        let n = 10_000;
        let series = Series {
            x: (0..n).map(f64::from).collect(),
            y: (0..n)
                .map(|i| Some(if i == 4321 { 100.0 } else { f64::from(i % 7) }))
                .collect(),
        };
        let (thinned, count) = thin(&series, 0.0, f64::INFINITY, 200);
        assert_eq!(count, n as usize);
        assert!(thinned.x.len() <= 203, "{}", thinned.x.len());
        assert_eq!(thinned.x.first(), Some(&0.0));
        assert_eq!(thinned.x.last(), Some(&f64::from(n - 1)));
        assert!(thinned.y.contains(&Some(100.0)), "the spike survives");
        assert!(thinned.x.windows(2).all(|w| w[0] <= w[1]));
        let (zoomed, count) = thin(&series, 4000.0, 4099.0, 200);
        assert_eq!(count, 100);
        assert_eq!(zoomed.x.len(), 100, "a zoomed range is at full resolution");
    }
}
