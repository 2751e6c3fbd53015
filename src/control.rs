//! The daemon's control socket: `kmsfs status MOUNTPOINT` asks a running mount for its
//! counters. A Unix socket readable by the mount's owner only (0600, in a 0700
//! directory), one request line, one JSON answer line. Also the mount's [`Activity`]
//! counters, which the status answer and `--idle` read.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// How busy the mount is: open handles and the time of the last operation.
#[derive(Debug)]
pub struct Activity {
    open_handles: AtomicUsize,
    last_op_ms: AtomicU64,
    start: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            open_handles: AtomicUsize::new(0),
            last_op_ms: AtomicU64::new(0),
            start: Instant::now(),
        }
    }
}

impl Activity {
    /// An operation happened now.
    pub fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_op_ms.store(now, Ordering::Relaxed);
    }

    /// A file or directory was opened.
    pub fn opened(&self) {
        self.touch();
        self.open_handles.fetch_add(1, Ordering::Relaxed);
    }

    /// A file or directory was closed.
    pub fn closed(&self) {
        self.open_handles.fetch_sub(1, Ordering::Relaxed);
    }

    /// Open files and directories.
    pub fn open_handles(&self) -> usize {
        self.open_handles.load(Ordering::Relaxed)
    }

    /// Time since the last lookup, open, read or write.
    pub fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_op_ms.load(Ordering::Relaxed)))
    }
}

/// Where the control socket of the mount at `mountpoint` lives:
/// `$XDG_RUNTIME_DIR/kmsfs/` (else `/tmp/kmsfs-UID/`), named after the mountpoint.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    let canon = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let hash = hex::encode(&Sha256::digest(canon.as_os_str().as_encoded_bytes())[..12]);
    runtime_dir().join(format!("{hash}.sock"))
}

fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("kmsfs"),
        None => PathBuf::from(format!("/tmp/kmsfs-{}", rustix::process::getuid().as_raw())),
    }
}

/// Serves `stats()` on the control socket of `mountpoint` from a background thread.
/// Returns the socket's path (remove it when the mount ends).
pub fn serve(
    mountpoint: &Path,
    stats: impl Fn() -> Value + Send + 'static,
) -> std::io::Result<PathBuf> {
    let path = socket_path(mountpoint);
    let dir = path.parent().expect("socket path has a directory");
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let _ = std::fs::remove_file(&path); // a stale socket from a daemon that died
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("kmsfs-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_err() {
                    continue;
                }
                let answer = match line.trim() {
                    "status" => stats(),
                    other => serde_json::json!({"error": format!("unknown request {other:?}")}),
                };
                let _ = writeln!(conn, "{answer}");
            }
        })?;
    Ok(path)
}

/// Asks the mount at `mountpoint` for its counters.
pub fn query(mountpoint: &Path) -> std::io::Result<Value> {
    let path = socket_path(mountpoint);
    let mut conn = UnixStream::connect(&path)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"status\n")?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}
