//! Who asked for a key: the uid, gid and pid of the process behind a filesystem request,
//! and its name from `/proc`, for the audit log.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, OnceLock};

/// The process behind a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Open `/proc/PID/comm` files of recent requesters. A process that opens many files is
/// asked for its name once per record with one `pread` instead of open, stat, read and
/// close. The descriptor stays tied to that one process: after it exits (and its pid is
/// reused) the read fails and the file is opened again, and after an `exec` the read
/// returns the new name, so a held descriptor never names the wrong process.
static COMM_FILES: OnceLock<Mutex<HashMap<u32, File>>> = OnceLock::new();

/// Most `comm` descriptors kept open; past this the table starts over.
const MAX_COMM_FILES: usize = 64;

fn read_comm(file: &File) -> Option<String> {
    let mut buf = [0u8; 64];
    let n = file.read_at(&mut buf, 0).ok()?;
    if n == 0 {
        return None;
    }
    Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
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
        let files = COMM_FILES.get_or_init(|| Mutex::new(HashMap::new()));
        let mut files = files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = files.get(&self.pid).and_then(read_comm) {
            return name;
        }
        files.remove(&self.pid);
        let Ok(file) = File::open(format!("/proc/{}/comm", self.pid)) else {
            return "?".into();
        };
        let Some(name) = read_comm(&file) else {
            return "?".into();
        };
        if files.len() >= MAX_COMM_FILES {
            files.clear();
        }
        files.insert(self.pid, file);
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requester(pid: u32) -> Requester {
        Requester {
            uid: 0,
            gid: 0,
            pid,
        }
    }

    /// Asks for `who`'s name until it is `want` (a child names itself once it has exec'd).
    fn name_becomes(who: &Requester, want: &str) -> String {
        let mut name = String::new();
        for _ in 0..500 {
            name = who.process_name();
            if name == want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        name
    }

    #[test]
    fn names_this_process_twice() {
        let me = requester(std::process::id());
        let main = std::fs::read_to_string(format!("/proc/{}/comm", me.pid)).unwrap();
        assert_eq!(me.process_name(), main.trim_end());
        // The second answer comes from the held descriptor.
        assert_eq!(me.process_name(), main.trim_end());
    }

    #[test]
    fn an_exited_process_is_a_question_mark_even_after_being_cached() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let who = requester(child.id());
        assert_eq!(name_becomes(&who, "sleep"), "sleep");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(who.process_name(), "?");
    }

    #[test]
    fn a_cached_descriptor_sees_exec() {
        // `sh -c 'read x; exec sleep 5'`: named sh, then sleep, with the same pid.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exec sleep 5"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let who = requester(child.id());
        assert_eq!(name_becomes(&who, "sh"), "sh");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert_eq!(name_becomes(&who, "sleep"), "sleep");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
