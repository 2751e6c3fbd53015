//! The bucket-key vectors (`docs/format.md`, "Bucket keys"): a version-3 file whose key
//! slot holds a wrapped bucket key and the bucket's id, and the tampering the format
//! itself catches. Each JSON gives the bucket key and id; `data_key_hex` is the key the
//! reader derives (`crypto::bucket_file_key`), or for a slot from another bucket, the key
//! that slot derives.

use kmsfs::crypto::{bucket_file_key, FileCipher};
use kmsfs::file::{self, KeySlot};
use kmsfs::format::{BucketId, FileId, DEFAULT_HEADER_LEN};
use kmsfs::secret::DataKey;
use serde_json::json;

use super::{describe, sha, text, Built, Vector, KEY_ID};

/// A bucket built from a seed: its key and id.
fn bucket(seed: &str) -> ([u8; 32], BucketId) {
    let key = sha(&[b"bucket-key:", seed.as_bytes()]);
    let id = sha(&[b"bucket-id:", seed.as_bytes()])[..16]
        .try_into()
        .unwrap();
    (key, BucketId(id))
}

/// A version-3 file of `plain` under bucket `bucket_seed`.
fn build_in_bucket(seed: &str, bucket_seed: &str, plain: &[u8]) -> Built {
    let (bucket_key, bucket_id) = bucket(bucket_seed);
    let file_id = FileId(
        sha(&[b"file-id:", seed.as_bytes()])[..16]
            .try_into()
            .unwrap(),
    );
    let key = bucket_file_key(&DataKey::from_slice(&bucket_key).unwrap(), file_id);
    let cipher = FileCipher::new(&key, file_id);
    let slot = KeySlot {
        key_id: KEY_ID.into(),
        wrapped_key: [
            b"vector-wrapped-bucket-key:".as_slice(),
            bucket_seed.as_bytes(),
        ]
        .concat(),
    };
    let header =
        file::new_bucket_header(&cipher, (3, false), DEFAULT_HEADER_LEN, slot, bucket_id).unwrap();
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
        data_key: *key.expose_secret(),
        header,
    }
}

/// `describe`, plus the bucket's key and id.
fn with_bucket(
    b: &Built,
    bucket_seed: &str,
    description: &str,
    outcome: serde_json::Value,
) -> serde_json::Value {
    let (key, id) = bucket(bucket_seed);
    let mut v = describe(b, description, outcome);
    let o = v.as_object_mut().unwrap();
    o.insert("bucket_key_hex".into(), json!(hex::encode(key)));
    o.insert("bucket_id_hex".into(), json!(id.to_hex()));
    v
}

pub fn bucket_files() -> Vec<Vector> {
    let mut out = Vec::new();
    let name = "v3-bucket";
    let plain = text(name, 5000);
    let b = build_in_bucket(name, "bucket-a", &plain);
    let outcome = json!({
        "plaintext_size": plain.len(),
        "plaintext_sha256": hex::encode(sha(&[&plain])),
    });
    let description = "Version 3, a file of a bucket: flags 0x4 (bucket key; names not bound, so that the vector needs no names key), the wrapped bucket key then the 16-byte bucket id in the key slot; the data key is HKDF(salt = file id, IKM = bucket key, \"kmsfs/v1/bucket-file-key\").";
    out.push((
        name.into(),
        b.bytes.clone(),
        with_bucket(&b, "bucket-a", description, outcome),
    ));

    let slot_end = 72 + KEY_ID.len() + b"vector-wrapped-bucket-key:bucket-a".len();
    let name = "v3-bucket-flag-cleared";
    let mut b = build_in_bucket(name, "bucket-a", &text(name, 100));
    b.bytes[15] &= !4;
    let description =
        "v3-bucket with flag bit 2 cleared: the bucket id is then padding that is not zero.";
    let outcome = json!({"expected_error": "nonzero_padding"});
    out.push((
        name.into(),
        b.bytes.clone(),
        with_bucket(&b, "bucket-a", description, outcome),
    ));

    let name = "v3-bucket-flag-stripped";
    let mut b = build_in_bucket(name, "bucket-a", &text(name, 100));
    b.bytes[15] &= !4;
    b.bytes[slot_end..slot_end + 16].fill(0);
    let description = "v3-bucket with flag bit 2 and the bucket id cleared, to pass for a per-file header: the commitment covers the flags and fails under the derived key.";
    let outcome = json!({"expected_error": "wrong_key"});
    out.push((
        name.into(),
        b.bytes.clone(),
        with_bucket(&b, "bucket-a", description, outcome),
    ));

    let name = "v3-bucket-other-slot";
    let mut b = build_in_bucket(name, "bucket-a", &text(name, 100));
    let other = build_in_bucket("v3-bucket-other-file", "bucket-b", b"");
    // Both slots are as long (same key id, blobs of the same length): swap in the other's.
    b.bytes[68..1024].copy_from_slice(&other.bytes[68..1024]);
    let (key_b, _) = bucket("bucket-b");
    let derived = bucket_file_key(&DataKey::from_slice(&key_b).unwrap(), b.header.file_id);
    b.data_key = *derived.expose_secret();
    let description = "A file of bucket a with the key slot of a file of bucket b: what that slot unwraps to derives another data key (given here), whose commitment fails.";
    let outcome = json!({"expected_error": "wrong_key"});
    out.push((
        name.into(),
        b.bytes.clone(),
        with_bucket(&b, "bucket-b", description, outcome),
    ));
    out
}
