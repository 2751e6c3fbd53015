//! Golden test vectors (`tests/vectors/`): they pin the on-disk format across versions.
//!
//! `KMSFS_REGEN_VECTORS=1 cargo test --test vectors` (what `scripts/gen-vectors.sh` runs)
//! rewrites them from fixed seeds; normally this test only reads them. Two checks:
//! every committed vector reads exactly as its JSON says (plaintext hash, or error), and
//! regenerating gives the committed bytes (a format change cannot slip through).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kmsfs::crypto::FileCipher;
use kmsfs::file::{self, KeySlot};
use kmsfs::format::{FileId, Header, DEFAULT_HEADER_LEN};
use kmsfs::secret::DataKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const KEY_ID: &str = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000001";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Readable plaintext of any length.
fn text(name: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0;
    while out.len() < len {
        out.extend_from_slice(format!("kmsfs test vector {name}, line {line}\n").as_bytes());
        line += 1;
    }
    out.truncate(len);
    out
}

struct Built {
    bytes: Vec<u8>,
    data_key: [u8; 32],
    header: Header,
}

/// A valid file whose every random choice comes from `seed`.
fn build(seed: &str, plain: &[u8], header_len: u32, key_id: &str, version: u16) -> Built {
    let data_key = sha(&[b"data-key:", seed.as_bytes()]);
    let file_id = FileId(
        sha(&[b"file-id:", seed.as_bytes()])[..16]
            .try_into()
            .unwrap(),
    );
    let key = DataKey::from_slice(&data_key).unwrap();
    let cipher = FileCipher::new(&key, file_id);
    let slot = KeySlot {
        key_id: key_id.into(),
        wrapped_key: [b"vector-wrapped-key:".as_slice(), seed.as_bytes()].concat(),
    };
    let header = file::new_header(&cipher, version, header_len, slot).unwrap();
    let mut counter = 0u64;
    let bytes = file::encrypt_bytes_with_nonces(&cipher, &header, plain, &mut || {
        counter += 1;
        sha(&[b"nonce:", seed.as_bytes(), &counter.to_be_bytes()])[..12]
            .try_into()
            .unwrap()
    })
    .unwrap();
    Built {
        bytes,
        data_key,
        header,
    }
}

fn describe(b: &Built, description: &str, outcome: Value) -> Value {
    let mut v = json!({
        "description": description,
        "format_version": b.header.version,
        "data_key_hex": hex::encode(b.data_key),
        "header_len": b.header.header_len,
        "file_id_hex": b.header.file_id.to_hex(),
        "key_id": b.header.key_id,
        "wrapped_key_len": b.header.wrapped_key.len(),
    });
    v.as_object_mut()
        .unwrap()
        .extend(outcome.as_object().unwrap().clone());
    v
}

fn valid(
    name: &str,
    description: &str,
    plain: &[u8],
    header_len: u32,
    key_id: &str,
) -> (String, Vec<u8>, Value) {
    valid_v(1, name, description, plain, header_len, key_id)
}

fn valid_v(
    version: u16,
    name: &str,
    description: &str,
    plain: &[u8],
    header_len: u32,
    key_id: &str,
) -> (String, Vec<u8>, Value) {
    let b = build(name, plain, header_len, key_id, version);
    let outcome = json!({
        "plaintext_size": plain.len(),
        "plaintext_sha256": hex::encode(sha(&[plain])),
    });
    (
        name.into(),
        b.bytes.clone(),
        describe(&b, description, outcome),
    )
}

fn broken(
    name: &str,
    description: &str,
    plain_len: usize,
    damage: impl FnOnce(&mut Vec<u8>, &mut [u8; 32]),
    expected_error: &str,
) -> (String, Vec<u8>, Value) {
    broken_v(1, name, description, plain_len, damage, expected_error)
}

fn broken_v(
    version: u16,
    name: &str,
    description: &str,
    plain_len: usize,
    damage: impl FnOnce(&mut Vec<u8>, &mut [u8; 32]),
    expected_error: &str,
) -> (String, Vec<u8>, Value) {
    let mut b = build(
        name,
        &text(name, plain_len),
        DEFAULT_HEADER_LEN,
        KEY_ID,
        version,
    );
    damage(&mut b.bytes, &mut b.data_key);
    let outcome = json!({ "expected_error": expected_error });
    (
        name.into(),
        b.bytes.clone(),
        describe(&b, description, outcome),
    )
}

