//! A run's metrics for the charts: `/api/metrics` answers every series (thinned for drawing,
//! or one range at full resolution for a zoom), and `/api/events` streams the lines appended
//! to `metrics.jsonl` after that, as server-sent events, until the run stops training.
//!
//! Parsed series are kept per run and extended by what was appended since, so that a page
//! that zooms, or a second page, does not parse 100k lines again.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::paths::{DirKind, Roots};
use super::series::{read_complete_lines, thin, Metrics};
use super::wire::{start_event_stream, write_event, Request, Response};
use crate::fs::is_locked;
use crate::run_dir::RunLayout;

/// Points per series drawn at once; a zoom asks again for its range.
pub const MAX_POINTS: usize = 2000;
/// Runs whose series are kept parsed.
const CACHED_RUNS: usize = 16;
/// How often a stream looks for new lines.
const POLL: Duration = Duration::from_millis(500);
/// A comment line keeps the stream open through proxies and finds a closed page.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Lines sent in one event at most (a page that reconnects far behind catches up in steps).
const MAX_EVENT_BYTES: usize = 1 << 20;

/// Parsed series by run directory.
#[derive(Default)]
pub struct MetricsCache {
    runs: Mutex<HashMap<PathBuf, Metrics>>,
}

impl MetricsCache {
    /// Run `f` on the run's series, brought up to date with the file.
    fn with<T>(&self, metrics_file: &Path, f: impl FnOnce(&Metrics) -> T) -> std::io::Result<T> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if !runs.contains_key(metrics_file) && runs.len() >= CACHED_RUNS {
            runs.clear();
        }
        let metrics = runs.entry(metrics_file.to_path_buf()).or_default();
        if !metrics.read_more(metrics_file)? {
            // Cut back by a resume: read it again from the start.
            *metrics = Metrics::default();
            metrics.read_more(metrics_file)?;
        }
        Ok(f(metrics))
    }
}

/// `/api/metrics?run=ID[&series=NAME…][&x0=A&x1=B][&max=N]`.
pub fn metrics(roots: &Roots, cache: &MetricsCache, request: &Request) -> Response {
    let Some((dir, DirKind::Run)) = request.param("run").and_then(|id| roots.resolve(id)) else {
        return Response::not_found();
    };
    let number = |name: &str| request.param(name).and_then(|v| v.parse::<f64>().ok());
    let (x0, x1) = (
        number("x0").unwrap_or(f64::NEG_INFINITY),
        number("x1").unwrap_or(f64::INFINITY),
    );
    let max = request
        .param("max")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(MAX_POINTS)
        .clamp(10, 100_000);
    let wanted: Vec<&str> = request.params("series").collect();
    let answer = cache.with(&RunLayout::new(&dir).metrics(), |metrics| {
        let mut series = Map::new();
        for (name, points) in &metrics.series {
            if !wanted.is_empty() && !wanted.contains(&name.as_str()) {
                continue;
            }
            let (thinned, total) = thin(points, x0, x1, max);
            series.insert(
                name.clone(),
                json!({ "x": thinned.x, "y": thinned.y, "total": total }),
            );
        }
        json!({ "offset": metrics.offset, "lines": metrics.lines, "series": series })
    });
    match answer {
        Ok(value) => Response::json(&value),
        // No metrics yet: an empty answer, which the stream then fills.
        Err(_) => Response::json(&json!({ "offset": 0, "lines": 0, "series": {} })),
    }
}

/// `/api/events?run=ID&offset=N`: `records` events (`{offset, records}`) with every complete
/// line appended after byte N, `state` events when the run's state changes, `reset` when the
/// file became shorter than N (a resume cut it back: the page reloads its series), and `end`
/// once the run is no longer training and everything was sent.
pub fn events(roots: &Roots, request: &Request, stream: &mut impl Write) -> std::io::Result<()> {
    let Some((dir, DirKind::Run)) = request.param("run").and_then(|id| roots.resolve(id)) else {
        return Response::not_found().write_to(stream, false);
    };
    let layout = RunLayout::new(&dir);
    let mut offset: u64 = request
        .param("offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    start_event_stream(stream)?;
    let mut last_state = None;
    let mut last_write = Instant::now();
    loop {
        let running = is_locked(&layout.lock());
        if last_state != Some(running) {
            let state = if running { "running" } else { "stopped" };
            write_event(stream, "state", &json!({ "state": state }).to_string())?;
            last_state = Some(running);
            last_write = Instant::now();
        }
        match read_complete_lines(&layout.metrics(), offset) {
            Ok(None) => {
                write_event(stream, "reset", "{}")?;
                return Ok(());
            }
            Ok(Some((bytes, end))) if end > offset => {
                for chunk in chunks(&bytes) {
                    let records: Vec<Value> = chunk
                        .split(|&b| b == b'\n')
                        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
                        .filter(Value::is_object)
                        .collect();
                    offset += chunk.len() as u64;
                    let data = json!({ "offset": offset, "records": records }).to_string();
                    write_event(stream, "records", &data)?;
                }
                offset = end;
                last_write = Instant::now();
                continue;
            }
            // No file yet, or nothing new.
            Ok(Some(_)) | Err(_) => {}
        }
        if !running {
            write_event(stream, "end", "{}")?;
            return Ok(());
        }
        if last_write.elapsed() >= KEEP_ALIVE {
            stream.write_all(b": keep-alive\n\n")?;
            stream.flush()?;
            last_write = Instant::now();
        }
        std::thread::sleep(POLL);
    }
}

/// Complete lines cut into pieces of at most [`MAX_EVENT_BYTES`] (a longer line is a piece).
fn chunks(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let limit = (start + MAX_EVENT_BYTES).min(bytes.len());
        let end = match bytes[start..limit].iter().rposition(|&b| b == b'\n') {
            Some(i) if limit < bytes.len() => start + i + 1,
            _ if limit == bytes.len() => limit,
            _ => bytes[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| start + i + 1),
        };
        out.push(&bytes[start..end]);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_end_at_line_ends() {
        let line = vec![b'x'; 1000];
        let mut bytes = Vec::new();
        for _ in 0..3000 {
            bytes.extend_from_slice(&line);
            bytes.push(b'\n');
        }
        let pieces = chunks(&bytes);
        assert!(pieces.len() >= 3);
        assert_eq!(pieces.iter().map(|p| p.len()).sum::<usize>(), bytes.len());
        assert!(pieces
            .iter()
            .all(|p| p.ends_with(b"\n") && p.len() <= MAX_EVENT_BYTES));
    }
}
