//! The volume's configuration is authenticated and pinned (issue 20): whoever can write
//! `kmsfs.conf` cannot point the volume at another key or KMS, or take its protections
//! away, without the mount and the offline tools refusing it with what changed and how
//! to accept a change made on purpose (`kmsfs trust`).

mod mountkit;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use mountkit::TestVolume;

fn conf(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join("kmsfs.conf")).unwrap()).unwrap()
}

fn put_conf(dir: &Path, c: &serde_json::Value) {
    fs::write(
        dir.join("kmsfs.conf"),
        serde_json::to_string_pretty(c).unwrap(),
    )
    .unwrap();
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Tries to mount `v`; unmounts at once if that worked. The command's output.
fn try_mount(v: &TestVolume) -> Output {
    let args = [
        "mount",
        v.cipher.to_str().unwrap(),
        v.mnt.to_str().unwrap(),
        "--audit-log",
        v.audit.to_str().unwrap(),
    ];
    let out = v.kmsfs(&args);
    drop(mountkit::MountGuard {
        mnt: v.mnt.clone(),
        log: v.dir.path().join("unused.log"),
    });
    out
}

/// A second key in the volume's own KMS: the key of another volume made beside it.
fn another_key(v: &TestVolume) -> String {
    let other = v.dir.path().join("other");
    assert!(v.kmsfs(&["init", other.to_str().unwrap()]).status.success());
    conf(&other)["key_arn"].as_str().unwrap().to_owned()
}

fn fresh() -> TestVolume {
    let v = TestVolume::new();
    let m = v.mount();
    fs::write(v.p("f"), b"data").unwrap();
    m.unmount();
    v
}

#[test]
fn an_edited_key_is_refused_with_what_changed_and_how_to_accept_it() {
    let v = fresh();
    let mut c = conf(&v.cipher);
    let mine = c["key_arn"].as_str().unwrap().to_owned();
    let theirs = another_key(&v);
    c["key_arn"] = theirs.clone().into();
    put_conf(&v.cipher, &c);
    let out = try_mount(&v);
    assert!(
        !out.status.success(),
        "mounted with another key: {}",
        text(&out)
    );
    let msg = text(&out);
    assert!(msg.contains(&mine) && msg.contains(&theirs), "{msg}");
    assert!(msg.contains("kmsfs trust"), "{msg}");
    let fsck = v.kmsfs(&["fsck", v.cipher.to_str().unwrap()]);
    assert!(!fsck.status.success(), "fsck: {}", text(&fsck));
    assert!(text(&fsck).contains("key_arn was"), "{}", text(&fsck));
}

#[test]
fn an_edited_kms_is_refused() {
    let v = fresh();
    let mut c = conf(&v.cipher);
    let planted = v.dir.path().join("attacker-kms/state.json");
    c["kms"]["state"] = planted.to_str().unwrap().into();
    put_conf(&v.cipher, &c);
    let out = try_mount(&v);
    assert!(
        !out.status.success(),
        "mounted with another KMS: {}",
        text(&out)
    );
    assert!(text(&out).contains("kms was"), "{}", text(&out));
    assert!(!planted.exists(), "the planted KMS was never opened");
}

#[test]
fn any_other_edit_fails_the_configuration_mac() {
    let v = fresh();
    let original = conf(&v.cipher);
    let another = another_key(&v);
    type Edit<'a> = Box<dyn Fn(&mut serde_json::Value) + 'a>;
    // What is edited, and what the refusal says.
    let edits: [(&str, Edit, &str); 3] = [
        (
            "a key added for headers",
            Box::new(|c| c["other_key_arns"] = vec![another.clone()].into()),
            "does not authenticate",
        ),
        (
            "names no longer bound",
            Box::new(|c| c["bound_names"] = false.into()),
            "does not authenticate",
        ),
        (
            "the mac removed",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("mac");
            }),
            "was signed",
        ),
    ];
    for (what, edit, says) in &edits {
        let mut c = original.clone();
        edit(&mut c);
        put_conf(&v.cipher, &c);
        let out = try_mount(&v);
        assert!(!out.status.success(), "{what}: mounted: {}", text(&out));
        assert!(text(&out).contains(says), "{what}: {}", text(&out));
    }
    put_conf(&v.cipher, &original);
    let out = try_mount(&v);
    assert!(out.status.success(), "the original mounts: {}", text(&out));
}