const H: usize = DEFAULT_HEADER_LEN as usize;
const CB: usize = 4124;
/// Version 2 with the default header: block 0's data page, the bytes of a page and of a
/// table entry, and group 1's table page (after group 0's 109 data pages).
const D: usize = 4096;
const P: usize = 4096;
const E: usize = 28;
const G1_TABLE: usize = D + 109 * P;

fn all_vectors() -> Vec<(String, Vec<u8>, Value)> {
    let long_key_id = format!(
        "arn:aws:kms:eu-central-1:111122223333:alias/{}",
        "x".repeat(400)
    );
    vec![
        valid(
            "empty",
            "An empty file: header and one empty final block.",
            b"",
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "one-byte",
            "One byte of plaintext.",
            &text("one-byte", 1),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "block-minus-one",
            "4095 bytes: one partial block.",
            &text("block-minus-one", 4095),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "one-block",
            "Exactly 4096 bytes: one full final block.",
            &text("one-block", 4096),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "block-plus-one",
            "4097 bytes: a full block and a 1-byte final block.",
            &text("block-plus-one", 4097),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "three-blocks",
            "10000 bytes: two full blocks and a partial one.",
            &text("three-blocks", 10000),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "zeros",
            "8192 zero bytes (as a write past the end leaves them): sealed like any data.",
            &[0u8; 8192],
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "large-header",
            "A 4096-byte header holding a 444-byte key id.",
            &text("large-header", 5000),
            4096,
            &long_key_id,
        ),
        broken(
            "bad-magic",
            "The magic bytes are wrong: not a kmsfs file.",
            100,
            |b, _| b[0] = b'X',
            "not_kmsfs",
        ),
        broken(
            "truncated-header",
            "Cut inside the header.",
            100,
            |b, _| b.truncate(500),
            "truncated_header",
        ),
        broken(
            "version-3",
            "Format version 3, which this version does not read.",
            100,
            |b, _| b[9] = 3,
            "unsupported_version",
        ),
        broken(
            "version-relabelled",
            "A version-1 file labelled version 2: the commitment covers the version.",
            100,
            |b, _| b[9] = 2,
            "wrong_key",
        ),
        broken(
            "algorithm-9",
            "An unknown algorithm id.",
            100,
            |b, _| b[11] = 9,
            "unsupported_algorithm",
        ),
        broken(
            "flags-set",
            "A feature flag this version does not know.",
            100,
            |b, _| b[15] = 1,
            "unsupported_flags",
        ),
        broken(
            "header-len-huge",
            "header_len beyond the 16384 maximum.",
            100,
            |b, _| b[16] = 1,
            "bad_header_len",
        ),
        broken(
            "nonzero-padding",
            "A non-zero byte in the header padding.",
            100,
            |b, _| b[H - 1] = 0xFF,
            "nonzero_padding",
        ),
        broken(
            "commitment-edited",
            "The key commitment was edited.",
            100,
            |b, _| b[36] ^= 1,
            "wrong_key",
        ),
        broken(
            "file-id-edited",
            "The file id was edited (the commitment covers it).",
            100,
            |b, _| b[20] ^= 1,
            "wrong_key",
        ),
        broken(
            "wrong-key",
            "Read with a data key that is not the file's.",
            100,
            |_, k| k[0] ^= 1,
            "wrong_key",
        ),
        broken(
            "cut-mid-block",
            "Cut inside a block's overhead: an impossible length.",
            5000,
            |b, _| b.truncate(H + CB + 10),
            "invalid_cipher_len",
        ),
        broken(
            "cut-at-block-boundary",
            "A 3-block file cut to its first 2 blocks.",
            10000,
            |b, _| b.truncate(H + 2 * CB),
            "block_auth{1}",
        ),
        broken(
            "block-appended",
            "A copy of the first block appended to a 2-block file.",
            8192,
            |b, _| {
                let first = b[H..H + CB].to_vec();
                b.extend_from_slice(&first);
            },
            "block_auth{1}",
        ),
        broken(
            "blocks-swapped",
            "Blocks 0 and 1 of a 3-block file swapped.",
            10000,
            |b, _| {
                let (b0, b1) = (b[H..H + CB].to_vec(), b[H + CB..H + 2 * CB].to_vec());
                b[H..H + CB].copy_from_slice(&b1);
                b[H + CB..H + 2 * CB].copy_from_slice(&b0);
            },
            "block_auth{0}",
        ),
        broken(
            "bit-flip",
            "One bit flipped in block 1's ciphertext.",
            10000,
            |b, _| b[H + CB + 100] ^= 0x04,
            "block_auth{1}",
        ),
        broken(
            "block-zeroed",
            "Block 0 overwritten with zeros.",
            10000,
            |b, _| b[H..H + CB].fill(0),
            "block_auth{0}",
        ),
        broken(
            "foreign-block",
            "Block 1 replaced by block 1 of another file.",
            10000,
            |b, _| {
                let other = build(
                    "foreign-block-other",
                    &text("x", 10000),
                    DEFAULT_HEADER_LEN,
                    KEY_ID,
                    1,
                );
                b[H + CB..H + 2 * CB].copy_from_slice(&other.bytes[H + CB..H + 2 * CB]);
            },
            "block_auth{1}",
        ),
        broken(
            "foreign-header",
            "Another file's header (with that file's key) on these blocks.",
            10000,
            |b, k| {
                let other = build(
                    "foreign-header-other",
                    &text("y", 10000),
                    DEFAULT_HEADER_LEN,
                    KEY_ID,
                    1,
                );
                b[..H].copy_from_slice(&other.bytes[..H]);
                *k = other.data_key;
            },
            "block_auth{0}",
        ),
        // Version 2: block data on pages of its own, nonces and tags in tables.
        valid_v(
            2,
            "v2-empty",
            "Version 2, empty: header, block 0's table entry, zeros to the first data page.",
            b"",
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid_v(
            2,
            "v2-one-byte",
            "Version 2, one byte: its data starts the second page.",
            &text("v2-one-byte", 1),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid_v(
            2,
            "v2-three-blocks",
            "Version 2, 10000 bytes: two full data pages and a partial one.",
            &text("v2-three-blocks", 10000),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid_v(
            2,
            "v2-second-group",
            "Version 2, 109 blocks and 1 byte: block 109's entry starts group 1's table page.",
            &text("v2-second-group", 109 * 4096 + 1),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid_v(
            2,
            "v2-large-header",
            "Version 2, a 4096-byte header: group 0's table takes the second page.",
            &text("v2-large-header", 5000),
            4096,
            &long_key_id,
        ),
        broken_v(
            2,
            "v2-cut-in-table",
            "Version 2, cut inside group 1's table page: an impossible length.",
            109 * 4096 + 1,
            |b, _| b.truncate(G1_TABLE + 100),
            "invalid_cipher_len",
        ),
        broken_v(
            2,
            "v2-cut-at-block-boundary",
            "Version 2, a 3-block file cut after block 1's data page.",
            10000,
            |b, _| b.truncate(D + 2 * P),
            "block_auth{1}",
        ),
        broken_v(
            2,
            "v2-tag-edited",
            "Version 2, one bit of block 1's tag flipped in the table.",
            10000,
            |b, _| b[H + E + 12 + 3] ^= 0x10,
            "block_auth{1}",
        ),
        broken_v(
            2,
            "v2-data-swapped",
            "Version 2, the data pages of blocks 0 and 1 swapped (table entries left).",
            10000,
            |b, _| {
                let (p0, p1) = (b[D..D + P].to_vec(), b[D + P..D + 2 * P].to_vec());
                b[D..D + P].copy_from_slice(&p1);
                b[D + P..D + 2 * P].copy_from_slice(&p0);
            },
            "block_auth{0}",
        ),
        broken_v(
            2,
            "v2-entries-swapped",
            "Version 2, the table entries of blocks 0 and 1 swapped (data left).",
            10000,
            |b, _| {
                let (e0, e1) = (b[H..H + E].to_vec(), b[H + E..H + 2 * E].to_vec());
                b[H..H + E].copy_from_slice(&e1);
                b[H + E..H + 2 * E].copy_from_slice(&e0);
            },
            "block_auth{0}",
        ),
        broken_v(
            2,
            "v2-slack-edited",
            "Version 2, a byte set in the unused end of group 0's table.",
            10000,
            |b, _| b[D - 1] = 1,
            "nonzero_slack",
        ),
        broken_v(
            2,
            "v2-block-appended",
            "Version 2, block 0 (entry and data page) copied in as a third block.",
            8192,
            |b, _| {
                let (e0, p0) = (b[H..H + E].to_vec(), b[D..D + P].to_vec());
                b[H + 2 * E..H + 3 * E].copy_from_slice(&e0);
                b.extend_from_slice(&p0);
            },
            "block_auth{1}",
        ),
    ]
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
