//! What a key carries beside its material: its policy (GetKeyPolicy, PutKeyPolicy,
//! ListKeyPolicies, with AWS's lockout safety check), tags (TagResource, UntagResource,
//! ListResourceTags), description (UpdateKeyDescription) and rotation history
//! (ListKeyRotations).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::access::{Ask, Who};
use super::keys::{page, Empty};
use super::policy::{default_policy_text, malformed, Decision, Policy};
use super::state::{KeyState, State};
use super::{in_range, required, Aliases, Engine};
use crate::kms::wire::Tag;
use crate::kms::KmsError;

/// AWS's most tags on one key.
const MAX_TAGS: usize = 50;

/// The fields of every request handled here.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct MetaRequest {
    key_id: Option<String>,
    policy_name: Option<String>,
    policy: Option<String>,
    bypass_policy_lockout_safety_check: Option<bool>,
    tags: Option<Vec<Tag>>,
    tag_keys: Option<Vec<String>>,
    description: Option<String>,
    limit: Option<i64>,
    marker: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct KeyPolicy {
    policy: String,
    policy_name: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct PolicyNames {
    policy_names: Vec<String>,
    truncated: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Tags {
    tags: Vec<Tag>,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RotationEntry {
    key_id: String,
    rotation_date: f64,
    rotation_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Rotations {
    rotations: Vec<RotationEntry>,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
}

fn tag_error(message: impl Into<String>) -> KmsError {
    KmsError::Validation {
        code: "TagException".into(),
        message: message.into(),
    }
}

/// Checks tags as AWS does and gathers them (a later tag of the same key wins).
pub(super) fn tag_map(tags: Vec<Tag>) -> Result<BTreeMap<String, String>, KmsError> {
    let mut out = BTreeMap::new();
    for t in tags {
        if t.tag_key.is_empty() || t.tag_key.chars().count() > 128 {
            return Err(tag_error("Tag keys must be 1 to 128 characters long"));
        }
        if t.tag_value.chars().count() > 256 {
            return Err(tag_error("Tag values must be at most 256 characters long"));
        }
        if t.tag_key.starts_with("aws:") {
            return Err(tag_error(format!(
                "Tag key {} uses the reserved prefix aws:",
                t.tag_key
            )));
        }
        out.insert(t.tag_key, t.tag_value);
    }
    if out.len() > MAX_TAGS {
        return Err(too_many_tags());
    }
    Ok(out)
}

fn too_many_tags() -> KmsError {
    KmsError::Validation {
        code: "LimitExceededException".into(),
        message: format!("A key can have at most {MAX_TAGS} tags"),
    }
}

/// Only the policy named "default" exists.
fn check_policy_name(name: Option<&str>) -> Result<(), KmsError> {
    match name {
        None | Some("default") => Ok(()),
        Some(other) => Err(KmsError::NotFound(format!(
            "No such policy exists: {other}. The only key policy name is default."
        ))),
    }
}

impl State {
    /// AWS's lockout safety check: the caller must be able to change key `id`'s policy
    /// again under `policy`, the one it is about to set (checked before anything changes).
    pub(super) fn check_lockout(
        &self,
        who: Who<'_>,
        id: &str,
        policy: &Policy,
    ) -> Result<(), KmsError> {
        let Who::Principal(caller) = who else {
            return Ok(());
        };
        if self.decide(policy, caller, id, Ask::op("PutKeyPolicy")) != Decision::Allow {
            return Err(malformed(
                "The new key policy will not allow you to update the key policy in the future.",
            ));
        }
        Ok(())
    }

    /// Resolves a key id or ARN for a metadata operation `op` that `who` must be allowed.
    fn meta_key(&self, who: Who<'_>, key_id: Option<String>, op: &str) -> Result<String, KmsError> {
        let key_id = required(key_id, "keyId")?;
        let id = self.resolve(&key_id, Aliases::Refused)?;
        self.authorize(who, &id, Ask::op(op))?;
        Ok(id)
    }

    /// Refuses a change to a key pending deletion.
    fn changeable(&self, id: &str) -> Result<(), KmsError> {
        if self.keys[id].state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                self.key_arn(id)
            )));
        }
        Ok(())
    }
}

impl Engine {
    pub(super) fn get_key_policy(
        &self,
        who: Who<'_>,
        r: MetaRequest,
    ) -> Result<KeyPolicy, KmsError> {
        check_policy_name(r.policy_name.as_deref())?;
        let st = self.lock()?;
        let id = st.meta_key(who, r.key_id, "GetKeyPolicy")?;
        let policy = match &st.keys[&id].policy {
            Some(p) => p.text.clone(),
            None => default_policy_text(&st.account),
        };
        Ok(KeyPolicy {
            policy,
            policy_name: "default".into(),
        })
    }

