//! Golden test vectors (`tests/vectors/`): they pin the on-disk format across versions.
//!
//! `KMSFS_REGEN_VECTORS=1 cargo test --test vectors` (what `scripts/gen-vectors.sh` runs)
//! rewrites them from fixed seeds; normally this test only reads them. Two checks:
//! every committed vector reads exactly as its JSON says (plaintext hash, or error), and
//! regenerating gives the committed bytes (a format change cannot slip through).

#[path = "vectorkit/mod.rs"]
mod vectorkit;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kmsfs::file;
use kmsfs::format::Header;
use kmsfs::secret::DataKey;
use serde_json::Value;
use vectorkit::{bucket, sha, v1, v2, v3, v4, Vector};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Every vector, in the order they were first written.
fn all_vectors() -> Vec<Vector> {
    let mut all = v1::valid_files();
    all.extend(v1::header_damage());
    all.extend(v1::block_damage());
    all.extend(v2::valid_files());
    all.extend(v2::broken_files());
    all.extend(v3::valid_files());
    all.extend(v3::broken_files());
    all.extend(v3::bound_files());
    all.extend(bucket::bucket_files());
    all.extend(v4::valid_files());
    all.extend(v4::broken_files());
    all
}

fn json_text(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

#[test]
fn vectors_are_reproducible() {
    let vectors = all_vectors();
    if std::env::var_os("KMSFS_REGEN_VECTORS").is_some() {
        std::fs::create_dir_all(dir()).unwrap();
        for entry in std::fs::read_dir(dir()).unwrap() {
            let path = entry.unwrap().path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("kmsfs" | "json")
            ) {
                std::fs::remove_file(path).unwrap();
            }
        }
        for (name, bytes, v) in &vectors {
            std::fs::write(dir().join(format!("{name}.kmsfs")), bytes).unwrap();
            std::fs::write(dir().join(format!("{name}.json")), json_text(v)).unwrap();
        }
    }
    for (name, bytes, v) in &vectors {
        let committed = std::fs::read(dir().join(format!("{name}.kmsfs")))
            .unwrap_or_else(|e| panic!("{name}.kmsfs: {e}; run scripts/gen-vectors.sh"));
        assert!(
            committed == *bytes,
            "{name}.kmsfs differs from what the code writes now: a format change?"
        );
        let committed = std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap();
        assert_eq!(committed, json_text(v), "{name}.json");
    }
}

#[test]
fn every_vector_reads_as_described() {
    let mut seen = BTreeMap::new();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let bytes = std::fs::read(path.with_extension("kmsfs")).unwrap();
        let key_bytes = hex::decode(v["data_key_hex"].as_str().unwrap()).unwrap();
        let key = DataKey::from_slice(&key_bytes).unwrap();
        let result = file::decrypt_bytes(&key, &bytes);
        if let Some(expected) = v.get("expected_error") {
            let err = result
                .err()
                .unwrap_or_else(|| panic!("{name}: read without an error"));
            assert_eq!(err.kind(), expected.as_str().unwrap(), "{name}");
        } else {
            let plain = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                plain.len() as u64,
                v["plaintext_size"].as_u64().unwrap(),
                "{name}"
            );
            assert_eq!(hex::encode(sha(&[&plain])), v["plaintext_sha256"], "{name}");
            let (h, _) = Header::decode(&bytes).unwrap();
            assert_eq!(
                h.header_len as u64,
                v["header_len"].as_u64().unwrap(),
                "{name}"
            );
            assert_eq!(h.file_id.to_hex(), v["file_id_hex"], "{name}");
            assert_eq!(h.key_id, v["key_id"], "{name}");
            check_name_tags(&v, &h, &bytes, &name);
            check_bucket(&v, &h, &key, &name);
            assert_eq!(
                h.wrapped_key.len() as u64,
                v["wrapped_key_len"].as_u64().unwrap(),
                "{name}"
            );
        }
        seen.insert(name, ());
    }
    assert_eq!(
        seen.len(),
        all_vectors().len(),
        "vectors on disk: {:?}",
        seen.keys()
    );
}

/// A vector of a file of a bucket: its header names the bucket, and its data key is the
/// one the bucket key derives for it.
fn check_bucket(v: &Value, h: &Header, key: &DataKey, name: &str) {
    let Some(bucket_key) = v.get("bucket_key_hex").and_then(Value::as_str) else {
        assert!(
            !h.is_bucket(),
            "{name}: a bucket file, but no bucket key given"
        );
        return;
    };
    assert!(h.is_bucket(), "{name}");
    assert_eq!(
        h.bucket_id.map(|b| b.to_hex()).as_deref(),
        v["bucket_id_hex"].as_str(),
        "{name}"
    );
    let bucket_key = DataKey::from_slice(&hex::decode(bucket_key).unwrap()).unwrap();
    let derived = kmsfs::crypto::bucket_file_key(&bucket_key, h.file_id);
    assert!(
        derived.same_as(key),
        "{name}: the data key is not the derived one"
    );
}

/// A vector of a file bound to names: each name's tag is what the names key makes, and
/// sits in its slot of the binding area.
fn check_name_tags(v: &Value, h: &Header, bytes: &[u8], name: &str) {
    let Some(names) = v.get("names").and_then(Value::as_array) else {
        assert!(!h.is_bound(), "{name}: bound, but no names given");
        return;
    };
    assert!(h.is_bound(), "{name}");
    let names_key = hex::decode(v["names_key_hex"].as_str().unwrap()).unwrap();
    let key = kmsfs::crypto::BindingKey::new(&DataKey::from_slice(&names_key).unwrap());
    let dir_id: [u8; 16] = hex::decode(v["dir_id_hex"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let area = kmsfs::format::binding::area_offset(h.header_len) as usize;
    for n in names {
        let tag = key.tag(
            &h.file_id.0,
            &dir_id,
            n["name"].as_str().unwrap().as_bytes(),
        );
        assert_eq!(hex::encode(tag), n["tag_hex"], "{name}");
        let at = area + 16 * n["slot"].as_u64().unwrap() as usize;
        assert_eq!(&bytes[at..at + 16], &tag, "{name}");
    }
}
