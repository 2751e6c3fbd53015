//! The server's audit records: CloudTrail-shaped, one per request that reached an
//! operation (or was refused), chained by [`crate::audit::chain`]. Request parameters are
//! copied from an allow-list, so plaintexts, ciphertexts and key bytes never get in: the
//! parser skips the values of all other fields without copying them.

use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::kms::engine::Caller;
use crate::kms::{clock, KmsError};

/// Request fields that may appear in the log (AWS names; logged in camelCase).
const LOGGED_FIELDS: &[&str] = &[
    "KeyId",
    "EncryptionContext",
    "NumberOfBytes",
    "KeySpec",
    "AliasName",
    "TargetKeyId",
    "SourceKeyId",
    "DestinationKeyId",
    "SourceEncryptionContext",
    "DestinationEncryptionContext",
    "PendingWindowInDays",
    "RotationPeriodInDays",
    "EncryptionAlgorithm",
    "GranteePrincipal",
    "RetiringPrincipal",
    "Operations",
    "Constraints",
    "Name",
    "GrantId",
    "PolicyName",
    "BypassPolicyLockoutSafetyCheck",
    "Tags",
    "TagKeys",
    "Description",
];

/// Operations that only read (CloudTrail's `readOnly`).
const READ_ONLY: &[&str] = &[
    "DescribeKey",
    "ListKeys",
    "ListAliases",
    "GetKeyRotationStatus",
    "GenerateRandom",
    "GetKeyPolicy",
    "ListKeyPolicies",
    "ListResourceTags",
    "ListKeyRotations",
    "ListGrants",
    "ListRetirableGrants",
];

