//! Real plugins: the workspace's built `.so` files, and crates built here in temporary
//! directories outside the workspace.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::{stderr, stdout, vigil, TINY_SYNTHETIC};

/// Where `cargo build --workspace` put the plugin libraries: beside the `vigil` binary.
fn built_plugin(crate_name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_vigil"))
        .with_file_name(format!("lib{}.so", crate_name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` before `cargo test`",
        path.display()
    );
    path
}

/// A tiny synthetic run with these `[[monitors]]` tables, searching the build directory.
fn config_with(monitors: &str) -> String {
    format!(
        "{}\n{TINY_SYNTHETIC}\n{monitors}",
        crate::util::plugin_dirs_toml()
    )
}

fn run_config(dir: &Path, config: &str) -> std::process::Output {
    std::fs::write(dir.join("run.toml"), config).unwrap();
    vigil(dir, &["train", "run.toml"])
}

fn only_run_dir(dir: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.join("runs"))
        .expect("a run directory")
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

fn run_json(run_dir: &Path) -> Value {
    crate::util::json(run_dir.join("run.json"))
}

fn monitor_records(run_dir: &Path, monitor: &str) -> Vec<Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|record| record["monitor"] == monitor)
        .collect()
}

fn monitor_report<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["monitors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no monitor {name} in {summary}"))
}

const FAULT: &str = "[[monitors]]\nname = \"fault-injector\"\n";

#[test]
fn two_plugins_load_side_by_side_and_report_their_cost() {
    let dir = tempfile::tempdir().unwrap();
    let monitors = "[[monitors]]\nname = \"example-loss-ema\"\n[monitors.settings]\nlog_every_n_steps = 4\n\n\
                    [[monitors]]\nname = \"fault-injector\"\n[monitors.settings]\nprobe_hvp = true\n";
    let output = run_config(dir.path(), &config_with(monitors));
    assert!(output.status.success(), "{}", stderr(&output));
    let run_dir = only_run_dir(dir.path());

    let ema = monitor_records(&run_dir, "example-loss-ema");
    // 2 epochs × 16 steps, logged at steps 0, 4, …, 28.
    assert_eq!(ema.len(), 8, "{ema:?}");
    assert!(ema
        .iter()
        .all(|r| r["loss_ema"].as_f64().is_some_and(|v| v > 0.0)));
    let fault = monitor_records(&run_dir, "fault-injector");
    let first = &fault[0];
    assert_eq!(first["fault_injector/classes"], 4.0);
    assert_eq!(
        first["fault_injector/parameters"],
        (144 * 32 + 32 + 32 * 4 + 4) as f64
    );
    assert!(first["fault_injector/probe_loss"]
        .as_f64()
        .is_some_and(|v| v > 0.5 && v < 3.0));
    assert!(fault.iter().any(|r| r["fault_injector/grad_norm_sum"]
        .as_f64()
        .is_some_and(|v| v > 0.0)));
    assert_eq!(
        std::fs::read_to_string(run_dir.join("artifacts/fault_injector/fit_end.txt")).unwrap(),
        // fit_start, 32 train batches, 8 validations, 2 epoch ends (fit_end writes first).
        format!("calls {}\n", 1 + 32 + 8 + 2)
    );

    let summary = run_json(&run_dir);
    assert_eq!(summary["status"], "completed");
    for name in ["example-loss-ema", "fault-injector"] {
        let report = monitor_report(&summary, name);
        assert_eq!(report["status"], "ok");
        assert_eq!(report["sha256"].as_str().map(str::len), Some(64));
        assert_eq!(report["api_version"], vigil_plugin_api::API_VERSION);
        assert!(report["share_of_step_time"]
            .as_f64()
            .is_some_and(|s| s > 0.0 && s < 1.0));
    }
    let hooks = &monitor_report(&summary, "example-loss-ema")["hooks"];
    assert_eq!(hooks["train_batch_end"]["calls"], 32);
    assert!(
        hooks.get("validation_end").is_none(),
        "only subscribed hooks are called: {hooks}"
    );
}

#[test]
fn a_monitor_that_panics_is_disabled_and_the_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let monitors = format!("{FAULT}[monitors.settings]\nfault = \"panic\"\nat_step = 5\n");
    let output = run_config(dir.path(), &config_with(&monitors));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("epoch 2/2"));
    let warning = stderr(&output);
    assert!(
        warning.contains("monitor `fault-injector` disabled: failed in train_batch_end at step 5"),
        "{warning}"
    );
    assert!(
        !warning.contains("stack backtrace"),
        "the plugin's panic hook stays quiet: {warning}"
    );

    let run_dir = only_run_dir(dir.path());
    let summary = run_json(&run_dir);
    assert_eq!(summary["status"], "completed");
    let report = monitor_report(&summary, "fault-injector");
    assert_eq!(report["status"], "disabled");
    assert_eq!(report["disabled"]["global_step"], 5);
    let reason = report["disabled"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("panicked at ")
            && reason.ends_with("injected panic in train_batch_end at step 5"),
        "{reason}"
    );
    assert!(summary["warnings"][0]
        .as_str()
        .unwrap()
        .contains("disabled"));
    // Calls stop at the failure: fit_start, train_epoch_start, steps 0..=5.
    assert_eq!(report["hooks"]["train_batch_end"]["calls"], 6);
}

#[test]
fn a_monitor_that_returns_an_error_is_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let monitors =
        format!("{FAULT}[monitors.settings]\nfault = \"error\"\nevent = \"validation_end\"\n");
    let output = run_config(dir.path(), &config_with(&monitors));
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = run_json(&only_run_dir(dir.path()));
    let report = monitor_report(&summary, "fault-injector");
    assert_eq!(report["disabled"]["event"], "validation_end");
    assert_eq!(
        report["disabled"]["reason"],
        "injected error in validation_end at step 4"
    );
}

#[test]
fn on_error_abort_stops_the_run_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let monitors = format!(
        "{FAULT}on_error = \"abort\"\n[monitors.settings]\nfault = \"panic\"\nat_step = 3\n"
    );
    let output = run_config(dir.path(), &config_with(&monitors));
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("error: monitor `fault-injector` failed in train_batch_end at step 3 (on_error = \"abort\"): panicked at"),
        "{message}"
    );
    let summary = run_json(&only_run_dir(dir.path()));
    assert_eq!(summary["status"], "failed");
    assert_eq!(summary["global_step"], 3);
    assert!(summary["error"]
        .as_str()
        .unwrap()
        .contains("injected panic"));
}

#[test]
fn non_finite_metrics_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let monitors = format!("{FAULT}[monitors.settings]\nfault = \"nan\"\nat_step = 30\n");
    let output = run_config(dir.path(), &config_with(&monitors));
    assert!(output.status.success(), "{}", stderr(&output));
    let run_dir = only_run_dir(dir.path());
    let records = monitor_records(&run_dir, "fault-injector");
    assert!(records
        .iter()
        .all(|r| r.get("fault_injector/bad").is_none()));
    let summary = run_json(&run_dir);
    // Steps 30 and 31 each log NaN and +inf.
    assert_eq!(
        monitor_report(&summary, "fault-injector")["dropped_non_finite_metrics"],
        4
    );
    assert!(summary["warnings"][0]
        .as_str()
        .unwrap()
        .contains("dropped non-finite metric `fault_injector/bad`"));
}

#[test]
fn a_monitor_can_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let monitors = format!("{FAULT}[monitors.settings]\nfault = \"stop\"\nat_step = 4\n");
    let output = run_config(dir.path(), &config_with(&monitors));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("monitor `fault-injector` asked to stop: injected stop request")
    );
    let summary = run_json(&only_run_dir(dir.path()));
    assert_eq!(summary["status"], "stopped");
    assert_eq!(summary["global_step"], 5);
}

/// Runs a config that must be refused before anything is written; returns stderr.
fn expect_plugin_error(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = run_config(dir.path(), config);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(!dir.path().join("runs").exists(), "nothing may be written");
    stderr(&output)
}

#[test]
fn an_unknown_monitor_name_lists_the_available_ones() {
    let message = expect_plugin_error(&config_with("[[monitors]]\nname = \"gradeint\"\n"));
    assert!(
        message.starts_with(
            "error: cannot set up monitors:\n  unknown monitor `gradeint`; available: "
        ),
        "{message}"
    );
    assert!(
        message.contains("example-loss-ema, fault-injector"),
        "{message}"
    );
}

#[test]
fn every_load_problem_is_reported_at_once_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("libjunk.so");
    std::fs::write(&junk, b"not a shared library at all").unwrap();
    let foreign = dir.path().join("libforeign.so");
    std::fs::copy(system_library(), &foreign).unwrap();
    let missing = dir.path().join("libmissing.so");
    let monitors = format!(
        "[[monitors]]\nname = \"junk\"\npath = {:?}\n\n[[monitors]]\nname = \"foreign\"\npath = {:?}\n\n\
         [[monitors]]\nname = \"missing\"\npath = {:?}\n",
        junk.display().to_string(),
        foreign.display().to_string(),
        missing.display().to_string()
    );
    let message = expect_plugin_error(&config_with(&monitors));
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 4, "{message}");
    assert!(
        lines[1].contains(&format!(
            "{}: not a shared library: not an ELF file",
            junk.display()
        )),
        "{message}"
    );
    assert!(
        lines[2].contains(&format!(
            "{}: not a vigil plugin: it exports no plugin module",
            foreign.display()
        )),
        "{message}"
    );
    assert_eq!(lines[3], format!("  {}: file not found", missing.display()));
}

#[test]
fn a_monitor_whose_constructor_fails_is_refused_before_training() {
    let message = expect_plugin_error(&config_with(&format!(
        "{FAULT}[monitors.settings]\nfualt = \"panic\"\n"
    )));
    assert!(
        message.contains(
            "monitor `fault-injector` could not be built: invalid settings: unknown field `fualt`"
        ),
        "{message}"
    );
}

#[test]
fn a_disabled_monitor_is_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let monitors = "[[monitors]]\nname = \"not-installed\"\nenabled = false\n";
    let output = run_config(dir.path(), &config_with(monitors));
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn the_plugins_command_lists_names_versions_hashes_and_problems() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        built_plugin("example-loss-ema"),
        dir.path().join("libexample_loss_ema.so"),
    )
    .unwrap();
    std::fs::write(dir.path().join("libbroken.so"), b"\x7fELF truncated").unwrap();
    let output = vigil(dir.path(), &["plugins", "--dir", "."]);
    assert!(output.status.success());
    let table = stdout(&output);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("SHA256") && lines[0].ends_with("STATUS"),
        "{table}"
    );
    let ok = lines
        .iter()
        .find(|l| l.starts_with("example-loss-ema"))
        .expect("the plugin is listed");
    assert!(ok.contains("1.0.0") && ok.ends_with("  ok"), "{ok}");
    let broken = lines
        .iter()
        .find(|l| l.contains("libbroken.so"))
        .expect("the broken file is listed");
    assert!(broken.contains("not a shared library"), "{broken}");
}

#[test]
fn no_plugin_links_libtorch() {
    let workspace = workspace_root();
    let plugins: Vec<PathBuf> = std::fs::read_dir(workspace.join("plugins"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    assert!(!plugins.is_empty());
    for plugin in plugins {
        let output = std::process::Command::new(cargo())
            .args([
                "tree",
                "--offline",
                "--edges",
                "normal,build",
                "--prefix",
                "none",
                "--manifest-path",
            ])
            .arg(plugin.join("Cargo.toml"))
            .current_dir(&workspace)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        let tree = stdout(&output);
        // Plugins (cdylibs) link the API; shared helper libraries there need not.
        let manifest = std::fs::read_to_string(plugin.join("Cargo.toml")).unwrap();
        if manifest.contains("cdylib") {
            assert!(tree.contains("vigil-plugin-api"), "{tree}");
        }
        for line in tree.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            assert!(
                !matches!(name, "tch" | "torch-sys"),
                "{} depends on {name}",
                plugin.display()
            );
        }
    }
}

// ---- crates built outside the workspace ----

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// A shared library of the system that is not a vigil plugin: one this process has mapped.
fn system_library() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(PathBuf::from)
        .find(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with("libc.so") || name.starts_with("libm.so")
        })
        .expect("libc is mapped")
}

/// Where the crates built outside the workspace put their output.
fn external_target() -> PathBuf {
    workspace_root().join("target/external-plugins")
}

/// `cargo SUBCOMMAND` for the crate at `crate_dir` (its own workspace): offline, with the
/// workspace's Cargo.lock copied beside it, into the shared external target directory, with
/// line tables only and nothing incremental (as the workspace's own test build), so that the
/// tests' builds stay small on disk.
fn external_cargo(crate_dir: &Path, subcommand: &[&str]) -> std::process::Command {
    std::fs::copy(
        workspace_root().join("Cargo.lock"),
        crate_dir.join("Cargo.lock"),
    )
    .unwrap();
    let mut command = std::process::Command::new(cargo());
    command
        .args(subcommand)
        .args(["--offline", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", external_target())
        .env("CARGO_INCREMENTAL", "0")
        .env("CARGO_PROFILE_DEV_DEBUG", "line-tables-only")
        .env_remove("RUSTFLAGS");
    command
}

/// Build the cdylib crate in `crate_dir` (its own workspace) and return its library.
pub fn build_external(crate_dir: &Path, library: &str) -> PathBuf {
    let output = external_cargo(crate_dir, &["build", "--quiet"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "building {} failed:\n{}",
        crate_dir.display(),
        stderr(&output)
    );
    let path = external_target()
        .join("debug")
        .join(format!("lib{library}.so"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

const EXTERNAL_MONITOR: &str = r#"
use vigil_plugin_api::{export_monitor, Context, Error, EventKind, EventSet, Monitor, MonitorInfo, Subscriptions};

const MARK: f64 = 1.0;

pub struct Marker;

impl Monitor for Marker {
    fn info() -> MonitorInfo {
        MonitorInfo {
            name: "NAME",
            version: env!("CARGO_PKG_VERSION"),
            description: "logs a constant once per epoch",
            events: EventSet::of(&[EventKind::TRAIN_EPOCH_END]),
            subscriptions: Subscriptions::NONE,
        }
    }

    fn new(_settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        Ok(Marker)
    }

    fn on_train_epoch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        ctx.log("mark", MARK);
        Ok(())
    }
}

export_monitor!(Marker);
"#;

/// Write a monitor crate named `name` that depends on the API crate at `api`.
fn write_external_crate(root: &Path, name: &str, api: &Path) -> PathBuf {
    external_crate(root, name, api, &EXTERNAL_MONITOR.replace("NAME", name))
}

/// Write a standalone monitor crate `name` (a workspace of its own) with `source` as its
/// `lib.rs`, depending on serde and on the API crate at `api`. Returns its directory.
pub fn external_crate(root: &Path, name: &str, api: &Path, source: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.3.0\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\nserde = {{ version = \"1\", features = [\"derive\"] }}\nvigil-plugin-api = {{ path = {:?} }}\n\n[workspace]\n",
            api.display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), source).unwrap();
    dir
}

/// `cargo test` in the crate at `crate_dir`, offline with the workspace's Cargo.lock beside it
/// and the external plugins' target directory; asserts that it passed and returns its stdout.
pub fn test_external(crate_dir: &Path) -> String {
    let tested = external_cargo(crate_dir, &["test"]).output().unwrap();
    let out = String::from_utf8_lossy(&tested.stdout).into_owned();
    assert!(tested.status.success(), "{out}{}", stderr(&tested));
    out
}

#[test]
fn a_plugin_built_outside_the_workspace_loads_and_a_rebuild_is_picked_up() {
    let root = tempfile::tempdir().unwrap();
    let crate_dir = write_external_crate(
        root.path(),
        "outside-marker",
        &workspace_root().join("plugin-api"),
    );
    let library = build_external(&crate_dir, "outside_marker");
    let host_binary = std::fs::metadata(env!("CARGO_BIN_EXE_vigil"))
        .unwrap()
        .modified()
        .unwrap();

    let run = |expected: f64| {
        let dir = tempfile::tempdir().unwrap();
        let monitors = format!(
            "[[monitors]]\nname = \"outside-marker\"\npath = {:?}\n",
            library.display().to_string()
        );
        let output = run_config(dir.path(), &config_with(&monitors));
        assert!(output.status.success(), "{}", stderr(&output));
        let marks: Vec<f64> = monitor_records(&only_run_dir(dir.path()), "outside-marker")
            .iter()
            .map(|r| r["mark"].as_f64().unwrap())
            .collect();
        assert_eq!(marks, vec![expected, expected]);
    };
    run(1.0);

    let source = crate_dir.join("src/lib.rs");
    let changed = std::fs::read_to_string(&source)
        .unwrap()
        .replace("MARK: f64 = 1.0", "MARK: f64 = 2.0");
    std::fs::write(&source, changed).unwrap();
    build_external(&crate_dir, "outside_marker");
    run(2.0);
    assert_eq!(
        std::fs::metadata(env!("CARGO_BIN_EXE_vigil"))
            .unwrap()
            .modified()
            .unwrap(),
        host_binary,
        "the host was not rebuilt"
    );
}

/// The code blocks of the README's "Write your own monitor" section: Cargo.toml and lib.rs.
fn readme_monitor() -> (String, String) {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("## Write your own monitor")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README has a \"Write your own monitor\" section");
    let block = |language: &str| -> String {
        let fence = format!("```{language}\n");
        let start = section
            .find(&fence)
            .unwrap_or_else(|| panic!("no {language} block"))
            + fence.len();
        section[start..].split("```").next().unwrap().to_string()
    };
    (block("toml"), block("rust"))
}

#[test]
fn the_readme_monitor_builds_outside_the_workspace_and_runs() {
    let (manifest, source) = readme_monitor();
    let api = workspace_root().join("plugin-api").display().to_string();
    let manifest = manifest.replace("/path/to/vigil/plugin-api", &api) + "\n[workspace]\n";
    assert!(
        manifest.contains("[dependencies]\nvigil-plugin-api = { path = "),
        "{manifest}"
    );
    let root = tempfile::tempdir().unwrap();
    let crate_dir = root.path().join("loss-spikes");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::write(crate_dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(crate_dir.join("src/lib.rs"), source).unwrap();
    let library = build_external(&crate_dir, "loss_spikes");
    // Its unit test, on the fake host.
    let summary = test_external(&crate_dir);
    assert!(summary.contains("test result: ok. 1 passed"), "{summary}");

    let dir = tempfile::tempdir().unwrap();
    let monitors = format!(
        "[[monitors]]\nname = \"loss-spikes\"\npath = {:?}\n[monitors.settings]\nfactor = 3.0\n",
        library.display().to_string()
    );
    let output = run_config(dir.path(), &config_with(&monitors));
    assert!(output.status.success(), "{}", stderr(&output));
    let spikes: Vec<f64> = monitor_records(&only_run_dir(dir.path()), "loss-spikes")
        .iter()
        .map(|r| r["loss_spikes"].as_f64().unwrap())
        .collect();
    assert_eq!(spikes, vec![0.0, 0.0]);
}

/// A copy of the API crate, standalone, with `edit` applied to `abi.rs` and `version`.
fn altered_api(root: &Path, version: &str, edit: impl Fn(String) -> String) -> PathBuf {
    api_copy(
        root,
        &workspace_root().join("plugin-api/src"),
        version,
        edit,
    )
}

/// A standalone API crate of `version` from the sources in `sources`, with `edit` applied to
/// `abi.rs`.
pub fn api_copy(
    root: &Path,
    sources: &Path,
    version: &str,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    let dir = root.join(format!("api-{version}"));
    copy_sources(sources, &dir.join("src"), &edit);
    // Since 1.3 the API re-exports `#[monitor]` from its macro crate; older sources ignore it.
    let macros = workspace_root()
        .join("plugin-api/macros")
        .display()
        .to_string();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"vigil-plugin-api\"\nversion = \"{version}\"\nedition = \"2021\"\n\n[dependencies]\n\
             abi_stable = \"=0.11.3\"\nserde = {{ version = \"1\", features = [\"derive\"] }}\nthiserror = \"2\"\ntoml = \"1\"\n\
             vigil-plugin-api-macros = {{ path = {macros:?} }}\n\n[features]\ntesting = []\n"
        ),
    )
    .unwrap();
    dir
}

