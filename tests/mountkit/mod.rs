//! Real mounts for integration tests: a temporary volume on its own local KMS (XDG
//! directories inside the temp dir), mounted with the built `kmsfs` binary, and a guard
//! that always unmounts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kmsfs")
}

pub fn is_mounted(path: &Path) -> bool {
    mountinfo_line(path).is_some()
}

/// The line of /proc/self/mountinfo for the mount at `path` (its options included).
pub fn mountinfo_line(path: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split(' ').nth(4).map(Path::new) == Some(canon.as_path()))
        .map(str::to_owned)
}

pub struct TestVolume {
    pub dir: tempfile::TempDir,
    pub cipher: PathBuf,
    pub mnt: PathBuf,
    pub audit: PathBuf,
    /// Extra environment for every kmsfs command (an HTTP KMS's credentials, say).
    pub env: Vec<(String, String)>,
}

impl TestVolume {
    /// A new volume on the built-in local KMS.
    pub fn new() -> Self {
        Self::with_init_args(&[], vec![])
    }

    pub fn with_init_args(args: &[&str], env: Vec<(String, String)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cipher = dir.path().join("cipher");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let audit = dir.path().join("audit.jsonl");
        let v = Self {
            dir,
            cipher,
            mnt,
            audit,
            env,
        };
        let mut full = vec!["init", v.cipher.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = v.kmsfs(&full);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        v
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env("KMSFS_LOG", "debug");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn kmsfs(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// `kmsfs ARGS` (with `--json` among them), which must succeed: its JSON answer.
    pub fn kmsfs_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.kmsfs(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kmsfs {args:?}: {err}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Mounts (the background daemon) with extra `kmsfs mount` arguments.
    pub fn mount_with(&self, extra: &[&str]) -> MountGuard {
        let log = self.dir.path().join("daemon.log");
        let mut args = vec![
            "mount",
            self.cipher.to_str().unwrap(),
            self.mnt.to_str().unwrap(),
            "--audit-log",
            self.audit.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = self.kmsfs(&args);
        assert!(
            out.status.success(),
            "mount failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            is_mounted(&self.mnt),
            "mount returned before the mount was there"
        );
        MountGuard {
            mnt: self.mnt.clone(),
            log,
        }
    }

    pub fn mount(&self) -> MountGuard {
        self.mount_with(&[])
    }

    /// `kmsfs status --json` of the mount: what its daemon says of itself.
    pub fn status(&self) -> serde_json::Value {
        let out = self.kmsfs(&["status", self.mnt.to_str().unwrap(), "--json"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Audit records as JSON values.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The ciphertext path of the plaintext path `plain` (`kmsfs path encrypt`), for tests
/// that damage or inspect one file's ciphertext on a volume with encrypted names.
pub fn cipher_of(v: &TestVolume, plain: &str) -> PathBuf {
    let out = v.kmsfs(&["path", "encrypt", v.cipher.to_str().unwrap(), plain]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Removes a ciphertext directory's record: `kmsfs.dirid` and the record name that backs
/// it up (`kmsfs.dirid.<id>`, `docs/format.md`), so that the directory has none left.
pub fn remove_dir_record(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name == "kmsfs.dirid" || name.starts_with("kmsfs.dirid.") {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
    }
}

/// Unmounts on drop, whatever happened in the test.
pub struct MountGuard {
    pub mnt: PathBuf,
    pub log: PathBuf,
}

impl MountGuard {
    pub fn unmount(self) {
        drop(self);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        for _ in 0..50 {
            if !is_mounted(&self.mnt) {
                return;
            }
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .status();
            if !is_mounted(&self.mnt) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        // Give the daemon a moment to exit so a remount cannot race it.
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
}

/// The operations (`eventName`) a KMS server audited in `kms_audit` after its first
/// `skip` records.
pub fn kms_events_after(kms_audit: &Path, skip: usize) -> Vec<String> {
    std::fs::read_to_string(kms_audit)
        .unwrap()
        .lines()
        .skip(skip)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["eventName"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// A `kmsfs kms serve` process, killed on drop.
pub struct KmsServer {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub state: PathBuf,
    pub credentials: PathBuf,
    /// The CA bundle a server started with `--tls` made (for AWS_CA_BUNDLE).
    pub ca_bundle: Option<PathBuf>,
}

impl KmsServer {
    pub fn start(dir: &Path, port: u16, extra: &[&str]) -> Self {
        let state = dir.join("kms-state.json");
        let mut child = Command::new(bin())
            .args([
                "kms",
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--state",
            ])
            .arg(&state)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let url = first
            .trim()
            .strip_prefix("listening on ")
            .expect(&first)
            .to_owned();
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        let tls = extra.contains(&"--tls");
        Self {
            child,
            url,
            port,
            credentials: dir.join("kms-state.json.credentials"),
            ca_bundle: tls.then(|| dir.join("kms-state.json.ca.pem")),
            state,
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "AWS_SHARED_CREDENTIALS_FILE".into(),
                self.credentials.to_string_lossy().into_owned(),
            ),
            ("AWS_REGION".into(), "us-east-1".into()),
        ];
        if let Some(ca) = &self.ca_bundle {
            env.push(("AWS_CA_BUNDLE".into(), ca.to_string_lossy().into_owned()));
        }
        env
    }

    /// A new key on this server, by ARN.
    pub fn create_key(&self) -> String {
        let out = Command::new(bin())
            .args(["kms", "create-key", "--endpoint", &self.url])
            .envs(self.env())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for KmsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
