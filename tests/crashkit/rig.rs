//! A kmsfs volume set up to crash: its ciphertext directory inside a `Disk` (an ext4 that
//! can lose power) or a plain temporary directory, while the local KMS's keys, the audit
//! log and the daemon's log stay on the host (XDG directories in the temporary directory),
//! since a power cut of the volume's disk must not touch the keys. It mounts with the
//! binary under test (`KMSFS_BIN`), kills the daemon, cuts the power, and mounts again.
//!
//! Dropping a `Rig` takes everything down in order, also when a test panics: the kmsfs
//! mount, then the ext4, then the loop device, then the temporary directory and image.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::disk::Disk;

/// The kmsfs binary under test: `KMSFS_BIN` (to run the tests against another build),
/// else the one Cargo built for these tests.
pub fn bin() -> String {
    std::env::var("KMSFS_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_kmsfs").to_owned())
}

/// The format version crash volumes are made with: `KMSFS_CRASH_FORMAT`, else 4 (the one
/// that keeps every block through a power cut).
pub fn format_wanted() -> u16 {
    std::env::var("KMSFS_CRASH_FORMAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

pub struct Rig {
    pub cipher: PathBuf,
    pub mnt: PathBuf,
    pub audit: PathBuf,
    pub log: PathBuf,
    /// The daemon serving the mount, while there is one.
    pub pid: Option<u32>,
    /// The format version the volume was made with ([`format_wanted`]), or 0 for the
    /// binary's default where it has no such version. From version 3 a block being written
    /// when the daemon dies reads as its old or new content, so the kill checks hold every
    /// block to that; from version 4 also when the power is cut.
    pub format: u16,
    // Dropped in this order, after `Drop for Rig` has unmounted kmsfs.
    pub disk: Option<Disk>,
    pub host: tempfile::TempDir,
}

impl Rig {
    /// A new volume inside a fresh ext4 of its own, of format [`format_wanted`] when the
    /// binary has it (else the default), with `init_args` passed on to `kmsfs init`.
    pub fn on_ext4(init_args: &[&str]) -> Rig {
        Self::on_ext4_blocks(4096, init_args)
    }

    /// [`Rig::on_ext4`] on an ext4 with blocks of `block` bytes.
    pub fn on_ext4_blocks(block: u32, init_args: &[&str]) -> Rig {
        let host = tempfile::tempdir().unwrap();
        let disk = Disk::with_blocks(host.path(), block);
        let cipher = disk.mnt.join("vol");
        Self::init(host, Some(disk), cipher, init_args)
    }

    /// A new volume in a plain temporary directory (for tests that kill commands, not
    /// the power).
    pub fn on_dir(init_args: &[&str]) -> Rig {
        let host = tempfile::tempdir().unwrap();
        let cipher = host.path().join("cipher");
        Self::init(host, None, cipher, init_args)
    }

    fn init(host: tempfile::TempDir, disk: Option<Disk>, cipher: PathBuf, args: &[&str]) -> Rig {
        let mnt = host.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut rig = Rig {
            cipher,
            mnt,
            audit: host.path().join("audit.jsonl"),
            log: host.path().join("daemon.log"),
            pid: None,
            format: 0,
            disk,
            host,
        };
        let cipher = rig.cipher.to_str().unwrap().to_owned();
        let want = format_wanted();
        let made = rig.kmsfs(
            &[
                &["init", &cipher, "--format-version", &want.to_string()],
                args,
            ]
            .concat(),
        );
        if made.status.success() {
            rig.format = want;
            return rig;
        }
        // Exit status 2: a usage error, this binary has no such format version (yet). The
        // volume is made in the default format, and the strict block checks stay off.
        assert_eq!(made.status.code(), Some(2), "{}", stderr(&made));
        let out = rig.kmsfs(&[&["init", &cipher], args].concat());
        assert!(out.status.success(), "init failed: {}", stderr(&out));
        rig
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("XDG_DATA_HOME", self.host.path().join("data"))
            .env("XDG_STATE_HOME", self.host.path().join("state"))
            .env("KMSFS_LOG", "info");
        c
    }

    pub fn kmsfs(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs `kmsfs args`, panicking with its stderr unless it succeeds; its stdout.
    pub fn kmsfs_ok(&self, args: &[&str]) -> String {
        let out = self.kmsfs(args);
        assert!(
            out.status.success(),
            "kmsfs {args:?} failed ({}): {}",
            out.status,
            stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Mounts (the background daemon, as `kmsfs mount` starts it). Also what mounts again
    /// after the daemon was killed: `kmsfs mount` itself detaches a dead mount.
    pub fn mount(&mut self) {
        if let Err(e) = self.try_mount() {
            panic!("{e}");
        }
    }

    /// `mount`, or why it failed.
    pub fn try_mount(&mut self) -> Result<(), String> {
        let out = self.kmsfs(&[
            "mount",
            self.cipher.to_str().unwrap(),
            self.mnt.to_str().unwrap(),
            "--audit-log",
            self.audit.to_str().unwrap(),
            "--log-file",
            self.log.to_str().unwrap(),
        ]);
        if !out.status.success() {
            return Err(format!(
                "kmsfs mount failed ({}): {}\n{}",
                out.status,
                stderr(&out).trim(),
                self.daemon_log_tail()
            ));
        }
        let status = self.kmsfs_ok(&["status", self.mnt.to_str().unwrap(), "--json"]);
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        self.pid = Some(status["pid"].as_u64().expect("status has the pid") as u32);
        Ok(())
    }

    /// `mount` again after a killed daemon or a power cut.
    pub fn remount(&mut self) {
        self.mount();
    }

    /// A clean unmount (`kmsfs unmount`).
    pub fn unmount(&mut self) {
        self.retry_busy(&["unmount", self.mnt.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(pid) = self.pid.take() {
            wait_gone(pid);
        }
    }

    /// Runs `kmsfs args`, again while it fails for a busy mount: tests run side by side
    /// in one process, and a child that another test forks holds copies of this test's
    /// open files until it execs (they close on exec), which makes an unmount at that
    /// instant fail with EBUSY.
    fn retry_busy(&self, args: &[&str]) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..50 {
            let out = self.kmsfs(args);
            if out.status.success() {
                return Ok(());
            }
            last = format!(
                "kmsfs {args:?} failed ({}): {}",
                out.status,
                stderr(&out).trim()
            );
            if !last.contains("busy") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    }

    /// SIGKILL to the daemon, as the OOM killer or a crash would end it. Its mount stays,
    /// dead, until `remount` or `detach`.
    pub fn kill_daemon(&mut self) {
        let pid = self.pid.take().expect("a daemon to kill");
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
        wait_gone(pid);
    }

    /// `kmsfs unmount` of a mount whose daemon died.
    pub fn detach(&mut self) {
        if let Err(e) = self.try_detach() {
            panic!("{e}");
        }
    }

    /// `detach`, or why it failed.
    pub fn try_detach(&mut self) -> Result<(), String> {
        let mnt = self.mnt.to_str().unwrap().to_owned();
        self.retry_busy(&["unmount", &mnt])
            .map_err(|e| format!("unmounting the dead mount: {e}"))?;
        match self.is_mounted() {
            false => Ok(()),
            true => Err("kmsfs unmount of the dead mount left it mounted".into()),
        }
    }

    /// Detaches whatever is mounted at the mountpoint without kmsfs (`umount -l`): how a
    /// round goes on to check the volume when kmsfs itself could not.
    pub fn force_detach(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }

    /// The power cut: the ext4 under the volume stops at once with its journal unflushed,
    /// the daemon (still running, now getting EIO) is killed, `quiesce` lets the caller
    /// stop and join whatever still works on the mount (its calls now fail), the dead
    /// mount is detached, and the ext4 is unmounted and mounted again, which replays its
    /// journal: what is on it is then what a machine would find after the power came back.
    /// kmsfs stays unmounted.
    pub fn power_cut(&mut self, quiesce: impl FnOnce()) {
        let disk = self
            .disk
            .as_mut()
            .expect("a power cut needs the volume on a Disk");
        disk.shut_down();
        self.kill_daemon();
        quiesce();
        self.detach();
        let disk = self.disk.as_mut().unwrap();
        disk.unmount();
        disk.mount();
    }

    /// `kmsfs fsck --json` on the unmounted volume: its exit status and report.
    pub fn fsck(&self) -> (i32, serde_json::Value) {
        let out = self.kmsfs(&["fsck", self.cipher.to_str().unwrap(), "--json"]);
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            serde_json::json!({"error": stderr(&out), "stdout": String::from_utf8_lossy(&out.stdout)})
        });
        (out.status.code().unwrap_or(-1), report)
    }

    /// `kmsfs fsck --repair --json` on the unmounted volume (what `docs/posix.md` says to
    /// run after a power cut): what it repaired, by action, or why it could not run.
    pub fn repair(&self) -> Result<Vec<String>, String> {
        let out = self.kmsfs(&["fsck", "--repair", self.cipher.to_str().unwrap(), "--json"]);
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|_| stderr(&out))?;
        let actions = report["repaired"].as_array().cloned().unwrap_or_default();
        Ok(actions
            .iter()
            .map(|a| format!("{} {}", a["action"].as_str().unwrap_or("?"), a["path"]))
            .collect())
    }

    /// The last lines of the daemon's log, for failure messages.
    pub fn daemon_log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Copies what a failing round leaves, for a look afterwards: the ext4 image
    /// (sparse) and the host's XDG directories (the keys), into `to`. The image is
    /// copied while mounted, after a `sync`.
    pub fn keep(&self, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        let _ = Command::new("sync").status();
        if let Some(disk) = &self.disk {
            let _ = Command::new("cp")
                .arg("--sparse=always")
                .arg(&disk.image)
                .arg(to)
                .status();
        }
        let _ = std::fs::copy(&self.log, to.join("daemon.log"));
        for dir in ["data", "state"] {
            let _ = Command::new("cp")
                .arg("-a")
                .arg(self.host.path().join(dir))
                .arg(to)
                .status();
        }
    }

    /// Whether anything is mounted at the kmsfs mountpoint.
    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mnt)
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4).map(Path::new) == Some(path))
}

/// Waits until process `pid` is gone (exited, reaped or a zombie).
pub fn wait_gone(pid: u32) {
    let start = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The command name is in parentheses and may hold spaces: the state follows it.
        let state = stat.rsplit(") ").next().and_then(|s| s.split(' ').next());
        if stat.is_empty() || state == Some("Z") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "process {pid} did not go away"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            // A clean unmount if the daemon still answers, else kill it and detach.
            let clean = Command::new(bin())
                .args(["unmount", self.mnt.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !clean {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        for _ in 0..50 {
            if !is_mounted(&self.mnt) {
                break;
            }
            let _ = Command::new("umount").arg(&self.mnt).output();
            if is_mounted(&self.mnt) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        // Then `disk` (ext4, loop device) and `host` (the image) drop, in that order.
    }
}
