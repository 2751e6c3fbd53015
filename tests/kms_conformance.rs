//! One conformance suite, run against the in-process engine and against the HTTP server
//! through the HTTP client: AWS KMS semantics and error names as kmsfs relies on them.

#[path = "kmskit/mod.rs"]
mod common;

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use kmsfs::kms::engine::Engine;
use kmsfs::kms::{EncryptionContext, Kms, KmsError};
use kmsfs::secret::SecretBytes;
use serde_json::{json, Value};

/// A KMS under test: the trait, plus raw JSON operations for everything else.
trait Backend {
    fn kms(&self) -> &dyn Kms;
    fn call(&self, op: &str, req: Value) -> Result<Value, KmsError>;

    fn ok(&self, op: &str, req: Value) -> Value {
        self.call(op, req.clone())
            .unwrap_or_else(|e| panic!("{op} {req} failed: {e}"))
    }

    /// The AWS error name `op` fails with.
    fn err(&self, op: &str, req: Value) -> String {
        match self.call(op, req.clone()) {
            Ok(v) => panic!("{op} {req} succeeded: {v}"),
            Err(e) => e.aws_code().to_owned(),
        }
    }

    fn create_key(&self) -> String {
        self.ok("CreateKey", json!({}))["KeyMetadata"]["Arn"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

struct Local(Engine);
impl Backend for Local {
    fn kms(&self) -> &dyn Kms {
        &self.0
    }
    fn call(&self, op: &str, req: Value) -> Result<Value, KmsError> {
        let out = self.0.call(op, req.to_string().as_bytes())?;
        Ok(serde_json::from_slice(&out).unwrap())
    }
}

struct Remote {
    client: kmsfs::kms::client::HttpKms,
    _server: common::TestServer,
}
impl Backend for Remote {
    fn kms(&self) -> &dyn Kms {
        &self.client
    }
    fn call(&self, op: &str, req: Value) -> Result<Value, KmsError> {
        let out = self.client.call(op, req.to_string().into_bytes())?;
        Ok(serde_json::from_slice(&out).unwrap())
    }
}

fn local() -> Local {
    Local(Engine::in_memory())
}

fn remote() -> Remote {
    let server = common::TestServer::start(Engine::in_memory());
    Remote {
        client: server.client(),
        _server: server,
    }
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .fold(EncryptionContext::new(), |c, (k, v)| c.with(k, v))
}

fn key_id_of(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap()
}

fn every_identifier_form_is_accepted(b: &dyn Backend) {
    let arn = b.create_key();
    assert!(arn.starts_with("arn:aws:kms:"), "{arn}");
    let id = key_id_of(&arn).to_owned();
    b.ok(
        "CreateAlias",
        json!({"AliasName": "alias/forms", "TargetKeyId": id}),
    );
    let alias_arn = format!("{}alias/forms", arn.split("key/").next().unwrap());
    for form in [&id, &arn, "alias/forms", &alias_arn] {
        let md = b.ok("DescribeKey", json!({"KeyId": form}));
        assert_eq!(md["KeyMetadata"]["Arn"], arn, "{form}");
        assert_eq!(md["KeyMetadata"]["KeyState"], "Enabled");
        let g = b
            .kms()
            .generate_data_key(form, &EncryptionContext::new())
            .unwrap();
        assert_eq!(g.key_arn, arn, "KeyId in answers is the ARN ({form})");
        let k = b
            .kms()
            .decrypt(form, &g.wrapped, &EncryptionContext::new())
            .unwrap();
        assert_eq!(k.expose_secret(), g.key.expose_secret());
    }
    let keys = b.ok("ListKeys", json!({}));
    assert!(keys["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["KeyArn"] == arn));
    assert_eq!(
        b.err("DescribeKey", json!({"KeyId": "alias/nope"})),
        "NotFoundException"
    );
    assert_eq!(
        b.err("DescribeKey", json!({"KeyId": "garbage"})),
        "NotFoundException"
    );
    let missing = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000";
    assert_eq!(
        b.err("DescribeKey", json!({"KeyId": missing})),
        "NotFoundException"
    );
    assert_eq!(b.err("DescribeKey", json!({})), "ValidationException");
}

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

fn disabled_keys_refuse_and_come_back(b: &dyn Backend) {
    let arn = b.create_key();
    let c = EncryptionContext::new();
    let g = b.kms().generate_data_key(&arn, &c).unwrap();
    b.ok("DisableKey", json!({"KeyId": arn}));
    let md = b.ok("DescribeKey", json!({"KeyId": arn}));
    assert_eq!(
        (
            md["KeyMetadata"]["KeyState"].as_str(),
            md["KeyMetadata"]["Enabled"].as_bool()
        ),
        (Some("Disabled"), Some(false))
    );
    assert!(matches!(
        b.kms().generate_data_key(&arn, &c),
        Err(KmsError::Disabled(_))
    ));
    assert!(matches!(
        b.kms().decrypt(&arn, &g.wrapped, &c),
        Err(KmsError::Disabled(_))
    ));
    b.ok("EnableKey", json!({"KeyId": arn}));
    b.kms().decrypt(&arn, &g.wrapped, &c).unwrap();
    assert_eq!(
        b.err("EnableKey", json!({"KeyId": "alias/x"})),
        "NotFoundException"
    );
}

fn deletion_window_and_cancel(b: &dyn Backend) {
    let arn = b.create_key();
    for days in [6, 31] {
        let req = json!({"KeyId": arn, "PendingWindowInDays": days});
        assert_eq!(b.err("ScheduleKeyDeletion", req), "ValidationException");
    }
    let s = b.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": arn, "PendingWindowInDays": 7}),
    );
    assert_eq!(
        (s["KeyId"].as_str(), s["KeyState"].as_str()),
        (Some(arn.as_str()), Some("PendingDeletion"))
    );
    assert!(s["DeletionDate"].as_f64().unwrap() > 0.0);
    let e = b
        .kms()
        .generate_data_key(&arn, &EncryptionContext::new())
        .unwrap_err();
    assert!(matches!(e, KmsError::InvalidState(_)), "{e}");
    assert_eq!(
        b.err("DisableKey", json!({"KeyId": arn})),
        "KMSInvalidStateException"
    );
    assert_eq!(
        b.err("ScheduleKeyDeletion", json!({"KeyId": arn})),
        "KMSInvalidStateException"
    );
    let c = b.ok("CancelKeyDeletion", json!({"KeyId": arn}));
    assert_eq!(c["KeyId"], arn);
    let md = b.ok("DescribeKey", json!({"KeyId": arn}));
    assert_eq!(md["KeyMetadata"]["KeyState"], "Disabled");
    assert_eq!(
        b.err("CancelKeyDeletion", json!({"KeyId": arn})),
        "KMSInvalidStateException"
    );
}

fn rotated_keys_still_open_old_blobs(b: &dyn Backend) {
    let arn = b.create_key();
    let c = ctx(&[("k", "v")]);
    let st = b.ok("GetKeyRotationStatus", json!({"KeyId": arn}));
    assert_eq!(st["KeyRotationEnabled"], false);
    b.ok(
        "EnableKeyRotation",
        json!({"KeyId": arn, "RotationPeriodInDays": 90}),
    );
    let st = b.ok("GetKeyRotationStatus", json!({"KeyId": arn}));
    assert_eq!(
        (
            st["KeyRotationEnabled"].as_bool(),
            st["RotationPeriodInDays"].as_i64()
        ),
        (Some(true), Some(90))
    );
    assert_eq!(
        b.err(
            "EnableKeyRotation",
            json!({"KeyId": arn, "RotationPeriodInDays": 89})
        ),
        "ValidationException"
    );
    let old = b.kms().generate_data_key(&arn, &c).unwrap();
    let r = b.ok("RotateKeyOnDemand", json!({"KeyId": arn}));
    assert_eq!(r["KeyId"], arn);
    let new = b.kms().generate_data_key(&arn, &c).unwrap();
    b.ok("RotateKeyOnDemand", json!({"KeyId": arn}));
    for g in [&old, &new] {
        let k = b.kms().decrypt(&arn, &g.wrapped, &c).unwrap();
        assert_eq!(k.expose_secret(), g.key.expose_secret());
    }
    b.ok("DisableKeyRotation", json!({"KeyId": arn}));
    assert_eq!(
        b.ok("GetKeyRotationStatus", json!({"KeyId": arn}))["KeyRotationEnabled"],
        false
    );
    b.ok("DisableKey", json!({"KeyId": arn}));
    assert_eq!(
        b.err("RotateKeyOnDemand", json!({"KeyId": arn})),
        "DisabledException"
    );
    assert_eq!(
        b.err("EnableKeyRotation", json!({"KeyId": arn})),
        "DisabledException"
    );
}

fn aliases_follow_aws_rules(b: &dyn Backend) {
    let k1 = b.create_key();
    let k2 = b.create_key();
    b.ok(
        "CreateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": k1}),
    );
    assert_eq!(
        b.err(
            "CreateAlias",
            json!({"AliasName": "alias/app", "TargetKeyId": k2})
        ),
        "AlreadyExistsException"
    );
    assert_eq!(
        b.err(
            "CreateAlias",
            json!({"AliasName": "app2", "TargetKeyId": k2})
        ),
        "ValidationException"
    );
    assert_eq!(
        b.err(
            "CreateAlias",
            json!({"AliasName": "alias/sp ace", "TargetKeyId": k2})
        ),
        "ValidationException"
    );
    assert_eq!(
        b.err(
            "CreateAlias",
            json!({"AliasName": "alias/aws/x", "TargetKeyId": k2})
        ),
        "NotAuthorizedException"
    );
    assert_eq!(
        b.err(
            "CreateAlias",
            json!({"AliasName": "alias/b", "TargetKeyId": "alias/app"})
        ),
        "ValidationException"
    );
    assert_eq!(
        b.err(
            "CreateAlias",
            json!({"AliasName": "alias/a:b", "TargetKeyId": k2})
        ),
        "ValidationException"
    );
    let g = b
        .kms()
        .generate_data_key("alias/app", &EncryptionContext::new())
        .unwrap();
    assert_eq!(g.key_arn, k1);
    b.ok(
        "UpdateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": key_id_of(&k2)}),
    );
    assert_eq!(
        b.ok("DescribeKey", json!({"KeyId": "alias/app"}))["KeyMetadata"]["Arn"],
        k2
    );
    assert_eq!(
        b.err(
            "UpdateAlias",
            json!({"AliasName": "alias/none", "TargetKeyId": k2})
        ),
        "NotFoundException"
    );
    // The old blob names k1, so it still opens through k1 but not through the alias.
    b.kms()
        .decrypt(&k1, &g.wrapped, &EncryptionContext::new())
        .unwrap();
    let e = b
        .kms()
        .decrypt("alias/app", &g.wrapped, &EncryptionContext::new())
        .unwrap_err();
    assert!(matches!(e, KmsError::IncorrectKey(_)), "{e}");
    let list = b.ok("ListAliases", json!({"KeyId": k2}));
    let names: Vec<&str> = list["Aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["AliasName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alias/app"]);
    assert_eq!(list["Aliases"][0]["TargetKeyId"], key_id_of(&k2));
    assert!(list["Aliases"][0]["AliasArn"]
        .as_str()
        .unwrap()
        .ends_with(":alias/app"));
    b.ok("DeleteAlias", json!({"AliasName": "alias/app"}));
    assert_eq!(
        b.err("DeleteAlias", json!({"AliasName": "alias/app"})),
        "NotFoundException"
    );
    assert_eq!(
        b.err("DescribeKey", json!({"KeyId": "alias/app"})),
        "NotFoundException"
    );
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

fn list_keys_pages(b: &dyn Backend) {
    let arns: Vec<String> = (0..3).map(|_| b.create_key()).collect();
    let p1 = b.ok("ListKeys", json!({"Limit": 2}));
    assert_eq!(p1["Keys"].as_array().unwrap().len(), 2);
    assert_eq!(p1["Truncated"], true);
    let p2 = b.ok("ListKeys", json!({"Limit": 2, "Marker": p1["NextMarker"]}));
    assert_eq!(p2["Truncated"], false);
    let mut seen: Vec<String> = [p1, p2]
        .iter()
        .flat_map(|p| {
            p["Keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["KeyArn"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    seen.sort();
    let mut want = arns.clone();
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(
        b.err("ListKeys", json!({"Limit": 0})),
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

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod engine {
            $(#[test] fn $name() { super::$name(&super::local()) })*
        }
        mod http {
            $(#[test] fn $name() { super::$name(&super::remote()) })*
        }
    };
}

conformance!(
    every_identifier_form_is_accepted,
    data_keys_round_trip_and_context_must_match,
    data_keys_in_a_batch,
    data_key_sizes_follow_aws_limits,
    encrypt_takes_up_to_4096_bytes,
    disabled_keys_refuse_and_come_back,
    deletion_window_and_cancel,
    rotated_keys_still_open_old_blobs,
    aliases_follow_aws_rules,
    re_encrypt_moves_blobs_between_keys,
    list_keys_pages,
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
