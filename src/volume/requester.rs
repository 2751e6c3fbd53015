//! Who asked for a key: the uid, gid and pid of the process behind a filesystem request,
//! and its name from `/proc`, for the audit log.

/// The process behind a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Requester {
    /// This process (for tools that open files themselves, like `fsck` and `decrypt`).
    pub fn current() -> Self {
        let meta = std::fs::metadata("/proc/self").ok();
        use std::os::unix::fs::MetadataExt;
        Self {
            uid: meta.as_ref().map(|m| m.uid()).unwrap_or(0),
            gid: meta.as_ref().map(|m| m.gid()).unwrap_or(0),
            pid: std::process::id(),
        }
    }

    /// The process name (`/proc/PID/comm`), or "?" once it has exited.
    pub fn process_name(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_else(|_| "?".into())
    }
}
