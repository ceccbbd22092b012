//! `vigil.log`: the console's lines and debug detail in the run directory, in the documented
//! format, rotated by size into gzip files of which `log_backups` are kept.

use std::io::Read;

use crate::util::{stderr, vigil, TINY_SYNTHETIC};

/// `[YYYY-MM-DD HH:MM:SS.mmm] [LEVEL] [module] message`.
fn well_formed(line: &str) -> bool {
    let bytes = line.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    line.len() > 30
        && bytes[0] == b'['
        && digits(1..5)
        && bytes[5] == b'-'
        && digits(6..8)
        && bytes[11] == b' '
        && digits(12..14)
        && bytes[20] == b'.'
        && digits(21..24)
        && line[24..].starts_with("] [")
        && ["INFO] [", "DEBUG] [", "WARN] [", "ERROR] ["]
            .iter()
            .any(|level| line[27..].starts_with(level))
        && line[27..].contains("] ")
}

fn gunzip(path: &std::path::Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    text
}

#[test]
fn the_run_log_keeps_console_and_debug_lines_and_rotates_into_gzip_backups() {
    let dir = tempfile::tempdir().unwrap();
    // A log of about 630 bytes per file (the run writes some 3 KB), two rotated copies kept.
    let config = TINY_SYNTHETIC.replace(
        "seed = 1\n",
        "seed = 1\nrun_dir = \"run\"\nlog_max_mb = 0.0006\nlog_backups = 2\n",
    );
    std::fs::write(dir.path().join("run.toml"), config).unwrap();
    let output = vigil(dir.path(), &["train", "run.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let run = dir.path().join("run");

    let current = std::fs::read_to_string(run.join("vigil.log")).unwrap();
    let rotated = [run.join("vigil.log.1.gz"), run.join("vigil.log.2.gz")];
    for path in &rotated {
        assert!(path.is_file(), "{} is missing", path.display());
    }
    assert!(
        !run.join("vigil.log.3.gz").exists(),
        "only log_backups = 2 copies are kept"
    );
    let mut files = vec![current.clone()];
    files.extend(rotated.iter().map(|path| gunzip(path)));
    for text in &files {
        assert!(!text.is_empty());
        // A file is rotated once it passes the limit: at most one line beyond it.
        let longest = text.lines().map(str::len).max().unwrap() + 1;
        assert!(text.len() <= 630 + longest, "{} bytes", text.len());
        for line in text.lines() {
            assert!(well_formed(line), "not in the log format: {line:?}");
        }
    }
    // The newest lines are in vigil.log, then .1, then .2; together they end with the run.
    assert!(current.contains("done: epoch 2"), "{current}");
    let all: String = files.iter().rev().cloned().collect();
    assert!(all.contains("[INFO] [console] epoch 2/2"), "{all}");
    assert!(
        all.contains("[DEBUG] [train::resume] checkpoint at step"),
        "{all}"
    );

    // The lines printed before the run directory existed are in the first file written,
    // which rotation has dropped here; a run with no rotation keeps them.
    let config = TINY_SYNTHETIC.replace("seed = 1\n", "seed = 1\nrun_dir = \"whole\"\n");
    std::fs::write(dir.path().join("whole.toml"), config).unwrap();
    let output = vigil(dir.path(), &["train", "whole.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let whole = std::fs::read_to_string(dir.path().join("whole/vigil.log")).unwrap();
    let first = whole.lines().next().unwrap();
    assert!(
        first.contains("[INFO] [console] data: synthetic"),
        "{whole}"
    );
    assert!(whole.contains("[INFO] [console] run directory:"), "{whole}");
    assert!(!dir.path().join("whole/vigil.log.1.gz").exists());
}
