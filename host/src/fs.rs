//! File-system primitives that keep what a run has written whole across crashes and power
//! loss: atomic replacement, durable directories, and cutting an appended file back to a
//! recorded length. Used by the trainer (checkpoints, `run.json`, `metrics.jsonl`) and by the
//! plugin host (monitor artifacts).

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Write `bytes` to `path` so that readers see either the old file or the whole new one, and
/// so that the new file survives power loss once this returns: write a temporary file beside
/// it, fsync it, rename it over the target, then fsync the directory (which makes the rename
/// itself durable).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with_mode(path, bytes, None)
}

/// [`write_atomically`], giving the new file exactly `mode` (whatever the umask) when one is
/// given. The temporary file is created anew, never through an existing name or symlink.
pub fn write_atomically_with_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    let result = (|| {
        let _ = std::fs::remove_file(&temporary);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.unwrap_or(0o666))
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temporary)?;
        if let Some(mode) = mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&temporary);
        Error::io(path, source)
    })?;
    sync_parent(path)
}

/// fsync a file that was written by other code (e.g. libtorch's safetensors writer).
pub fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|source| Error::io(path, source))
}

/// fsync a directory, so that the entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| Error::io(dir, source))
}

/// fsync the directory holding `path`.
pub fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Cut the file at `path` back to `length` bytes if it is longer (a resumed run drops what
/// was appended after its checkpoint), and make the cut durable. A missing file is created
/// empty when `length` is 0 and is an error otherwise.
pub fn cut_back(path: &Path, length: u64) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(length == 0)
        .truncate(false)
        .open(path)
        .map_err(|source| Error::io(path, source))?;
    let current = file
        .metadata()
        .map_err(|source| Error::io(path, source))?
        .len();
    if current < length {
        return Err(Error::DataCorrupt {
            path: path.to_path_buf(),
            reason: format!(
                "is {current} bytes long, shorter than the {length} bytes the checkpoint recorded; \
                 the run directory was changed after the checkpoint was written"
            ),
        });
    }
    if current > length {
        file.set_len(length)
            .and_then(|()| file.sync_all())
            .map_err(|source| Error::io(path, source))?;
    }
    Ok(())
}

/// Open (creating it, mode 0644, never through a symlink) `path` and take an exclusive `flock`
/// on it without waiting: the file holding the lock, or `None` when another process holds it.
pub fn try_lock_exclusive(path: &Path) -> Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| Error::io(path, source))?;
    // A watcher's probe ([`is_locked`]: the dashboard, a study's status) holds a shared lock
    // for microseconds; one that lands on this instant must not look like another training
    // process, so a refusal is tried again for 100 ms before it counts.
    for attempt in 0..LOCK_ATTEMPTS {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(file));
        }
        if attempt + 1 < LOCK_ATTEMPTS {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    Ok(None)
}

/// Tries of [`try_lock_exclusive`], 10 ms apart.
const LOCK_ATTEMPTS: u32 = 10;

/// Whether some process holds an exclusive lock on `path` (it exists and `flock` with
/// `LOCK_NB` fails). The probe holds a shared lock for a moment; [`try_lock_exclusive`] tries
/// again for a while, so that a watcher's probe never makes a starting run find itself busy.
pub fn is_locked(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; a shared, non-blocking request.
    let got = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if got == 0 {
        // SAFETY: as above; releases what we just took.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        false
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_flock_is_seen() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        assert!(!is_locked(&path));
        let file = std::fs::File::create(&path).unwrap();
        assert!(!is_locked(&path));
        // SAFETY: flock on our own descriptor.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
        assert!(is_locked(&path));
        drop(file);
        assert!(!is_locked(&path));
    }

    #[test]
    fn a_watchers_brief_probe_does_not_make_the_lock_busy() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        std::fs::write(&path, "").unwrap();
        let probe = std::fs::File::open(&path).unwrap();
        // SAFETY: flock on our own descriptor.
        assert_eq!(unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_SH) }, 0);
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            drop(probe);
        });
        let held = try_lock_exclusive(&path).unwrap();
        release.join().unwrap();
        assert!(held.is_some(), "a 30 ms shared probe is waited out");
        assert!(
            try_lock_exclusive(&path).unwrap().is_none(),
            "a lock really held is still refused"
        );
    }

    #[test]
    fn atomic_write_replaces_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn cut_back_drops_the_tail_and_refuses_a_shorter_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.jsonl");
        std::fs::write(&path, b"one\ntwo\nthree\n").unwrap();
        cut_back(&path, 8).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
        cut_back(&path, 8).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
        let err = cut_back(&path, 100).unwrap_err().to_string();
        assert!(err.contains("shorter than the 100 bytes"), "{err}");
        let missing = dir.path().join("new.csv");
        cut_back(&missing, 0).unwrap();
        assert_eq!(std::fs::read(&missing).unwrap(), b"");
        assert!(cut_back(&dir.path().join("gone.csv"), 5).is_err());
    }
}
