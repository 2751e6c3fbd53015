//! A reader walking a directory on a remote KMS 20 ms away (issue 22): the keys of the
//! files it is about to open are unwrapped ahead of its opens, so that nearly every open
//! finds its key in the cache instead of waiting for its own Decrypt, for `tar` (listing
//! order), `cp -r` and a reader in name order (as rsync reads); keys unwrapped and never
//! used stay few, none are fetched for a listing or for opens in random order, and each
//! prefetch is audited with the process whose walk led to it.
//!
//! The figures of speed are the benchmark's (`scripts/bench_names.sh`); these tests count
//! what happened, from the audit log and `kmsfs status`.

mod mountkit;

use std::process::Command;

use mountkit::{KmsServer, TestVolume};

const FILES: usize = 400;

/// A volume on `kms serve --latency 20` with `FILES` small files in `d/`, remounted so
/// that no key is cached. The server comes first so that it outlives the mount.
fn walked_volume(
    extra: &[&str],
) -> (
    tempfile::TempDir,
    KmsServer,
    TestVolume,
    mountkit::MountGuard,
) {
    let dir = tempfile::tempdir().unwrap();
    let kms = KmsServer::start(dir.path(), 0, &["--latency", "20"]);
    let key = kms.create_key();
    let v = TestVolume::with_init_args(&["--kms-endpoint", &kms.url, "--key", &key], kms.env());
    let m = v.mount();
    std::fs::create_dir(v.p("d")).unwrap();
    for i in 0..FILES {
        std::fs::write(v.p(&format!("d/f{i:04}")), [i as u8; 4096]).unwrap();
    }
    m.unmount();
    let m = v.mount_with(extra);
    (dir, kms, v, m)
}

/// How the opens of files under `d/` got their keys since the remount, from the audit
/// log: (own Decrypt on open, first use of a prefetched key, prefetch calls).
fn key_sources(v: &TestVolume) -> (usize, usize, usize) {
    let records = v.audit_records();
    let under_d = |r: &&serde_json::Value| r["path"].as_str().is_some_and(|p| p.starts_with("d/"));
    let mount_at = records
        .iter()
        .rposition(|r| r["event"] == "names_key_unwrapped")
        .expect("the remount unwrapped its names key");
    let since = || records[mount_at..].iter().filter(under_d);
    let own = since().filter(|r| r["event"] == "key_unwrapped").count();
    let ahead = since()
        .filter(|r| r["event"] == "key_from_cache" && r["cache"] == "prefetched")
        .count();
    let calls = since().filter(|r| r["event"] == "key_prefetched").count();
    (own, ahead, calls)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file's content read back by `walk`, with at most a few opens waiting for their
/// own Decrypt, at most a few keys unwrapped for nothing, and one Decrypt per file.
fn assert_walk_fetched_ahead(v: &TestVolume, what: &str) {
    let (own, ahead, calls) = key_sources(v);
    assert!(
        own + ahead >= FILES,
        "{what}: {own} own unwraps and {ahead} prefetched ones for {FILES} files"
    );
    assert!(
        own <= 8,
        "{what}: {own} of {FILES} opens waited for their own Decrypt ({ahead} found their key unwrapped ahead)"
    );
    let st = v.status();
    let cache = &st["key_cache"];
    let unused = cache["prefetched"].as_u64().unwrap() - cache["prefetched_used"].as_u64().unwrap();
    assert!(
        unused <= 8,
        "{what}: {unused} keys unwrapped ahead and not used: {cache}"
    );
    assert_eq!(
        calls as u64,
        cache["prefetched"].as_u64().unwrap(),
        "{what}: each prefetch audited"
    );
    let decrypts = st["kms"]["decrypt"].as_u64().unwrap() as usize;
    eprintln!("{what}: {own} own unwraps, {ahead} prefetched used, {unused} unused, {decrypts} Decrypt calls");
    assert!(
        decrypts <= FILES + 1 + 8,
        "{what}: {decrypts} Decrypt calls for {FILES} files and the names key"
    );
}

/// `tar` of the mount's `d/` into an archive beside the mount; the archive's path.
fn tar_d(v: &TestVolume) -> std::path::PathBuf {
    let archive = v.mnt.parent().unwrap().join("d.tar");
    let tar = Command::new("tar")
        .arg("cf")
        .arg(&archive)
        .arg("-C")
        .arg(&v.mnt)
        .arg("d")
        .output();
    let out = tar.unwrap();
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    archive
}

#[test]
fn tar_walks_a_directory_with_its_keys_unwrapped_ahead() {
    let (_dir, _kms, v, _m) = walked_volume(&[]);
    let archive = tar_d(&v);
    assert_walk_fetched_ahead(&v, "tar");
    // The archive holds what was written.
    let back = v.mnt.parent().unwrap().join("back");
    std::fs::create_dir(&back).unwrap();
    run(Command::new("tar")
        .arg("xf")
        .arg(&archive)
        .arg("-C")
        .arg(&back));
    for i in [0, FILES / 2, FILES - 1] {
        let got = std::fs::read(back.join(format!("d/f{i:04}"))).unwrap();
        assert_eq!(got, [i as u8; 4096], "file {i}");
    }
    // Each prefetch names the process whose walk led to it.
    let prefetched = v
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "key_prefetched");
    for r in prefetched {
        assert_eq!(r["process"], "tar", "{r}");
        assert_eq!(r["outcome"], "ok", "{r}");
    }
}

#[test]
fn cp_and_a_reader_in_name_order_have_their_keys_unwrapped_ahead() {
    let (_dir, _kms, v, m) = walked_volume(&[]);
    let copy = v.mnt.parent().unwrap().join("copy");
    run(Command::new("cp").arg("-r").arg(v.p("d")).arg(&copy));
    assert_walk_fetched_ahead(&v, "cp -r");
    assert_eq!(std::fs::read(copy.join("f0007")).unwrap(), [7u8; 4096]);
    drop(m);
    // rsync reads a directory's files sorted by name; so does this reader.
    let _m = v.mount();
    let mut names: Vec<_> = std::fs::read_dir(v.p("d"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for (i, p) in names.iter().enumerate() {
        assert_eq!(std::fs::read(p).unwrap(), [i as u8; 4096], "{p:?}");
    }
    assert_walk_fetched_ahead(&v, "a reader in name order");
}

#[test]
fn listings_and_random_opens_unwrap_nothing_ahead() {
    let (_dir, _kms, v, _m) = walked_volume(&[]);
    run(Command::new("ls").arg("-lR").arg(&v.mnt));
    // A fixed shuffle: a stride prime to FILES visits each file once, never in order.
    for k in 0..100 {
        let i = (k * 163 + 11) % FILES;
        assert_eq!(
            std::fs::read(v.p(&format!("d/f{i:04}"))).unwrap(),
            [i as u8; 4096]
        );
    }
    let cache = &v.status()["key_cache"];
    assert!(cache["prefetched"].as_u64().unwrap() <= 4, "{cache}");
}

#[test]
fn kms_prefetch_0_turns_it_off() {
    let (_dir, _kms, v, _m) = walked_volume(&["--kms-prefetch", "0"]);
    tar_d(&v);
    let (own, ahead, calls) = key_sources(&v);
    assert_eq!((own, ahead, calls), (FILES, 0, 0));
}
