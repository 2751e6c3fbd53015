//! Encrypted names on a real mount: nothing readable reaches the ciphertext directory,
//! every legal name round-trips, renames stay metadata-only, and damage is contained.

mod common;
mod mountkit;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use mountkit::{remove_dir_record, TestVolume};

/// Every path (relative) and every file's bytes under `root`, followed without symlinks.
fn walk(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let bytes = if meta.file_type().is_symlink() {
                fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if meta.is_file() {
                fs::read(&path).unwrap()
            } else {
                Vec::new()
            };
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let mut xattrs = Vec::new();
            let mut list = vec![0u8; 4096];
            if let Ok(n) = rustix::fs::llistxattr(&path, &mut list[..]) {
                for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
                    let mut v = vec![0u8; 4096];
                    if let Ok(m) = rustix::fs::lgetxattr(&path, name, &mut v[..]) {
                        xattrs.extend_from_slice(&v[..m]);
                    }
                }
            }
            out.push((rel, [bytes, xattrs].concat()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn nothing_readable_reaches_the_ciphertext_directory() {
    let v = TestVolume::new();
    let secrets = [
        "tax-return-2025",
        "passwords-kdbx",
        "symlink-target-secret",
        "xattr-value-secret",
        "nested-dir-name",
    ];
    {
        let _m = v.mount();
        fs::create_dir_all(v.p("nested-dir-name/inner")).unwrap();
        fs::write(v.p("nested-dir-name/inner/tax-return-2025.pdf"), b"content").unwrap();
        fs::write(v.p("passwords-kdbx"), b"x").unwrap();
        std::os::unix::fs::symlink("../symlink-target-secret/deep", v.p("nested-dir-name/link"))
            .unwrap();
        rustix::fs::setxattr(
            v.p("passwords-kdbx"),
            "user.note",
            b"xattr-value-secret",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::setxattr(
            v.p("nested-dir-name"),
            "user.note",
            b"xattr-value-secret",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        fs::rename(v.p("passwords-kdbx"), v.p("nested-dir-name/passwords-kdbx")).unwrap();
        fs::hard_link(
            v.p("nested-dir-name/passwords-kdbx"),
            v.p("nested-dir-name/inner/passwords-kdbx"),
        )
        .unwrap();
        // Through the mount, everything reads back.
        assert_eq!(
            fs::read_link(v.p("nested-dir-name/link")).unwrap().to_str(),
            Some("../symlink-target-secret/deep")
        );
        assert_eq!(
            fs::symlink_metadata(v.p("nested-dir-name/link"))
                .unwrap()
                .len(),
            "../symlink-target-secret/deep".len() as u64
        );
        let mut buf = [0u8; 64];
        let n = rustix::fs::getxattr(
            v.p("nested-dir-name/passwords-kdbx"),
            "user.note",
            &mut buf[..],
        )
        .unwrap();
        assert_eq!(&buf[..n], b"xattr-value-secret");
        let n = rustix::fs::getxattr(v.p("nested-dir-name"), "user.note", &mut buf[..]).unwrap();
        assert_eq!(&buf[..n], b"xattr-value-secret");
    }
    let all = walk(&v.cipher);
    assert!(all.len() >= 8, "{all:?}");
    for (path, bytes) in &all {
        for s in secrets {
            assert!(
                !path.contains(s),
                "{s} visible in the ciphertext path {path}"
            );
            assert!(!contains(bytes, s.as_bytes()), "{s} visible inside {path}");
        }
    }
}

#[test]
fn names_of_every_length_and_script_round_trip() {
    let v = TestVolume::new();
    let names: Vec<String> = vec![
        "a".into(),
        "x".repeat(100),
        "y".repeat(200),
        "z".repeat(255),
        "日本語のファイル名.txt".into(),
        "ünïcödé ✓ with spaces".into(),
        format!("{}é", "w".repeat(253)), // 255 bytes, multi-byte at the end
    ];
    {
        let _m = v.mount();
        fs::create_dir(v.p("d")).unwrap();
        for (i, n) in names.iter().enumerate() {
            assert!(n.len() <= 255);
            fs::write(v.p(n), format!("file {i}")).unwrap();
            fs::create_dir(v.p(&format!("d/dir{i}-{}", &n[..n.len().min(200)]))).unwrap();
        }
        let too_long = "q".repeat(256);
        assert_eq!(
            fs::write(v.p(&too_long), b"x").unwrap_err().raw_os_error(),
            Some(36)
        );
    }
    // Every on-disk name fits ext4's 255 bytes.
    for (path, _) in walk(&v.cipher) {
        for comp in Path::new(&path).components() {
            assert!(comp.as_os_str().len() <= 255, "{path}");
        }
    }
    let _m = v.mount();
    let listed: BTreeSet<String> = fs::read_dir(&v.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for (i, n) in names.iter().enumerate() {
        assert!(listed.contains(n), "{n} not listed: {listed:?}");
        assert_eq!(fs::read_to_string(v.p(n)).unwrap(), format!("file {i}"));
        let renamed = format!("d/{}", n);
        fs::rename(v.p(n), v.p(&renamed)).unwrap_or_else(|e| panic!("rename {n}: {e}"));
        assert_eq!(
            fs::read_to_string(v.p(&renamed)).unwrap(),
            format!("file {i}")
        );
    }
    assert_eq!(fs::read_dir(v.p("d")).unwrap().count(), names.len() * 2);
    for (i, n) in names.iter().enumerate() {
        fs::remove_file(v.p(&format!("d/{n}"))).unwrap();
        fs::remove_dir(v.p(&format!("d/dir{i}-{}", &n[..n.len().min(200)]))).unwrap();
    }
    fs::remove_dir(v.p("d")).unwrap();
    assert_eq!(fs::read_dir(&v.mnt).unwrap().count(), 0);
}

#[test]
fn rename_and_link_are_metadata_only_and_moved_trees_stay_readable() {
    let v = TestVolume::new();
    let _m = v.mount();
    fs::create_dir_all(v.p("a/b/c")).unwrap();
    fs::write(v.p("a/b/c/deep.txt"), common::pattern(50_000, 9)).unwrap();
    fs::write(v.p("a/file"), b"moving").unwrap();
    let ino_before = fs::metadata(v.p("a/file")).unwrap().ino();
    let before: BTreeSet<Vec<u8>> = walk(&v.cipher)
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| b.len() > 1000)
        .collect();
    fs::create_dir(v.p("elsewhere")).unwrap();
    fs::rename(v.p("a/file"), v.p("elsewhere/renamed")).unwrap();
    fs::rename(v.p("a"), v.p("elsewhere/a-moved")).unwrap();
    fs::hard_link(v.p("elsewhere/renamed"), v.p("elsewhere/a-moved/b/linked")).unwrap();
    assert_eq!(
        fs::metadata(v.p("elsewhere/renamed")).unwrap().ino(),
        ino_before,
        "same inode: no copy"
    );
    assert_eq!(
        fs::read(v.p("elsewhere/a-moved/b/c/deep.txt")).unwrap(),
        common::pattern(50_000, 9)
    );
    assert_eq!(
        fs::read(v.p("elsewhere/a-moved/b/linked")).unwrap(),
        b"moving"
    );
    // No file's ciphertext changed but for the names' tags in its header's binding area
    // (its last 512 bytes): content was not re-encrypted.
    let after: BTreeSet<Vec<u8>> = walk(&v.cipher)
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| b.len() > 1000)
        .collect();
    let untagged = |set: BTreeSet<Vec<u8>>| -> BTreeSet<Vec<u8>> {
        set.into_iter()
            .map(|mut b| {
                b[512..1024].fill(0);
                b
            })
            .collect()
    };
    assert_ne!(before, after, "the moved file has a new name's tag");
    assert_eq!(untagged(before), untagged(after));
}

#[test]
fn the_same_name_in_two_directories_looks_different() {
    let v = TestVolume::new();
    {
        let _m = v.mount();
        fs::create_dir(v.p("one")).unwrap();
        fs::create_dir(v.p("two")).unwrap();
        fs::write(v.p("one/same.txt"), b"1").unwrap();
        fs::write(v.p("two/same.txt"), b"2").unwrap();
    }
    let mut leaf_names = Vec::new();
    for e in fs::read_dir(&v.cipher).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            for f in fs::read_dir(&p).unwrap() {
                let n = f.unwrap().file_name().into_string().unwrap();
                if !n.starts_with("kmsfs.dirid") {
                    leaf_names.push(n);
                }
            }
        }
    }
    assert_eq!(leaf_names.len(), 2, "{leaf_names:?}");
    assert_ne!(leaf_names[0], leaf_names[1]);
}

#[test]
fn damaged_names_and_records_are_contained() {
    let v = TestVolume::new();
    {
        let _m = v.mount();
        fs::create_dir(v.p("dir")).unwrap();
        fs::write(v.p("dir/inside"), b"in").unwrap();
        for n in ["keep1", "keep2", "victim"] {
            fs::write(v.p(n), n).unwrap();
        }
    }
    // Find the ciphertext of "victim" by elimination is not possible by name; tamper with
    // every top-level regular file name in turn would be slow, so tamper with one and
    // check that exactly one name disappears.
    let files: Vec<_> = fs::read_dir(&v.cipher)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            // kmsfs's own files: kmsfs.conf, the directory record, the volume lock.
            p.is_file() && !name.starts_with("kmsfs.") && !name.starts_with(".kmsfs-")
        })
        .collect();
    assert_eq!(files.len(), 3);
    let target = &files[0];
    let mut name = target
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
        .into_bytes();
    name[4] = if name[4] == b'A' { b'B' } else { b'A' };
    fs::rename(target, v.cipher.join(String::from_utf8(name).unwrap())).unwrap();
    fs::write(v.cipher.join("dropped-in-by-a-stranger.txt"), b"foreign").unwrap();
    // Remove the per-directory record of "dir".
    let dir = fs::read_dir(&v.cipher)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    // Without its record file, the directory still lists: its record name says its id.
    fs::remove_file(dir.join("kmsfs.dirid")).unwrap();
    {
        let _m = v.mount();
        assert_eq!(fs::read(v.p("dir/inside")).unwrap(), b"in");
    }
    remove_dir_record(&dir);

    let m = v.mount();
    let listed: Vec<String> = fs::read_dir(&v.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        listed.len(),
        3,
        "two intact files and the directory still list: {listed:?}"
    );
    assert!(listed.contains(&"dir".to_string()));
    let err = fs::read_dir(v.p("dir")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(5),
        "a directory without its record gives EIO: {err}"
    );
    assert_eq!(
        fs::metadata(v.p("dir/inside")).unwrap_err().raw_os_error(),
        Some(5)
    );
    let readable = ["keep1", "keep2", "victim"]
        .iter()
        .filter(|n| fs::read(v.p(n)).is_ok())
        .count();
    assert_eq!(readable, 2);
    let log = m.log();
    assert!(log.contains("skipping entry"), "{log}");
    assert!(
        log.contains("kmsfs.dirid record is missing or damaged"),
        "{log}"
    );
}

