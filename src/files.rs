//! Private, crash-safe file writes (SPEC §2).
//!
//! Every file the runner writes is written to a temp file in the same
//! directory, fsynced, then moved into place, with mode 0600; directories it
//! creates are 0700. `write_new` is the no-clobber variant (link instead of
//! rename) used where two writers may race for one name. Reading, parsing
//! and locking are left to the modules that own each file.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::random;

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents with mode 0700. An existing
/// directory is left as it is.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Replaces `path` with `bytes`, atomically: readers see the old content or
/// the new, never a mix, even across a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// `write_atomic` with the content streamed by `write` (a large document
/// need not be built in memory first).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = write_temp(path, write, true)?;
    rename_into_place(&tmp, path)?;
    sync_parent(path)
}

/// Writes a private file that lives only while a run goes on (the MCP
/// config, the agent record): complete before its name appears, but not
/// fsynced — after a crash it is worthless anyway and is swept.
pub fn write_ephemeral(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = write_temp(path, |w| w.write_all(bytes), false)?;
    rename_into_place(&tmp, path)
}

fn rename_into_place(tmp: &Path, path: &Path) -> io::Result<()> {
    fs::rename(tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(tmp);
    })
}

/// Writes `bytes` at `path` only if nothing is there yet. Returns `false`
/// (and writes nothing) when the path exists. Readers never see a partial
/// file: the content is complete before the name appears.
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let tmp = write_temp(path, |w| w.write_all(bytes), true)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => sync_parent(path).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes a complete temp file beside `path` (fsynced if `sync`) and
/// returns its name.
fn write_temp(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    sync: bool,
) -> io::Result<PathBuf> {
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", random::hex(8)));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    let mut buffered = io::BufWriter::with_capacity(64 << 10, &file);
    let written = write(&mut buffered)
        .and_then(|()| buffered.flush())
        .and_then(|()| file.set_permissions(fs::Permissions::from_mode(FILE_MODE)))
        .and_then(|()| if sync { file.sync_all() } else { Ok(()) });
    drop(buffered);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Makes a rename or link in `path`'s directory durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(parent(path))?.sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes the temp files (`.<name>.tmp-<random>`) a crashed writer left
/// in `dir`, if older than `age` (a live writer's are seconds old).
pub fn sweep_temps(dir: &Path, age: std::time::Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with('.') && name.contains(".tmp-")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|elapsed| elapsed >= age);
        if old {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The runner's reserve of disk space: a file of zeros it deletes when the
/// disk is full, so that the record of a finished run (state.json) can
/// still be written — without it, the next pass would take the run for
/// interrupted. Made again by a later pass once there is room.
pub const RESERVE_FILE: &str = "reserve";
const RESERVE_BYTES: usize = 4 << 20;

/// Makes `dir`'s reserve if it is missing (best effort).
pub fn ensure_reserve(dir: &Path) {
    let path = dir.join(RESERVE_FILE);
    if path.exists() {
        return;
    }
    let zeros = vec![0u8; RESERVE_BYTES];
    if let Err(e) = write_atomic(&path, &zeros) {
        log::debug!("no disk reserve in {}: {e}", dir.display());
    }
}

/// Gives `dir`'s reserve back to the filesystem; `true` if there was one.
pub fn release_reserve(dir: &Path) -> bool {
    fs::remove_file(dir.join(RESERVE_FILE)).is_ok()
}

/// Whether an error says the disk (or the quota) is full.
pub fn is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || e.raw_os_error() == Some(libc::ENOSPC)
        || e.raw_os_error() == Some(libc::EDQUOT)
}

/// Opens a file for reading only if it is a regular file: a FIFO, a
/// device or a directory (a link to `/dev/zero`, say) is refused at once,
/// without a read that never ends or never stops. Opened non-blocking, so
/// even opening a FIFO cannot hang.
pub fn open_regular(path: &Path) -> io::Result<File> {
    open_regular_sized(path).map(|(file, _)| file)
}

/// `open_regular`, with the file's size when opened.
fn open_regular_sized(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((file, meta.len()))
}

/// Reads a regular file of at most `cap` bytes (see `open_regular`).
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let (file, len) = open_regular_sized(path)?;
    // Sized once for what the file holds now (one read, no regrowth); a
    // file that grows meanwhile is still read to the cap.
    let mut bytes = Vec::with_capacity(usize::try_from(len.min(cap) + 1).unwrap_or(0));
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(io::Error::other(format!(
            "larger than {}, too large to be one of the runner's files",
            size(cap)
        )));
    }
    Ok(bytes)
}

/// `read_capped`, `Ok(None)` if the file does not exist.
pub fn read_optional(path: &Path, cap: u64) -> io::Result<Option<Vec<u8>>> {
    match read_capped(path, cap) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A byte count for messages: "64 KiB", "8 MiB".
pub fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pr-files-{name}-{}", random::hex(6)));
        create_private_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn atomic_write_is_private_and_replaces() {
        let dir = temp_dir("atomic");
        let path = dir.join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // No temp file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn write_new_never_clobbers() {
        let dir = temp_dir("new");
        let path = dir.join("note.md");
        assert!(write_new(&path, b"first").unwrap());
        assert!(!write_new(&path, b"second").unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = temp_dir("capped");
        let path = dir.join("f");
        fs::write(&path, b"12345").unwrap();
        assert_eq!(read_capped(&path, 5).unwrap(), b"12345");
        assert!(
            read_capped(&path, 4)
                .unwrap_err()
                .to_string()
                .starts_with("larger than 4 bytes")
        );
        assert_eq!(read_optional(&dir.join("none"), 9).unwrap(), None);
        let zero = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(
            read_capped(&zero, 1 << 20).unwrap_err().to_string(),
            "not a regular file"
        );
        assert!(read_capped(&dir, 10).is_err());
        assert_eq!(size(64 << 10), "64 KiB");
        assert_eq!(size(8 << 20), "8 MiB");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn created_dirs_are_0700() {
        let dir = temp_dir("dirs");
        let deep = dir.join("a/b");
        create_private_dir(&deep).unwrap();
        assert_eq!(fs::metadata(dir.join("a")).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&deep).unwrap().mode() & 0o777, 0o700);
        fs::remove_dir_all(dir).unwrap();
    }
}
