//! `vigil study submit`: the study as one SLURM job array, and `vigil study task`, what each
//! array task runs.
//!
//! The array holds the runs that are not completed, by plan index, at most `max_running` at
//! once (`--array=…%K`). Each task `exec`s `vigil study task DIR INDEX`, which trains its run
//! with resume-or-start semantics (`vigil train CONFIG --set … --resume auto`, in-process). The
//! script asks SLURM for SIGUSR1 `signal_seconds` before the time limit (`--signal=B:USR1@S`:
//! the batch shell, which is vigil itself) and is requeueable (`--requeue`): on SIGUSR1 the run
//! writes a checkpoint and the task requeues itself (`scontrol requeue`), so a timed-out run
//! continues where it stopped; when SLURM preempts or requeues it (SIGTERM), the run writes a
//! checkpoint and exits, and SLURM starts it again. Scheduling, queueing and retries are
//! SLURM's; vigil only writes the script and makes each task resumable.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::plan::check_runs;
use super::record::{read_record, save, write_record, Executor};
use super::spec::{RunSpec, Study};
use crate::error::{Error, Result};
use crate::fs::write_atomically_with_mode;
use crate::run_dir::{read_run, RunState};

/// What `submit` did.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub script: PathBuf,
    /// The array indices (plan indices) submitted.
    pub indices: Vec<usize>,
    /// SLURM's job id; `None` when only the script was written.
    pub job: Option<String>,
}

