//! A seeded tree of files for the offline commands' crash tests: files of assorted sizes
//! (long names and a hard link among them) in a few directories, and symlinks; written
//! through a mount or into a plain directory, and checked back through a mount.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::check::Findings;
use super::rig::Rig;
use super::rng::Rng;

#[derive(Default)]
pub struct Tree {
    /// Relative path to content.
    pub files: BTreeMap<String, Vec<u8>>,
    pub links: BTreeMap<String, String>,
    pub dirs: Vec<String>,
}

impl Tree {
    /// `n` files in four directories (one of them nested), sizes up to 64 KiB and
    /// a few larger, one name in ten long.
    pub fn new(rng: &mut Rng, n: usize) -> Tree {
        let dirs: Vec<String> = ["", "a", "b", "a/deep"].map(str::to_owned).into();
        let mut t = Tree {
            dirs: dirs[1..].to_vec(),
            ..Default::default()
        };
        for i in 0..n {
            let dir = rng.pick(&dirs).clone();
            let mut name = format!("f{i}");
            if rng.chance(10) {
                name.extend((0..200).map(|_| (b'a' + rng.below(26) as u8) as char));
            }
            let size = match rng.below(10) {
                0 => 0,
                1 => rng.range(4096, 300_000),
                _ => rng.below(65_536),
            };
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            t.files.insert(path, rng.bytes(size as usize));
        }
        t.links.insert("a/link".into(), "../f0".into());
        t
    }

    /// Writes the tree under `root` (a mount or a plain directory).
    pub fn write(&self, root: &Path) {
        for d in &self.dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (p, data) in &self.files {
            std::fs::write(root.join(p), data).unwrap();
        }
        for (p, target) in &self.links {
            std::os::unix::fs::symlink(target, root.join(p)).unwrap();
        }
    }

    /// Through a mount of the volume: with `whole`, every file, link and directory is
    /// there and reads exactly; without, each may be absent but what is there is whole.
    pub fn check(&self, root: &Path, whole: bool, f: &mut Findings) {
        for d in &self.dirs {
            if let Err(e) = std::fs::read_dir(root.join(d)) {
                if whole || e.kind() != std::io::ErrorKind::NotFound {
                    f.fail(format!("{d}/: {e}"));
                }
            }
        }
        for (p, data) in &self.files {
            match std::fs::read(root.join(p)) {
                Ok(got) if got == *data => {}
                Ok(got) => f.fail(format!(
                    "{p}: {} bytes that are not its content ({} bytes)",
                    got.len(),
                    data.len()
                )),
                Err(e) if !whole && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => f.fail(format!("{p}: {e}")),
            }
        }
        for (p, target) in &self.links {
            match std::fs::read_link(root.join(p)) {
                Ok(t) if t.as_os_str() == target.as_str() => {}
                Err(e) if !whole && e.kind() == std::io::ErrorKind::NotFound => {}
                other => f.fail(format!("{p}: symlink {other:?}, want {target}")),
            }
        }
    }
}

/// Starts `kmsfs args` and SIGKILLs it after `delay`; whether it was still running then.
pub fn kill_after(rig: &Rig, args: &[&str], delay: Duration) -> bool {
    let mut child = rig
        .command()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    running
}

/// A second key in the volume's local KMS (`kmsfs kms create-key`, through a `kmsfs kms
/// serve` of the same state file for as long as it takes), by ARN.
pub fn create_local_key(rig: &Rig) -> String {
    let state = rig.host.path().join("data/kmsfs/local-kms/state.json");
    let mut server = Command::new(super::rig::bin())
        .args(["kms", "serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    // Keep reading: the server writes a second line, and dies of a closed pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .map(str::to_owned);
    let out = url.as_ref().map(|url| {
        rig.command()
            .args(["kms", "create-key", "--endpoint", url])
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                state.with_extension("json.credentials"),
            )
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap()
    });
    let _ = server.kill();
    let _ = server.wait();
    let out = out.unwrap_or_else(|| panic!("kmsfs kms serve said {first:?}"));
    assert!(
        out.status.success(),
        "create-key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
