//! The server's audit records: CloudTrail-shaped, one per request that reached an
//! operation (or was refused), chained by [`crate::audit::chain`]. Request parameters are
//! copied from an allow-list, so plaintexts, ciphertexts and key bytes never get in.

use std::time::SystemTime;

use serde_json::{json, Map, Value};

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
];

/// Operations that only read (CloudTrail's `readOnly`).
const READ_ONLY: &[&str] = &[
    "DescribeKey",
    "ListKeys",
    "ListAliases",
    "GetKeyRotationStatus",
    "GenerateRandom",
];

fn camel(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// What one request was, for its audit record.
pub struct Event<'a> {
    pub time: SystemTime,
    pub operation: &'a str,
    pub region: &'a str,
    pub access_key_id: Option<&'a str>,
    pub source_ip: String,
    pub request_id: &'a str,
    pub request: Option<&'a Value>,
    pub response: Option<&'a Value>,
    pub error: Option<&'a KmsError>,
}

impl Event<'_> {
    /// The record, without the chain fields.
    pub fn to_record(&self) -> Map<String, Value> {
        let mut params = Map::new();
        if let Some(Value::Object(req)) = self.request {
            for f in LOGGED_FIELDS {
                if let Some(v) = req.get(*f) {
                    params.insert(camel(f), v.clone());
                }
            }
        }
        let mut arns: Vec<String> = Vec::new();
        if let Some(resp) = self.response {
            for ptr in ["/KeyId", "/SourceKeyId", "/KeyMetadata/Arn"] {
                if let Some(Value::String(a)) = resp.pointer(ptr) {
                    if !arns.contains(a) {
                        arns.push(a.clone());
                    }
                }
            }
        }
        let resources: Vec<Value> = arns
            .iter()
            .map(|a| json!({"ARN": a, "type": "AWS::KMS::Key"}))
            .collect();
        let mut r = json!({
            "eventVersion": "1.08",
            "eventTime": clock::rfc3339(self.time),
            "eventSource": "kms.amazonaws.com",
            "eventName": self.operation,
            "awsRegion": self.region,
            "userIdentity": {"type": "IAMUser", "accessKeyId": self.access_key_id},
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
        let req = json!({"KeyId": "alias/a", "Plaintext": "c2VjcmV0", "CiphertextBlob": "AAAA",
                         "EncryptionContext": {"f": "1"}});
        let resp = json!({"KeyId": "arn:k", "Plaintext": "c2VjcmV0"});
        let ev = Event {
            time: SystemTime::UNIX_EPOCH,
            operation: "Decrypt",
            region: "us-east-1",
            access_key_id: Some("AK"),
            source_ip: "127.0.0.1".into(),
            request_id: "r",
            request: Some(&req),
            response: Some(&resp),
            error: None,
        };
        let text = Value::Object(ev.to_record()).to_string();
        assert!(!text.contains("c2VjcmV0"), "{text}");
        assert!(!text.contains("AAAA"), "{text}");
        assert!(text.contains(r#""encryptionContext":{"f":"1"}"#), "{text}");
        assert!(text.contains(r#""ARN":"arn:k""#), "{text}");
        assert!(text.contains(r#""outcome":"success""#), "{text}");
    }
}
