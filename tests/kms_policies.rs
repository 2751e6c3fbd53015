//! Key policies and principals in the built-in KMS (issue 23), over HTTP through the
//! client: the default policy (today's behaviour), Allow and explicit Deny with
//! conditions, the lockout safety check, malformed documents, principals named by the
//! credentials file (and capped by `kms_allowed_operations`), and the audit log naming
//! principals by ARN.

#[path = "kmskit/mod.rs"]
mod common;

use common::{call, client_for, TestServer};
use kmsfs::kms::client::HttpKms;
use kmsfs::kms::engine::Engine;
use kmsfs::kms::{EncryptionContext, Kms, KmsError};
use serde_json::{json, Value};

const ACCOUNT: &str = "111122223333";

/// Three principals: `admin` and `user` (named after their sections) and `ops`, named
/// by `principal_arn` and allowed only a few operations.
fn ini() -> String {
    format!(
        "{}[admin]\naws_access_key_id = AKIAADMIN\naws_secret_access_key = a\n\
         [user]\naws_access_key_id = AKIAUSER\naws_secret_access_key = u\n\
         [ops]\naws_access_key_id = AKIAOPS\naws_secret_access_key = o\n\
         principal_arn = arn:aws:iam::{ACCOUNT}:role/Operator\n\
         kms_allowed_operations = DescribeKey, GenerateDataKey\n",
        common::credentials_ini()
    )
}

struct Setup {
    s: TestServer,
    admin: HttpKms,
    user: HttpKms,
    ops: HttpKms,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let s = TestServer::with_principals(&ini(), &log);
    let client = |k: &str, secret: &str| client_for(&s.url(), k, secret, |c| c.max_attempts = 1);
    Setup {
        admin: client("AKIAADMIN", "a"),
        user: client("AKIAUSER", "u"),
        ops: client("AKIAOPS", "o"),
        s,
        log,
        _dir: dir,
    }
}

fn user_arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:user/{name}")
}

/// The policy of AWS's KMS lab: the administrator manages the key, the user uses it.
fn lab_policy(admin: &str, user: &str) -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Allow access for Key Administrators", "Effect": "Allow",
             "Principal": {"AWS": admin},
             "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*",
                        "kms:Update*", "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*",
                        "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
                        "kms:CancelKeyDeletion", "kms:RotateKeyOnDemand"],
             "Resource": "*"},
            {"Sid": "Allow use of the key", "Effect": "Allow",
             "Principal": {"AWS": [user]},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                        "kms:DescribeKey"],
             "Resource": "*"},
            {"Sid": "Allow attachment of persistent resources", "Effect": "Allow",
             "Principal": {"AWS": user},
             "Action": ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"],
             "Resource": "*",
             "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}}
        ]
    })
    .to_string()
}

fn create_key(kms: &HttpKms, body: Value) -> String {
    let v = call(kms, "CreateKey", body).unwrap();
    v["KeyMetadata"]["Arn"].as_str().unwrap().to_owned()
}

fn denied(e: &KmsError, who: &str, op: &str, key: &str) {
    assert_eq!(e.aws_code(), "AccessDeniedException", "{e}");
    let m = e.message();
    assert!(
        m.starts_with(&format!(
            "User: {who} is not authorized to perform: kms:{op} on resource: {key}"
        )),
        "{m}"
    );
}

#[test]
fn a_key_made_without_a_policy_has_the_default_one_and_every_principal_may_use_it() {
    let t = setup();
    let key = create_key(&t.admin, json!({}));
    let p = call(
        &t.user,
        "GetKeyPolicy",
        json!({"KeyId": key, "PolicyName": "default"}),
    )
    .unwrap();
    assert_eq!(p["PolicyName"], "default");
    let doc: Value = serde_json::from_str(p["Policy"].as_str().unwrap()).unwrap();
    assert_eq!(
        doc["Statement"][0]["Principal"]["AWS"],
        format!("arn:aws:iam::{ACCOUNT}:root")
    );
    assert_eq!(doc["Statement"][0]["Action"], "kms:*");
    let names = call(&t.user, "ListKeyPolicies", json!({"KeyId": key})).unwrap();
    assert_eq!(names["PolicyNames"], json!(["default"]));
    let e = call(
        &t.user,
        "GetKeyPolicy",
        json!({"KeyId": key, "PolicyName": "other"}),
    );
    assert_eq!(e.unwrap_err().aws_code(), "NotFoundException");
    let ctx = EncryptionContext::new().with("a", "b");
    for kms in [&t.admin, &t.user, &t.s.client()] {
        let g = kms.generate_data_key(&key, &ctx).unwrap();
        kms.decrypt(&key, &g.wrapped, &ctx).unwrap();
    }
}

