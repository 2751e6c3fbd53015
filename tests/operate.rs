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
use serde_json::Value;

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
    let out = v.kmsfs(&["status", v.mnt.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
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