/// A volume stripped of its names key, MAC and binding looks like one made by an older
/// kmsfs; this machine knows it was signed.
#[test]
fn a_configuration_stripped_of_its_signature_is_refused() {
    let v = fresh();
    let mut c = conf(&v.cipher);
    let obj = c.as_object_mut().unwrap();
    obj.remove("mac");
    obj.remove("bound_names");
    c["names"] = serde_json::json!({"mode": "plaintext"});
    put_conf(&v.cipher, &c);
    let out = try_mount(&v);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("was signed"), "{}", text(&out));
}

/// On another machine (its own state directory) the first use records the volume; a
/// rewrap made elsewhere is then refused until accepted with `kmsfs trust`.
#[test]
fn a_change_made_on_purpose_is_accepted_with_trust() {
    let v = fresh();
    let state_b: PathBuf = v.dir.path().join("machine-b");
    let on_b = |args: &[&str]| {
        v.command()
            .env("XDG_STATE_HOME", &state_b)
            .args(args)
            .output()
            .unwrap()
    };
    let (c, m) = (v.cipher.to_str().unwrap(), v.mnt.to_str().unwrap());
    let audit = v.audit.to_str().unwrap();
    let out = on_b(&["fsck", c]);
    assert!(
        out.status.success(),
        "first use on machine b: {}",
        text(&out)
    );
    let key = another_key(&v);
    let out = v.kmsfs(&["rewrap", c, "--to-key", &key]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        try_mount(&v).status.success(),
        "rewrap records its change here"
    );
    let guard = || mountkit::MountGuard {
        mnt: v.mnt.clone(),
        log: v.dir.path().join("unused.log"),
    };
    let out = on_b(&["mount", c, m, "--audit-log", audit]);
    let _refused = guard(); // unmounts if the refusal failed
    assert!(
        !out.status.success(),
        "machine b must refuse: {}",
        text(&out)
    );
    let out = on_b(&["trust", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("key_arn was"), "{}", text(&out));
    drop(_refused);
    let out = on_b(&["mount", c, m, "--audit-log", audit]);
    let _mounted = guard();
    assert!(out.status.success(), "after trust: {}", text(&out));
    assert_eq!(fs::read(v.p("f")).unwrap(), b"data");
}

/// A rewrap killed after it saved the configuration under the new key, before it recorded
/// that key as known: the volume still opens on this machine, where the rewrap had said
/// which key it was moving to; with no such rewrap under way, the same state is refused.
#[test]
fn a_rewrap_cut_short_between_its_two_records_still_opens() {
    let v = fresh();
    let c = v.cipher.to_str().unwrap();
    let old_key = conf(&v.cipher)["key_arn"].as_str().unwrap().to_owned();
    let new_key = another_key(&v);
    let out = v.kmsfs(&["rewrap", c, "--to-key", &new_key]);
    assert!(out.status.success(), "{}", text(&out));
    let pins_path = v.dir.path().join("state/kmsfs/known-volumes.json");
    let mut pins: serde_json::Value =
        serde_json::from_slice(&fs::read(&pins_path).unwrap()).unwrap();
    let id = conf(&v.cipher)["volume_id"].as_str().unwrap().to_owned();
    pins[&id]["key_arn"] = old_key.into();
    pins[&id]["rewrap_to"] = new_key.into();
    fs::write(&pins_path, pins.to_string()).unwrap();
    let out = try_mount(&v);
    assert!(out.status.success(), "cut-short rewrap: {}", text(&out));
    pins[&id].as_object_mut().unwrap().remove("rewrap_to");
    fs::write(&pins_path, pins.to_string()).unwrap();
    let out = try_mount(&v);
    assert!(!out.status.success(), "no rewrap under way: {}", text(&out));
}
