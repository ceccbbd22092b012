//! Opening a plugin file once, checking who may change it, and hashing the very bytes that
//! will be loaded.
//!
//! A library is opened once. Owner and permissions are checked on that open descriptor (and on
//! its directory's), its bytes are read from the descriptor and hashed, and those bytes, not
//! the path, are what [`SealedCopy`] hands to the dynamic loader: a sealed in-memory file that
//! nobody can change. Replacing or rewriting the file on disk after the hash changes nothing
//! that is loaded.

use std::fmt::Write as _;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::elf::{self, Inspection};

/// A plugin file, open, whose owner and permissions passed (unless insecure plugins are
/// allowed).
#[derive(Debug)]
pub struct OpenFile {
    pub path: PathBuf,
    file: File,
    metadata: Metadata,
}

/// The bytes of an [`OpenFile`], their hash, and what they say about themselves.
pub struct CheckedBytes {
    pub path: PathBuf,
    pub sha256: String,
    pub inspection: Inspection,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for CheckedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedBytes")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("inspection", &self.inspection)
            .finish_non_exhaustive()
    }
}

/// The largest file read as a plugin library: a debug build of the largest shipped monitor
/// is about 50 MB.
const MAX_LIBRARY_BYTES: u64 = 1 << 30;

/// Why a file was refused: the reason, and its hash when it was read.
pub type Refusal = (String, Option<String>);

impl OpenFile {
    /// Open `path` for reading (never blocking on a FIFO) and check the open file and its
    /// directory: a regular file; unless `allow_insecure`, both owned by you, root or the
    /// owner of the vigil executable, and writable by no one else.
    pub fn open(path: &Path, allow_insecure: bool) -> Result<OpenFile, String> {
        let file = OpenFile::open_unchecked(path)?;
        if !allow_insecure {
            file.check_trust(true)?;
        }
        Ok(file)
    }

    /// [`OpenFile::open`] checking the file but not its directory: for a file that is only
    /// copied (`vigil plugins add`), never loaded from where it is.
    pub fn open_file_only(path: &Path) -> Result<OpenFile, String> {
        let file = OpenFile::open_unchecked(path)?;
        file.check_trust(false)?;
        Ok(file)
    }

    /// Open `path` for reading, checking only that it is a regular file. Reading it (its ELF
    /// record) runs nothing; whether it may be loaded is [`OpenFile::check_trust`]'s call.
    pub fn open_unchecked(path: &Path) -> Result<OpenFile, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::NotFound => "file not found".to_string(),
                _ => format!("cannot open: {err}"),
            })?;
        let metadata = file
            .metadata()
            .map_err(|err| format!("cannot stat: {err}"))?;
        if !metadata.file_type().is_file() {
            return Err("not a regular file".into());
        }
        Ok(OpenFile {
            path: path.to_path_buf(),
            file,
            metadata,
        })
    }

    /// Refuse the open file, and with `directory` its directory, when someone other than
    /// you, root or the owner of the vigil executable could change it.
    pub fn check_trust(&self, directory: bool) -> Result<(), String> {
        if let Some(reason) = untrusted(&self.metadata, "plugin file", &self.path) {
            return Err(reason);
        }
        if directory {
            let parent = self
                .path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            let mut directories = vec![parent];
            // A symbolic link: the directory of the file it leads to, too.
            let is_link = std::fs::symlink_metadata(&self.path)
                .is_ok_and(|metadata| metadata.file_type().is_symlink());
            if is_link {
                if let Some(real) = std::fs::canonicalize(&self.path)
                    .ok()
                    .and_then(|real| real.parent().map(Path::to_path_buf))
                {
                    directories.push(real);
                }
            }
            for dir in directories {
                let metadata = File::open(&dir)
                    .and_then(|handle| handle.metadata())
                    .map_err(|err| {
                        format!("cannot check its directory {}: {err}", dir.display())
                    })?;
                if let Some(reason) = untrusted(&metadata, "plugin directory", &dir) {
                    return Err(reason);
                }
            }
        }
        Ok(())
    }

    /// The identity the file's ELF record gives, read on demand from the descriptor (a
    /// search reads a few pages of each library, not the whole file).
    pub fn inspect(&self) -> Result<Inspection, String> {
        let cache = object::read::ReadCache::new(&self.file);
        elf::inspect(&cache)
    }

    /// Read every byte from the descriptor (from offset 0) and hash them; the record is read
    /// again from these bytes.
    pub fn read(self) -> Result<CheckedBytes, Refusal> {
        if self.metadata.len() > MAX_LIBRARY_BYTES {
            return Err((
                format!(
                    "{} bytes: too large to be a plugin library (the limit is {} MiB)",
                    self.metadata.len(),
                    MAX_LIBRARY_BYTES >> 20
                ),
                None,
            ));
        }
        let mut bytes = Vec::with_capacity(self.metadata.len() as usize);
        let mut reader = &self.file;
        // The descriptor was opened non-blocking; a regular file reads the same either way.
        std::io::Seek::rewind(&mut reader).map_err(|err| (format!("cannot read: {err}"), None))?;
        reader
            .read_to_end(&mut bytes)
            .map_err(|err| (format!("cannot read: {err}"), None))?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let inspection =
            elf::inspect(&bytes[..]).map_err(|reason| (reason, Some(sha256.clone())))?;
        Ok(CheckedBytes {
            path: self.path,
            sha256,
            inspection,
            bytes,
        })
    }
}

impl CheckedBytes {
    /// The bytes, for a copy that `vigil plugins add` installs.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A sealed in-memory copy of the bytes, for the dynamic loader.
    pub fn sealed_copy(&self) -> std::io::Result<SealedCopy> {
        SealedCopy::new(&self.path, &self.bytes)
    }
}

