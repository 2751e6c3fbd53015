//! Grants, tags, descriptions and rotation history in the built-in KMS (issue 23), over
//! HTTP through the client: a grant lets its grantee do what the key policy does not,
//! within its operations and encryption-context constraint; grant tokens; retiring and
//! revoking; grants made from grants; TagResource and friends; UpdateKeyDescription;
//! ListKeyRotations.

#[path = "kmskit/mod.rs"]
mod common;

use common::{call, client_for, TestServer};
use kmsfs::kms::client::HttpKms;
use kmsfs::kms::{EncryptionContext, Kms};
use serde_json::json;

const ACCOUNT: &str = "111122223333";

struct Setup {
    admin: HttpKms,
    user: HttpKms,
    other: HttpKms,
    _s: TestServer,
    _dir: tempfile::TempDir,
}

fn arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:user/{name}")
}

/// A key only `admin` may manage and use; `user` and `other` get what grants give them.
fn setup() -> (Setup, String) {
    let dir = tempfile::tempdir().unwrap();
    let ini = "[admin]\naws_access_key_id = AKIAADMIN\naws_secret_access_key = a\n\
               [user]\naws_access_key_id = AKIAUSER\naws_secret_access_key = u\n\
               [other]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = o\n";
    let s = TestServer::with_principals(ini, &dir.path().join("audit.jsonl"));
    let client = |k: &str, secret: &str| client_for(&s.url(), k, secret, |c| c.max_attempts = 1);
    let t = Setup {
        admin: client("AKIAADMIN", "a"),
        user: client("AKIAUSER", "u"),
        other: client("AKIAOTHER", "o"),
        _s: s,
        _dir: dir,
    };
    let policy = json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": arn("admin")},
        "Action": "kms:*", "Resource": "*"}]});
    let v = call(&t.admin, "CreateKey", json!({"Policy": policy.to_string()})).unwrap();
    let key = v["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
    (t, key)
}

fn blue() -> EncryptionContext {
    EncryptionContext::new()
        .with("team", "blue")
        .with("file", "1")
}

