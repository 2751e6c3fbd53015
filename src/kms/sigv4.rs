//! Server-side AWS Signature Version 4 checking for the local KMS, against a table of
//! credentials read from an AWS shared-credentials file.
//!
//! Written from the SigV4 specification rather than with `aws-sigv4` (which only signs),
//! so the client (signing with `aws-sigv4`) and boto3 are checked by independent code.
//! Refusals carry AWS's error names: `MissingAuthenticationTokenException`,
//! `IncompleteSignatureException`, `UnrecognizedClientException`,
//! `InvalidSignatureException` (bad signature, wrong scope, clock skew over 15 minutes).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{clock, KmsError};
use crate::secret::SecretBytes;

/// How far a request's `X-Amz-Date` may be from the server's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// One access key's secret (and optional session token).
pub struct Credential {
    pub secret_access_key: SecretBytes,
    pub session_token: Option<String>,
    /// Operations this key may call (`kms_allowed_operations = Decrypt, GenerateDataKey`
    /// in its section, a kmsfs extension AWS SDKs ignore); `None` allows all.
    pub allowed_operations: Option<Vec<String>>,
}

impl Credential {
    pub fn may_call(&self, operation: &str) -> bool {
        self.allowed_operations
            .as_ref()
            .is_none_or(|ops| ops.iter().any(|o| o == operation || o == "*"))
    }
}

/// Access key id -> credential.
#[derive(Default)]
pub struct CredentialTable(pub BTreeMap<String, Credential>);

impl CredentialTable {
    /// Reads every INI section that has both `aws_access_key_id` and
    /// `aws_secret_access_key`.
    pub fn from_ini(text: &str) -> Self {
        let mut table = BTreeMap::new();
        for section in super::config::parse_ini(text).into_values() {
            if let (Some(id), Some(secret)) = (
                section.get("aws_access_key_id"),
                section.get("aws_secret_access_key"),
            ) {
                if let Ok(secret) = SecretBytes::from_slice(secret.as_bytes()) {
                    table.insert(
                        id.clone(),
                        Credential {
                            secret_access_key: secret,
                            session_token: section.get("aws_session_token").cloned(),
                            allowed_operations: section
                                .get("kms_allowed_operations")
                                .map(|ops| ops.split(',').map(|o| o.trim().to_owned()).collect()),
                        },
                    );
                }
            }
        }
        CredentialTable(table)
    }
}

/// An `AccessDenied` error with AWS's error name `code`.
fn denied(code: &str, message: impl Into<String>) -> KmsError {
    KmsError::AccessDenied {
        code: code.into(),
        message: message.into(),
    }
}

/// HMAC-SHA256 of `data` under `key`.
fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Percent-encodes all but RFC 3986 unreserved characters (and `/` when `keep_slash`).
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The query string with its parameters sorted, as SigV4 signs it.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
struct AuthHeader<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

/// Splits an `Authorization` header into its parts; refuses other algorithms and
/// malformed scopes.
fn parse_auth(value: &str) -> Result<AuthHeader<'_>, KmsError> {
    let incomplete = |what: &str| {
        denied(
            "IncompleteSignatureException",
            format!("Authorization header is incomplete or malformed: {what}"),
        )
    };
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| incomplete("unsupported algorithm, expected AWS4-HMAC-SHA256"))?;
    let mut parts = BTreeMap::new();
    for p in rest.split(',') {
        if let Some((k, v)) = p.trim().split_once('=') {
            parts.insert(k, v);
        }
    }
    let (Some(cred), Some(signed_headers), Some(signature)) = (
        parts.get("Credential"),
        parts.get("SignedHeaders"),
        parts.get("Signature"),
    ) else {
        return Err(incomplete(
            "Credential, SignedHeaders and Signature are required",
        ));
    };
    let scope: Vec<&str> = cred.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" {
        return Err(incomplete(
            "Credential must be KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    }
    Ok(AuthHeader {
        access_key: scope[0],
        date: scope[1],
        region: scope[2],
        service: scope[3],
        signed_headers,
        signature,
    })
}

/// The access key id a request claims in its `Authorization` header, checked or not
/// (for logging refusals).
pub fn claimed_access_key(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    parse_auth(auth).ok().map(|a| a.access_key.to_owned())
}

/// What identifies one signed request for the server's replay check: its signing time
/// (whole seconds since the epoch) and its signature. `None` without a well-formed
/// `Authorization` and `X-Amz-Date`.
pub fn signature_id(headers: &HeaderMap) -> Option<(u64, [u8; 32])> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let auth = parse_auth(header("authorization")?).ok()?;
    let signed_at = clock::parse_amz_date(header("x-amz-date")?)?;
    let secs = signed_at
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let signature = hex::decode(auth.signature).ok()?.try_into().ok()?;
    Some((secs, signature))
}

