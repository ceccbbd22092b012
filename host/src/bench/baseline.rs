//! The loops `vigil bench` compares the host with, run as child processes that serve one timed
//! segment per request: the plain PyTorch loop (`bench/python_baseline.py`, W1 and W2) and the
//! Lightning loop with the monitors as callbacks (`bench/lightning_baseline.py`, W1).
//!
//! Protocol: the child prints one JSON line when ready (`{"ready": true, "torch": …}`), then
//! reads a line holding a step count and answers `{"ms_per_step": …}` after training that many
//! steps, until its stdin closes.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::error::{Error, Result};

/// An interpreter and the script it runs.
#[derive(Debug, Clone)]
pub struct PythonBaseline {
    pub interpreter: PathBuf,
    pub script: PathBuf,
}

/// vigil's cache directory (`$VIGIL_CACHE_DIR`, else `$XDG_CACHE_HOME/vigil`, else
/// `~/.cache/vigil`), as `scripts/bootstrap.sh` chooses it.
fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("VIGIL_CACHE_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => Some(
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?
                .join("vigil"),
        ),
    }
}

/// The Python that `scripts/bootstrap.sh` installs PyTorch into, when it is there.
pub fn bootstrap_python() -> Option<PathBuf> {
    let python = cache_dir()?.join("torch-2.13.0/bin/python");
    python.is_file().then_some(python)
}

/// The Python of the bench venv that `scripts/bench-venv.sh` installs Lightning into, when it
/// is there.
pub fn lightning_python() -> Option<PathBuf> {
    let python = cache_dir()?.join("bench-lightning/bin/python");
    python.is_file().then_some(python)
}

/// The environment that gives a Python process the allocator setting vigil gives itself
/// ([`crate::memory::reuse_freed_buffers`]): glibc's tunables for the same thresholds.
pub const PYTHON_ALLOCATOR_TUNABLES: &str =
    "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824";

/// A baseline loop in its own process, serving one segment per request.
pub(crate) struct ExternalLoop {
    pub variant: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub interpreter: String,
    script: String,
    /// The ready line's fields.
    pub torch: String,
    pub lightning: Option<String>,
    pub glibc_tunables: String,
    /// ms per step of each timed segment.
    pub segments: Vec<f64>,
}

impl ExternalLoop {
    /// Start `baseline` with `args` and `--serve`; `tuned` gives it vigil's allocator setting,
    /// otherwise `GLIBC_TUNABLES` is removed from its environment.
    pub fn start(
        baseline: &PythonBaseline,
        args: &[String],
        tuned: bool,
        variant: &'static str,
        hint: &str,
    ) -> Result<ExternalLoop> {
        let mut command = Command::new(&baseline.interpreter);
        if tuned {
            command.env("GLIBC_TUNABLES", PYTHON_ALLOCATOR_TUNABLES);
        } else {
            command.env_remove("GLIBC_TUNABLES");
        }
        let mut child = command
            .arg(&baseline.script)
            .arg("--serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| Error::Subprocess {
                program: baseline.script.display().to_string(),
                reason: format!(
                    "cannot start it with {}: {err} ({hint})",
                    baseline.interpreter.display()
                ),
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::Subprocess {
                program: baseline.script.display().to_string(),
                reason: "started without pipes".into(),
            });
        };
        let mut lane = ExternalLoop {
            variant,
            child,
            stdin,
            stdout: BufReader::new(stdout),
            interpreter: baseline.interpreter.display().to_string(),
            script: baseline.script.display().to_string(),
            torch: String::new(),
            lightning: None,
            glibc_tunables: String::new(),
            segments: Vec::new(),
        };
        let ready = lane.answer()?;
        lane.torch = ready["torch"].as_str().unwrap_or("?").to_string();
        lane.lightning = ready["lightning"].as_str().map(str::to_string);
        lane.glibc_tunables = ready["glibc_tunables"].as_str().unwrap_or("").to_string();
        Ok(lane)
    }

    fn answer(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .map_err(|err| Error::Subprocess {
                program: self.script.clone(),
                reason: format!("reading its answer: {err}"),
            })?;
        if read == 0 {
            let status = self.child.wait().ok();
            return Err(Error::Subprocess {
                program: self.script.clone(),
                reason: format!(
                    "run by {} exited ({}) before answering; run it by hand to see why: {} {}",
                    self.interpreter,
                    status.map_or_else(|| "?".into(), |s| s.to_string()),
                    self.interpreter,
                    self.script
                ),
            });
        }
        serde_json::from_str(&line).map_err(|err| Error::Subprocess {
            program: self.script.clone(),
            reason: format!("answered `{}`: {err}", line.trim()),
        })
    }

    /// Run `steps` steps; returns ms per step.
    pub fn segment(&mut self, steps: u64) -> Result<f64> {
        self.ask(&steps.to_string(), "ms_per_step")
    }

    /// The time inside ATen ops per step of `steps` profiled steps of this loop (PyTorch's
    /// profiler, self CPU time), in ms.
    pub fn floor(&mut self, steps: u64) -> Result<f64> {
        self.ask(&format!("floor {steps}"), "aten_ms_per_step")
    }

    /// Send one request line and read the number `field` of the answer.
    fn ask(&mut self, request: &str, field: &str) -> Result<f64> {
        writeln!(self.stdin, "{request}")
            .and_then(|()| self.stdin.flush())
            .map_err(|err| Error::Subprocess {
                program: self.script.clone(),
                reason: format!("writing to it: {err}"),
            })?;
        let answer = self.answer()?;
        answer[field].as_f64().ok_or_else(|| Error::Subprocess {
            program: self.script.clone(),
            reason: format!("answered {answer} without {field}"),
        })
    }
}

impl Drop for ExternalLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
