//! Golden vectors for the local KMS blob and state formats (`docs/kms.md`): a committed
//! state file and blobs made under it, including broken ones. A format change that breaks
//! them is a compatibility break: old state files and wrapped keys would stop opening.
//!
//! `cargo test --test kms_vectors -- --ignored regenerate` rewrites them (only on purpose).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use kmsfs::kms::engine::Engine;
use serde_json::{json, Value};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/kms")
}

fn call(engine: &Engine, op: &str, req: Value) -> Result<Value, String> {
    engine
        .call(op, req.to_string().as_bytes())
        .map(|b| serde_json::from_slice(&b).unwrap())
        .map_err(|e| e.aws_code().to_owned())
}

#[test]
fn committed_blobs_open_as_described() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.json");
    std::fs::copy(dir().join("state.json"), &state).unwrap();
    let engine = Engine::open(&state).unwrap();
    let vectors: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("blobs.json")).unwrap()).unwrap();
    let vectors = vectors["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 6);
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let got = call(
            &engine,
            "Decrypt",
            json!({"CiphertextBlob": v["blob"], "KeyId": v["key_id"], "EncryptionContext": v["context"]}),
        );
        match (&v["plaintext_hex"], &v["error"]) {
            (Value::String(hex), _) => {
                let out = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                let plain = B64.decode(out["Plaintext"].as_str().unwrap()).unwrap();
                assert_eq!(hex::encode(plain), *hex, "{name}");
            }
            (_, Value::String(err)) => assert_eq!(got.unwrap_err(), *err, "{name}"),
            _ => panic!("{name}: vector has neither plaintext_hex nor error"),
        }
    }
}

#[test]
#[ignore = "rewrites the committed vectors"]
fn regenerate() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.json");
    let engine = Engine::open(&state).unwrap();
    let arn = call(
        &engine,
        "CreateKey",
        json!({"Description": "golden vectors"}),
    )
    .unwrap()["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned();
    let seal = |plain: &[u8], ctx: &Value| {
        let r = call(
            &engine,
            "Encrypt",
            json!({"KeyId": arn, "Plaintext": B64.encode(plain), "EncryptionContext": ctx}),
        )
        .unwrap();
        r["CiphertextBlob"].as_str().unwrap().to_owned()
    };
    let data_key: Vec<u8> = (0u8..32).collect();
    let ctx = json!({"kmsfs:file": "/docs/a.txt", "kmsfs:fs": "golden"});
    let v1 = seal(&data_key, &ctx);
    call(&engine, "RotateKeyOnDemand", json!({"KeyId": arn})).unwrap();
    let v2 = seal(b"hello, version 2", &json!({}));
    let mut flipped = B64.decode(&v1).unwrap();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let mut version9 = B64.decode(&v2).unwrap();
    version9[21..25].copy_from_slice(&9u32.to_be_bytes());
    let hex_plain = |p: &[u8]| hex::encode(p);
    let vectors = json!({
        "description": "Blobs made by the local KMS under the key in state.json (two backing versions). Each must decrypt to plaintext_hex, or fail with error. See docs/kms.md.",
        "vectors": [
            {"name": "version-1 blob with a context", "key_id": arn, "blob": v1, "context": ctx,
             "plaintext_hex": hex_plain(&data_key)},
            {"name": "version-2 blob without context", "key_id": arn, "blob": v2, "context": {},
             "plaintext_hex": hex_plain(b"hello, version 2")},
            {"name": "wrong context", "key_id": arn, "blob": v1,
             "context": {"kmsfs:file": "/docs/b.txt", "kmsfs:fs": "golden"},
             "error": "InvalidCiphertextException"},
            {"name": "context pairs re-split (concatenation would collide)", "key_id": arn, "blob": v1,
             "context": {"kmsfs:file": "/docs/a.txtkmsfs:fs", "": "golden"},
             "error": "InvalidCiphertextException"},
            {"name": "last tag byte flipped", "key_id": arn, "blob": B64.encode(&flipped), "context": ctx,
             "error": "InvalidCiphertextException"},
            {"name": "backing version 9 does not exist", "key_id": arn, "blob": B64.encode(&version9),
             "context": {}, "error": "InvalidCiphertextException"},
            {"name": "KeyId that names no key", "key_id": "alias/none", "blob": v1, "context": ctx,
             "error": "NotFoundException"},
        ]
    });
    drop(engine);
    std::fs::copy(&state, dir().join("state.json")).unwrap();
    std::fs::write(
        dir().join("blobs.json"),
        serde_json::to_string_pretty(&vectors).unwrap() + "\n",
    )
    .unwrap();
}