#[test]
fn a_grant_lets_its_grantee_in_within_its_operations_and_constraint() {
    let (t, key) = setup();
    let ctx = blue();
    let g = t.admin.generate_data_key(&key, &ctx).unwrap();
    assert_eq!(
        t.user
            .decrypt(&key, &g.wrapped, &ctx)
            .unwrap_err()
            .aws_code(),
        "AccessDeniedException"
    );
    let named = json!({
        "KeyId": key, "GranteePrincipal": arn("user"), "RetiringPrincipal": arn("other"),
        "Operations": ["Decrypt", "DescribeKey"], "Name": "mount-1",
        "Constraints": {"EncryptionContextSubset": {"Team": "blue"}}});
    let grant = call(&t.admin, "CreateGrant", named.clone()).unwrap();
    let (grant_id, token) = (
        grant["GrantId"].as_str().unwrap(),
        grant["GrantToken"].as_str().unwrap(),
    );
    assert_eq!(grant_id.len(), 64);
    // Usable at once, with or without its token.
    let d = call(
        &t.user,
        "Decrypt",
        json!({"CiphertextBlob": b64(&g.wrapped),
        "EncryptionContext": {"team": "blue", "file": "1"}, "GrantTokens": [token]}),
    );
    assert_eq!(d.unwrap()["KeyId"], key);
    assert!(t.user.decrypt(&key, &g.wrapped, &ctx).is_ok());
    call(&t.user, "DescribeKey", json!({"KeyId": key})).unwrap();
    // Not another operation, not outside the constraint, not another principal.
    let e = t.user.generate_data_key(&key, &ctx).unwrap_err();
    assert_eq!(e.aws_code(), "AccessDeniedException");
    let red = EncryptionContext::new().with("team", "red");
    let g_red = t.admin.generate_data_key(&key, &red).unwrap();
    assert_eq!(
        t.user
            .decrypt(&key, &g_red.wrapped, &red)
            .unwrap_err()
            .aws_code(),
        "AccessDeniedException"
    );
    assert_eq!(
        t.other
            .decrypt(&key, &g.wrapped, &ctx)
            .unwrap_err()
            .aws_code(),
        "AccessDeniedException"
    );
    // The same named grant asked for again is the same grant.
    let again = call(&t.admin, "CreateGrant", named).unwrap();
    assert_eq!(again["GrantId"], grant_id);
    let listed = call(&t.admin, "ListGrants", json!({"KeyId": key})).unwrap();
    let grants = listed["Grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["GranteePrincipal"], arn("user"));
    assert_eq!(grants[0]["RetiringPrincipal"], arn("other"));
    assert_eq!(
        grants[0]["IssuingAccount"],
        format!("arn:aws:iam::{ACCOUNT}:root")
    );
    assert_eq!(grants[0]["Operations"], json!(["Decrypt", "DescribeKey"]));
    assert_eq!(
        grants[0]["Constraints"]["EncryptionContextSubset"]["Team"],
        "blue"
    );
    assert_eq!(grants[0]["Name"], "mount-1");
    let retirable = call(
        &t.other,
        "ListRetirableGrants",
        json!({"RetiringPrincipal": arn("other")}),
    )
    .unwrap();
    assert_eq!(retirable["Grants"][0]["GrantId"], grant_id);
    // The grantee may not retire it (RetireGrant is not among its operations); the
    // retiring principal may, by token.
    let e = call(&t.user, "RetireGrant", json!({"GrantToken": token})).unwrap_err();
    assert_eq!(e.aws_code(), "AccessDeniedException");
    call(&t.other, "RetireGrant", json!({"GrantToken": token})).unwrap();
    assert_eq!(
        t.user
            .decrypt(&key, &g.wrapped, &ctx)
            .unwrap_err()
            .aws_code(),
        "AccessDeniedException"
    );
    let e = call(
        &t.other,
        "RetireGrant",
        json!({"KeyId": key, "GrantId": grant_id}),
    )
    .unwrap_err();
    assert_eq!(e.aws_code(), "NotFoundException");
}

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn equals_constraints_revocation_tokens_and_grants_from_grants() {
    let (t, key) = setup();
    let ctx = blue();
    let grant = call(
        &t.admin,
        "CreateGrant",
        json!({
        "KeyId": key, "GranteePrincipal": arn("user"),
        "Operations": ["GenerateDataKey", "Decrypt", "CreateGrant", "RetireGrant"],
        "Constraints": {"EncryptionContextEquals": {"team": "blue", "file": "1"}}}),
    )
    .unwrap();
    let g = t.user.generate_data_key(&key, &ctx).unwrap();
    t.user.decrypt(&key, &g.wrapped, &ctx).unwrap();
    let more = blue().with("x", "y");
    assert_eq!(
        t.user
            .generate_data_key(&key, &more)
            .unwrap_err()
            .aws_code(),
        "AccessDeniedException"
    );
    // A grant made from the grant: no operation more, a constraint at least as strict.
    let wider = call(
        &t.user,
        "CreateGrant",
        json!({"KeyId": key, "GranteePrincipal": arn("other"),
        "Operations": ["Encrypt"], "Constraints": {"EncryptionContextEquals": {"team": "blue", "file": "1"}}}),
    );
    assert_eq!(wider.unwrap_err().aws_code(), "AccessDeniedException");
    let looser = call(
        &t.user,
        "CreateGrant",
        json!({"KeyId": key, "GranteePrincipal": arn("other"),
        "Operations": ["Decrypt"]}),
    );
    assert_eq!(looser.unwrap_err().aws_code(), "AccessDeniedException");
    let child = call(&t.user, "CreateGrant", json!({"KeyId": key, "GranteePrincipal": arn("other"),
        "Operations": ["Decrypt"], "Constraints": {"EncryptionContextEquals": {"team": "blue", "file": "1"}}}))
    .unwrap();
    t.other.decrypt(&key, &g.wrapped, &ctx).unwrap();
    // Bad tokens and grant requests get AWS's error names.
    let e = call(
        &t.user,
        "Decrypt",
        json!({"CiphertextBlob": b64(&g.wrapped),
        "EncryptionContext": {"team": "blue", "file": "1"}, "GrantTokens": ["not-a-token"]}),
    );
    assert_eq!(e.unwrap_err().aws_code(), "InvalidGrantTokenException");
    let e = call(
        &t.admin,
        "CreateGrant",
        json!({"KeyId": key, "GranteePrincipal": arn("user"),
        "Operations": ["Fly"]}),
    );
    assert_eq!(e.unwrap_err().aws_code(), "ValidationException");
    let e = call(
        &t.admin,
        "CreateGrant",
        json!({"KeyId": key, "Operations": ["Decrypt"]}),
    );
    assert_eq!(e.unwrap_err().aws_code(), "ValidationException");
    // The grantee may retire its own grant (it has RetireGrant) by key and id; only the
    // key policy lets a principal revoke.
    let e = call(
        &t.other,
        "RevokeGrant",
        json!({"KeyId": key, "GrantId": child["GrantId"]}),
    );
    assert_eq!(e.unwrap_err().aws_code(), "AccessDeniedException");
    call(
        &t.admin,
        "RevokeGrant",
        json!({"KeyId": key, "GrantId": child["GrantId"]}),
    )
    .unwrap();
    assert_eq!(
        t.other
            .decrypt(&key, &g.wrapped, &ctx)
            .unwrap_err()
            .aws_code(),
        "AccessDeniedException"
    );
    call(
        &t.user,
        "RetireGrant",
        json!({"KeyId": key, "GrantId": grant["GrantId"]}),
    )
    .unwrap();
    assert_eq!(
        t.user
            .decrypt(&key, &g.wrapped, &ctx)
            .unwrap_err()
            .aws_code(),
        "AccessDeniedException"
    );
    let listed = call(&t.admin, "ListGrants", json!({"KeyId": key})).unwrap();
    assert_eq!(listed["Grants"], json!([]));
    let e = call(
        &t.admin,
        "RevokeGrant",
        json!({"KeyId": key, "GrantId": grant["GrantId"]}),
    );
    assert_eq!(e.unwrap_err().aws_code(), "NotFoundException");
}

#[test]
fn tags_description_and_rotation_history() {
    let (t, key) = setup();
    call(
        &t.admin,
        "TagResource",
        json!({"KeyId": key, "Tags": [
        {"TagKey": "team", "TagValue": "blue"}, {"TagKey": "env", "TagValue": "ci"}]}),
    )
    .unwrap();
    call(
        &t.admin,
        "TagResource",
        json!({"KeyId": key, "Tags": [{"TagKey": "env", "TagValue": "prod"}]}),
    )
    .unwrap();
    let tags = call(&t.admin, "ListResourceTags", json!({"KeyId": key})).unwrap();
    assert_eq!(
        tags["Tags"],
        json!([{"TagKey": "env", "TagValue": "prod"}, {"TagKey": "team", "TagValue": "blue"}])
    );
    assert_eq!(tags["Truncated"], false);
    let page = call(
        &t.admin,
        "ListResourceTags",
        json!({"KeyId": key, "Limit": 1}),
    )
    .unwrap();
    assert_eq!(page["Truncated"], true);
    let rest = call(
        &t.admin,
        "ListResourceTags",
        json!({"KeyId": key, "Marker": page["NextMarker"]}),
    )
    .unwrap();
    assert_eq!(rest["Tags"][0]["TagKey"], "team");
    call(
        &t.admin,
        "UntagResource",
        json!({"KeyId": key, "TagKeys": ["team"]}),
    )
    .unwrap();
    let tags = call(&t.admin, "ListResourceTags", json!({"KeyId": key})).unwrap();
    assert_eq!(tags["Tags"].as_array().unwrap().len(), 1);
    let e = call(
        &t.admin,
        "TagResource",
        json!({"KeyId": key, "Tags": [{"TagKey": "aws:x", "TagValue": "1"}]}),
    );
    assert_eq!(e.unwrap_err().aws_code(), "TagException");
    let e = call(
        &t.user,
        "TagResource",
        json!({"KeyId": key, "Tags": [{"TagKey": "a", "TagValue": "1"}]}),
    );
    assert_eq!(e.unwrap_err().aws_code(), "AccessDeniedException");
    let made = call(
        &t.admin,
        "CreateKey",
        json!({"Tags": [{"TagKey": "made", "TagValue": "with"}]}),
    )
    .unwrap();
    let made_tags = call(
        &t.admin,
        "ListResourceTags",
        json!({"KeyId": made["KeyMetadata"]["KeyId"]}),
    )
    .unwrap();
    assert_eq!(made_tags["Tags"][0]["TagKey"], "made");

    call(
        &t.admin,
        "UpdateKeyDescription",
        json!({"KeyId": key, "Description": "backups"}),
    )
    .unwrap();
    let d = call(&t.admin, "DescribeKey", json!({"KeyId": key})).unwrap();
    assert_eq!(d["KeyMetadata"]["Description"], "backups");

    let none = call(&t.admin, "ListKeyRotations", json!({"KeyId": key})).unwrap();
    assert_eq!(none["Rotations"], json!([]));
    call(&t.admin, "RotateKeyOnDemand", json!({"KeyId": key})).unwrap();
    call(&t.admin, "RotateKeyOnDemand", json!({"KeyId": key})).unwrap();
    let r = call(&t.admin, "ListKeyRotations", json!({"KeyId": key})).unwrap();
    let rotations = r["Rotations"].as_array().unwrap();
    assert_eq!(rotations.len(), 2);
    assert_eq!(rotations[0]["RotationType"], "ON_DEMAND");
    assert_eq!(rotations[0]["KeyId"], key);
    assert!(
        rotations[0]["RotationDate"].as_f64().unwrap()
            <= rotations[1]["RotationDate"].as_f64().unwrap()
    );
    let e = call(&t.user, "ListKeyRotations", json!({"KeyId": key}));
    assert_eq!(e.unwrap_err().aws_code(), "AccessDeniedException");
}
