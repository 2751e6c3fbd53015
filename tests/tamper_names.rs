//! Names bound to files (issue 20): whoever can write the ciphertext directory cannot
//! swap, move or copy files there unnoticed, on volumes with encrypted and with
//! plaintext names; renames and links through the mount keep every file readable.

mod mountkit;

use std::fs;
use std::path::{Path, PathBuf};

use mountkit::{cipher_of, TestVolume};

/// A volume with encrypted names (`false`) or plaintext names (`true`).
fn volume(plaintext_names: bool) -> TestVolume {
    if plaintext_names {
        TestVolume::with_init_args(&["--plaintext-names"], vec![])
    } else {
        TestVolume::new()
    }
}

fn io_error(path: &Path) -> i32 {
    let err = fs::read(path).expect_err("a file out of place must not be read");
    err.raw_os_error().unwrap_or(0)
}

/// The three-step swap of two ciphertext files an attacker does with `mv`.
fn swap(a: &Path, b: &Path) {
    let t = a.with_extension("swap-tmp");
    fs::rename(a, &t).unwrap();
    fs::rename(b, a).unwrap();
    fs::rename(&t, b).unwrap();
}

fn write_files(v: &TestVolume) -> (PathBuf, PathBuf, PathBuf) {
    let m = v.mount();
    fs::create_dir(v.p("sub")).unwrap();
    fs::write(v.p("a"), b"contents of a").unwrap();
    fs::write(v.p("b"), b"contents of b").unwrap();
    fs::write(v.p("sub/c"), b"contents of c").unwrap();
    m.unmount();
    (cipher_of(v, "a"), cipher_of(v, "b"), cipher_of(v, "sub/c"))
}

