//! The conformance suite's key management, run against the in-process engine and against
//! the HTTP server through the HTTP client: every form of key identifier, disabled keys,
//! scheduled deletion, rotation, aliases and paged listing, with AWS's semantics and
//! error names. The cryptographic operations are in `kms_conformance_data.rs`.

#[path = "kmskit/mod.rs"]
mod common;
#[path = "kmskit/suite.rs"]
mod suite;

use kmsfs::kms::{EncryptionContext, KmsError};
use serde_json::json;
use suite::{ctx, key_id_of, Backend};

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

fn alias_names_follow_aws_rules(b: &dyn Backend) {
    let k1 = b.create_key();
    let k2 = b.create_key();
    b.ok(
        "CreateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": k1}),
    );
    let create = |name: &str, target: &str| {
        b.err(
            "CreateAlias",
            json!({"AliasName": name, "TargetKeyId": target}),
        )
    };
    assert_eq!(create("alias/app", &k2), "AlreadyExistsException");
    assert_eq!(create("app2", &k2), "ValidationException");
    assert_eq!(create("alias/sp ace", &k2), "ValidationException");
    assert_eq!(create("alias/aws/x", &k2), "NotAuthorizedException");
    assert_eq!(create("alias/b", "alias/app"), "ValidationException");
    assert_eq!(create("alias/a:b", &k2), "ValidationException");
}

fn aliases_move_between_keys_and_are_deleted(b: &dyn Backend) {
    let k1 = b.create_key();
    let k2 = b.create_key();
    b.ok(
        "CreateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": k1}),
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

suite::conformance!(
    every_identifier_form_is_accepted,
    disabled_keys_refuse_and_come_back,
    deletion_window_and_cancel,
    rotated_keys_still_open_old_blobs,
    alias_names_follow_aws_rules,
    aliases_move_between_keys_and_are_deleted,
    list_keys_pages,
);
