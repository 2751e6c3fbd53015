//! A KMS that accepts connections and never answers (issue 21): opens that need it fail
//! with EIO within `--kms-timeout`, callers waiting for the same key share one call and its
//! error, requests that need no KMS call (a cached key, an open file, `stat`, a listing)
//! are answered meanwhile, `kmsfs status` says the KMS is unreachable, and the mount
//! recovers by itself when the KMS answers again.

mod mountkit;

use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mountkit::{KmsServer, TestVolume};

/// A KMS that takes connections on `port` and never says a word, until dropped.
struct Silent {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Silent {
    fn on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((conn, _)) = listener.accept() {
                    held.push(conn);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self { stop }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on a thread of its own and waits at most `limit` for it: a FUSE request stuck
/// behind the KMS must not hang the test.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

#[test]
fn a_silent_kms_fails_opens_in_bounded_time_and_blocks_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kms = KmsServer::start(tmp.path(), 0, &[]);
    let key = kms.create_key();
    let v = TestVolume::with_init_args(&["--kms-endpoint", &kms.url, "--key", &key], kms.env());
    let m = v.mount();
    for i in 0..24 {
        std::fs::write(v.p(&format!("f{i}")), format!("file {i}")).unwrap();
    }
    drop(m);
    // Fewer FUSE threads than uncached opens: on a mount that waits on the KMS in them,
    // nothing else is answered until the opens give up.
    let _m = v.mount_with(&["--kms-timeout", "3s", "--threads", "4"]);
    assert_eq!(std::fs::read(v.p("f0")).unwrap(), b"file 0");
    let held = std::fs::File::open(v.p("f1")).unwrap();
    let port = kms.port;
    kms.stop();
    let _silent = Silent::on(port);

    // Twenty opens of files whose keys are not cached, all at once.
    let started = Instant::now();
    let opens: Vec<_> = (4..24)
        .map(|i| {
            let p = v.p(&format!("f{i}"));
            std::thread::spawn(move || (std::fs::read(p), Instant::now()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile: a cached key, an open file, a stat and a listing answer at once.
    let (cached, mnt) = (v.p("f0"), v.mnt.clone());
    let read = within(
        Duration::from_secs(2),
        "reading a file whose key is cached",
        move || std::fs::read(cached).unwrap(),
    );
    assert_eq!(read, b"file 0");
    let read = within(Duration::from_secs(2), "reading an open file", move || {
        let mut buf = [0u8; 6];
        held.read_exact_at(&mut buf, 0).unwrap();
        buf
    });
    assert_eq!(&read, b"file 1");
    let listed = within(Duration::from_secs(2), "listing the mount", move || {
        std::fs::read_dir(&mnt).unwrap().count()
    });
    assert_eq!(listed, 24);
    let s = v.status();
    assert!(s["kms"]["in_flight"].as_u64().unwrap() >= 1, "{s}");

    for open in opens {
        let (result, done) = open.join().unwrap();
        let err = result.expect_err("an open succeeded with the KMS silent");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        let took = done - started;
        assert!(
            took < Duration::from_secs(10),
            "an open waited {took:?} for the KMS"
        );
    }
    // The calls behind the opens give up at the same deadline, but may end a moment after
    // the opens were answered: wait a bounded while for them to be counted.
    let mut s = v.status();
    let until = Instant::now() + Duration::from_secs(5);
    while s["kms"]["health"] != "unreachable" && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        s = v.status();
    }
    assert_eq!(s["kms"]["health"], "unreachable", "{s}");
    assert!(
        s["kms"]["last_error"]
            .as_str()
            .unwrap()
            .contains("no answer"),
        "{s}"
    );
}

#[test]
fn callers_waiting_for_one_key_share_its_call_and_error_then_recover_with_the_kms() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kms = KmsServer::start(tmp.path(), 0, &[]);
    let key = kms.create_key();
    let v = TestVolume::with_init_args(&["--kms-endpoint", &kms.url, "--key", &key], kms.env());
    let m = v.mount();
    std::fs::write(v.p("shared"), b"one key").unwrap();
    drop(m);
    let _m = v.mount_with(&["--kms-timeout", "3s"]);
    let port = kms.port;
    kms.stop();
    let silent = Silent::on(port);
    let before = v.status()["kms"]["decrypt"].as_u64().unwrap();

    let started = Instant::now();
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let p = v.p("shared");
            std::thread::spawn(move || std::fs::read(p))
        })
        .collect();
    for open in opens {
        let err = open.join().unwrap().expect_err("read with the KMS silent");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }
    // One call, shared: not eight calls made one after another.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let s = v.status();
    assert_eq!(s["kms"]["decrypt"].as_u64().unwrap() - before, 1, "{s}");

    // The KMS answers again on the same port: the same mount recovers by itself.
    drop(silent);
    let _kms = KmsServer::start(tmp.path(), port, &[]);
    assert_eq!(std::fs::read(v.p("shared")).unwrap(), b"one key");
    assert_eq!(v.status()["kms"]["health"], "ok");
}
