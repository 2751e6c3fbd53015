//! What a real mount allows and refuses: root gets the same answers with and without the
//! kernel's permission check, a write by an unprivileged process clears set-user-ID and
//! file capabilities, a read-only mount refuses writes, and `init` and `mount` refuse bad
//! input with clear errors. The root-only checks skip themselves for other users.

mod mountkit;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use mountkit::TestVolume;

/// A write through a write-only handle bypasses the kernel's cache, and with it the
/// kernel's own clearing of set-user-ID and file capabilities: the mount clears the bits
/// when the writer lacks CAP_FSETID, as any filesystem does, and the capability goes with
/// the write of the ciphertext file that holds it.
#[test]
fn a_write_by_an_unprivileged_process_clears_set_user_id() {
    use std::os::unix::process::CommandExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let v = TestVolume::new();
    let _m = v.mount();
    for (mode, kept) in [
        (0o4755, 0o755),
        (0o2755, 0o755),
        (0o6711, 0o711),
        (0o2745, 0o2745),
    ] {
        let path = v.p(&format!("prog{mode:o}"));
        fs::write(&path, b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::chown(&path, Some(1234), Some(1234)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        // Opened by root, written by a child that runs as uid 1234 (its stdout).
        let fd = OpenOptions::new().append(true).open(&path).unwrap();
        let st = std::process::Command::new("/bin/sh")
            .args(["-c", "printf 'exit 0\\n'"])
            .uid(1234)
            .gid(1234)
            .stdout(fd)
            .status()
            .unwrap();
        assert!(st.success());
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, kept, "mode {mode:o} after the write");
        assert_eq!(fs::read(&path).unwrap(), b"#!/bin/sh\nexit 0\n");
        // Root writing keeps the bits.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"# root\n").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, mode);
    }
    // File capabilities go on any write, root's included. (The backing filesystem drops
    // them when the daemon writes the ciphertext file, with or without the cache.)
    use rustix::fs::{getxattr, setxattr, XattrFlags};
    let path = v.p("capable");
    fs::write(&path, b"x").unwrap();
    // VFS_CAP_REVISION_2, CAP_NET_BIND_SERVICE permitted.
    let mut cap = Vec::new();
    for word in [0x0200_0000u32, 1 << 10, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    setxattr(&path, "security.capability", &cap, XattrFlags::empty()).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(getxattr(&path, "security.capability", &mut buf), Ok(20));
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"y").unwrap();
    assert_eq!(
        getxattr(&path, "security.capability", &mut buf),
        Err(rustix::io::Errno::NODATA),
        "a file capability survived a write"
    );
}

#[test]
fn a_read_only_mount_refuses_writes() {
    let v = TestVolume::new();
    {
        let _m = v.mount();
        fs::write(v.p("kept"), b"as it was").unwrap();
    }
    let _m = v.mount_with(&["-o", "ro"]);
    assert_eq!(fs::read(v.p("kept")).unwrap(), b"as it was");
    let err = fs::write(v.p("kept"), b"changed").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS expected: {err}");
    assert_eq!(
        fs::write(v.p("new"), b"x").unwrap_err().raw_os_error(),
        Some(30)
    );
    assert_eq!(fs::read(v.p("kept")).unwrap(), b"as it was");
}

#[test]
fn init_and_mount_refuse_bad_input_with_clear_errors() {
    let v = TestVolume::new();
    let again = v.kmsfs(&["init", v.cipher.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already a kmsfs volume"));
    let missing = v.kmsfs(&["mount", v.cipher.to_str().unwrap(), "/nonexistent/mnt"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
    let not_volume = v.kmsfs(&[
        "mount",
        v.dir.path().to_str().unwrap(),
        v.mnt.to_str().unwrap(),
    ]);
    assert_eq!(not_volume.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_volume.stderr).contains("not a kmsfs volume"));
    let _m = v.mount();
    let busy = v.kmsfs(&["mount", v.cipher.to_str().unwrap(), v.mnt.to_str().unwrap()]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("busy"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
}

/// Runs `path`, retrying while another test's fork still holds it open for writing.
fn run(path: &std::path::Path) -> std::io::Result<std::process::ExitStatus> {
    for _ in 0..50 {
        match std::process::Command::new(path).status() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other,
        }
    }
    std::process::Command::new(path).status()
}

/// A private mount of a root daemon runs without `default_permissions` (the kernel need
/// not ask for a directory's attributes after every create and unlink); root must see
/// the same answers either way, and `-o default_permissions` or `allow_other` put the
/// kernel's check back.
#[test]
fn root_sees_the_same_permissions_with_and_without_the_kernel_checking() {
    use rustix::fs::{access, Access};
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    for (extra, kernel_checks) in [
        (&[][..], false),
        (&["-o", "default_permissions"][..], true),
        (&["-o", "allow_other"][..], true),
    ] {
        let v = TestVolume::new();
        let _m = v.mount_with(extra);
        let info = mountkit::mountinfo_line(&v.mnt).expect("mounted");
        assert_eq!(
            info.contains("default_permissions"),
            kernel_checks,
            "{extra:?}: {info}"
        );
        // Mode 000: root still reads, writes and appends.
        let f = v.p("locked");
        fs::write(&f, b"x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o000)).unwrap();
        OpenOptions::new()
            .append(true)
            .open(&f)
            .unwrap()
            .write_all(b"y")
            .unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"xy", "{extra:?}");
        access(&f, Access::READ_OK | Access::WRITE_OK).unwrap();
        // Execute needs an x bit, for root too; a directory is always searchable.
        let err = access(&f, Access::EXEC_OK).unwrap_err();
        assert_eq!(err, rustix::io::Errno::ACCESS, "{extra:?}");
        let script = v.p("script");
        fs::write(&script, b"#!/bin/sh\nexit 7\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
        let err = run(&script).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{extra:?}");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o100)).unwrap();
        access(&script, Access::EXEC_OK).unwrap();
        assert_eq!(run(&script).unwrap().code(), Some(7), "{extra:?}");
        // A directory with no bits: root searches it, lists it, creates and removes in it.
        let d = v.p("closed");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("inside"), b"z").unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o000)).unwrap();
        access(&d, Access::EXEC_OK | Access::WRITE_OK).unwrap();
        assert_eq!(fs::read(d.join("inside")).unwrap(), b"z");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
        fs::remove_file(d.join("inside")).unwrap();
        // A sticky directory: root removes another user's entry; ownership changes stick.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(d.join("theirs"), b"t").unwrap();
        std::os::unix::fs::chown(d.join("theirs"), Some(1234), Some(1234)).unwrap();
        assert_eq!(fs::metadata(d.join("theirs")).unwrap().uid(), 1234);
        fs::remove_file(d.join("theirs")).unwrap();
        fs::remove_dir(&d).unwrap();
        // A missing entry is still missing.
        let err = access(v.p("nope"), Access::EXISTS).unwrap_err();
        assert_eq!(err, rustix::io::Errno::NOENT);
    }
}
