//! What a mount asks of the KMS when it is not creating files (issue 21): an idle mount
//! stops calling once its pooled keys expire, `--key-ttl 0` does not make the pool churn,
//! and a read-only mount makes no data keys, so credentials allowed only to Decrypt can
//! mount it.

mod mountkit;

use std::time::Duration;

use mountkit::{KmsServer, TestVolume};

/// GenerateDataKey calls the mount has made so far, from `kmsfs status`.
fn generated(v: &TestVolume) -> u64 {
    v.status()["kms"]["generate_data_key"].as_u64().unwrap()
}

/// The count once it has stopped changing for `quiet` (the pool's first fill is over).
fn settled(v: &TestVolume, quiet: Duration) -> u64 {
    let mut last = generated(v);
    for _ in 0..20 {
        std::thread::sleep(quiet);
        let now = generated(v);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the mount kept asking for data keys: {last} so far");
}

#[test]
fn an_idle_mount_stops_asking_for_data_keys_with_a_short_key_ttl() {
    let v = TestVolume::new();
    // The key cache's lifetime no longer sets how long pooled keys live.
    let _m = v.mount_with(&["--key-ttl", "1s"]);
    std::fs::write(v.p("f"), b"x").unwrap();
    let before = settled(&v, Duration::from_millis(300));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(generated(&v), before, "an idle mount kept making data keys");
}

#[test]
fn pooled_keys_expire_and_the_pool_sleeps_until_the_next_create() {
    let v = TestVolume::new();
    let _m = v.mount_with(&["--pool-key-lifetime", "1s"]);
    std::fs::write(v.p("f"), b"x").unwrap();
    // Within two lifetimes of the last create the pool has let its keys go and is asleep.
    std::thread::sleep(Duration::from_secs(3));
    let asleep = generated(&v);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(generated(&v), asleep, "an idle pool kept making data keys");
    std::fs::write(v.p("g"), b"y").unwrap();
    assert!(
        generated(&v) > asleep,
        "a create after the idle spell made no key"
    );
    assert_eq!(std::fs::read(v.p("g")).unwrap(), b"y");
}

#[test]
fn key_ttl_zero_caches_nothing_and_does_not_churn_the_pool() {
    let v = TestVolume::new();
    let _m = v.mount_with(&["--key-ttl", "0"]);
    for i in 0..10 {
        std::fs::write(v.p(&format!("f{i}")), [i as u8; 100]).unwrap();
    }
    for i in 0..10 {
        assert_eq!(
            std::fs::read(v.p(&format!("f{i}"))).unwrap(),
            [i as u8; 100]
        );
    }
    let before = settled(&v, Duration::from_millis(300));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(generated(&v), before, "the pool keeps remaking keys");
}

#[test]
fn a_read_only_mount_needs_only_decrypt() {
    let tmp = tempfile::tempdir().unwrap();
    // Two access keys on the KMS: one for everything, one allowed only to Decrypt.
    std::fs::write(
        tmp.path().join("kms-state.json.credentials"),
        "[default]\naws_access_key_id = AKIAFULL\naws_secret_access_key = f\n\
         [reader]\naws_access_key_id = AKIAREAD\naws_secret_access_key = r\n\
         kms_allowed_operations = Decrypt\n",
    )
    .unwrap();
    let kms = KmsServer::start(tmp.path(), 0, &[]);
    let key = kms.create_key();
    let mut v = TestVolume::with_init_args(&["--kms-endpoint", &kms.url, "--key", &key], kms.env());
    let m = v.mount();
    std::fs::write(v.p("f"), b"written with full access").unwrap();
    m.unmount();

    v.env.push(("AWS_PROFILE".into(), "reader".into()));
    let _m = v.mount_with(&["-o", "ro"]);
    assert_eq!(
        std::fs::read(v.p("f")).unwrap(),
        b"written with full access"
    );
    assert_eq!(generated(&v), 0);
}
