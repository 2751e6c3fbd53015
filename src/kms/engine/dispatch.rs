//! Which engine function answers which operation, and for whom: [`Engine::call`] runs an
//! operation for this process, [`Engine::call_as`] for a principal the server
//! authenticated, whose every request the key's policy and grants must allow.

use serde::Deserialize;

use super::access::{Caller, Who};
use super::grants::check_grant_tokens;
use super::Engine;
use crate::kms::KmsError;

/// The grant tokens a request carries, whatever the operation (its other fields are
/// skipped unread).
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Tokens {
    grant_tokens: Option<Vec<String>>,
}

impl Engine {
    /// Runs one operation for this process (which holds the state, so no key policy
    /// applies): `op` is the part of `X-Amz-Target` after `TrentService.`, `body` its
    /// JSON. Returns the JSON answer.
    pub fn call(&self, op: &str, body: &[u8]) -> Result<Vec<u8>, KmsError> {
        self.dispatch(Who::Local, op, body)
    }

    /// Runs one operation for `caller`, if the key's policy or a grant allows it.
    pub fn call_as(&self, caller: &Caller, op: &str, body: &[u8]) -> Result<Vec<u8>, KmsError> {
        self.dispatch(Who::Principal(caller), op, body)
    }

    fn dispatch(&self, who: Who<'_>, op: &str, body: &[u8]) -> Result<Vec<u8>, KmsError> {
        if !body.is_empty() {
            if let Ok(Tokens {
                grant_tokens: Some(tokens),
            }) = serde_json::from_slice::<Tokens>(body)
            {
                check_grant_tokens(&tokens)?;
            }
        }
        match op {
            "CreateKey" => self.json(body, |r| self.create_key(who, r)),
            "DescribeKey" => self.json(body, |r| self.describe_key(who, r)),
            "ListKeys" => self.json(body, |r| self.list_keys(r)),
            "CreateAlias" => self.json(body, |r| self.create_alias(who, r)),
            "UpdateAlias" => self.json(body, |r| self.update_alias(who, r)),
            "DeleteAlias" => self.json(body, |r| self.delete_alias(who, r)),
            "ListAliases" => self.json(body, |r| self.list_aliases(r)),
            "GenerateDataKey" => self.json(body, |r| self.generate_data_key_op(who, r, true)),
            "GenerateDataKeyWithoutPlaintext" => {
                self.json(body, |r| self.generate_data_key_op(who, r, false))
            }
            "Decrypt" => self.json(body, |r| self.decrypt_op(who, r)),
            "Encrypt" => self.json(body, |r| self.encrypt_op(who, r)),
            "ReEncrypt" => self.json(body, |r| self.re_encrypt_op(who, r)),
            "EnableKey" => self.json(body, |r| self.set_enabled(who, r, true)),
            "DisableKey" => self.json(body, |r| self.set_enabled(who, r, false)),
            "ScheduleKeyDeletion" => self.json(body, |r| self.schedule_deletion(who, r)),
            "CancelKeyDeletion" => self.json(body, |r| self.cancel_deletion(who, r)),
            "EnableKeyRotation" => self.json(body, |r| self.enable_rotation(who, r)),
            "DisableKeyRotation" => self.json(body, |r| self.disable_rotation(who, r)),
            "GetKeyRotationStatus" => self.json(body, |r| self.rotation_status(who, r)),
            "RotateKeyOnDemand" => self.json(body, |r| self.rotate_on_demand(who, r)),
            "ListKeyRotations" => self.json(body, |r| self.list_key_rotations(who, r)),
            "GenerateRandom" => self.json(body, |r| self.generate_random(r)),
            "GetKeyPolicy" => self.json(body, |r| self.get_key_policy(who, r)),
            "PutKeyPolicy" => self.json(body, |r| self.put_key_policy(who, r)),
            "ListKeyPolicies" => self.json(body, |r| self.list_key_policies(who, r)),
            "TagResource" => self.json(body, |r| self.tag_resource(who, r)),
            "UntagResource" => self.json(body, |r| self.untag_resource(who, r)),
            "ListResourceTags" => self.json(body, |r| self.list_resource_tags(who, r)),
            "UpdateKeyDescription" => self.json(body, |r| self.update_description(who, r)),
            "CreateGrant" => self.json(body, |r| self.create_grant(who, r)),
            "ListGrants" => self.json(body, |r| self.list_grants(who, r)),
            "ListRetirableGrants" => self.json(body, |r| self.list_retirable_grants(r)),
            "RetireGrant" => self.json(body, |r| self.retire_grant(who, r)),
            "RevokeGrant" => self.json(body, |r| self.revoke_grant(who, r)),
            _ => Err(KmsError::Validation {
                code: "UnknownOperationException".into(),
                message: format!("unknown operation {op:?}"),
            }),
        }
    }
}