#[test]
fn the_lab_policy_lets_the_user_read_and_the_administrator_manage_but_not_read() {
    let t = setup();
    let policy = lab_policy(&user_arn("admin"), &user_arn("user"));
    let key = create_key(&t.admin, json!({"Policy": policy, "Description": "lab"}));
    let ctx = EncryptionContext::new().with("kmsfs:file-id", "1");
    let g = t.user.generate_data_key(&key, &ctx).unwrap();
    t.user.decrypt(&key, &g.wrapped, &ctx).unwrap();
    let e = t.admin.decrypt(&key, &g.wrapped, &ctx).unwrap_err();
    denied(&e, &user_arn("admin"), "Decrypt", &key);
    assert!(e
        .message()
        .ends_with("because no resource-based policy allows the kms:Decrypt action"));
    let e = t.admin.generate_data_key(&key, &ctx).unwrap_err();
    denied(&e, &user_arn("admin"), "GenerateDataKey", &key);
    let e = call(&t.user, "DisableKey", json!({"KeyId": key})).unwrap_err();
    denied(&e, &user_arn("user"), "DisableKey", &key);
    let e = call(
        &t.user,
        "PutKeyPolicy",
        json!({"KeyId": key, "Policy": policy}),
    )
    .unwrap_err();
    denied(&e, &user_arn("user"), "PutKeyPolicy", &key);
    call(&t.admin, "DisableKey", json!({"KeyId": key})).unwrap();
    call(&t.admin, "EnableKey", json!({"KeyId": key})).unwrap();
    call(
        &t.admin,
        "PutKeyPolicy",
        json!({"KeyId": key, "Policy": policy}),
    )
    .unwrap();
    // The grant statement's condition holds only for AWS services.
    let e = call(
        &t.user,
        "CreateGrant",
        json!({"KeyId": key,
        "GranteePrincipal": user_arn("admin"), "Operations": ["Decrypt"]}),
    );
    denied(&e.unwrap_err(), &user_arn("user"), "CreateGrant", &key);
    // The default section is not named in the policy, and the root statement is gone.
    let e = s_client_decrypt(&t, &key, &g.wrapped, &ctx);
    denied(&e, &user_arn("default"), "Decrypt", &key);
}

fn s_client_decrypt(t: &Setup, key: &str, wrapped: &[u8], ctx: &EncryptionContext) -> KmsError {
    t.s.client().decrypt(key, wrapped, ctx).unwrap_err()
}

#[test]
fn an_explicit_deny_wins_and_conditions_see_the_encryption_context_and_account() {
    let t = setup();
    let root = format!("arn:aws:iam::{ACCOUNT}:root");
    let policy = json!({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": root}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": user_arn("user")}, "Action": "kms:Decrypt",
         "Resource": "*",
         "Condition": {"StringNotEquals": {"kms:EncryptionContext:team": "blue"}}},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:GenerateDataKey*", "Resource": "*",
         "Condition": {"StringNotLike": {"kms:CallerAccount": "1111*"}}}
    ]})
    .to_string();
    let key = create_key(&t.admin, json!({"Policy": policy}));
    let blue = EncryptionContext::new().with("team", "blue");
    let red = EncryptionContext::new().with("team", "red");
    let g_blue = t.user.generate_data_key(&key, &blue).unwrap();
    let g_red = t.admin.generate_data_key(&key, &red).unwrap();
    t.user.decrypt(&key, &g_blue.wrapped, &blue).unwrap();
    t.admin.decrypt(&key, &g_red.wrapped, &red).unwrap();
    let e = t.user.decrypt(&key, &g_red.wrapped, &red).unwrap_err();
    denied(&e, &user_arn("user"), "Decrypt", &key);
    assert!(
        e.message()
            .ends_with("with an explicit deny in a resource-based policy"),
        "{e}"
    );
}

#[test]
fn the_lockout_safety_check_refuses_a_policy_that_locks_its_author_out() {
    let t = setup();
    let key = create_key(&t.admin, json!({}));
    let only_user = json!({"Statement": [{"Effect": "Allow",
        "Principal": {"AWS": user_arn("user")}, "Action": "kms:*", "Resource": "*"}]})
    .to_string();
    let e = call(
        &t.admin,
        "PutKeyPolicy",
        json!({"KeyId": key, "Policy": only_user}),
    )
    .unwrap_err();
    assert_eq!(e.aws_code(), "MalformedPolicyDocumentException");
    assert_eq!(
        e.message(),
        "The new key policy will not allow you to update the key policy in the future."
    );
    let e = call(&t.admin, "CreateKey", json!({"Policy": only_user})).unwrap_err();
    assert_eq!(e.aws_code(), "MalformedPolicyDocumentException");
    // Nothing changed: the admin still manages the key.
    call(&t.admin, "DescribeKey", json!({"KeyId": key})).unwrap();
    call(
        &t.admin,
        "PutKeyPolicy",
        json!({"KeyId": key, "Policy": only_user,
        "BypassPolicyLockoutSafetyCheck": true}),
    )
    .unwrap();
    let e = call(&t.admin, "DescribeKey", json!({"KeyId": key})).unwrap_err();
    denied(&e, &user_arn("admin"), "DescribeKey", &key);
    call(&t.user, "DescribeKey", json!({"KeyId": key})).unwrap();
}

