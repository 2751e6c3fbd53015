//! The offline commands that check or copy a volume's files, on real volumes: `fsck`
//! passes a clean volume and finds every tamper class, `export` equals the mounted view,
//! `decrypt` refuses damage unless told to keep going, and `import` then a mount shows the
//! imported tree. The commands that change keys are in `ops_keys.rs`.

mod common;
mod mountkit;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::pattern;
use mountkit::{cipher_of, remove_dir_record, TestVolume};
use serde_json::Value;

const H: usize = 1024;

/// The layout of the files of a volume made by `kmsfs init`.
fn layout() -> kmsfs::format::Layout {
    kmsfs::format::Layout::new(kmsfs::format::VERSION, H as u32)
}

/// Plaintext bytes of a full block of those files.
fn bs() -> usize {
    layout().block_len() as usize
}

/// Where block `n`'s ciphertext starts.
fn data(n: u64) -> usize {
    layout().place(n, bs()).data as usize
}

fn fsck_json(v: &TestVolume) -> (i32, Value) {
    let out = v.kmsfs(&["fsck", v.cipher.to_str().unwrap(), "--json"]);
    let code = out.status.code().unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (code, json)
}

/// One file per tamper class `fsck` must find, a donor of foreign blocks and a foreign
/// header, and one file left intact.
const FILES: [&str; 12] = [
    "flip",
    "zeroed",
    "cut",
    "appended",
    "swapped",
    "foreign-block",
    "foreign-header",
    "commitment",
    "key-slot",
    "slack",
    "donor",
    "fine",
];

#[test]
fn fsck_passes_a_clean_volume_and_finds_every_tamper_class() {
    let v = TestVolume::new();
    write_files_and_a_subdirectory(&v);
    let (code, report) = fsck_json(&v);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["files"], FILES.len() as u64 + 1);
    assert_eq!(report["damaged"].as_array().unwrap().len(), 0);

    damage_each_file_by_its_name(&v);
    damage_a_name_and_a_directory_record(&v);

    let (code, report) = fsck_json(&v);
    assert_eq!(code, 4, "{report}");
    check_each_damage_is_reported(&report);
    // The text report names blocks for people too.
    let text = v.kmsfs(&["fsck", v.cipher.to_str().unwrap()]);
    assert_eq!(text.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&text.stdout).contains("DAMAGED flip: block_auth"));
}

/// Every file of [`FILES`] (three blocks, the last partial), a file in a subdirectory and
/// a symlink, written through a mount.
fn write_files_and_a_subdirectory(v: &TestVolume) {
    let _m = v.mount();
    fs::create_dir(v.p("sub")).unwrap();
    for (i, f) in FILES.iter().enumerate() {
        fs::write(v.p(f), pattern(3 * 4096 - 10, i as u64)).unwrap();
    }
    fs::write(v.p("sub/inner"), b"in a subdirectory").unwrap();
    std::os::unix::fs::symlink("fine", v.p("link")).unwrap();
}

/// Damages each file of [`FILES`] in its ciphertext the way its name says, blocks from
/// "donor" where another file's are needed; "donor" and "fine" stay intact.
fn damage_each_file_by_its_name(v: &TestVolume) {
    let path = |f: &str| cipher_of(v, f);
    let edit = |f: &str, op: &dyn Fn(&mut Vec<u8>)| {
        let p = path(f);
        let mut b = fs::read(&p).unwrap();
        op(&mut b);
        fs::write(&p, b).unwrap();
    };
    let donor = fs::read(path("donor")).unwrap();
    let l = layout();
    edit("flip", &|b| b[data(1) + 99] ^= 1);
    edit("zeroed", &|b| b[data(0)..data(0) + bs()].fill(0));
    edit("cut", &|b| {
        b.truncate(l.cipher_len(2 * bs() as u64).unwrap() as usize)
    });
    edit("appended", &|b| {
        let first = common::get_block(&l, b, 0);
        let count = l.block_count(l.plain_len(b.len() as u64).unwrap());
        common::put_block(&l, b, count, &first);
    });
    edit("swapped", &|b| {
        let (x, y) = (common::get_block(&l, b, 0), common::get_block(&l, b, 1));
        common::put_block(&l, b, 0, &y);
        common::put_block(&l, b, 1, &x);
    });
    edit("foreign-block", &|b| {
        common::put_block(&l, b, 1, &common::get_block(&l, &donor, 1))
    });
    edit("foreign-header", &|b| b[..H].copy_from_slice(&donor[..H]));
    edit("commitment", &|b| b[40] ^= 1);
    // The byte before block 0's data: slack in format version 2.
    edit("slack", &|b| b[data(0) - 1] = 1);
    edit("key-slot", &|b| {
        let k = u16::from_be_bytes([b[68], b[69]]) as usize;
        b[72 + k + 10] ^= 1;
    });
}

