//! Files a run writes for people and programs to read (histories, models):
//! each is written whole or not at all, so a crash or a reader never sees half.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to a temporary file beside `path`, flushes it to the disk,
/// renames it into place and flushes the directory: after a crash, even of the
/// machine, `path` holds the old bytes or the new ones.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // A directory opened read-only can be synced on Linux; elsewhere this may
        // be refused, and the rename is still atomic.
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}