/// Copy the `.rs` files under `from` to `to`, folders included, with `edit` applied to `abi.rs`.
fn copy_sources(from: &Path, to: &Path, edit: &impl Fn(String) -> String) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_owned();
        if path.is_dir() {
            copy_sources(&path, &to.join(&file), edit);
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let text = if file == "abi.rs" { edit(text) } else { text };
        std::fs::write(to.join(file), text).unwrap();
    }
}

#[test]
fn plugins_built_against_an_incompatible_api_are_refused_in_one_line() {
    let root = tempfile::tempdir().unwrap();
    let layout_api = altered_api(root.path(), "1.0.0", |abi| {
        let edited = abi.replace(
            "    pub batch_size: u32,\n}",
            "    pub batch_size: u32,\n    pub extra: u64,\n}",
        );
        assert_ne!(edited, abi, "the edit must apply");
        edited
    });
    let major_api = altered_api(root.path(), "2.0.0", |abi| abi);
    let layout = build_external(
        &write_external_crate(root.path(), "layout-changed", &layout_api),
        "layout_changed",
    );
    let major = build_external(
        &write_external_crate(root.path(), "major-two", &major_api),
        "major_two",
    );

    let monitors = format!(
        "[[monitors]]\nname = \"layout-changed\"\npath = {:?}\n\n[[monitors]]\nname = \"major-two\"\npath = {:?}\n",
        layout.display().to_string(),
        major.display().to_string()
    );
    let message = expect_plugin_error(&config_with(&monitors));
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 3, "{message}");
    assert!(
        lines[1].contains(&format!(
            "{}: incompatible plugin API layout (",
            layout.display()
        )),
        "{message}"
    );
    assert!(
        lines[1].contains("rebuild the plugin against this host's vigil-plugin-api; full report: "),
        "{message}"
    );
    // No run directory yet: a new private file in the temp directory.
    let report = Path::new(lines[1].rsplit("full report: ").next().unwrap());
    assert!(std::fs::read_to_string(report)
        .unwrap()
        .contains(&layout.display().to_string()));
    let metadata = std::fs::symlink_metadata(report).unwrap();
    assert!(metadata.file_type().is_file());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777,
        0o600
    );
    std::fs::remove_file(report).unwrap();
    assert!(
        lines[2].contains(&format!(
            "{}: built against vigil-plugin-api 2.0.0; this host loads 1.x",
            major.display()
        )),
        "{message}"
    );

    // With an existing run directory the report goes there, and a symlink planted under its
    // name is replaced, not followed.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("existing")).unwrap();
    let hash = vigil::plugin::library::hex(&<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(&layout).unwrap(),
    ));
    let planted = dir.path().join(format!(
        "existing/plugin-layout-liblayout_changed-{}.txt",
        &hash[..12]
    ));
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let output = run_config(
        dir.path(),
        &format!(
            "run_dir = \"existing\"\n{}",
            config_with(&format!(
                "[[monitors]]\nname = \"layout-changed\"\npath = {:?}\n",
                layout.display().to_string()
            ))
        ),
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("full report: {}", planted.display())),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(&planted)
        .unwrap()
        .file_type()
        .is_file());
}
