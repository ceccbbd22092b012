//! Plugin trust, with real files and processes: no library is opened unless an enabled monitor
//! needs it and it passed its checks; the bytes loaded are the bytes hashed; fixtures stay out
//! of the default search; `vigil check` builds the monitors; `vigil plugins add` installs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use sha2::{Digest, Sha256};

use crate::util::{build_dir, fixture, stderr, stdout, vigil, TINY_SYNTHETIC};

fn built(name: &str) -> PathBuf {
    build_dir().join(format!("lib{}.so", name.replace('-', "_")))
}

fn sha256_of(path: &Path) -> String {
    vigil::plugin::library::hex(&Sha256::digest(std::fs::read(path).unwrap()))
}

/// A vigil installed outside the build directory: `<root>/bin/vigil` (a hard link to the
/// built binary, or a copy), so that its defaults are `<root>/bin/plugins` and the per-user
/// directory, with no Cargo build directory among them. The root lies in Cargo's scratch
/// directory for integration tests, on the build's own file system, so that the hard link
/// works and no test copies the binary.
struct Installed {
    root: tempfile::TempDir,
}

impl Installed {
    fn new() -> Installed {
        let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir_all(bin.join("plugins")).unwrap();
        let exe = bin.join("vigil");
        if std::fs::hard_link(env!("CARGO_BIN_EXE_vigil"), &exe).is_err() {
            std::fs::copy(env!("CARGO_BIN_EXE_vigil"), &exe).unwrap();
        }
        for dir in ["work/plugins", "xdg/vigil/plugins", "configured"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        Installed { root }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    fn marker(&self) -> PathBuf {
        self.path("marker.txt")
    }

    /// Run the installed vigil in `work/` with the per-user directory under `xdg/`.
    fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(self.path("bin/vigil"))
            .args(args)
            .current_dir(self.path("work"))
            .env_remove("LD_LIBRARY_PATH")
            .env("XDG_DATA_HOME", self.path("xdg"))
            .env("VIGIL_TEST_MARKER", self.marker())
            .output()
            .expect("the installed vigil runs")
    }

    fn write(&self, relative: &str, text: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn constructor_ran(&self) -> bool {
        self.marker().exists()
    }
}

fn config(plugin_dirs: Option<&str>, monitors: &str) -> String {
    format!(
        "{}\n{}\n{monitors}",
        plugin_dirs.map_or(String::new(), |dirs| format!("plugin_dirs = {dirs}")),
        TINY_SYNTHETIC.replace("epochs = 2", "epochs = 1")
    )
}

#[test]
fn a_library_no_enabled_monitor_uses_is_never_opened_and_a_wrong_pin_is_refused_before_loading() {
    let vigil = Installed::new();
    let marker_lib = fixture("constructor-marker");
    // In every default directory, in ./plugins of the working directory, and in a configured
    // directory, under a name no enabled monitor uses.
    for dir in [
        "bin/plugins",
        "xdg/vigil/plugins",
        "work/plugins",
        "configured",
    ] {
        std::fs::copy(
            &marker_lib,
            vigil.path(dir).join("libconstructor_marker.so"),
        )
        .unwrap();
    }
    // The monitor that is enabled: found by the default search, in the per-user directory.
    std::fs::copy(
        built("example-loss-ema"),
        vigil.path("xdg/vigil/plugins/libexample_loss_ema.so"),
    )
    .unwrap();
    let enabled = "[[monitors]]\nname = \"example-loss-ema\"\n";
    vigil.write("work/defaults.toml", &config(None, enabled));
    // Relative to the config file's directory (work/configs/), not to the working directory.
    vigil.write(
        "work/configs/configured.toml",
        &config(
            Some(&format!(
                "[\"../../configured\", {:?}]",
                build_dir().display().to_string()
            )),
            enabled,
        ),
    );
    for config in ["defaults.toml", "configs/configured.toml"] {
        let checked = vigil.run(&["check", config]);
        assert!(checked.status.success(), "{config}: {}", stderr(&checked));
        assert!(
            stdout(&checked).contains("example-loss-ema 1.0.0:"),
            "{}",
            stdout(&checked)
        );
        let trained = vigil.run(&["train", config]);
        assert!(trained.status.success(), "{config}: {}", stderr(&trained));
        assert!(
            !vigil.constructor_ran(),
            "{config}: a library no monitor enabled was loaded"
        );
    }
    // Listing reads every identity from the files: still nothing loaded.
    let listed = vigil.run(&["plugins"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(
        stdout(&listed).contains("constructor-marker"),
        "{}",
        stdout(&listed)
    );
    assert!(
        !stdout(&listed).contains("work/plugins"),
        "{}",
        stdout(&listed)
    );
    assert!(
        !vigil.constructor_ran(),
        "`vigil plugins` loaded a library with a record"
    );

    // Enabled by name with a wrong pin: refused with both hashes, before any of it runs.
    let actual = sha256_of(&vigil.path("configured/libconstructor_marker.so"));
    let wrong = "0".repeat(64);
    vigil.write(
        "work/pinned.toml",
        &config(
            Some("[\"../configured\"]"),
            &format!("[[monitors]]\nname = \"constructor-marker\"\nsha256 = \"{wrong}\"\n"),
        ),
    );
    for command in ["check", "train"] {
        let refused = vigil.run(&[command, "pinned.toml"]);
        assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
        let message = stderr(&refused);
        assert!(
            message.contains(&wrong) && message.contains(&actual) && message.contains("not loaded"),
            "{message}"
        );
        assert!(
            !vigil.constructor_ran(),
            "{command} loaded a library whose pin failed"
        );
    }
    // The control: enabled and correctly pinned, its constructor does run (so the marker
    // above could have appeared).
    vigil.write(
        "work/pinned.toml",
        &config(
            Some("[\"../configured\"]"),
            &format!("[[monitors]]\nname = \"constructor-marker\"\nsha256 = \"{actual}\"\n"),
        ),
    );
    let accepted = vigil.run(&["check", "pinned.toml"]);
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    assert!(
        vigil.constructor_ran(),
        "the fixture's constructor never runs"
    );
}

#[test]
fn the_default_search_finds_the_workspace_monitors_and_no_test_fixture() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::copy(
        fixture("fault-injector"),
        dir.path().join("plugins/libfault_injector.so"),
    )
    .unwrap();
    let listed = vigil(dir.path(), &["plugins"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let table = stdout(&listed);
    for shipped in ["gradient", "curvature", "example-loss-ema"] {
        assert!(
            table.lines().any(|line| line.starts_with(shipped)),
            "{shipped} missing:\n{table}"
        );
    }
    for fixture in ["fault-injector", "constructor-marker"] {
        assert!(!table.contains(fixture), "{fixture} listed:\n{table}");
    }
    let searched = table.lines().last().unwrap();
    assert!(
        searched.contains(&build_dir().display().to_string()) && !searched.contains(", plugins"),
        "{searched}"
    );
}

#[test]
fn bytes_replaced_on_disk_after_the_hash_are_not_what_is_loaded() {
    use vigil::plugin::library;
    use vigil::plugin::trust::OpenFile;
    let dir = tempfile::tempdir().unwrap();
    let original = built("example-loss-ema");
    let intruder = std::fs::read(fixture("fault-injector")).unwrap();

    // Rewritten in place (same inode) right after the hash.
    let path = dir.path().join("libexample_loss_ema.so");
    std::fs::copy(&original, &path).unwrap();
    let checked = OpenFile::open(&path, false).unwrap().read().unwrap();
    std::fs::write(&path, &intruder).unwrap();
    assert_eq!(sha256_of(&path), sha256_of(&fixture("fault-injector")));
    let (_, info) = library::load_fresh(&checked, None).unwrap();
    assert_eq!(info.name, "example-loss-ema");
    assert_eq!(checked.sha256, sha256_of(&original));

    // Replaced by another file (rename over it) right after the hash.
    let path = dir.path().join("libswapped.so");
    std::fs::copy(&original, &path).unwrap();
    let checked = OpenFile::open(&path, false).unwrap().read().unwrap();
    let other = dir.path().join("other.so");
    std::fs::write(&other, &intruder).unwrap();
    std::fs::rename(&other, &path).unwrap();
    let (_, info) = library::load_fresh(&checked, None).unwrap();
    assert_eq!(info.name, "example-loss-ema");
}

#[test]
fn check_builds_each_monitor_with_its_settings_and_prints_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let typo = config(
        Some(&format!("[{:?}]", build_dir().display().to_string())),
        "[[monitors]]\nname = \"gradient\"\n\n[[monitors]]\nname = \"example-loss-ema\"\n[monitors.settings]\nlog_every_n_stepz = 4\n",
    );
    std::fs::write(dir.path().join("typo.toml"), typo).unwrap();
    let refused = vigil(dir.path(), &["check", "typo.toml"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert!(
        message.contains("monitor `example-loss-ema` could not be built")
            && message.contains("unknown field `log_every_n_stepz`"),
        "{message}"
    );

    let good = config(
        Some(&format!("[{:?}]", build_dir().display().to_string())),
        "[[monitors]]\nname = \"noise\"\n",
    );
    std::fs::write(dir.path().join("good.toml"), good).unwrap();
    let checked = vigil(dir.path(), &["check", "good.toml"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    let plan = stdout(&checked);
    assert!(
        plan.contains(&format!("noise 1.1.0: {}", built("noise").display()))
            && plan.contains(&format!("sha256 {}", sha256_of(&built("noise"))))
            && plan.contains("events: train_batch_end, train_epoch_end, save_state, restore_state")
            && plan.contains("data: gradient"),
        "{plan}"
    );
    assert!(
        !dir.path().join("runs").exists(),
        "check must not write a run"
    );
}

#[test]
fn plugins_add_installs_a_checked_copy_and_prints_the_lines_to_pin_it() {
    let vigil = Installed::new();
    let source = vigil.path("download/libexample_loss_ema.so");
    std::fs::create_dir_all(source.parent().unwrap()).unwrap();
    std::fs::copy(built("example-loss-ema"), &source).unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o600)).unwrap();
    let added = vigil.run(&["plugins", "add", source.to_str().unwrap()]);
    assert!(added.status.success(), "{}", stderr(&added));
    let text = stdout(&added);
    let hash = sha256_of(&source);
    let installed = vigil.path("xdg/vigil/plugins/libexample_loss_ema.so");
    assert!(
        text.contains(&format!("sha256: {hash}"))
            && text.contains(&installed.display().to_string()),
        "{text}"
    );
    let metadata = std::fs::metadata(&installed).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o777, 0o644);
    assert_eq!(sha256_of(&installed), hash);

    // The printed lines, used as they are, enable and pin it.
    let lines = text.split_once("[[monitors]]").unwrap().1;
    vigil.write(
        "work/added.toml",
        &config(None, &format!("[[monitors]]{lines}")),
    );
    let trained = vigil.run(&["train", "added.toml"]);
    assert!(trained.status.success(), "{}", stderr(&trained));

    // Not a plugin: refused, nothing installed.
    let junk = vigil.path("download/libjunk.so");
    std::fs::write(&junk, b"\x7fELF not really").unwrap();
    let refused = vigil.run(&["plugins", "add", junk.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(!vigil.path("xdg/vigil/plugins/libjunk.so").exists());
}

#[test]
fn a_legacy_plugin_is_found_by_its_file_name_and_listed_as_loaded_to_read_it() {
    let root = tempfile::tempdir().unwrap();
    let library = crate::resume::build_api_1_0_0_plugin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("legacy");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(&library, plugins.join("libexample_loss_ema.so")).unwrap();
    std::fs::copy(&library, plugins.join("libsomething_else.so")).unwrap();

    let listed = vigil(dir.path(), &["plugins", "--dir", "legacy"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let table = stdout(&listed);
    let row = table
        .lines()
        .find(|line| line.contains("libexample_loss_ema.so"))
        .unwrap();
    assert!(
        row.starts_with("example-loss-ema") && row.ends_with("legacy: identity read by loading"),
        "{table}"
    );
    let not_loaded = vigil(dir.path(), &["plugins", "--dir", "legacy", "--no-load"]);
    assert!(
        stdout(&not_loaded).contains("legacy: no identity record (not loaded)"),
        "{}",
        stdout(&not_loaded)
    );

    let run = config(
        Some("[\"legacy\"]"),
        "[[monitors]]\nname = \"example-loss-ema\"\n",
    );
    std::fs::write(dir.path().join("run.toml"), run).unwrap();
    let checked = vigil(dir.path(), &["check", "run.toml"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(
        stdout(&checked).contains("legacy: no identity record, found by file name"),
        "{}",
        stdout(&checked)
    );
}