/// Refuses `operation` with AWS's `AccessDeniedException` if `access_key` may not call it.
pub fn authorize(
    table: &CredentialTable,
    access_key: &str,
    operation: &str,
    region: &str,
    account: &str,
) -> Result<(), KmsError> {
    match table.0.get(access_key) {
        Some(c) if c.may_call(operation) => Ok(()),
        _ => Err(denied(
            "AccessDeniedException",
            format!(
                "User: arn:aws:iam::{account}:user/{access_key} is not authorized to perform: kms:{operation} in region {region} because no identity-based policy allows the kms:{operation} action"
            ),
        )),
    }
}

/// Checks one request's signature; returns the caller's access key id.
pub fn verify(
    table: &CredentialTable,
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<String, KmsError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(auth) = header("authorization") else {
        return Err(denied(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let auth = parse_auth(auth)?;
    let Some(amz_date) = header("x-amz-date") else {
        return Err(denied(
            "IncompleteSignatureException",
            "Authorization header requires existence of a 'X-Amz-Date' header.",
        ));
    };
    let cred = caller_credential(table, &auth, header("x-amz-security-token"))?;
    check_date_and_scope(&auth, amz_date, now)?;
    let canonical = canonical_request(method, path, query, headers, &auth, body)?;
    let signed = string_to_sign(amz_date, &auth, &canonical);
    check_signature(&signing_key(cred, &auth), &signed, auth.signature)?;
    Ok(auth.access_key.to_owned())
}

/// The credential of the access key a request names, if that key is known and the request
/// carries its session token.
fn caller_credential<'t>(
    table: &'t CredentialTable,
    auth: &AuthHeader<'_>,
    session_token: Option<&str>,
) -> Result<&'t Credential, KmsError> {
    let unrecognized = || {
        denied(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    };
    let cred = table.0.get(auth.access_key).ok_or_else(unrecognized)?;
    if !session_token_matches(cred, session_token) {
        return Err(unrecognized());
    }
    Ok(cred)
}

/// Refuses a request signed too far from `now`, or scoped to another day or service.
fn check_date_and_scope(
    auth: &AuthHeader<'_>,
    amz_date: &str,
    now: SystemTime,
) -> Result<(), KmsError> {
    let signed_at = clock::parse_amz_date(amz_date).ok_or_else(|| {
        denied(
            "IncompleteSignatureException",
            format!("X-Amz-Date '{amz_date}' is not in the form YYYYMMDD'T'HHMMSS'Z'"),
        )
    })?;
    check_skew(amz_date, signed_at, now)?;
    if auth.service != "kms" || !amz_date.starts_with(auth.date) {
        return Err(denied(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to a valid date and to the service 'kms', got {}/{}",
                auth.date, auth.service
            ),
        ));
    }
    Ok(())
}

/// Headers every request must sign, as every AWS SDK signs them: unsigned, a captured
/// request could be sent to another host, at another time, or as another operation.
pub const REQUIRED_SIGNED_HEADERS: [&str; 3] = ["host", "x-amz-date", "x-amz-target"];

/// SigV4's canonical request; refuses a request that leaves one of
/// [`REQUIRED_SIGNED_HEADERS`] unsigned.
fn canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    auth: &AuthHeader<'_>,
    body: &[u8],
) -> Result<String, KmsError> {
    let signed: Vec<&str> = auth.signed_headers.split(';').collect();
    if let Some(missing) = REQUIRED_SIGNED_HEADERS.iter().find(|h| !signed.contains(h)) {
        return Err(denied(
            "IncompleteSignatureException",
            format!(
                "'{missing}' must be a 'SignedHeader' in the AWS Authorization (SignedHeaders={}): sign {} with SigV4, as every AWS SDK does",
                auth.signed_headers,
                REQUIRED_SIGNED_HEADERS.join(", ")
            ),
        ));
    }
    Ok(format!(
        "{method}\n{}\n{}\n{}\n{}\n{}",
        uri_encode(path, true),
        canonical_query(query),
        canonical_headers(headers, &signed),
        auth.signed_headers,
        hex::encode(Sha256::digest(body)),
    ))
}

