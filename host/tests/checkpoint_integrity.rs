//! Checkpoints whose files changed on disk after they were written: a resume, `--resume auto`
//! and `export-model` find the damage through the checksums in `state.json` and use the
//! newest intact checkpoint, with a warning; with none intact they stop with one clear error.

use std::path::{Path, PathBuf};

use crate::util::{export_model, json, stderr, stdout, vigil};

/// A scripted CNN (batch norm, so `module.pt` carries buffers) trained one epoch of 16 steps
/// on synthetic 12×12 images, a checkpoint at every quarter (steps 4, 8, 12, 16), all kept,
/// with `loss-slope` (monitor state) and `noise` (gradient averages in `host.safetensors`).
fn trained_run(dir: &Path) -> PathBuf {
    let module = dir.join("cnn.pt");
    crate::util::pytorch_fixture(
        "scripted_cnn.py",
        &[
            module.as_os_str(),
            "1".as_ref(),
            "12".as_ref(),
            "4".as_ref(),
        ],
    );
    let config = format!(
        "seed = 4\nepochs = 1\nbatch_size = 32\ndata = \"synthetic\"\nrun_dir = \"run\"\n{}\n\
         [synthetic]\ntrain_size = 512\ntest_size = 64\nclasses = 4\nimage_size = 12\n\
         [model]\nkind = \"torchscript\"\npath = {:?}\n[optim]\nlr = 0.02\n\
         [checkpoint]\nkeep_best = 8\n\
         [[monitors]]\nname = \"loss-slope\"\n[[monitors]]\nname = \"noise\"\n",
        crate::util::plugin_dirs_toml(),
        module.display().to_string()
    );
    std::fs::write(dir.join("run.toml"), config).unwrap();
    let output = vigil(dir, &["train", "run.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    dir.join("run")
}

fn checkpoint(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step_{step:09}"))
}

/// Flip one bit of the byte in the middle of `path`.
fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_flipped_byte_in_any_checkpoint_file_is_caught_and_the_newest_intact_one_used() {
    let dir = tempfile::tempdir().unwrap();
    let original = trained_run(dir.path());
    let newest = checkpoint(&original, 16);
    let state = json(newest.join("state.json"));
    let listed: Vec<String> = state["checksums"]
        .as_object()
        .expect("state.json lists checksums")
        .keys()
        .cloned()
        .collect();
    for kind in [
        "model.safetensors",
        "optimizer.safetensors",
        "host.safetensors",
        "module.pt",
        "monitor-0.state",
    ] {
        assert!(
            listed.iter().any(|name| name == kind),
            "{kind} not in {listed:?}"
        );
    }
    for file in &listed {
        let run = dir.path().join(format!("damaged-{file}"));
        copy_dir(&original, &run);
        flip_middle_byte(&checkpoint(&run, 16).join(file));
        let output = vigil(dir.path(), &["train", "--resume", run.to_str().unwrap()]);
        let (out, err) = (stdout(&output), stderr(&output));
        assert!(output.status.success(), "{file}: {err}");
        assert!(
            err.contains("is damaged") && err.contains(file.as_str()),
            "{file}: no warning naming it: {err}"
        );
        assert!(out.contains("from step 12"), "{file}: {out}");
        let info = json(run.join("run.json"));
        assert_eq!(info["resumed_from_step"], 12, "{file}");
        assert_eq!(info["status"], "completed", "{file}");
        assert!(
            crate::util::strs(&info["warnings"])
                .iter()
                .any(|w| w.contains("is damaged") && w.contains(file.as_str())),
            "{file}: {}",
            info["warnings"]
        );
        // The damaged checkpoint is set aside and written again, intact.
        let aside = run.join("checkpoints").join(".damaged-step_000000016");
        assert!(aside.join(file).is_file(), "{file}");
        assert_eq!(crate::util::trained_to(&run), 16);
        let again = json(checkpoint(&run, 16).join("state.json"));
        assert_eq!(again["global_step"], 16);
    }
}

#[test]
fn resume_auto_and_export_check_checksums_and_none_intact_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained_run(dir.path());
    flip_middle_byte(&checkpoint(&run, 16).join("model.safetensors"));

    // export-model: the last checkpoint falls back to step 12 with a warning; a step named
    // explicitly is refused.
    let out = dir.path().join("model.pt");
    let output = export_model(dir.path(), &run, "last", &out);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("is damaged"),
        "{}",
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("step_000000012"),
        "{}",
        stdout(&output)
    );
    let output = export_model(dir.path(), &run, "step_16", &out);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("model.safetensors") && stderr(&output).contains("CRC-32C"),
        "{}",
        stderr(&output)
    );

    // Every checkpoint damaged: `--resume auto` neither resumes nor starts over.
    for step in [4, 8, 12] {
        flip_middle_byte(&checkpoint(&run, step).join("optimizer.safetensors"));
    }
    let metrics_before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let output = vigil(dir.path(), &["train", "run.toml", "--resume", "auto"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("no intact checkpoint"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(
        std::fs::read(run.join("metrics.jsonl")).unwrap(),
        metrics_before,
        "nothing written"
    );
}