#[test]
fn malformed_policies_get_aws_error_names() {
    let t = setup();
    let key = create_key(&t.admin, json!({}));
    for bad in [
        "{",
        r#"{"Statement": []}"#,
        r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}"#,
        r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": "nobody"}, "Action": "kms:*", "Resource": "*"}]}"#,
        r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Resource": "*"}]}"#,
    ] {
        let e = call(
            &t.admin,
            "PutKeyPolicy",
            json!({"KeyId": key, "Policy": bad}),
        )
        .unwrap_err();
        assert_eq!(
            e.aws_code(),
            "MalformedPolicyDocumentException",
            "{bad}: {e}"
        );
    }
    let e = call(
        &t.admin,
        "PutKeyPolicy",
        json!({"KeyId": key, "Policy": ""}),
    )
    .unwrap_err();
    assert_eq!(e.aws_code(), "ValidationException");
    let e = call(&t.admin, "PutKeyPolicy", json!({"KeyId": key})).unwrap_err();
    assert_eq!(e.aws_code(), "ValidationException");
}

#[test]
fn principals_come_from_the_credentials_file_and_kms_allowed_operations_still_apply() {
    let t = setup();
    let role = format!("arn:aws:iam::{ACCOUNT}:role/Operator");
    let key = create_key(&t.admin, json!({}));
    // The root statement lets the role in, within its allowed operations.
    t.ops
        .generate_data_key(&key, &EncryptionContext::new())
        .unwrap();
    let e = call(&t.ops, "DisableKey", json!({"KeyId": key})).unwrap_err();
    assert_eq!(e.aws_code(), "AccessDeniedException");
    assert!(
        e.message()
            .starts_with(&format!("User: {role} is not authorized")),
        "{e}"
    );
    assert!(!e.message().contains("AKIAOPS"), "{e}");
    // A policy naming only the role lets the role through and nobody else.
    let policy = json!({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": [role, user_arn("admin")]}, "Action": "kms:*",
         "Resource": key}]})
    .to_string();
    call(
        &t.admin,
        "PutKeyPolicy",
        json!({"KeyId": key, "Policy": policy}),
    )
    .unwrap();
    t.ops
        .generate_data_key(&key, &EncryptionContext::new())
        .unwrap();
    let e = t
        .user
        .generate_data_key(&key, &EncryptionContext::new())
        .unwrap_err();
    denied(&e, &user_arn("user"), "GenerateDataKey", &key);
    // Every request's audit record names its principal.
    let text = std::fs::read_to_string(&t.log).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |arn: &str| {
        records
            .iter()
            .filter(|r| r["userIdentity"]["arn"] == arn)
            .count()
    };
    assert!(by(&role) >= 3 && by(&user_arn("admin")) >= 2 && by(&user_arn("user")) >= 1);
    let refused = records.last().unwrap();
    assert_eq!(refused["userIdentity"]["arn"], user_arn("user"));
    assert_eq!(refused["userIdentity"]["userName"], "user");
    assert_eq!(refused["userIdentity"]["accessKeyId"], "AKIAUSER");
    assert_eq!(refused["errorCode"], "AccessDeniedException");
    let role_record = records
        .iter()
        .find(|r| r["userIdentity"]["arn"] == role)
        .unwrap();
    assert_eq!(role_record["userIdentity"]["type"], "Role");
}

#[test]
fn policies_live_in_the_state_file_and_other_processes_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let a = Engine::open(&path).unwrap();
    let b = Engine::open(&path).unwrap();
    let out: Value = serde_json::from_slice(&a.call("CreateKey", b"{}").unwrap()).unwrap();
    let key = out["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
    let user = kmsfs::kms::engine::Caller {
        arn: user_arn("user"),
        account: ACCOUNT.into(),
    };
    let only_admin = json!({"Statement": [{"Effect": "Allow",
        "Principal": {"AWS": user_arn("admin")}, "Action": "kms:*", "Resource": "*"}]});
    let body = json!({"KeyId": key, "Policy": only_admin.to_string()});
    a.call("PutKeyPolicy", body.to_string().as_bytes()).unwrap();
    let describe = json!({"KeyId": key}).to_string();
    let e = b
        .call_as(&user, "DescribeKey", describe.as_bytes())
        .unwrap_err();
    assert_eq!(e.aws_code(), "AccessDeniedException");
    // The process's own engine (a mount, an offline tool) holds the state and is not asked.
    b.generate_data_key(&key, &EncryptionContext::new())
        .unwrap();
    let c = Engine::open(&path).unwrap();
    let p: Value =
        serde_json::from_slice(&c.call("GetKeyPolicy", describe.as_bytes()).unwrap()).unwrap();
    assert_eq!(p["Policy"], only_admin.to_string());
}
