//! The engine's own tests: due deletions and rotations, changes that cannot be saved,
//! several engines (several processes) on one state file, backup and restore.

use super::*;
use access::Who;

fn create(engine: &Engine) -> String {
    let out = engine.call("CreateKey", b"{}").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned()
}

fn describe(engine: &Engine, id: &str) -> Result<Vec<u8>, KmsError> {
    engine.call("DescribeKey", format!(r#"{{"KeyId":"{id}"}}"#).as_bytes())
}

/// A blob of "x" sealed under key `id`.
fn seal_x(engine: &Engine, id: &str) -> Vec<u8> {
    let x = SecretBytes::from_slice(b"x").unwrap();
    engine.encrypt(id, &x, &Default::default()).unwrap()
}

/// Checks that `blob` opens under key `id` to "x".
fn opens_to_x(engine: &Engine, id: &str, blob: &[u8]) {
    let (plain, _) = engine
        .open_blob(
            (Who::Local, "Decrypt"),
            Some(id),
            blob,
            &EncryptionContext::new(),
        )
        .unwrap();
    assert_eq!(plain.expose_secret(), b"x");
}

fn listed(engine: &Engine) -> Vec<String> {
    let out = engine.call("ListKeys", br#"{"Limit":1000}"#).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let mut ids: Vec<String> = v["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["KeyId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Changes the state file as another process would: under its lock, from a fresh read.
fn edit_file(path: &Path, f: impl FnOnce(&mut State)) {
    let _lock = store::lock(path, Mode::Exclusive).unwrap();
    let mut st = State::from_bytes(&std::fs::read(path).unwrap()).unwrap();
    f(&mut st);
    st.save(path).unwrap();
}

fn make_rotation_due(st: &mut State, id: &str) {
    let k = st.keys.get_mut(id).unwrap();
    k.rotation_enabled = true;
    k.rotation_anchor = 0.0;
}

fn versions_on_disk(path: &Path, id: &str) -> usize {
    State::from_bytes(&std::fs::read(path).unwrap())
        .unwrap()
        .keys[id]
        .versions
        .len()
}

#[test]
fn due_deletions_purge_and_due_rotations_add_a_version() {
    let engine = Engine::in_memory();
    let (gone, rotating) = (create(&engine), create(&engine));
    let blob = seal_x(&engine, &rotating);
    {
        let mut st = engine.state.lock().unwrap();
        let k = st.keys.get_mut(&gone).unwrap();
        k.state = KeyState::PendingDeletion;
        k.deletion_date = Some(1.0);
        make_rotation_due(&mut st, &rotating);
    }
    assert!(matches!(
        describe(&engine, &gone),
        Err(KmsError::NotFound(_))
    ));
    assert_eq!(
        engine.state.lock().unwrap().keys[&rotating].versions.len(),
        2
    );
    opens_to_x(&engine, &rotating, &blob);
}

#[test]
fn changes_that_cannot_be_saved_are_undone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let engine = Engine::open(&path).unwrap();
    let id = create(&engine);
    edit_file(&path, |st| make_rotation_due(st, &id));
    // A directory where the atomic write puts its temp file makes every save fail.
    let tmp = dir
        .path()
        .join(format!(".state.json.tmp{}", std::process::id()));
    std::fs::create_dir(&tmp).unwrap();
    let e = describe(&engine, &id).unwrap_err();
    assert_eq!(e.aws_code(), "KMSInternalException");
    let e = engine.call(
        "RotateKeyOnDemand",
        format!(r#"{{"KeyId":"{id}"}}"#).as_bytes(),
    );
    assert_eq!(e.unwrap_err().aws_code(), "KMSInternalException");
    assert_eq!(engine.state.lock().unwrap().keys[&id].versions.len(), 1);
    assert_eq!(versions_on_disk(&path, &id), 1);
    std::fs::remove_dir(&tmp).unwrap();
    describe(&engine, &id).unwrap();
    assert_eq!(versions_on_disk(&path, &id), 2);
}

#[test]
fn two_engines_on_one_file_lose_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let engines = [Engine::open(&path).unwrap(), Engine::open(&path).unwrap()];
    let mut made: Vec<String> = (0..8).map(|i| create(&engines[i % 2])).collect();
    made.sort();
    for e in engines.iter().chain([&Engine::open(&path).unwrap()]) {
        assert_eq!(listed(e), made);
    }

    // A rotation one engine applies keeps the key the other made after it last read.
    let rotating = made[0].clone();
    let blob = seal_x(&engines[1], &rotating);
    edit_file(&path, |st| make_rotation_due(st, &rotating));
    made.push(create(&engines[1]));
    made.sort();
    describe(&engines[0], &rotating).unwrap();
    assert_eq!(versions_on_disk(&path, &rotating), 2);
    for e in &engines {
        assert_eq!(listed(e), made);
        opens_to_x(e, &rotating, &blob);
    }
}

#[test]
fn restore_adds_what_is_missing_and_refuses_other_material() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let engine = Engine::open(&path).unwrap();
    let kept = create(&engine);
    let (saved, n) = backup::snapshot(&path).unwrap();
    assert_eq!(n, 1);

    std::fs::remove_file(&path).unwrap();
    let fresh = Engine::open(&path).unwrap();
    let newer = create(&fresh);
    let report = fresh.restore(&saved).unwrap();
    assert_eq!(report.keys_added, vec![kept.clone()]);
    let (now, n) = backup::snapshot(&path).unwrap();
    assert_eq!(n, 2, "{newer} and {kept}");

    let again = fresh.restore(&saved).unwrap();
    assert!(again.keys_added.is_empty());
    assert_eq!(again.keys_unchanged, 1);

    // The same key id with other material: refused, and the state is left as it was.
    let mut forged = State::from_bytes(&saved).unwrap();
    forged.keys.get_mut(&kept).unwrap().versions[0] = crate::secret::DataKey::generate().unwrap();
    let e = fresh.restore(&forged.to_bytes()).unwrap_err();
    assert!(
        matches!(e, backup::RestoreError::Conflict(ref id) if *id == kept),
        "{e}"
    );
    assert_eq!(*backup::snapshot(&path).unwrap().0, *now);
}
