//! The conformance suite's cryptographic operations, run against the in-process engine
//! and against the HTTP server through the HTTP client: data keys (one at a time and in
//! batches) and AWS's limits on them, encryption contexts, Encrypt, ReEncrypt, bad input,
//! and many threads at once. Key management is in `kms_conformance_keys.rs`.

#[path = "kmskit/mod.rs"]
mod common;
#[path = "kmskit/suite.rs"]
mod suite;

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use kmsfs::kms::engine::Engine;
use kmsfs::kms::{EncryptionContext, Kms, KmsError};
use kmsfs::secret::SecretBytes;
use serde_json::json;
use suite::{ctx, Backend};

fn data_keys_round_trip_and_context_must_match(b: &dyn Backend) {
    let arn = b.create_key();
    let c = ctx(&[("file", "/a/b"), ("fs", "kmsfs")]);
    let g = b.kms().generate_data_key(&arn, &c).unwrap();
    let k = b.kms().decrypt(&arn, &g.wrapped, &c).unwrap();
    assert_eq!(k.expose_secret(), g.key.expose_secret());
    let wrong = |c: &EncryptionContext| b.kms().decrypt(&arn, &g.wrapped, c).unwrap_err();
    assert!(matches!(
        wrong(&EncryptionContext::new()),
        KmsError::InvalidCiphertext(_)
    ));
    assert!(matches!(
        wrong(&ctx(&[("file", "/a/b")])),
        KmsError::InvalidCiphertext(_)
    ));
    assert!(matches!(
        wrong(&ctx(&[("file", "/a/b"), ("fs", "kmsfs"), ("x", "")])),
        KmsError::InvalidCiphertext(_)
    ));
    // Concatenation would make these two equal; length prefixes keep them apart.
    let g2 = b
        .kms()
        .generate_data_key(&arn, &ctx(&[("a", "bc")]))
        .unwrap();
    let e = b
        .kms()
        .decrypt(&arn, &g2.wrapped, &ctx(&[("ab", "c")]))
        .unwrap_err();
    assert!(matches!(e, KmsError::InvalidCiphertext(_)), "{e}");
    let mut flipped = g.wrapped.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let e = b.kms().decrypt(&arn, &flipped, &c).unwrap_err();
    assert!(matches!(e, KmsError::InvalidCiphertext(_)), "{e}");
    assert!(!e.retryable());
    let other = b.create_key();
    let e = b.kms().decrypt(&other, &g.wrapped, &c).unwrap_err();
    assert!(matches!(e, KmsError::IncorrectKey(_)), "{e}");
    // Without a KeyId, Decrypt finds the key from the blob, as AWS does.
    let blob = B64.encode(&g.wrapped);
    let d = b.ok(
        "Decrypt",
        json!({"CiphertextBlob": blob, "EncryptionContext": {"file": "/a/b", "fs": "kmsfs"}}),
    );
    assert_eq!(d["KeyId"], arn);
    assert_eq!(d["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    assert_eq!(
        B64.decode(d["Plaintext"].as_str().unwrap()).unwrap(),
        g.key.expose_secret()
    );
    assert_eq!(
        b.err("Decrypt", json!({"CiphertextBlob": "AAAA"})),
        "InvalidCiphertextException"
    );
    assert_eq!(b.err("Decrypt", json!({})), "ValidationException");
}

/// Several data keys at once (what the mount's key pool asks for): each context's key comes
/// once, under its index, unwraps under that context only; errors come per key.
fn data_keys_in_a_batch(b: &dyn Backend) {
    let arn = b.create_key();
    let contexts: Vec<EncryptionContext> = (0..5)
        .map(|i| ctx(&[("file", &format!("id-{i}"))]))
        .collect();
    let mut got: Vec<Option<kmsfs::kms::GeneratedDataKey>> = (0..5).map(|_| None).collect();
    b.kms().generate_data_keys(&arn, &contexts, &mut |i, key| {
        assert!(got[i].is_none(), "key {i} came twice");
        got[i] = Some(key.unwrap());
    });
    for (i, key) in got.iter().enumerate() {
        let key = key.as_ref().expect("every key comes");
        assert_eq!(key.key_arn, arn);
        let back = b.kms().decrypt(&arn, &key.wrapped, &contexts[i]).unwrap();
        assert_eq!(back.expose_secret(), key.key.expose_secret());
        let other = &contexts[(i + 1) % contexts.len()];
        assert!(b.kms().decrypt(&arn, &key.wrapped, other).is_err());
    }
    let distinct: std::collections::HashSet<_> = got
        .iter()
        .map(|k| k.as_ref().unwrap().key.expose_secret().to_vec())
        .collect();
    assert_eq!(distinct.len(), 5);
    // Nothing asked, nothing given.
    b.kms()
        .generate_data_keys(&arn, &[], &mut |i, _| panic!("key {i} for no context"));
    // An unknown key fails every call, each on its own.
    let mut errors = vec![];
    b.kms()
        .generate_data_keys("alias/none", &contexts[..2], &mut |i, key| {
            errors.push((i, key.unwrap_err()))
        });
    errors.sort_by_key(|(i, _)| *i);
    assert_eq!(errors.len(), 2);
    assert!(
        errors
            .iter()
            .enumerate()
            .all(|(n, (i, e))| n == *i && matches!(e, KmsError::NotFound(_))),
        "{errors:?}"
    );
}

fn data_key_sizes_follow_aws_limits(b: &dyn Backend) {
    let arn = b.create_key();
    for n in [1, 16, 1024] {
        let g = b.ok("GenerateDataKey", json!({"KeyId": arn, "NumberOfBytes": n}));
        let plain = B64.decode(g["Plaintext"].as_str().unwrap()).unwrap();
        assert_eq!(plain.len(), n);
        let d = b.ok(
            "Decrypt",
            json!({"CiphertextBlob": g["CiphertextBlob"], "KeyId": arn}),
        );
        assert_eq!(B64.decode(d["Plaintext"].as_str().unwrap()).unwrap(), plain);
    }
    let g = b.ok(
        "GenerateDataKey",
        json!({"KeyId": arn, "KeySpec": "AES_128"}),
    );
    assert_eq!(
        B64.decode(g["Plaintext"].as_str().unwrap()).unwrap().len(),
        16
    );
    let w = b.ok(
        "GenerateDataKeyWithoutPlaintext",
        json!({"KeyId": arn, "KeySpec": "AES_256"}),
    );
    assert!(w.get("Plaintext").is_none(), "{w}");
    let d = b.ok("Decrypt", json!({"CiphertextBlob": w["CiphertextBlob"]}));
    assert_eq!(
        B64.decode(d["Plaintext"].as_str().unwrap()).unwrap().len(),
        32
    );
    for bad in [
        json!({"KeyId": arn, "NumberOfBytes": 0}),
        json!({"KeyId": arn, "NumberOfBytes": 1025}),
        json!({"KeyId": arn}),
        json!({"KeyId": arn, "NumberOfBytes": 32, "KeySpec": "AES_256"}),
        json!({"KeyId": arn, "KeySpec": "AES_512"}),
        json!({"NumberOfBytes": 32}),
    ] {
        assert_eq!(
            b.err("GenerateDataKey", bad.clone()),
            "ValidationException",
            "{bad}"
        );
    }
    assert_eq!(
        B64.decode(
            b.ok("GenerateRandom", json!({"NumberOfBytes": 1024}))["Plaintext"]
                .as_str()
                .unwrap()
        )
        .unwrap()
        .len(),
        1024
    );
    for n in [0, 1025] {
        assert_eq!(
            b.err("GenerateRandom", json!({"NumberOfBytes": n})),
            "ValidationException"
        );
    }
}

fn encrypt_takes_up_to_4096_bytes(b: &dyn Backend) {
    let arn = b.create_key();
    let secret = SecretBytes::from_slice(&[7u8; 4096]).unwrap();
    let c = ctx(&[("purpose", "test")]);
    let blob = b
        .kms()
        .encrypt("alias/none".as_ref(), &secret, &c)
        .unwrap_err();
    assert!(matches!(blob, KmsError::NotFound(_)), "{blob}");
    let blob = b.kms().encrypt(&arn, &secret, &c).unwrap();
    let d = b.ok(
        "Decrypt",
        json!({"CiphertextBlob": B64.encode(&blob), "EncryptionContext": {"purpose": "test"}}),
    );
    assert_eq!(
        B64.decode(d["Plaintext"].as_str().unwrap()).unwrap(),
        vec![7u8; 4096]
    );
    let big = B64.encode(vec![1u8; 4097]);
    assert_eq!(
        b.err("Encrypt", json!({"KeyId": arn, "Plaintext": big})),
        "ValidationException"
    );
    assert_eq!(
        b.err("Encrypt", json!({"KeyId": arn, "Plaintext": ""})),
        "ValidationException"
    );
    assert_eq!(
        b.err("Encrypt", json!({"Plaintext": "AAAA"})),
        "ValidationException"
    );
    let e = b.ok("Encrypt", json!({"KeyId": arn, "Plaintext": "aGk="}));
    assert_eq!(e["KeyId"], arn);
}

fn re_encrypt_moves_blobs_between_keys(b: &dyn Backend) {
    let k1 = b.create_key();
    let k2 = b.create_key();
    let c = ctx(&[("file", "x")]);
    let g = b.kms().generate_data_key(&k1, &c).unwrap();
    let (moved, arn) = b.kms().re_encrypt(&g.wrapped, &c, &k1, &k2).unwrap();
    assert_eq!(arn, k2);
    let k = b.kms().decrypt(&k2, &moved, &c).unwrap();
    assert_eq!(k.expose_secret(), g.key.expose_secret());
    assert!(matches!(
        b.kms().decrypt(&k1, &moved, &c),
        Err(KmsError::IncorrectKey(_))
    ));
    let e = b
        .kms()
        .re_encrypt(&g.wrapped, &ctx(&[("file", "y")]), &k1, &k2)
        .unwrap_err();
    assert!(matches!(e, KmsError::InvalidCiphertext(_)), "{e}");
    let e = b.kms().re_encrypt(&g.wrapped, &c, &k2, &k1).unwrap_err();
    assert!(matches!(e, KmsError::IncorrectKey(_)), "{e}");
    let r = b.ok(
        "ReEncrypt",
        json!({"CiphertextBlob": B64.encode(&g.wrapped), "SourceEncryptionContext": {"file": "x"},
               "DestinationKeyId": k2, "DestinationEncryptionContext": {"file": "z"}}),
    );
    assert_eq!(
        (r["SourceKeyId"].as_str(), r["KeyId"].as_str()),
        (Some(k1.as_str()), Some(k2.as_str()))
    );
    let blob = B64.decode(r["CiphertextBlob"].as_str().unwrap()).unwrap();
    b.kms().decrypt(&k2, &blob, &ctx(&[("file", "z")])).unwrap();
    assert_eq!(
        b.err(
            "ReEncrypt",
            json!({"CiphertextBlob": B64.encode(&g.wrapped)})
        ),
        "ValidationException"
    );
}

fn unknown_operations_and_bad_bodies(b: &dyn Backend) {
    assert_eq!(
        b.err("DeleteEverything", json!({})),
        "UnknownOperationException"
    );
    assert_eq!(
        b.err("Decrypt", json!({"CiphertextBlob": "!!notbase64"})),
        "SerializationException"
    );
    assert_eq!(
        b.err("Decrypt", json!({"CiphertextBlob": 5})),
        "SerializationException"
    );
    assert_eq!(
        b.err("CreateKey", json!({"KeySpec": "RSA_2048"})),
        "UnsupportedOperationException"
    );
}

fn many_threads_at_once(b: &(dyn Backend + Sync)) {
    let arn = b.create_key();
    std::thread::scope(|s| {
        for t in 0..8 {
            let arn = &arn;
            s.spawn(move || {
                let c = ctx(&[("thread", &t.to_string())]);
                for _ in 0..10 {
                    let g = b.kms().generate_data_key(arn, &c).unwrap();
                    let k = b.kms().decrypt(arn, &g.wrapped, &c).unwrap();
                    assert_eq!(k.expose_secret(), g.key.expose_secret());
                }
            });
        }
    });
}

suite::conformance!(
    data_keys_round_trip_and_context_must_match,
    data_keys_in_a_batch,
    data_key_sizes_follow_aws_limits,
    encrypt_takes_up_to_4096_bytes,
    re_encrypt_moves_blobs_between_keys,
    unknown_operations_and_bad_bodies,
    many_threads_at_once,
);

#[test]
fn the_trait_is_object_safe_and_shareable() {
    let kms: Arc<dyn Kms> = Arc::new(Engine::in_memory());
    let metered = kmsfs::kms::metered::MeteredKms::new(kms.clone());
    let e = metered.generate_data_key("alias/none", &EncryptionContext::new());
    assert!(matches!(e, Err(KmsError::NotFound(_))));
    let stats = metered.stats();
    assert_eq!(
        (stats.generate_data_key, stats.decrypt, stats.errors),
        (1, 0, 1)
    );
}