/// `0-3,5,7-9`: indices as SLURM's `--array` ranges.
pub fn array_ranges(indices: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        let mut end = start;
        while i + 1 < indices.len() && indices[i + 1] == end + 1 {
            i += 1;
            end = indices[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// The sbatch script for `indices`.
pub fn script(study: &Study, exe: &Path, indices: &[usize]) -> String {
    let s = &study.slurm;
    let mut array = array_ranges(indices);
    if let Some(limit) = s.max_running {
        array.push_str(&format!("%{limit}"));
    }
    let logs = study.dir.join("logs");
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!(
            "# vigil study `{}`: {} runs; written by `vigil study submit`.",
            study.name,
            indices.len()
        ),
        format!("#SBATCH --job-name=vigil-{}", study.name),
        format!("#SBATCH --array={array}"),
        format!("#SBATCH --time={}", s.time),
        format!("#SBATCH --cpus-per-task={}", s.cpus_per_task),
        "#SBATCH --ntasks=1".into(),
        format!("#SBATCH --signal=B:USR1@{}", s.signal_seconds),
        "#SBATCH --requeue".into(),
        "#SBATCH --open-mode=append".into(),
        format!("#SBATCH --output={}/task-%a.slurm.log", logs.display()),
        format!(
            "#SBATCH --chdir={}",
            std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| ".".into())
        ),
    ];
    for (flag, value) in [
        ("mem", &s.mem),
        ("partition", &s.partition),
        ("account", &s.account),
        ("qos", &s.qos),
        ("gres", &s.gres),
    ] {
        if let Some(value) = value {
            lines.push(format!("#SBATCH --{flag}={value}"));
        }
    }
    for extra in &s.extra {
        lines.push(format!("#SBATCH {extra}"));
    }
    lines.push(String::new());
    lines.push(format!(
        "exec {} study task {} \"$SLURM_ARRAY_TASK_ID\"",
        shell_quote(&exe.display().to_string()),
        shell_quote(&study.dir.display().to_string())
    ));
    lines.join("\n") + "\n"
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Check the study, write its record and script, and submit the runs that are not completed
/// (unless `dry_run`).
pub fn submit(study: &Study, exe: &Path, dry_run: bool) -> Result<Submitted> {
    // Tasks find their run by plan index in the record: never rewrite it under a live array.
    if let Some(job) = read_record(&study.dir).ok().and_then(|r| r.slurm_job) {
        if squeue(&job).is_some_and(|tasks| !tasks.is_empty()) {
            return Err(Error::Config {
                location: study.dir.display().to_string(),
                message: format!(
                    "SLURM job {job} of this study still has tasks queued or running; wait for it, or `scancel {job}`, before submitting again"
                ),
            });
        }
    }
    std::fs::create_dir_all(study.dir.join("logs"))
        .map_err(|source| Error::io(&study.dir, source))?;
    let pending: Vec<&RunSpec> = study
        .runs
        .iter()
        .filter(|run| {
            !matches!(
                read_run(&study.run_dir(run)).state,
                RunState::Completed | RunState::Running
            )
        })
        .collect();
    let threads = study.threads.unwrap_or(study.slurm.cpus_per_task.max(1));
    let checked = check_runs(study, &pending, Some(threads))?;
    let mut steps = vec![None; study.runs.len()];
    for run in &checked {
        steps[run.index] = Some(run.total_steps);
    }
    write_record(study, Executor::Slurm, &steps)?;
    let indices: Vec<usize> = pending.iter().map(|run| run.index).collect();
    let script_path = study.dir.join("slurm").join("array.sbatch");
    std::fs::create_dir_all(study.dir.join("slurm"))
        .map_err(|source| Error::io(&study.dir, source))?;
    write_atomically_with_mode(
        &script_path,
        script(study, exe, &indices).as_bytes(),
        Some(0o755),
    )?;
    if dry_run || indices.is_empty() {
        return Ok(Submitted {
            script: script_path,
            indices,
            job: None,
        });
    }
    let output = Command::new("sbatch")
        .arg("--parsable")
        .arg(&script_path)
        .output()
        .map_err(|err| Error::Subprocess {
            program: "sbatch".into(),
            reason: format!("cannot run it: {err} (is SLURM installed, and sbatch on PATH?)"),
        })?;
    if !output.status.success() {
        return Err(Error::Subprocess {
            program: "sbatch".into(),
            reason: format!(
                "refused {}: {}",
                script_path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    // `--parsable` prints `jobid[;cluster]`.
    let job = String::from_utf8_lossy(&output.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    let mut record = read_record(&study.dir)?;
    record.slurm_job = Some(job.clone());
    save(&study.dir, &record)?;
    Ok(Submitted {
        script: script_path,
        indices,
        job: Some(job),
    })
}

/// The run an array task trains: by its plan index, from the study's record.
pub fn task_run(dir: &Path, index: usize) -> Result<(Study, RunSpec)> {
    let record = read_record(dir)?;
    let run = record
        .study
        .runs
        .get(index)
        .cloned()
        .ok_or_else(|| Error::Config {
            location: dir.display().to_string(),
            message: format!(
            "array task {index} has no run: the study has {} (resubmit with `vigil study submit`)",
            record.study.runs.len()
        ),
        })?;
    Ok((record.study, run))
}

/// Ask SLURM to requeue this array task (after its run wrote a checkpoint).
pub fn requeue_self() -> Result<()> {
    let job = match (
        std::env::var("SLURM_ARRAY_JOB_ID"),
        std::env::var("SLURM_ARRAY_TASK_ID"),
    ) {
        (Ok(array), Ok(task)) => format!("{array}_{task}"),
        _ => std::env::var("SLURM_JOB_ID").map_err(|_| Error::Usage {
            command: "vigil study task",
            message: "not inside a SLURM job (no SLURM_JOB_ID), so it cannot requeue itself".into(),
        })?,
    };
    let status = Command::new("scontrol")
        .args(["requeue", &job])
        .status()
        .map_err(|err| Error::Subprocess {
            program: "scontrol".into(),
            reason: format!("cannot run it: {err}"),
        })?;
    if !status.success() {
        return Err(Error::Subprocess {
            program: "scontrol".into(),
            reason: format!("`scontrol requeue {job}` failed ({status})"),
        });
    }
    Ok(())
}

/// SLURM's view of the study's job: (array task index, state) for the tasks `squeue` lists.
pub fn squeue(job: &str) -> Option<Vec<(usize, String)>> {
    let output = Command::new("squeue")
        .args(["-h", "-r", "-j", job, "-o", "%K %T"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let (task, state) = line.trim().split_once(' ')?;
                Some((task.parse().ok()?, state.trim().to_string()))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_become_array_ranges() {
        assert_eq!(array_ranges(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_ranges(&[0, 2, 3, 4, 7, 9, 10]), "0,2-4,7,9-10");
        assert_eq!(array_ranges(&[5]), "5");
        assert_eq!(array_ranges(&[]), "");
    }
}
