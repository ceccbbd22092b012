//! System metrics of a training run, sampled on a thread of their own every
//! `system_metrics_every_s`: the process's memory and CPU, the machine's memory and CPU, the
//! free disk of the run directory's file system, and on CUDA the GPU's memory and utilisation.
//!
//! The names are MLflow's own system metrics (`cpu_utilization_percentage`,
//! `system_memory_usage_megabytes`, …; a megabyte is 10⁶ bytes, as MLflow counts), so that a
//! run's `system` records, its TensorBoard `system/…` scalars and its MLflow `system/…` metrics
//! read the same. Linux's `/proc` is read directly; the GPU through `nvidia-smi` when it is
//! there (libtorch's C API says nothing of its caching allocator).
//!
//! The sampler never touches the run's sinks: it hands samples over a channel, and the hub
//! writes them at the next training step. It also says when the free disk falls below what
//! the run's newest checkpoint took, so that the next one would not fit.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::run_dir::CHECKPOINT_DIR;
use crate::sink::unix_time;

/// One sample: metric names (MLflow's) and values, taken at `wall_time`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub wall_time: f64,
    pub metrics: Vec<(String, f64)>,
}

/// What the sampler hands the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Sample(Sample),
    /// Free disk fell below what the next checkpoint needs.
    LowDisk {
        free_bytes: u64,
        needed_bytes: u64,
    },
}

/// A running sampler; dropping it stops the thread.
pub struct SystemMetrics {
    reports: Receiver<Report>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SystemMetrics {
    /// Sample now and then every `every`, for the run directory `run_dir` (`cuda`: the index
    /// of the device training runs on).
    pub fn start(every: Duration, run_dir: &Path, cuda: Option<usize>) -> Self {
        let (sender, reports) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let run_dir = run_dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("vigil-system-metrics".into())
            .spawn(move || {
                let mut sampler = Sampler::new(run_dir, cuda);
                let mut low_disk = false;
                loop {
                    let started = Instant::now();
                    let sample = sampler.sample();
                    let (free, needed) = (sampler.free_disk, sampler.checkpoint_bytes());
                    let low = matches!((free, needed), (Some(free), Some(needed)) if free < needed);
                    if sender.send(Report::Sample(sample)).is_err() {
                        return;
                    }
                    // Said once each time the disk runs low, not at every sample.
                    if low && !low_disk {
                        let report = Report::LowDisk {
                            free_bytes: free.unwrap_or(0),
                            needed_bytes: needed.unwrap_or(0),
                        };
                        if sender.send(report).is_err() {
                            return;
                        }
                    }
                    low_disk = low;
                    match stopped.recv_timeout(every.saturating_sub(started.elapsed())) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })
            .ok();
        SystemMetrics {
            reports,
            stop: Some(stop),
            thread,
        }
    }

    /// The reports since the last call, oldest first; never waits.
    pub fn drain(&self) -> Vec<Report> {
        self.reports.try_iter().collect()
    }
}

impl Drop for SystemMetrics {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// CPU times read at the previous sample, for the utilisation since.
struct Sampler {
    run_dir: PathBuf,
    cuda: Option<usize>,
    ticks_per_second: f64,
    previous_process: Option<(Instant, f64)>,
    previous_system: Option<(u64, u64)>,
    free_disk: Option<u64>,
}

impl Sampler {
    fn new(run_dir: PathBuf, cuda: Option<usize>) -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Sampler {
            run_dir,
            cuda,
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            previous_process: None,
            previous_system: None,
            free_disk: None,
        }
    }

    fn sample(&mut self) -> Sample {
        let mut metrics: Vec<(String, f64)> = Vec::new();
        let mut put = |name: &str, value: f64| metrics.push((name.to_string(), value));
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(rss) = kib_field(&status, "VmRSS:") {
            put("process_memory_rss_megabytes", rss as f64 * 1024.0 / 1e6);
        }
        if let Some(peak) = kib_field(&status, "VmHWM:") {
            put(
                "process_memory_peak_rss_megabytes",
                peak as f64 * 1024.0 / 1e6,
            );
        }
        if let Some(cpu) = self.process_cpu() {
            put("process_cpu_percentage", cpu);
        }
        if let Some(cpu) = self.system_cpu() {
            put("cpu_utilization_percentage", cpu);
        }
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        if let (Some(total), Some(available)) = (
            kib_field(&meminfo, "MemTotal:"),
            kib_field(&meminfo, "MemAvailable:"),
        ) {
            let used = total.saturating_sub(available);
            put("system_memory_usage_megabytes", used as f64 * 1024.0 / 1e6);
            put(
                "system_memory_available_megabytes",
                available as f64 * 1024.0 / 1e6,
            );
            put(
                "system_memory_usage_percentage",
                100.0 * used as f64 / total.max(1) as f64,
            );
        }
        self.free_disk = None;
        if let Some(disk) = disk_space(&self.run_dir) {
            self.free_disk = Some(disk.available);
            let used = disk.total.saturating_sub(disk.free);
            put("disk_available_megabytes", disk.available as f64 / 1e6);
            put("disk_usage_megabytes", used as f64 / 1e6);
            // As `psutil.disk_usage`: of the space an unprivileged user can have.
            put(
                "disk_usage_percentage",
                100.0 * used as f64 / (used + disk.available).max(1) as f64,
            );
        }
        if let Some(index) = self.cuda {
            for (name, value) in gpu_metrics(index) {
                put(&name, value);
            }
        }
        Sample {
            wall_time: unix_time(),
            metrics,
        }
    }

    /// The process's CPU time over wall time since the previous sample, in percent of one
    /// core (as `psutil.Process.cpu_percent`); `None` at the first sample.
    fn process_cpu(&mut self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let seconds = ticks / self.ticks_per_second;
        let now = Instant::now();
        let previous = self.previous_process.replace((now, seconds))?;
        let wall = now.duration_since(previous.0).as_secs_f64();
        (wall > 0.0).then(|| 100.0 * (seconds - previous.1) / wall)
    }

    /// The machine's CPU utilisation since the previous sample (`/proc/stat`: busy over all
    /// time, idle and I/O wait being not busy); `None` at the first sample.
    fn system_cpu(&mut self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let values: Vec<u64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest times are inside user).
        let total: u64 = values.iter().take(8).sum();
        let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
        let (previous_total, previous_idle) = self.previous_system.replace((total, idle))?;
        let elapsed = total.saturating_sub(previous_total);
        (elapsed > 0)
            .then(|| 100.0 * (1.0 - idle.saturating_sub(previous_idle) as f64 / elapsed as f64))
    }

    /// The size of the run's newest checkpoint: what the next one needs on disk.
    fn checkpoint_bytes(&self) -> Option<u64> {
        let root = self.run_dir.join(CHECKPOINT_DIR);
        let newest = std::fs::read_dir(&root)
            .ok()?
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("step_"))
            .max_by_key(|entry| entry.file_name())?;
        let bytes = std::fs::read_dir(newest.path())
            .ok()?
            .flatten()
            .filter_map(|entry| entry.metadata().ok())
            .map(|metadata| metadata.len())
            .sum();
        Some(bytes)
    }
}