fn camel(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The allow-listed fields of a request body (as logged: camelCase), or none when the body
/// is not a JSON object.
pub fn logged_parameters(body: &[u8]) -> Map<String, Value> {
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = m.next_key::<Cow<'de, str>>()? {
                match LOGGED_FIELDS.iter().find(|f| **f == key) {
                    Some(f) => {
                        out.insert(camel(f), m.next_value::<Value>()?);
                    }
                    None => {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_map(Fields)
        .and_then(|fields| de.end().map(|()| fields))
        .unwrap_or_default()
}

/// The key ARNs an answer names (`KeyId`, `SourceKeyId`, `KeyMetadata.Arn`), each once.
pub fn answer_arns(body: &[u8]) -> Vec<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Metadata {
        arn: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        key_id: Option<String>,
        source_key_id: Option<String>,
        key_metadata: Option<Metadata>,
    }
    let Ok(a) = serde_json::from_slice::<Answer>(body) else {
        return Vec::new();
    };
    let mut arns: Vec<String> = Vec::new();
    for arn in [
        a.key_id,
        a.source_key_id,
        a.key_metadata.and_then(|m| m.arn),
    ]
    .into_iter()
    .flatten()
    {
        if !arns.contains(&arn) {
            arns.push(arn);
        }
    }
    arns
}

/// What one request was, for its audit record.
pub struct Event<'a> {
    pub time: SystemTime,
    pub operation: &'a str,
    pub region: &'a str,
    pub access_key_id: Option<&'a str>,
    /// The authenticated principal (none when the request was not authenticated).
    pub principal: Option<&'a Caller>,
    pub source_ip: String,
    pub request_id: &'a str,
    /// [`logged_parameters`] of the request.
    pub parameters: Map<String, Value>,
    /// [`answer_arns`] of a successful answer.
    pub arns: Vec<String>,
    pub error: Option<&'a KmsError>,
}

/// CloudTrail's `userIdentity`: the principal's type, ARN and account when the request
/// was authenticated, and the access key it claimed in any case.
fn user_identity(access_key_id: Option<&str>, principal: Option<&Caller>) -> Value {
    let Some(p) = principal else {
        return json!({"type": "IAMUser", "accessKeyId": access_key_id});
    };
    let kind = if p.arn.ends_with(":root") {
        "Root"
    } else if p.arn.contains(":assumed-role/") {
        "AssumedRole"
    } else if p.arn.contains(":role/") {
        "Role"
    } else {
        "IAMUser"
    };
    let mut id = json!({
        "type": kind,
        "arn": p.arn,
        "accountId": p.account,
        "accessKeyId": access_key_id,
    });
    if let Some(name) = p.arn.split_once(":user/").map(|(_, n)| n) {
        id["userName"] = Value::String(name.rsplit('/').next().unwrap_or(name).to_owned());
    }
    id
}

impl Event<'_> {
    /// The record, without the chain fields.
    pub fn into_record(self) -> Map<String, Value> {
        let params = self.parameters;
        let resources: Vec<Value> = self
            .arns
            .iter()
            .map(|a| json!({"ARN": a, "type": "AWS::KMS::Key"}))
            .collect();
        let mut r = json!({
            "eventVersion": "1.08",
            "eventTime": clock::rfc3339(self.time),
            "eventSource": "kms.amazonaws.com",
            "eventName": self.operation,
            "awsRegion": self.region,
            "userIdentity": user_identity(self.access_key_id, self.principal),
            "sourceIPAddress": self.source_ip,
            "requestParameters": if params.is_empty() { Value::Null } else { Value::Object(params) },
            "responseElements": Value::Null,
            "requestID": self.request_id,
            "eventID": self.request_id,
            "readOnly": READ_ONLY.contains(&self.operation),
            "resources": resources,
            "eventType": "AwsApiCall",
            "managementEvent": true,
            "eventCategory": "Management",
            "outcome": if self.error.is_some() { "failure" } else { "success" },
        });
        let obj = r.as_object_mut().expect("object literal");
        if let Some(e) = self.error {
            obj.insert("errorCode".into(), Value::String(e.aws_code().into()));
            obj.insert("errorMessage".into(), Value::String(e.message().into()));
        }
        std::mem::take(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_fields_are_logged() {
        let req = br#"{"KeyId": "alias/a", "Plaintext": "c2VjcmV0", "CiphertextBlob": "AAAA",
                       "EncryptionContext": {"f": "1"}, "GrantTokens": ["t"]}"#;
        let resp = br#"{"KeyId": "arn:k", "Plaintext": "c2VjcmV0", "CiphertextBlob": "AAAA"}"#;
        let ev = Event {
            time: SystemTime::UNIX_EPOCH,
            operation: "Decrypt",
            region: "us-east-1",
            access_key_id: Some("AK"),
            principal: None,
            source_ip: "127.0.0.1".into(),
            request_id: "r",
            parameters: logged_parameters(req),
            arns: answer_arns(resp),
            error: None,
        };
        let text = Value::Object(ev.into_record()).to_string();
        assert!(!text.contains("c2VjcmV0"), "{text}");
        assert!(!text.contains("AAAA"), "{text}");
        assert!(!text.contains("rantTokens"), "{text}");
        assert!(text.contains(r#""encryptionContext":{"f":"1"}"#), "{text}");
        assert!(text.contains(r#""keyId":"alias/a""#), "{text}");
        assert!(text.contains(r#""ARN":"arn:k""#), "{text}");
        assert!(text.contains(r#""outcome":"success""#), "{text}");
    }

    #[test]
    fn bodies_that_are_not_objects_log_nothing() {
        for body in [
            &b""[..],
            b"[1]",
            b"not json",
            br#"{"KeyId": "a""#,
            br#"{"KeyId": "a"} junk"#,
            b"\xff",
        ] {
            assert!(logged_parameters(body).is_empty());
        }
        for body in [&b""[..], b"[1]", b"not json", br#"{"KeyId": "a""#, b"\xff"] {
            assert!(answer_arns(body).is_empty());
        }
        // An escaped field name is still recognised.
        let p = logged_parameters(br#"{"Key\u0049d": "k"}"#);
        assert_eq!(p.get("keyId"), Some(&json!("k")));
    }

    #[test]
    fn each_arn_of_an_answer_is_named_once() {
        let a = answer_arns(
            br#"{"KeyId": "arn:a", "SourceKeyId": "arn:b", "KeyMetadata": {"Arn": "arn:a", "KeyId": "x"}}"#,
        );
        assert_eq!(a, ["arn:a", "arn:b"]);
        assert_eq!(
            answer_arns(br#"{"KeyMetadata": {"Arn": "arn:c"}}"#),
            ["arn:c"]
        );
    }
}