    pub(super) fn put_key_policy(&self, who: Who<'_>, r: MetaRequest) -> Result<Empty, KmsError> {
        check_policy_name(r.policy_name.as_deref())?;
        let policy = Policy::parse(&required(r.policy, "policy")?)?;
        let bypass = r.bypass_policy_lockout_safety_check.unwrap_or(false);
        self.mutate(|st| {
            let id = st.meta_key(who, r.key_id, "PutKeyPolicy")?;
            if !bypass {
                st.check_lockout(who, &id, &policy)?;
            }
            st.keys.get_mut(&id).expect("resolved").policy = Some(policy);
            Ok(Empty {})
        })
    }

    pub(super) fn list_key_policies(
        &self,
        who: Who<'_>,
        r: MetaRequest,
    ) -> Result<PolicyNames, KmsError> {
        in_range(r.limit.unwrap_or(100), 1, 1000, "limit")?;
        let st = self.lock()?;
        st.meta_key(who, r.key_id, "ListKeyPolicies")?;
        Ok(PolicyNames {
            policy_names: vec!["default".into()],
            truncated: false,
        })
    }

    pub(super) fn tag_resource(&self, who: Who<'_>, r: MetaRequest) -> Result<Empty, KmsError> {
        let tags = tag_map(required(r.tags, "tags")?)?;
        self.mutate(|st| {
            let id = st.meta_key(who, r.key_id, "TagResource")?;
            st.changeable(&id)?;
            let k = st.keys.get_mut(&id).expect("resolved");
            k.tags.extend(tags);
            if k.tags.len() > MAX_TAGS {
                return Err(too_many_tags());
            }
            Ok(Empty {})
        })
    }

    pub(super) fn untag_resource(&self, who: Who<'_>, r: MetaRequest) -> Result<Empty, KmsError> {
        let keys = required(r.tag_keys, "tagKeys")?;
        self.mutate(|st| {
            let id = st.meta_key(who, r.key_id, "UntagResource")?;
            st.changeable(&id)?;
            let k = st.keys.get_mut(&id).expect("resolved");
            for key in &keys {
                k.tags.remove(key);
            }
            Ok(Empty {})
        })
    }

    pub(super) fn list_resource_tags(
        &self,
        who: Who<'_>,
        r: MetaRequest,
    ) -> Result<Tags, KmsError> {
        let st = self.lock()?;
        let id = st.meta_key(who, r.key_id, "ListResourceTags")?;
        let items = st.keys[&id]
            .tags
            .iter()
            .map(|(k, v)| {
                let tag = Tag {
                    tag_key: k.clone(),
                    tag_value: v.clone(),
                };
                (k.clone(), tag)
            })
            .collect();
        let (tags, next_marker) = page(items, r.limit, r.marker)?;
        Ok(Tags {
            truncated: next_marker.is_some(),
            tags,
            next_marker,
        })
    }

    pub(super) fn update_description(
        &self,
        who: Who<'_>,
        r: MetaRequest,
    ) -> Result<Empty, KmsError> {
        let description = required(r.description, "description")?;
        if description.len() > 8192 {
            return Err(KmsError::validation(
                "Description must be at most 8192 characters",
            ));
        }
        self.mutate(|st| {
            let id = st.meta_key(who, r.key_id, "UpdateKeyDescription")?;
            st.changeable(&id)?;
            st.keys.get_mut(&id).expect("resolved").description = description;
            Ok(Empty {})
        })
    }

    /// Every version after the first, oldest first; versions whose rotation was not
    /// recorded (made before the history was kept, or added by a restore) are listed as
    /// automatic, at the key's creation date.
    pub(super) fn list_key_rotations(
        &self,
        who: Who<'_>,
        r: MetaRequest,
    ) -> Result<Rotations, KmsError> {
        let st = self.lock()?;
        let id = st.meta_key(who, r.key_id, "ListKeyRotations")?;
        let k = &st.keys[&id];
        let items = (2..=k.versions.len() as u32)
            .map(|version| {
                let rec = k.rotations.iter().find(|r| r.version == version);
                let entry = RotationEntry {
                    key_id: st.key_arn(&id),
                    rotation_date: rec.map_or(k.created, |r| r.date),
                    rotation_type: if rec.is_some_and(|r| r.on_demand) {
                        "ON_DEMAND"
                    } else {
                        "AUTOMATIC"
                    },
                };
                (format!("{version:010}"), entry)
            })
            .collect();
        let (rotations, next_marker) = page(items, r.limit, r.marker)?;
        Ok(Rotations {
            truncated: next_marker.is_some(),
            rotations,
            next_marker,
        })
    }
}