/// A `Name:   1234 kB` field of a `/proc` file, in KiB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The space of a file system, in bytes.
struct DiskSpace {
    total: u64,
    /// Free blocks, the reserved ones included.
    free: u64,
    /// Free to an unprivileged user.
    available: u64,
}

/// The space of the file system holding `dir`.
fn disk_space(dir: &Path) -> Option<DiskSpace> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs struct to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some(DiskSpace {
        total: stat.f_blocks as u64 * block,
        free: stat.f_bfree as u64 * block,
        available: stat.f_bavail as u64 * block,
    })
}

/// GPU `index`'s memory and utilisation from `nvidia-smi`, when it is installed.
fn gpu_metrics(index: usize) -> Vec<(String, f64)> {
    let output = std::process::Command::new("nvidia-smi")
        .args([
            &format!("--id={index}"),
            "--query-gpu=utilization.gpu,memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(output) = output else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let values: Vec<f64> = text
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let [utilization, used_mib, total_mib] = values[..] else {
        return Vec::new();
    };
    let used = used_mib * 1024.0 * 1024.0 / 1e6;
    vec![
        (format!("gpu_{index}_utilization_percentage"), utilization),
        (format!("gpu_{index}_memory_usage_megabytes"), used),
        (
            format!("gpu_{index}_memory_usage_percentage"),
            100.0 * used_mib / total_mib.max(1.0),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_fields_in_kib() {
        let status = "Name:\tvigil\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(102_400));
        assert_eq!(kib_field(status, "VmHWM:"), Some(204_800));
        assert_eq!(kib_field(status, "VmSwap:"), None);
    }

    #[test]
    fn a_sample_has_this_process_memory_and_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut sampler = Sampler::new(dir.path().to_path_buf(), None);
        let first = sampler.sample();
        let names: Vec<&str> = first.metrics.iter().map(|(n, _)| n.as_str()).collect();
        for name in [
            "process_memory_rss_megabytes",
            "system_memory_usage_megabytes",
            "disk_available_megabytes",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        // CPU needs two samples.
        assert!(!names.contains(&"process_cpu_percentage"));
        let busy = Instant::now();
        while busy.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64.wrapping_add(1));
        }
        let second = sampler.sample();
        let cpu = second
            .metrics
            .iter()
            .find(|(n, _)| n == "process_cpu_percentage")
            .map(|&(_, v)| v)
            .unwrap();
        assert!((0.0..=100.0 * 256.0).contains(&cpu), "{cpu}");
    }

    #[test]
    fn low_disk_compares_with_the_newest_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let sampler = Sampler::new(dir.path().to_path_buf(), None);
        assert_eq!(sampler.checkpoint_bytes(), None);
        let step = dir.path().join("checkpoints/step_000000004");
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(step.join("model.safetensors"), vec![0u8; 1000]).unwrap();
        std::fs::write(step.join("state.json"), b"{}").unwrap();
        assert_eq!(sampler.checkpoint_bytes(), Some(1002));
    }
}
