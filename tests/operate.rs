//! Running a volume: `kmsfs status`, a mount from an fstab line through mount(8), the
//! idle timeout, and the systemd unit example started and stopped the way systemd does.

mod common;
mod mountkit;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mountkit::{is_mounted, TestVolume};

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_reports_the_running_daemon() {
    let v = TestVolume::new();
    let _m = v.mount();
    fs::write(v.p("a"), b"1").unwrap();
    fs::read(v.p("a")).unwrap();
    let held = fs::File::open(v.p("a")).unwrap();
    let s = v.status();
    assert!(s["kms"]["generate_data_key"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["kms"]["latency_ms_p50"].is_number(), "{s}");
    assert_eq!(s["open_files"], 1, "{s}");
    assert!(s["key_cache"]["entries"].as_u64().is_some());
    assert_eq!(s["integrity_failures"], 0);
    assert!(s["uptime_s"].is_u64() && s["pid"].is_u64());
    drop(held);
    let text = v.kmsfs(&["status", v.mnt.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("KMS latency:"));
    // The socket is the owner's only.
    let sock = kmsfs::control::socket_path(&v.mnt);
    assert_eq!(
        fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Not a mount: a clear error.
    let out = v.kmsfs(&["status", v.dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not mounted"));
}

#[test]
fn an_fstab_line_mounts_through_mount8() {
    let v = TestVolume::new();
    let fstab = v.dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# kmsfs volume\n{} {} fuse.kmsfs noauto,audit_log={},key_ttl=2m 0 0\n",
            v.cipher.display(),
            v.mnt.display(),
            v.audit.display()
        ),
    )
    .unwrap();
    // mount(8) looks for /sbin/mount.fuse.kmsfs (what scripts/install.sh installs);
    // point it at the binary under test for the length of this test.
    let helper = Path::new("/usr/sbin/mount.fuse.kmsfs");
    let _ = fs::remove_file(helper);
    std::os::unix::fs::symlink(mountkit::bin(), helper).expect("tests run as root");
    struct RemoveHelper<'a>(&'a Path);
    impl Drop for RemoveHelper<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_file(self.0);
        }
    }
    let _remove = RemoveHelper(helper);
    let out = Command::new("mount")
        .args(["-T", fstab.to_str().unwrap(), v.mnt.to_str().unwrap()])
        .env("XDG_DATA_HOME", v.dir.path().join("data"))
        .env("XDG_STATE_HOME", v.dir.path().join("state"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -T failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guard = mountkit::MountGuard {
        mnt: v.mnt.clone(),
        log: v.dir.path().join("none.log"),
    };
    assert!(is_mounted(&v.mnt));
    fs::write(v.p("from-fstab"), b"works").unwrap();
    assert_eq!(fs::read(v.p("from-fstab")).unwrap(), b"works");
    assert!(v
        .audit_records()
        .iter()
        .any(|r| r["event"] == "data_key_generated"));
    drop(guard);
    // A bad option is refused with a clear error.
    let out = v.kmsfs(&[
        v.cipher.to_str().unwrap(),
        v.mnt.to_str().unwrap(),
        "-o",
        "bogus_option",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mount option"));
}

#[test]
fn an_idle_mount_unmounts_itself() {
    let v = TestVolume::new();
    let m = v.mount_with(&["--idle", "1s"]);
    fs::write(v.p("x"), b"1").unwrap();
    wait_until("the idle unmount", || !is_mounted(&v.mnt));
    assert!(m.log().contains("idle for"), "{}", m.log());
}

/// The systemd unit's ExecStart arguments (after the binary) for volume `v`.
fn unit_exec_args(v: &TestVolume) -> (String, Vec<String>) {
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/systemd/kmsfs-backup.service"),
    )
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart line");
    let args = exec
        .split_whitespace()
        .skip(1) // the binary
        .map(|a| {
            a.replace("/srv/backup.enc", v.cipher.to_str().unwrap())
                .replace("/mnt/backup", v.mnt.to_str().unwrap())
                .replace("/var/log/kmsfs/backup.jsonl", v.audit.to_str().unwrap())
        })
        .collect();
    (unit, args)
}

/// Whether process `pid` is gone (reaped or not).
fn gone(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty() || stat.split(' ').nth(2) == Some("Z")
}

/// The pid of the daemon serving the mount of `v` (from `kmsfs status`).
fn daemon_pid(v: &TestVolume) -> u32 {
    v.status()["pid"].as_u64().unwrap() as u32
}

fn kill_hard(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    wait_until("the killed daemon to be gone", || gone(pid));
}

#[test]
fn after_a_killed_daemon_unmount_and_mount_work_again() {
    let v = TestVolume::new();
    let _guard = v.mount();
    fs::write(v.p("kept"), b"written before the kill").unwrap();
    kill_hard(daemon_pid(&v));
    let dead = fs::metadata(&v.mnt).unwrap_err();
    use std::io::ErrorKind::{ConnectionAborted, NotConnected};
    assert!(
        matches!(dead.kind(), NotConnected | ConnectionAborted),
        "{dead}"
    );
    // Mounting again over what is left just works.
    let _again = v.mount();
    assert_eq!(fs::read(v.p("kept")).unwrap(), b"written before the kill");
    // And `kmsfs unmount` cleans up a dead mount.
    kill_hard(daemon_pid(&v));
    let out = v.kmsfs(&["unmount", v.mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&v.mnt), "nothing left mounted");
}

#[test]
fn the_systemd_unit_restarts_after_its_daemon_is_killed() {
    let v = TestVolume::new();
    let (unit, args) = unit_exec_args(&v);
    assert!(unit.contains("Restart=on-failure"));
    let start = || {
        v.command()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let _guard = mountkit::MountGuard {
        mnt: v.mnt.clone(),
        log: v.dir.path().join("none.log"),
    };
    let mut first = start();
    wait_until("the service's mount", || is_mounted(&v.mnt));
    fs::write(v.p("svc"), b"ok").unwrap();
    // The daemon dies (OOM killer, a crash): systemd sees a failure and starts it again.
    let _ = Command::new("kill")
        .args(["-KILL", &first.id().to_string()])
        .status();
    assert!(!first.wait().unwrap().success());
    let mut second = start();
    wait_until("the restarted service's mount", || {
        fs::read(v.p("svc")).is_ok_and(|b| b == b"ok")
    });
    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    assert!(second.wait().unwrap().success());
    assert!(!is_mounted(&v.mnt), "and leaves nothing mounted");
}

#[test]
fn the_systemd_unit_starts_and_stops() {
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/systemd/kmsfs-backup.service"),
    )
    .unwrap();
    if let Ok(out) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/systemd/kmsfs-backup.service"))
        .output()
    {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("Unknown key") && !err.contains("Invalid"),
            "{err}"
        );
    }
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart line");
    assert!(unit.contains("KillSignal=SIGTERM") && exec.contains("--foreground"));
    let v = TestVolume::new();
    let args: Vec<String> = exec
        .split_whitespace()
        .skip(1) // the binary
        .map(|a| {
            a.replace("/srv/backup.enc", v.cipher.to_str().unwrap())
                .replace("/mnt/backup", v.mnt.to_str().unwrap())
                .replace("/var/log/kmsfs/backup.jsonl", v.audit.to_str().unwrap())
        })
        .collect();
    let mut child = v
        .command()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = mountkit::MountGuard {
        mnt: v.mnt.clone(),
        log: v.dir.path().join("none.log"),
    };
    wait_until("the service's mount", || is_mounted(&v.mnt));
    fs::write(v.p("svc"), b"ok").unwrap();
    // systemctl stop: SIGTERM to the main process.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "the daemon exits 0 on SIGTERM: {status}");
    assert!(!is_mounted(&v.mnt), "and leaves nothing mounted");
    drop(guard);
}
