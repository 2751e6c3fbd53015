//! Tests of the SigV4 checker (`sigv4.rs`).

use super::*;
use http::HeaderValue;

// The AWS SigV4 test suite's "get-vanilla" case (service "service", region us-east-1).
#[test]
fn aws_test_suite_get_vanilla_signature() {
    let table = CredentialTable::from_ini(
        "[t]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n",
    );
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("example.amazonaws.com"));
    h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
    let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
    h.insert("authorization", HeaderValue::from_static(auth));
    let at = clock::parse_amz_date("20150830T123600Z").unwrap();
    // Our server only accepts service "kms", so this known-good vector must fail on
    // scope, not on the signature: check by swapping the check order via a KMS scope.
    let err = verify(&table, "GET", "/", "", &h, b"", at).unwrap_err();
    assert!(err.message().contains("scoped"), "{err}");
    // The same computation with the scope check relaxed is exercised end to end by the
    // client and boto3 tests; here we pin the signature maths itself:
    let canonical = "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let sts = format!(
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20150830");
    let k = hmac(&hmac(&hmac(&k, b"us-east-1"), b"service"), b"aws4_request");
    assert_eq!(
        hex::encode(hmac(&k, sts.as_bytes())),
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    );
}

#[test]
fn session_tokens_must_match_exactly() {
    let table = CredentialTable::from_ini(
        "[a]\naws_access_key_id=A\naws_secret_access_key=s\n[b]\naws_access_key_id=B\naws_secret_access_key=s\naws_session_token=tok\n",
    );
    let (a, b) = (&table.0["A"], &table.0["B"]);
    assert!(session_token_matches(a, None));
    assert!(!session_token_matches(a, Some("tok")));
    assert!(session_token_matches(b, Some("tok")));
    for wrong in [None, Some(""), Some("to"), Some("tok2"), Some("TOK")] {
        assert!(!session_token_matches(b, wrong), "{wrong:?}");
    }
}

#[test]
fn refusals_have_aws_names() {
    let table = CredentialTable::from_ini("[a]\naws_access_key_id=AK\naws_secret_access_key=s\n");
    let now = SystemTime::now();
    let code = |h: &HeaderMap| verify(&table, "POST", "/", "", h, b"", now).unwrap_err();
    let mut h = HeaderMap::new();
    assert_eq!(code(&h).aws_code(), "MissingAuthenticationTokenException");
    h.insert("authorization", HeaderValue::from_static("Basic x"));
    assert_eq!(code(&h).aws_code(), "IncompleteSignatureException");
    h.insert(
        "authorization",
        HeaderValue::from_static(
            "AWS4-HMAC-SHA256 Credential=NOPE/20200101/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
        ),
    );
    h.insert("x-amz-date", HeaderValue::from_static("20200101T000000Z"));
    assert_eq!(code(&h).aws_code(), "UnrecognizedClientException");
    h.insert(
        "authorization",
        HeaderValue::from_static(
            "AWS4-HMAC-SHA256 Credential=AK/20200101/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
        ),
    );
    let e = code(&h);
    assert_eq!(e.aws_code(), "InvalidSignatureException");
    assert!(e.message().starts_with("Signature expired"), "{e}");
    let today = clock::amz_date(now);
    let auth = format!("AWS4-HMAC-SHA256 Credential=AK/{}/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature=00", &today[..8]);
    h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
    h.insert("x-amz-date", HeaderValue::from_str(&today).unwrap());
    let e = code(&h);
    assert_eq!(e.aws_code(), "IncompleteSignatureException");
    assert!(
        e.message()
            .contains("'x-amz-target' must be a 'SignedHeader'"),
        "{e}"
    );
}
