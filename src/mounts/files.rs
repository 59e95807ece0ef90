//! Host files and directories of staged mounts: making them, setting their modes, and
//! removing a whole staging again (read-only trees included). Free space is asked here too.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{MountError, io_err};
use crate::collection::fetch;

/// Remove everything [`stage`](super::stage) made under `run_dir` (the output directory included, so
/// capture it first). Staged collections are read-only on the host, which would stop a
/// plain recursive delete by a non-root user, so directories are made writable first.
pub fn remove_staged(run_dir: &Path) -> Result<(), MountError> {
    if fs::symlink_metadata(run_dir).is_err() {
        return Ok(());
    }
    make_dirs_writable(run_dir)?;
    fs::remove_dir_all(run_dir).map_err(io_err(format!("remove {}", run_dir.display())))
}

fn make_dirs_writable(path: &Path) -> Result<(), MountError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
    if !meta.is_dir() {
        return Ok(());
    }
    set_mode(path, 0o700)?;
    let entries = fs::read_dir(path).map_err(io_err(format!("list {}", path.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("list {}", path.display())))?;
        make_dirs_writable(&entry.path())?;
    }
    Ok(())
}

/// Free bytes for an unprivileged user on the filesystem holding `path`.
pub(super) fn free_bytes(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs only writes into the struct we pass; zeroed is a valid initial value
    // for this plain C struct, and c_path is a NUL-terminated string that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The field types differ between platforms (u32 on some), hence the casts.
    #[allow(clippy::unnecessary_cast)]
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    Ok(free)
}

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<(), MountError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(format!(
        "chmod {:o} {}",
        mode,
        path.display()
    )))
}

/// Set every file under `path` (or `path` itself if a file) to `file_mode`, every
/// directory to `dir_mode`. Children first, so a read-only directory is done last.
pub(super) fn set_tree_mode(path: &Path, file_mode: u32, dir_mode: u32) -> Result<(), MountError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
    if meta.is_dir() {
        let entries = fs::read_dir(path).map_err(io_err(format!("list {}", path.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("list {}", path.display())))?;
            set_tree_mode(&entry.path(), file_mode, dir_mode)?;
        }
        set_mode(path, dir_mode)
    } else {
        set_mode(path, file_mode)
    }
}

pub(super) fn make_dirs(path: &Path) -> Result<(), MountError> {
    fetch::make_dirs(path).map_err(io_err(format!("create {}", path.display())))
}

/// Write a new file (parents made) with exactly `mode`.
pub(super) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), MountError> {
    if let Some(parent) = path.parent() {
        make_dirs(parent)?;
    }
    fs::write(path, data).map_err(io_err(format!("write {}", path.display())))?;
    set_mode(path, mode)
}