/// A name that no longer decrypts (a copy of "fine" under an edited name), and a
/// directory ("sub") without its record.
fn damage_a_name_and_a_directory_record(v: &TestVolume) {
    let sub = cipher_of(v, "sub");
    remove_dir_record(&sub);
    let fine = cipher_of(v, "fine");
    let mut tampered = fine
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
        .into_bytes();
    tampered[3] = if tampered[3] == b'a' { b'b' } else { b'a' };
    fs::copy(
        &fine,
        fine.with_file_name(String::from_utf8(tampered).unwrap()),
    )
    .unwrap();
}

/// `fsck --json`'s report names each damaged file with its problem and, for block
/// damage, the blocks; the intact file is not in it.
fn check_each_damage_is_reported(report: &Value) {
    let by_path: BTreeMap<String, &Value> = report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["path"].as_str().unwrap().to_owned(), d))
        .collect();
    let problem = |p: &str| {
        by_path
            .get(p)
            .map(|d| d["problem"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{p} not reported: {report}"))
    };
    let blocks = |p: &str| {
        by_path[p]["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(problem("flip"), "block_auth");
    assert_eq!(blocks("flip"), vec![1]);
    assert_eq!(blocks("zeroed"), vec![0]);
    assert_eq!(
        blocks("cut"),
        vec![1],
        "the new last block was not sealed as final"
    );
    assert_eq!(problem("appended"), "block_auth");
    assert_eq!(blocks("swapped"), vec![0, 1]);
    assert_eq!(blocks("foreign-block"), vec![1]);
    // The donor's header carries the donor's name tags: refused before its key is asked
    // for (on a volume made before names were bound, its blocks fail under that key).
    assert_eq!(problem("foreign-header"), "name_binding");
    assert_eq!(problem("commitment"), "wrong_key");
    assert_eq!(problem("key-slot"), "key_slot");
    // Version 1 has no slack: the byte before block 0's data is its nonce's.
    let slack = if layout().is_split() {
        "nonzero_slack"
    } else {
        "block_auth"
    };
    assert_eq!(problem("slack"), slack);
    assert!(
        !by_path.contains_key("fine"),
        "an intact file is not reported"
    );
    let problems: Vec<&str> = report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["problem"].as_str().unwrap())
        .collect();
    assert!(problems.contains(&"directory_record"), "{problems:?}");
    assert!(problems.contains(&"name"), "{problems:?}");
}

fn tree(root: &Path) -> BTreeMap<String, (u32, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let content = if m.file_type().is_symlink() {
                fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if m.is_file() {
                fs::read(&p).unwrap()
            } else {
                stack.push(p.clone());
                Vec::new()
            };
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let mtime = if m.file_type().is_symlink() {
                0
            } else {
                m.mtime()
            };
            out.insert(rel, (m.mode(), mtime, content));
        }
    }
    out
}

#[test]
fn export_equals_the_mounted_view_and_decrypt_refuses_damage() {
    let v = TestVolume::new();
    let mounted = write_a_tree_to_export(&v);
    let dest = v.dir.path().join("export");
    let out = v.kmsfs(&["export", v.cipher.to_str().unwrap(), dest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree(&dest), mounted);
    // Refuses a non-empty destination.
    let again = v.kmsfs(&["export", v.cipher.to_str().unwrap(), dest.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));

    // decrypt one file, then damage it: refused unless --force-partial.
    let big = cipher_of(&v, "docs/deep/er/big.bin");
    let out = v.kmsfs(&["decrypt", big.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(out.stdout, pattern(300_000, 5));
    let mut b = fs::read(&big).unwrap();
    b[data(10) + 5] ^= 1;
    fs::write(&big, b).unwrap();
    let target = v.dir.path().join("restored.bin");
    let out = v.kmsfs(&[
        "decrypt",
        big.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("block(s) [10]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!target.exists(), "nothing written for a damaged file");
    let out = v.kmsfs(&[
        "decrypt",
        big.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
        "--force-partial",
    ]);
    assert!(out.status.success());
    let got = fs::read(&target).unwrap();
    let mut want = pattern(300_000, 5);
    want[10 * bs()..11 * bs()].fill(0);
    assert_eq!(got, want);
}

/// Writes, through a mount, a tree with what `export` must carry over (nested directories,
/// a file of many blocks, a long name, an empty file with an old mtime, a symlink, modes),
/// and returns the mounted view of it.
fn write_a_tree_to_export(v: &TestVolume) -> BTreeMap<String, (u32, i64, Vec<u8>)> {
    let _m = v.mount();
    fs::create_dir_all(v.p("docs/deep/er")).unwrap();
    fs::write(v.p("docs/a.txt"), b"alpha").unwrap();
    fs::write(v.p("docs/deep/er/big.bin"), pattern(300_000, 5)).unwrap();
    fs::write(v.p(&"n".repeat(200)), b"long name").unwrap();
    fs::write(v.p("empty"), b"").unwrap();
    std::os::unix::fs::symlink("docs/a.txt", v.p("to-a")).unwrap();
    fs::set_permissions(v.p("docs/a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(v.p("docs/deep"), fs::Permissions::from_mode(0o750)).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(v.p("empty"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    tree(&v.mnt)
}

#[test]
fn import_then_mount_shows_the_same_tree() {
    let v = TestVolume::new();
    let src = v.dir.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/b/data.bin"), pattern(70_000, 3)).unwrap();
    fs::write(src.join("top.txt"), b"top").unwrap();
    fs::write(src.join("x".repeat(220)), b"long").unwrap();
    std::os::unix::fs::symlink("a/b/data.bin", src.join("link")).unwrap();
    fs::set_permissions(src.join("top.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    let before = tree(&src);
    let out = v.kmsfs(&["import", src.to_str().unwrap(), v.cipher.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        let _m = v.mount();
        assert_eq!(tree(&v.mnt), before);
    }
    // Importing again overwrites nothing: every entry is there already.
    let again = v.kmsfs(&["import", src.to_str().unwrap(), v.cipher.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&again.stdout);
    assert_eq!(again.status.code(), Some(0), "{said}");
    assert!(said.contains("imported 0 files"), "{said}");
    assert!(
        said.contains("; 4 already there"),
        "three files and a symlink: {said}"
    );
    let (code, report) = fsck_json(&v);
    assert_eq!(code, 0, "{report}");
}

#[test]
fn decrypt_and_rekey_never_write_through_a_planted_symlink() {
    let v = TestVolume::new();
    {
        let _m = v.mount();
        fs::write(v.p("a.txt"), b"secret").unwrap();
    }
    let victim = v.dir.path().join("victim");
    fs::write(&victim, b"untouched").unwrap();
    // `decrypt -o` writes `.NAME.kmsfs-partial` beside its output, then renames it.
    let target = v.dir.path().join("out.txt");
    let partial = v.dir.path().join(".out.txt.kmsfs-partial");
    std::os::unix::fs::symlink(&victim, partial).unwrap();
    let cipher = cipher_of(&v, "a.txt");
    let args = [
        "decrypt",
        cipher.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
    ];
    let out = v.kmsfs(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(&target).unwrap(), b"secret");
    // rekey writes its journal through a work file in the ciphertext directory.
    std::os::unix::fs::symlink(&victim, v.cipher.join(".kmsfs-rekey.journal.tmp")).unwrap();
    let out = v.kmsfs(&["rekey", v.cipher.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(&victim).unwrap(), b"untouched");
}

#[test]
fn a_configuration_that_is_a_fifo_or_a_symlink_is_refused_at_once() {
    let v = TestVolume::new();
    let conf = v.cipher.join("kmsfs.conf");
    let saved = fs::read(&conf).unwrap();
    for plant in ["fifo", "symlink to /dev/zero"] {
        fs::remove_file(&conf).unwrap();
        if plant == "fifo" {
            let made = std::process::Command::new("mkfifo")
                .arg(&conf)
                .status()
                .unwrap();
            assert!(made.success());
        } else {
            std::os::unix::fs::symlink("/dev/zero", &conf).unwrap();
        }
        // Before, fsck waited for a writer on the FIFO, or read /dev/zero until memory ran out.
        let mut child = std::process::Command::new(mountkit::bin())
            .args(["fsck", v.cipher.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut waited = 0;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if waited == 200 {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("fsck on a volume whose kmsfs.conf is a {plant} did not end in 10 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            waited += 1;
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{plant}: {stderr}");
        assert!(stderr.contains("kmsfs.conf"), "{plant}: {stderr}");
    }
    fs::remove_file(&conf).unwrap();
    fs::write(&conf, saved).unwrap();
    let (code, report) = fsck_json(&v);
    assert_eq!(code, 0, "{report}");
}
