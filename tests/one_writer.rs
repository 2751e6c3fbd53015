//! One user of a volume at a time (issue 21): a second mount, and the offline tools that
//! change a volume, are refused while a daemon serves it, with an error naming the
//! daemon's pid; the lock goes with the daemon, even when it is killed; a lock record left
//! by another host is reported.

mod mountkit;

use mountkit::TestVolume;

fn daemon_pid(v: &TestVolume) -> u64 {
    v.status()["pid"].as_u64().unwrap()
}

fn refused(out: &std::process::Output, pid: u64) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "ran on a mounted volume: {err}");
    assert!(
        err.contains(&format!("pid {pid} ")),
        "the error names no holder: {err}"
    );
    err
}

#[test]
fn a_second_mount_and_changing_tools_are_refused_while_a_daemon_serves_the_volume() {
    let v = TestVolume::new();
    let guard = v.mount();
    std::fs::write(v.p("f"), b"kept").unwrap();
    let pid = daemon_pid(&v);
    let cipher = v.cipher.to_str().unwrap();

    let second = v.dir.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let out = v.kmsfs(&["mount", cipher, second.to_str().unwrap()]);
    let guard2 = mountkit::MountGuard {
        mnt: second.clone(),
        log: v.dir.path().join("second.log"),
    };
    let err = refused(&out, pid);
    assert!(err.contains("kmsfs mount at"), "{err}");
    assert!(!mountkit::is_mounted(&second));
    drop(guard2);

    let src = v.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("g"), b"new").unwrap();
    for args in [
        vec!["rekey", cipher],
        vec!["rewrap", cipher, "--to-key", "alias/none"],
        vec!["import", src.to_str().unwrap(), cipher],
        vec!["fsck", "--repair", cipher],
    ] {
        refused(&v.kmsfs(&args), pid);
    }
    // Checking and reading tools still run beside the mount.
    assert!(v.kmsfs(&["fsck", cipher]).status.success());
    assert!(!v.cipher.join("g").exists());

    guard.unmount();
    let out = v.kmsfs(&["rekey", cipher]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _guard = v.mount();
    assert_eq!(std::fs::read(v.p("f")).unwrap(), b"kept");
}

#[test]
fn a_killed_daemon_leaves_no_lock_behind() {
    let v = TestVolume::new();
    let guard = v.mount();
    std::fs::write(v.p("f"), b"kept").unwrap();
    let pid = daemon_pid(&v);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    // Mounting again over the dead mount: the kernel dropped the dead daemon's lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed daemon did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::mem::forget(guard);
    let _guard = v.mount();
    assert_eq!(std::fs::read(v.p("f")).unwrap(), b"kept");
}

#[test]
fn a_lock_left_by_another_host_is_reported_when_the_volume_is_mounted_here() {
    let v = TestVolume::new();
    // What a mount on another host leaves on shared storage whose locks do not reach
    // this host (or after that host crashed): its record, without a lock held here.
    std::fs::write(
        v.cipher.join(".kmsfs-lock"),
        "pid 4242 (kmsfs mount at /mnt/elsewhere) on host other-host since 2026-01-01T00:00:00Z\n",
    )
    .unwrap();
    let guard = v.mount();
    let log = guard.log();
    assert!(
        log.contains("last used by pid 4242 (kmsfs mount at /mnt/elsewhere) on host other-host"),
        "no warning about the other host in the daemon's log:\n{log}"
    );
    // The lock file is internal: the mount does not show it.
    let names: Vec<_> = std::fs::read_dir(&v.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.is_empty(), "{names:?}");
}