/// One `name:values` line per signed header: its values joined by commas, each with its
/// runs of whitespace squeezed to one space.
fn canonical_headers(headers: &HeaderMap, signed: &[&str]) -> String {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        out.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    out
}

/// What the signature signs: algorithm, date, credential scope and the canonical
/// request's hash.
fn string_to_sign(amz_date: &str, auth: &AuthHeader<'_>, canonical_request: &str) -> String {
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// SigV4's signing key: the secret access key chained through HMACs of the scope's date,
/// region and service.
fn signing_key(cred: &Credential, auth: &AuthHeader<'_>) -> Vec<u8> {
    let mut k_secret = b"AWS4".to_vec();
    k_secret.extend_from_slice(cred.secret_access_key.expose_secret());
    let k_date = hmac(&k_secret, auth.date.as_bytes());
    zeroize::Zeroize::zeroize(&mut k_secret);
    let k_region = hmac(&k_date, auth.region.as_bytes());
    let k_service = hmac(&k_region, auth.service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// Refuses a signature (hex) other than the HMAC of `string_to_sign` under `signing_key`,
/// compared in constant time by `hmac`.
fn check_signature(
    signing_key: &[u8],
    string_to_sign: &str,
    signature_hex: &str,
) -> Result<(), KmsError> {
    let provided = hex::decode(signature_hex).unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_key).expect("any key length");
    mac.update(string_to_sign.as_bytes());
    mac.verify_slice(&provided).map_err(|_| {
        denied(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        )
    })
}

/// Whether a request presents the session token its access key has (or none when it has
/// none), compared in constant time: the token is a credential.
fn session_token_matches(cred: &Credential, presented: Option<&str>) -> bool {
    match (cred.session_token.as_deref(), presented) {
        (Some(expected), Some(presented)) => expected.as_bytes().ct_eq(presented.as_bytes()).into(),
        (None, None) => true,
        _ => false,
    }
}

/// Refuses a signing time more than [`MAX_SKEW`] before or after `now`, in AWS's words.
fn check_skew(amz_date: &str, signed_at: SystemTime, now: SystemTime) -> Result<(), KmsError> {
    let limit_past = now.checked_sub(MAX_SKEW).unwrap_or(SystemTime::UNIX_EPOCH);
    if signed_at < limit_past {
        return Err(denied(
            "InvalidSignatureException",
            format!(
                "Signature expired: {amz_date} is now earlier than {} ({} - 15 min.)",
                clock::amz_date(limit_past),
                clock::amz_date(now)
            ),
        ));
    }
    if signed_at > now + MAX_SKEW {
        return Err(denied(
            "InvalidSignatureException",
            format!(
                "Signature not yet current: {amz_date} is still later than {} ({} + 15 min.)",
                clock::amz_date(now + MAX_SKEW),
                clock::amz_date(now)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "sigv4_tests.rs"]
mod tests;