#[test]
fn plaintext_names_keep_names_readable() {
    let v = TestVolume::with_init_args(&["--plaintext-names"], vec![]);
    {
        let _m = v.mount();
        fs::write(v.p("visible.txt"), b"but encrypted").unwrap();
        std::os::unix::fs::symlink("target", v.p("l")).unwrap();
    }
    assert!(v.cipher.join("visible.txt").exists());
    assert_eq!(
        fs::read_link(v.cipher.join("l")).unwrap().to_str(),
        Some("target")
    );
    assert!(!contains(
        &fs::read(v.cipher.join("visible.txt")).unwrap(),
        b"but encrypted"
    ));
    let conf = fs::read_to_string(v.cipher.join("kmsfs.conf")).unwrap();
    assert!(conf.contains("\"mode\": \"plaintext\""), "{conf}");
}

#[test]
fn path_commands_map_both_ways_and_inspect_points_to_them() {
    let v = TestVolume::new();
    {
        let _m = v.mount();
        fs::create_dir_all(v.p("projects/kmsfs")).unwrap();
        fs::write(v.p(&format!("projects/kmsfs/{}", "long".repeat(50))), b"x").unwrap();
        fs::write(v.p("projects/kmsfs/notes.md"), b"y").unwrap();
    }
    let enc = v.kmsfs(&[
        "path",
        "encrypt",
        v.cipher.to_str().unwrap(),
        "projects/kmsfs/notes.md",
    ]);
    assert!(
        enc.status.success(),
        "{}",
        String::from_utf8_lossy(&enc.stderr)
    );
    let cipher_path = String::from_utf8(enc.stdout).unwrap().trim().to_owned();
    assert!(Path::new(&cipher_path).is_file(), "{cipher_path}");
    assert!(!cipher_path.contains("notes") && !cipher_path.contains("projects"));
    let dec = v.kmsfs(&["path", "decrypt", v.cipher.to_str().unwrap(), &cipher_path]);
    assert!(
        dec.status.success(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
    assert_eq!(
        String::from_utf8(dec.stdout).unwrap().trim(),
        "projects/kmsfs/notes.md"
    );
    // A long name maps too.
    let long = format!("projects/kmsfs/{}", "long".repeat(50));
    let enc = v.kmsfs(&["path", "encrypt", v.cipher.to_str().unwrap(), &long]);
    let long_cipher = String::from_utf8(enc.stdout).unwrap().trim().to_owned();
    assert!(long_cipher.contains("kmsfs.long."), "{long_cipher}");
    let dec = v.kmsfs(&["path", "decrypt", v.cipher.to_str().unwrap(), &long_cipher]);
    assert_eq!(String::from_utf8(dec.stdout).unwrap().trim(), long);
    // inspect names the volume and the command that maps the name.
    let ins = v.kmsfs(&["inspect", &cipher_path]);
    let text = String::from_utf8(ins.stdout).unwrap();
    assert!(
        text.contains("names encrypted; `kmsfs path decrypt"),
        "{text}"
    );
    // Bad input: a path outside the volume, a name that is not ours.
    let bad = v.kmsfs(&["path", "decrypt", v.cipher.to_str().unwrap(), "/etc/passwd"]);
    assert_eq!(bad.status.code(), Some(1));
    let bad = v.kmsfs(&[
        "path",
        "decrypt",
        v.cipher.to_str().unwrap(),
        "not-an-encrypted-name",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not decrypt"));
}
