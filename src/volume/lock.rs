//! One user of a volume at a time: the mount daemon, and the offline tools that change a
//! volume, hold an exclusive `flock` on `.kmsfs-lock` at the top of the ciphertext
//! directory for as long as they run (`docs/cli.md`, "One mount per volume").
//!
//! The lock is the kernel's, so it goes with the process: a daemon that is killed frees it
//! at once, and nothing stale is left to clean by hand. The file also says who holds it
//! (host, pid, what, since), so a refusal names the holder, and a lock left by another
//! host (shared storage whose locks do not reach across hosts) is reported.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name; `.kmsfs-` names are internal, so the mount never shows it.
pub const LOCK_NAME: &str = ".kmsfs-lock";

/// Why a volume could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: the volume is in use by {holder}; one mount or changing tool at a time (unmount it first with `kmsfs unmount MOUNTPOINT`, or wait for the tool to finish)", .cipherdir.display())]
    InUse { cipherdir: PathBuf, holder: String },
    #[error("cannot lock the volume ({})", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An exclusive hold on a volume, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct VolumeLock {
    file: Option<File>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// How long a taker waits for a holder to let go: long enough for a daemon that is
/// finishing an unmount (`kmsfs unmount` returns before it exits) to end.
const WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn wait_for_lock(file: &File) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(std::io::Error::from)
        {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl VolumeLock {
    /// Takes the lock of the volume at `cipherdir` for `what` (as it should read in
    /// another user's error: "kmsfs mount at /mnt/x", "kmsfs rekey"), or says who holds it.
    pub fn acquire(cipherdir: &Path, what: &str) -> Result<Self, LockError> {
        let path = cipherdir.join(LOCK_NAME);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // Readable by all: the holder's pid is what another user needs to be told.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            // Whoever can write the ciphertext directory could plant a link or a FIFO here.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(io)?;
        if !file.metadata().map_err(io)?.is_file() {
            return Err(io(std::io::Error::other(
                "not a regular file: remove it (kmsfs makes it again)",
            )));
        }
        let locked = wait_for_lock(&file);
        let mut before = String::new();
        let _ = file.read_to_string(&mut before);
        match locked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let holder = before.trim();
                return Err(LockError::InUse {
                    cipherdir: cipherdir.into(),
                    holder: if holder.is_empty() {
                        "another process (it has not said which yet)".into()
                    } else {
                        holder.into()
                    },
                });
            }
            Err(e) => return Err(io(e)),
        }
        let here = hostname();
        let before = before.trim();
        if !before.is_empty() && !before.contains(&format!(" on host {here} ")) {
            tracing::warn!(
                "{}: the volume was last used by {before} and not released: that host crashed, \
                 or it still has the volume mounted on shared storage whose locks do not reach \
                 across hosts (docs/cli.md, \"One mount per volume\"); if it does, unmount it \
                 there before writing here",
                cipherdir.display()
            );
        }
        let since = crate::kms::clock::rfc3339(std::time::SystemTime::now());
        let record = format!(
            "pid {} ({what}) on host {here} since {since}\n",
            std::process::id()
        );
        (|| {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(record.as_bytes())
        })()
        .map_err(io)?;
        Ok(Self { file: Some(file) })
    }
}

impl Drop for VolumeLock {
    fn drop(&mut self) {
        // Cleared before the lock goes, so a record left behind means a holder that died.
        if let Some(file) = self.file.take() {
            let _ = file.set_len(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = VolumeLock::acquire(dir.path(), "kmsfs mount at /mnt/a").unwrap();
        let err = VolumeLock::acquire(dir.path(), "kmsfs rekey").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "pid {} (kmsfs mount at /mnt/a)",
                std::process::id()
            )),
            "{msg}"
        );
        drop(first);
        let body = std::fs::read_to_string(dir.path().join(LOCK_NAME)).unwrap();
        assert_eq!(body, "", "a clean release leaves no holder named");
        VolumeLock::acquire(dir.path(), "kmsfs rekey").unwrap();
    }

    #[test]
    fn a_planted_link_or_fifo_is_refused_and_its_target_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(LOCK_NAME)).unwrap();
        assert!(matches!(
            VolumeLock::acquire(dir.path(), "t"),
            Err(LockError::Io { .. })
        ));
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        std::fs::remove_file(dir.path().join(LOCK_NAME)).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            dir.path().join(LOCK_NAME),
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        assert!(VolumeLock::acquire(dir.path(), "t").is_err());
    }
}