fn fsck(v: &TestVolume) -> (bool, String) {
    let out = v.kmsfs(&["fsck", v.cipher.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn swapped_and_copied_files_are_refused(plaintext_names: bool) {
    let v = volume(plaintext_names);
    let (a, b, c) = write_files(&v);
    swap(&a, &b);
    {
        let _m = v.mount();
        assert_eq!(io_error(&v.p("a")), libc::EIO);
        assert_eq!(io_error(&v.p("b")), libc::EIO);
        assert_eq!(fs::read(v.p("sub/c")).unwrap(), b"contents of c");
    }
    let refused = v
        .audit_records()
        .into_iter()
        .filter(|r| r.to_string().contains("name_binding"))
        .count();
    assert!(refused >= 2, "each refused open is audited");
    let (ok, report) = fsck(&v);
    assert!(!ok, "fsck must fail on swapped files: {report}");
    assert!(report.contains("name_binding"), "{report}");
    swap(&a, &b);
    assert!(fsck(&v).0, "swapped back, the volume is whole again");

    // A file from another directory copied over `a`.
    fs::copy(&c, &a).unwrap();
    {
        let _m = v.mount();
        assert_eq!(io_error(&v.p("a")), libc::EIO);
    }
    assert!(!fsck(&v).0);
    let dest = v.dir.path().join("export");
    let out = v.kmsfs(&["export", v.cipher.to_str().unwrap(), dest.to_str().unwrap()]);
    assert!(!out.status.success(), "export must not write a moved file");
    assert_ne!(
        fs::read(dest.join("a")).ok().as_deref(),
        Some(&b"contents of c"[..])
    );
}

#[test]
fn swapped_and_copied_files_are_refused_with_encrypted_names() {
    swapped_and_copied_files_are_refused(false);
}

#[test]
fn swapped_and_copied_files_are_refused_with_plaintext_names() {
    swapped_and_copied_files_are_refused(true);
}

/// With plaintext names an attacker can also move a file to another directory under
/// its own name.
#[test]
fn a_file_moved_to_another_directory_is_refused() {
    let v = volume(true);
    let (_, _, c) = write_files(&v);
    fs::rename(&c, v.cipher.join("c")).unwrap();
    let _m = v.mount();
    assert_eq!(io_error(&v.p("c")), libc::EIO);
}

fn renames_and_links_keep_files_readable(plaintext_names: bool) {
    let v = volume(plaintext_names);
    write_files(&v);
    let m = v.mount();
    let mtime = |p: &str| fs::metadata(v.p(p)).unwrap().modified().unwrap();
    let before = mtime("a");
    fs::rename(v.p("a"), v.p("sub/a2")).unwrap();
    assert_eq!(
        mtime("sub/a2"),
        before,
        "a rename keeps the modification time"
    );
    fs::hard_link(v.p("b"), v.p("sub/b-link")).unwrap();
    fs::rename(v.p("sub/c"), v.p("b")).unwrap(); // over a file that has another link
    fs::write(v.p("d"), b"contents of d").unwrap();
    fs::set_permissions(
        v.p("d"),
        std::os::unix::fs::PermissionsExt::from_mode(0o444),
    )
    .unwrap();
    fs::rename(v.p("d"), v.p("d2")).unwrap();
    let long = "L".repeat(200);
    fs::rename(v.p("d2"), v.p(&long)).unwrap();
    fs::hard_link(v.p(&long), v.p("d3")).unwrap();
    fs::remove_file(v.p(&long)).unwrap();
    let expect = [
        ("sub/a2", &b"contents of a"[..]),
        ("sub/b-link", b"contents of b"),
        ("b", b"contents of c"),
        ("d3", b"contents of d"),
    ];
    for (p, want) in expect {
        assert_eq!(fs::read(v.p(p)).unwrap(), want, "{p} through the mount");
    }
    m.unmount();
    let _m = v.mount();
    for (p, want) in expect {
        assert_eq!(fs::read(v.p(p)).unwrap(), want, "{p} after a remount");
    }
    drop(_m);
    let (ok, report) = fsck(&v);
    assert!(ok, "{report}");
}

#[test]
fn renames_and_links_keep_files_readable_with_encrypted_names() {
    renames_and_links_keep_files_readable(false);
}

#[test]
fn renames_and_links_keep_files_readable_with_plaintext_names() {
    renames_and_links_keep_files_readable(true);
}

/// `rename(2)` with `RENAME_EXCHANGE` swaps two names through the mount: both files are
/// bound to their new names.
#[test]
fn an_exchange_through_the_mount_keeps_both_files_readable() {
    let v = volume(false);
    write_files(&v);
    let _m = v.mount();
    let (a, b) = (
        std::ffi::CString::new(v.p("a").to_str().unwrap()).unwrap(),
        std::ffi::CString::new(v.p("b").to_str().unwrap()).unwrap(),
    );
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(fs::read(v.p("a")).unwrap(), b"contents of b");
    assert_eq!(fs::read(v.p("b")).unwrap(), b"contents of a");
}

/// A file whose header names a KMS key the volume does not use is refused, even when
/// everything else about it checks: here it is made by a second volume on the same KMS
/// given the first one's id, names key and root directory id, so only its key differs.
#[test]
fn a_file_under_another_key_is_refused() {
    let v = volume(true);
    write_files(&v);
    let other = v.dir.path().join("other");
    // The second volume is used as from another machine (its own record of known
    // volumes), where its edited configuration is accepted with `kmsfs trust`.
    let state2 = v.dir.path().join("state2");
    let kmsfs2 = |args: &[&str]| {
        v.command()
            .env("XDG_STATE_HOME", &state2)
            .args(args)
            .output()
            .unwrap()
    };
    let out = kmsfs2(&["init", other.to_str().unwrap(), "--plaintext-names"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&fs::read(dir.join("kmsfs.conf")).unwrap()).unwrap()
    };
    let (mine, mut theirs) = (conf(&v.cipher), conf(&other));
    assert_ne!(mine["key_arn"], theirs["key_arn"]);
    theirs["volume_id"] = mine["volume_id"].clone();
    theirs["names"] = mine["names"].clone();
    fs::write(other.join("kmsfs.conf"), theirs.to_string()).unwrap();
    for dir in [&other, &v.cipher] {
        for e in fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.starts_with("kmsfs.dirid") {
                if dir == &other {
                    fs::remove_file(other.join(&name)).unwrap();
                } else {
                    fs::copy(v.cipher.join(&name), other.join(&name)).unwrap();
                }
            }
        }
    }
    let mnt = v.dir.path().join("other-mnt");
    fs::create_dir(&mnt).unwrap();
    let (o, m) = (other.to_str().unwrap(), mnt.to_str().unwrap());
    let out = kmsfs2(&["trust", o]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = v.dir.path().join("other-audit.jsonl");
    let out = kmsfs2(&["mount", o, m, "--audit-log", audit.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guard = mountkit::MountGuard {
        mnt: mnt.clone(),
        log: v.dir.path().join("unused.log"),
    };
    fs::write(mnt.join("a"), b"the attacker's a").unwrap();
    drop(guard);
    fs::copy(other.join("a"), v.cipher.join("a")).unwrap();
    let _m = v.mount();
    assert_eq!(io_error(&v.p("a")), libc::EIO);
    let refused = v
        .audit_records()
        .iter()
        .any(|r| r.to_string().contains("foreign_key"));
    assert!(refused, "the refusal is audited");
}