/// A sealed memory file holding a library's checked bytes: no write, grow or shrink is
/// possible any more, so what the loader maps is what was hashed.
#[derive(Debug)]
pub struct SealedCopy {
    fd: OwnedFd,
}

impl SealedCopy {
    fn new(path: &Path, bytes: &[u8]) -> std::io::Result<SealedCopy> {
        let stem = path
            .file_name()
            .map(|name| name.to_string_lossy().replace(['/', '\0'], "_"))
            .unwrap_or_default();
        let name = std::ffi::CString::new(format!("vigil-plugin:{stem}"))
            .unwrap_or_else(|_| c"vigil-plugin".to_owned());
        // MFD_EXEC (Linux 6.3+) keeps the copy mappable as code where the system default is
        // no-exec memory files; older kernels reject the flag, so fall back without it.
        const MFD_EXEC: libc::c_uint = 0x0010;
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // SAFETY: `name` is a valid C string for the duration of the call.
        let mut raw = unsafe { libc::memfd_create(name.as_ptr(), flags | MFD_EXEC) };
        if raw < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // SAFETY: as above.
            raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        }
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut file = File::from(fd);
        std::io::Write::write_all(&mut file, bytes)?;
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: plain fcntl on a descriptor we own.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SealedCopy { fd: file.into() })
    }

    /// Keep the descriptor open for the life of the process, as the library mapped from it.
    pub fn keep_open(self) {
        std::mem::forget(self.fd);
    }

    /// The path the dynamic loader opens: this process's view of the sealed descriptor.
    pub fn loader_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// Why a file or directory others could change must not be trusted, or `None`. Trusted
/// owners: you, root, and whoever owns the vigil executable (who could replace vigil itself).
pub fn untrusted(metadata: &Metadata, what: &str, path: &Path) -> Option<String> {
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mode = metadata.mode() & 0o7777;
    let owner = metadata.uid();
    let exe_owner = std::env::current_exe()
        .ok()
        .and_then(|exe| std::fs::metadata(exe).ok())
        .map(|exe| exe.uid());
    let fix = "or set allow_insecure_plugins = true if you trust everyone who can";
    if owner != uid && owner != 0 && Some(owner) != exe_owner {
        return Some(format!(
            "{what} {} is owned by uid {owner}, not by you (uid {uid}), root or the owner of vigil: \
             that user could change the code vigil runs; copy it somewhere of yours \
             (`vigil plugins add`), {fix}",
            path.display()
        ));
    }
    if mode & 0o002 != 0 {
        return Some(format!(
            "{what} {} is world-writable (mode {mode:o}): anyone could replace the code vigil runs; \
             `chmod o-w` it, {fix}",
            path.display()
        ));
    }
    if mode & 0o020 != 0 && metadata.gid() != gid {
        return Some(format!(
            "{what} {} is writable by group {} (mode {mode:o}), not your group: its members could \
             replace the code vigil runs; `chmod g-w` it, {fix}",
            path.display(),
            metadata.gid()
        ));
    }
    None
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_file_and_a_fifo_are_refused_plainly() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            OpenFile::open(&dir.path().join("libnone.so"), false).unwrap_err(),
            "file not found"
        );
        let fifo = dir.path().join("libfifo.so");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        assert_eq!(
            OpenFile::open(&fifo, false).unwrap_err(),
            "not a regular file"
        );
    }

    #[test]
    fn world_and_foreign_group_writable_files_and_directories_are_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libopen.so");
        std::fs::write(&path, b"junk").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let reason = OpenFile::open(&path, false).unwrap_err();
        assert!(
            reason.starts_with("plugin file") && reason.contains("world-writable (mode 666)"),
            "{reason}"
        );
        assert!(OpenFile::open(&path, true).is_ok());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(OpenFile::open(&path, false).is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let reason = OpenFile::open(&path, false).unwrap_err();
        assert!(reason.starts_with("plugin directory"), "{reason}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

        // A link from a trusted directory to a file in an untrusted one is refused too.
        let elsewhere = tempfile::tempdir().unwrap();
        let link_dir = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("libreal.so");
        std::fs::write(&target, b"junk").unwrap();
        let link = link_dir.path().join("libreal.so");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(OpenFile::open(&link, false).is_ok());
        std::fs::set_permissions(elsewhere.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let reason = OpenFile::open(&link, false).unwrap_err();
        assert!(
            reason.starts_with("plugin directory") && reason.contains("world-writable"),
            "{reason}"
        );
        std::fs::set_permissions(elsewhere.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

        // Group-writable is fine for your own group (user private groups), not for another.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        // SAFETY: getegid cannot fail.
        let own_group = metadata.gid() == unsafe { libc::getegid() };
        assert_eq!(OpenFile::open(&path, false).is_ok(), own_group);
    }

    #[test]
    fn the_sealed_copy_holds_the_hashed_bytes_and_cannot_be_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libdata.so");
        std::fs::write(&path, b"original bytes").unwrap();
        let bytes = CheckedBytes {
            path: path.clone(),
            sha256: String::new(),
            inspection: Inspection { identity: None },
            bytes: std::fs::read(&path).unwrap(),
        };
        let copy = bytes.sealed_copy().unwrap();
        std::fs::write(&path, b"changed on disk").unwrap();
        assert_eq!(
            std::fs::read(copy.loader_path()).unwrap(),
            b"original bytes"
        );
        let writable = std::fs::OpenOptions::new()
            .write(true)
            .open(copy.loader_path());
        let refused = match writable {
            Err(_) => true,
            Ok(mut file) => std::io::Write::write_all(&mut file, b"x").is_err(),
        };
        assert!(refused, "a sealed copy must refuse writes");
    }
}
