//! Every kmsfs process that holds key material is non-dumpable and leaves no core, a
//! failed `mlock` is reported once, and the daemon's log is private (issue 21). These need
//! root (to run a process as another user, and to take `CAP_IPC_LOCK` away); as anyone
//! else they say so and pass.

mod mountkit;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use mountkit::{bin, TestVolume};

fn root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: needs root");
    }
    root
}

/// The soft core-file limit of process `pid`, from /proc/PID/limits.
fn core_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .to_owned();
    line.split_whitespace().nth(4).unwrap().to_owned()
}

/// Kills the child on drop, whatever happened.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_local_kms_server_is_non_dumpable_even_to_its_own_user_and_has_no_core_limit() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // As nobody: a process its own user may not dump has its /proc files owned by root.
    let state = dir.path().join("state.json");
    let args = ["kms", "serve", "--listen", "127.0.0.1:0", "--state"].map(OsStr::new);
    let mut child = as_nobody(dir.path(), &[&args[..], &[state.as_os_str()]].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let child = Reap(child);
    assert!(first.starts_with("listening on"), "{first}");
    let pid = child.0.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t65534")),
        "{status}"
    );
    let owner = std::fs::metadata(format!("/proc/{pid}/environ"))
        .unwrap()
        .uid();
    assert_eq!(
        owner, 0,
        "kms serve is dumpable: its own user may ptrace it"
    );
    assert_eq!(core_limit(pid), "0");
}

/// `kmsfs ARGS` as nobody, with the core-file limit raised, its XDG directories in `dir`.
fn as_nobody(dir: &std::path::Path, args: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new("prlimit");
    c.args([
        "--core=unlimited",
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
    ])
    .args(["--clear-groups", bin()])
    .args(args)
    .env("XDG_DATA_HOME", dir.join("data"))
    .env("XDG_STATE_HOME", dir.join("state"));
    c
}

#[test]
fn an_offline_tool_holding_a_key_is_non_dumpable_and_has_no_core_limit() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (cipher, src) = (dir.path().join("cipher"), dir.path().join("src"));
    for args in [
        vec![OsStr::new("init"), cipher.as_os_str()],
        vec![OsStr::new("import"), src.as_os_str(), cipher.as_os_str()],
    ] {
        if args[0] == "import" {
            std::fs::create_dir(&src).unwrap();
            std::fs::write(src.join("big"), vec![7u8; 4 << 20]).unwrap();
            std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = as_nobody(dir.path(), &args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let big = std::fs::read_dir(&cipher)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() > 4 << 20)
        .unwrap();
    // Its stdout a pipe nobody reads: it stops, with the file's key, once the pipe is full.
    let mut child = as_nobody(dir.path(), &[OsStr::new("decrypt"), big.as_os_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let child = Reap(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // prlimit and setpriv exec into kmsfs: the same pid. Wait until it blocks on the pipe.
    let pid = child.0.id();
    loop {
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if wchan.contains("pipe") && exe.ends_with("kmsfs") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "decrypt never blocked on its pipe"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let owner = std::fs::metadata(format!("/proc/{pid}/environ"))
        .unwrap()
        .uid();
    assert_eq!(owner, 0, "decrypt is dumpable: its own user may ptrace it");
    assert_eq!(core_limit(pid), "0");
    drop(out);
}

/// Runs `kmsfs` as root without `CAP_IPC_LOCK` and with no locked memory allowed, so that
/// every `mlock` fails.
fn without_mlock(v: &TestVolume) -> Command {
    let mut c = Command::new("prlimit");
    c.args([
        "--memlock=0:0",
        "setpriv",
        "--bounding-set=-ipc_lock",
        "--inh-caps=-ipc_lock",
    ])
    .arg(bin())
    .env("XDG_DATA_HOME", v.dir.path().join("data"))
    .env("XDG_STATE_HOME", v.dir.path().join("state"));
    c
}

#[test]
fn a_failed_mlock_is_reported_once_and_counted_by_status() {
    if !root() {
        return;
    }
    let v = TestVolume::new();
    let m = v.mount();
    for i in 0..20 {
        std::fs::write(v.p(&format!("f{i}")), b"x").unwrap();
    }
    m.unmount();
    let out = without_mlock(&v)
        .arg("fsck")
        .arg(&v.cipher)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("cannot lock key memory into RAM").count(),
        1,
        "not reported exactly once:\n{err}"
    );

    let log = v.dir.path().join("daemon.log");
    std::fs::write(&log, b"").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = without_mlock(&v)
        .args(["mount", v.cipher.to_str().unwrap(), v.mnt.to_str().unwrap()])
        .arg("--audit-log")
        .arg(&v.audit)
        .arg("--log-file")
        .arg(&log)
        .output()
        .unwrap();
    let _guard = mountkit::MountGuard {
        mnt: v.mnt.clone(),
        log: log.clone(),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..20 {
        assert_eq!(std::fs::read(v.p(&format!("f{i}"))).unwrap(), b"x");
    }
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the daemon's log names plaintext paths");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("cannot lock key memory into RAM").count(),
        1,
        "{text}"
    );
    let status = v.status();
    assert!(
        status["keys_not_locked_in_ram"].as_u64().unwrap() > 0,
        "{status}"
    );
}
