//! The built-in KMS's state file shared by many processes at once (issue 21): parallel
//! `kmsfs init`s while a mount of another volume on the same state applies a due
//! rotation. Every key must survive, so every volume can still be checked afterwards.

mod mountkit;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use kmsfs::kms::engine::state::write_atomic;
use mountkit::TestVolume;
use serde_json::Value;

const INITS: usize = 20;

fn state_path(v: &TestVolume) -> PathBuf {
    v.dir.path().join("data/kmsfs/local-kms/state.json")
}

fn read_state(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The number of backing-key versions of key `id`, if the state has it.
fn versions(state: &Value, id: &str) -> Option<usize> {
    state["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .map(|k| k["versions"].as_array().unwrap().len())
}

/// Changes the state file as kmsfs does: under the lock beside it, from a fresh read.
fn edit_state(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut lock_name = path.file_name().unwrap().to_owned();
    lock_name.push(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_file_name(lock_name))
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let mut state = read_state(path);
    f(&mut state);
    write_atomic(path, &serde_json::to_vec_pretty(&state).unwrap()).unwrap();
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn parallel_inits_while_a_mount_rotates_lose_no_key() {
    let v = TestVolume::new();
    let state = state_path(&v);
    let st = read_state(&state);
    let mounted_key = st["keys"][0]["id"].as_str().unwrap().to_owned();
    // The mounted volume's key comes due for rotation a few seconds from now, so that the
    // mount, which read the state before, applies it on its own while the inits run.
    let due_in = Duration::from_secs(3);
    let due_at = Instant::now() + due_in;
    edit_state(&state, |st| {
        let k = &mut st["keys"][0];
        let period = k["rotation_period_days"].as_f64().unwrap() * 86400.0;
        k["rotation_enabled"] = true.into();
        k["rotation_anchor"] =
            (epoch_secs(SystemTime::now()) - period + due_in.as_secs_f64()).into();
    });
    let m = v.mount();
    std::fs::write(v.p("before"), b"written before the inits").unwrap();
    assert_eq!(versions(&read_state(&state), &mounted_key), Some(1));

    std::thread::sleep(
        due_at.saturating_duration_since(Instant::now() + Duration::from_millis(100)),
    );
    let started = Instant::now();
    let children: Vec<(PathBuf, std::process::Child)> = (0..INITS)
        .map(|i| {
            let cipher = v.dir.path().join(format!("vol{i}"));
            let child = v
                .command()
                .arg("init")
                .arg(&cipher)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (cipher, child)
        })
        .collect();
    // New files make the mount ask the KMS for data keys, which applies the due rotation.
    let mut rotated_after = None;
    for n in 0.. {
        std::fs::write(v.p(&format!("poke{n}")), b"x").unwrap();
        if versions(&read_state(&state), &mounted_key) == Some(2) {
            rotated_after = Some(started.elapsed());
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut ciphers = Vec::new();
    for (cipher, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "init {} failed: {}",
            cipher.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        ciphers.push(cipher);
    }
    eprintln!(
        "{INITS} inits done {:?} after they started; the rotation was seen on disk after {rotated_after:?}",
        started.elapsed()
    );
    std::fs::write(v.p("after"), b"written after the inits").unwrap();
    drop(m);

    let st = read_state(&state);
    assert_eq!(
        versions(&st, &mounted_key),
        Some(2),
        "the mounted volume's key did not gain a version"
    );
    assert_eq!(st["keys"].as_array().unwrap().len(), INITS + 1, "{st:#}");
    ciphers.push(v.cipher.clone());
    for cipher in &ciphers {
        let out = v.kmsfs(&["fsck", cipher.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "fsck {} failed: {}{}",
            cipher.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _m = v.mount();
    assert_eq!(
        std::fs::read(v.p("before")).unwrap(),
        b"written before the inits"
    );
    assert_eq!(
        std::fs::read(v.p("after")).unwrap(),
        b"written after the inits"
    );
}
