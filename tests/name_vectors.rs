//! Golden vectors for encrypted names, symlink targets and xattr values
//! (`tests/vectors/names/names.json`, `docs/format.md` "Names").
//! `KMSFS_REGEN_VECTORS=1` rewrites the file; otherwise the test checks that the code
//! still produces it byte for byte and that every stored form reads back.

use std::ffi::OsStr;
use std::path::PathBuf;

use kmsfs::crypto::{ValueCipher, LABEL_SYMLINK_KEY, LABEL_XATTR_KEY};
use kmsfs::format::names::encode_name;
use kmsfs::namespace::Names;
use kmsfs::secret::DataKey;
use serde_json::{json, Value};

const NAMES_KEY: [u8; 32] = [0x4e; 32];

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/names/names.json")
}

fn build() -> Value {
    let key = || DataKey::from_slice(&NAMES_KEY).unwrap();
    let names = Names::encrypted(key());
    let mut name_cases = Vec::new();
    for dir_id in [[0u8; 16], [0xd1; 16]] {
        let dir = names.for_dir(Some(dir_id), false);
        for plain in [
            "a".to_string(),
            "report-2025.pdf".to_string(),
            "日本語.txt".to_string(),
            "n".repeat(175),
            "n".repeat(176),
            "x".repeat(255),
        ] {
            let c = names.encrypt(&dir, OsStr::new(&plain)).unwrap();
            name_cases.push(json!({
                "dir_id_hex": hex::encode(dir_id),
                "plain": plain,
                "on_disk": c.on_disk.to_str().unwrap(),
                "long_name_file": c.long,
            }));
        }
    }
    let symlinks = ValueCipher::new(&key(), LABEL_SYMLINK_KEY);
    let symlink_cases: Vec<Value> = ["../target", "/etc/passwd"]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let nonce = [i as u8 + 1; 12];
            let stored = encode_name(&symlinks.seal_with_nonce(b"", t.as_bytes(), nonce));
            json!({"target": t, "nonce_hex": hex::encode(nonce), "stored": stored})
        })
        .collect();
    let xattrs = ValueCipher::new(&key(), LABEL_XATTR_KEY);
    let binding = [0xf1u8; 16];
    let name = "user.color";
    let mut aad = (binding.len() as u32).to_be_bytes().to_vec();
    aad.extend_from_slice(&binding);
    aad.extend_from_slice(name.as_bytes());
    let stored = xattrs.seal_with_nonce(&aad, b"blue", [9; 12]);
    json!({
        "description": "Encrypted names, symlink targets and xattr values under one names key (docs/format.md, Names).",
        "names_key_hex": hex::encode(NAMES_KEY),
        "names": name_cases,
        "symlinks": symlink_cases,
        "xattrs": [{"binding_hex": hex::encode(binding), "name": name, "value": "blue", "nonce_hex": hex::encode([9u8; 12]), "stored_hex": hex::encode(stored)}],
    })
}

#[test]
fn name_vectors_are_reproducible_and_read_back() {
    let built = serde_json::to_string_pretty(&build()).unwrap() + "\n";
    if std::env::var_os("KMSFS_REGEN_VECTORS").is_some() {
        std::fs::write(path(), &built).unwrap();
    }
    let committed = std::fs::read_to_string(path()).expect("run scripts/gen-vectors.sh");
    assert_eq!(
        committed, built,
        "names.json differs from what the code writes now: a format change?"
    );

    // Reading side, from the committed file alone.
    let v: Value = serde_json::from_str(&committed).unwrap();
    let key =
        DataKey::from_slice(&hex::decode(v["names_key_hex"].as_str().unwrap()).unwrap()).unwrap();
    let names = Names::encrypted(key);
    let cases = v["names"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for c in cases {
        let id: [u8; 16] = hex::decode(c["dir_id_hex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let dir = names.for_dir(Some(id), false);
        let on_disk = OsStr::new(c["on_disk"].as_str().unwrap());
        assert!(on_disk.len() <= 255);
        let long_name = c["long_name_file"].as_str().map(str::as_bytes);
        assert_eq!(long_name.is_some(), names.needs_long_name_file(on_disk));
        let plain = names.decrypt(&dir, on_disk, long_name).unwrap();
        assert_eq!(plain.to_str().unwrap(), c["plain"].as_str().unwrap());
    }
    for s in v["symlinks"].as_array().unwrap() {
        let got = names
            .open_symlink(s["stored"].as_str().unwrap().as_bytes())
            .unwrap();
        assert_eq!(got, s["target"].as_str().unwrap().as_bytes());
    }
    for x in v["xattrs"].as_array().unwrap() {
        let binding = hex::decode(x["binding_hex"].as_str().unwrap()).unwrap();
        let stored = hex::decode(x["stored_hex"].as_str().unwrap()).unwrap();
        let got = names
            .open_xattr(&binding, OsStr::new(x["name"].as_str().unwrap()), &stored)
            .unwrap();
        assert_eq!(got, x["value"].as_str().unwrap().as_bytes());
    }
}
