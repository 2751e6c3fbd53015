//! The namespace through a real mount: renames, hard links, symlinks, fifos, chmod,
//! xattrs, a listing too large for one reply, and a change made behind the mount with
//! `--cache-ttl 0`. What the ciphertext directory holds for those names is in `names.rs`.

mod common;
mod mountkit;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::pattern;
use mountkit::TestVolume;

#[test]
fn names_links_symlinks_xattrs_and_special_files() {
    let v = TestVolume::new();
    let _m = v.mount();
    fs::create_dir_all(v.p("a/b")).unwrap();
    fs::write(v.p("a/b/file"), b"contents").unwrap();
    // rename (a whole directory, then a file over another)
    fs::rename(v.p("a"), v.p("z")).unwrap();
    assert_eq!(fs::read(v.p("z/b/file")).unwrap(), b"contents");
    fs::write(v.p("other"), b"old").unwrap();
    fs::rename(v.p("z/b/file"), v.p("other")).unwrap();
    assert_eq!(fs::read(v.p("other")).unwrap(), b"contents");
    // hard link: same inode, both names read the same bytes
    fs::hard_link(v.p("other"), v.p("linked")).unwrap();
    assert_eq!(fs::metadata(v.p("linked")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(v.p("linked")).unwrap().ino(),
        fs::metadata(v.p("other")).unwrap().ino()
    );
    fs::write(v.p("linked"), b"via the link").unwrap();
    assert_eq!(fs::read(v.p("other")).unwrap(), b"via the link");
    // symlink
    std::os::unix::fs::symlink("other", v.p("sym")).unwrap();
    assert_eq!(fs::read_link(v.p("sym")).unwrap().to_str(), Some("other"));
    assert_eq!(fs::read(v.p("sym")).unwrap(), b"via the link");
    // a fifo is stored as itself
    let st = std::process::Command::new("mkfifo")
        .arg(v.p("pipe"))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(v.p("pipe")).unwrap().file_type()
    ));
    // chmod, and the listing hides kmsfs.conf
    fs::set_permissions(v.p("other"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(v.p("other")).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let names: Vec<String> = fs::read_dir(&v.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n == "kmsfs.conf"), "{names:?}");
    assert!(fs::metadata(v.p("kmsfs.conf")).is_err());
    // rmdir / unlink
    fs::remove_dir(v.p("z/b")).unwrap();
    fs::remove_file(v.p("linked")).unwrap();
    assert_eq!(fs::read(v.p("other")).unwrap(), b"via the link");
}

#[test]
fn xattrs_round_trip_through_the_syscalls() {
    let v = TestVolume::new();
    let _m = v.mount();
    fs::write(v.p("x"), b"1").unwrap();
    let path = v.p("x");
    rustix::fs::setxattr(&path, "user.k", b"value", rustix::fs::XattrFlags::empty()).unwrap();
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(&path, "user.k", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"value");
    let mut list = [0u8; 256];
    let n = rustix::fs::listxattr(&path, &mut list[..]).unwrap();
    assert!(list[..n].split(|&b| b == 0).any(|name| name == b"user.k"));
    rustix::fs::removexattr(&path, "user.k").unwrap();
    assert!(rustix::fs::getxattr(&path, "user.k", &mut buf[..]).is_err());
}

#[test]
fn a_listing_too_large_for_one_reply_carries_right_names_and_sizes_then_rm_r() {
    // Listings come with each entry's attributes (READDIRPLUS), several replies for a
    // directory this size; every name must come once, with its own size and type.
    let v = TestVolume::new();
    let _m = v.mount();
    let dir = v.p("many");
    fs::create_dir(&dir).unwrap();
    let n = 2500usize;
    for i in 0..n {
        fs::write(
            dir.join(format!("file-{i:05}")),
            pattern(i % 9000, i as u64),
        )
        .unwrap();
    }
    fs::create_dir(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink("file-00001", dir.join("link")).unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        let kind = entry.file_type().unwrap();
        let what = if kind.is_dir() {
            "dir".to_string()
        } else if kind.is_symlink() {
            "link".to_string()
        } else {
            meta.len().to_string()
        };
        assert!(
            seen.insert(name.clone(), what).is_none(),
            "{name} listed twice"
        );
    }
    assert_eq!(seen.len(), n + 2);
    for i in 0..n {
        assert_eq!(
            seen[&format!("file-{i:05}")],
            (i % 9000).to_string(),
            "file-{i:05}"
        );
    }
    assert_eq!(seen["sub"], "dir");
    assert_eq!(seen["link"], "link");
    for i in (0..n).step_by(250) {
        assert_eq!(
            fs::read(dir.join(format!("file-{i:05}"))).unwrap(),
            pattern(i % 9000, i as u64)
        );
    }
    fs::remove_dir_all(&dir).unwrap();
    assert!(!dir.exists());
    assert_eq!(fs::read_dir(v.p("")).unwrap().count(), 0);
}

#[test]
fn with_cache_ttl_zero_a_change_behind_the_mount_shows_at_once() {
    let v = TestVolume::with_init_args(&["--plaintext-names"], vec![]);
    let _m = v.mount_with(&["--cache-ttl", "0"]);
    fs::write(v.p("a"), b"one").unwrap();
    fs::write(v.p("b"), b"two").unwrap();
    assert_eq!(fs::metadata(v.p("a")).unwrap().len(), 3);
    let listed: Vec<_> = fs::read_dir(v.p("")).unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(listed.len(), 2);
    // Behind the mount: remove one ciphertext file, rename the other.
    fs::remove_file(v.cipher.join("a")).unwrap();
    fs::rename(v.cipher.join("b"), v.cipher.join("c")).unwrap();
    assert_eq!(
        fs::metadata(v.p("a")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(
        fs::metadata(v.p("b")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(fs::metadata(v.p("c")).unwrap().len(), 3);
    // A rename behind the mount is a move by whoever writes the directory: the file is
    // bound to the name `b` (`docs/format.md`, "Names bound to files").
    let refused = fs::read(v.p("c")).unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EIO));
}
