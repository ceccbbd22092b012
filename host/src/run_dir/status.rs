//! What a run directory says about its run, read the same way whichever executor ran it.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

use super::{is_unused, read_run_info, RunInfo, RunLayout};
use crate::fs::is_locked;

/// A run's state, from its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// No directory, or an empty one.
    Queued,
    /// Training now: a `vigil` process holds the run's lock.
    Running,
    /// Finished its epochs (or a monitor stopped it on purpose).
    Completed,
    /// Stopped by an error (`run.json` says `failed`).
    Failed,
    /// Stopped by a signal after a checkpoint, or killed: resume it.
    Interrupted,
}

impl RunState {
    pub const ALL: [RunState; 5] = [
        RunState::Queued,
        RunState::Running,
        RunState::Completed,
        RunState::Failed,
        RunState::Interrupted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Interrupted => "interrupted",
        }
    }
}

/// What the run directory holds.
#[derive(Debug, Clone)]
pub struct RunStatus {
    pub state: RunState,
    /// `run.json`, when written.
    pub summary: Option<RunInfo>,
    /// The last record of `metrics.jsonl`.
    pub last_record: Option<serde_json::Value>,
}

/// Read a run directory's state.
pub fn read_run(dir: &Path) -> RunStatus {
    let layout = RunLayout::new(dir);
    let summary = read_run_info(dir);
    let last_record =
        last_line(&layout.metrics()).and_then(|line| serde_json::from_str(&line).ok());
    let state = run_state(dir, summary.as_ref());
    RunStatus {
        state,
        summary,
        last_record,
    }
}

/// A run directory's state, given its `run.json` (read by the caller, who wants it too),
/// without reading its metrics.
pub fn run_state(dir: &Path, summary: Option<&RunInfo>) -> RunState {
    if is_locked(&RunLayout::new(dir).lock()) {
        RunState::Running
    } else if is_unused(dir) {
        RunState::Queued
    } else {
        match summary.map(|s| s.status.as_str()) {
            Some(RunInfo::COMPLETED | RunInfo::STOPPED) => RunState::Completed,
            Some(RunInfo::FAILED) => RunState::Failed,
            _ => RunState::Interrupted,
        }
    }
}

/// The last complete line of a file, reading at most its last 64 KiB.
pub fn last_line(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    let start = length.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    // A line being written has no newline yet: take the last finished one.
    let finished = text.rsplit_once('\n').map(|(before, _)| before)?;
    finished
        .rsplit('\n')
        .find(|line| !line.trim().is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_from_what_the_directory_holds() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("r");
        assert_eq!(read_run(&run).state, RunState::Queued);
        std::fs::create_dir(&run).unwrap();
        assert_eq!(read_run(&run).state, RunState::Queued);
        std::fs::write(
            run.join(super::super::METRICS_FILE),
            "{\"global_step\": 1}\n{\"global_step\": 2}\n{\"glo",
        )
        .unwrap();
        let status = read_run(&run);
        assert_eq!(status.state, RunState::Interrupted);
        assert_eq!(status.last_record.unwrap()["global_step"], 2);
        for (written, state) in [
            ("completed", RunState::Completed),
            ("stopped", RunState::Completed),
            ("failed", RunState::Failed),
            ("interrupted", RunState::Interrupted),
        ] {
            std::fs::write(
                run.join(super::super::RUN_FILE),
                format!("{{\"status\": \"{written}\"}}"),
            )
            .unwrap();
            assert_eq!(read_run(&run).state, state);
        }
    }
}
