use super::*;

fn req<'a>(principal: &'a str, action: &'a str, ctx: Option<&'a EncryptionContext>) -> Request<'a> {
    Request {
        principal,
        account: "111122223333",
        action,
        resource: "arn:aws:kms:us-east-1:111122223333:key/k",
        context: ctx,
        extra: &[],
    }
}

const USER: &str = "arn:aws:iam::111122223333:user/app";

#[test]
fn globs() {
    assert!(glob(
        "kms:GenerateDataKey*",
        "kms:GenerateDataKeyWithoutPlaintext",
        true
    ));
    assert!(glob("KMS:decrypt", "kms:Decrypt", true));
    assert!(!glob("kms:Decrypt", "kms:DecryptX", true));
    assert!(glob("a?c*", "abcdef", false));
    assert!(!glob("a?c", "ac", false));
    assert!(glob("*", "", false));
}

#[test]
fn default_policy_lets_the_account_in() {
    let p = Policy::parse(&default_policy_text("111122223333")).unwrap();
    assert_eq!(p.evaluate(&req(USER, "kms:Decrypt", None)), Decision::Allow);
    let other = "arn:aws:iam::444455556666:user/x";
    assert_eq!(
        p.evaluate(&Request {
            account: "444455556666",
            ..req(other, "kms:Decrypt", None)
        }),
        Decision::Silent
    );
}

#[test]
fn deny_wins_and_conditions_apply() {
    let p = Policy::parse(&format!(
        r#"{{"Statement": [
            {{"Effect": "Allow", "Principal": {{"AWS": ["{USER}"]}}, "Action": "kms:*", "Resource": "*"}},
            {{"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
              "Condition": {{"StringNotEquals": {{"kms:EncryptionContext:team": "blue"}}}}}}
        ]}}"#
    ))
    .unwrap();
    let blue = EncryptionContext::new().with("Team", "blue");
    let red = EncryptionContext::new().with("team", "red");
    assert_eq!(
        p.evaluate(&req(USER, "kms:Decrypt", Some(&blue))),
        Decision::Allow
    );
    assert_eq!(
        p.evaluate(&req(USER, "kms:Decrypt", Some(&red))),
        Decision::Deny
    );
    assert_eq!(p.evaluate(&req(USER, "kms:Decrypt", None)), Decision::Deny);
    assert_eq!(p.evaluate(&req(USER, "kms:Encrypt", None)), Decision::Allow);
}

#[test]
fn set_qualifiers_and_null() {
    let p = Policy::parse(
        r#"{"Statement": {"Effect": "Allow", "Principal": {"AWS": "111122223333"},
            "NotAction": "kms:Decrypt", "Resource": "*",
            "Condition": {"ForAllValues:StringLike": {"kms:EncryptionContextKeys": "kmsfs:*"},
                          "Null": {"kms:EncryptionContext:kmsfs:file-id": "false"}}}}"#,
    )
    .unwrap();
    let good = EncryptionContext::new().with("kmsfs:file-id", "1");
    let bad = EncryptionContext::new()
        .with("kmsfs:file-id", "1")
        .with("x", "2");
    assert_eq!(
        p.evaluate(&req(USER, "kms:Encrypt", Some(&good))),
        Decision::Allow
    );
    assert_eq!(
        p.evaluate(&req(USER, "kms:Encrypt", Some(&bad))),
        Decision::Silent
    );
    assert_eq!(
        p.evaluate(&req(USER, "kms:Encrypt", None)),
        Decision::Silent
    );
    assert_eq!(
        p.evaluate(&req(USER, "kms:Decrypt", Some(&good))),
        Decision::Silent
    );
}

#[test]
fn malformed_documents_are_refused() {
    for bad in [
        "not json",
        "[]",
        r#"{"Statement": []}"#,
        r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}"#,
        r#"{"Statement": [{"Effect": "Maybe", "Principal": "*", "Action": "kms:*", "Resource": "*"}]}"#,
        r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": "bob"}, "Action": "kms:*", "Resource": "*"}]}"#,
        r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Resource": "*"}]}"#,
        r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*",
            "Condition": {"NumericLessThan": {"kms:x": "1"}}}]}"#,
    ] {
        let e = Policy::parse(bad).unwrap_err();
        assert_eq!(
            e.aws_code(),
            "MalformedPolicyDocumentException",
            "{bad}: {e}"
        );
    }
}

#[test]
fn role_sessions_are_their_role() {
    let role = "arn:aws:iam::111122223333:role/R";
    assert!(principal_matches(
        role,
        "arn:aws:sts::111122223333:assumed-role/R/s",
        "111122223333"
    ));
    assert!(!principal_matches(
        role,
        "arn:aws:sts::111122223333:assumed-role/Q/s",
        "111122223333"
    ));
    assert!(principal_matches(
        "arn:aws:iam::111122223333:root",
        USER,
        "111122223333"
    ));
    assert!(!principal_matches(
        "arn:aws:iam::111122223333:user/other",
        USER,
        "111122223333"
    ));
}
