//! The engine's key and alias management: create/describe/list keys, aliases, enable and
//! disable, deletion scheduling, rotation.

use super::access::{Ask, Who};
use super::state::{format_uuid, new_uuid, AliasEntry, KeyEntry, KeyState, Rotation, State};
use super::{in_range, now, required, Aliases, Engine};
use crate::kms::wire::{
    AliasListEntry, AliasRequest, CreateKeyRequest, EnableKeyRotationRequest,
    GetKeyRotationStatusResponse, KeyIdRequest, KeyIdResponse, KeyListEntry, KeyMetadata,
    KeyMetadataResponse, ListAliasesResponse, ListKeysResponse, ListRequest,
    ScheduleKeyDeletionRequest, ScheduleKeyDeletionResponse, SYMMETRIC_DEFAULT,
};
use crate::kms::KmsError;
use crate::secret::DataKey;

/// An empty JSON object, the answer of operations that return nothing.
#[derive(serde::Serialize)]
pub(super) struct Empty {}

/// An alias must point at a key, never at another alias.
fn check_alias_target(target: &str) -> Result<(), KmsError> {
    if target.starts_with("alias/") || target.contains(":alias/") {
        return Err(KmsError::validation(
            "Aliases must refer to keys. Not aliases",
        ));
    }
    Ok(())
}

fn unsupported(what: &str, value: &str) -> KmsError {
    KmsError::Validation {
        code: "UnsupportedOperationException".into(),
        message: format!("{what} {value} is not supported by the local KMS"),
    }
}

/// AWS's alias name rules: `alias/` prefix, `alias/aws/` reserved, 1–256 characters of
/// `[a-zA-Z0-9/_-]` (the API model allows `:`, the service refuses it).
fn check_alias_name(name: &str) -> Result<(), KmsError> {
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '_' | '-'));
    if name.is_empty() || name.len() > 256 || !chars_ok {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value '{name}' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
        )));
    }
    if !name.starts_with("alias/") || name.len() == "alias/".len() {
        return Err(KmsError::Validation {
            code: "ValidationException".into(),
            message: format!("Alias must start with the prefix \"alias/\": {name}"),
        });
    }
    if name.contains(':') {
        return Err(KmsError::validation(format!(
            "{name} contains invalid characters for an alias"
        )));
    }
    if name.starts_with("alias/aws/") {
        return Err(KmsError::Validation {
            code: "NotAuthorizedException".into(),
            message: "Cannot create or change an alias with the reserved prefix alias/aws/".into(),
        });
    }
    Ok(())
}

/// Pagination over a sorted list: `marker` is the last item of the previous page.
pub(super) fn page<T, K: AsRef<str>>(
    items: Vec<(K, T)>,
    limit: Option<i64>,
    marker: Option<String>,
) -> Result<(Vec<T>, Option<String>), KmsError> {
    let limit = in_range(limit.unwrap_or(100), 1, 1000, "limit")? as usize;
    let start = match &marker {
        Some(m) => items.iter().position(|(k, _)| k.as_ref() > m.as_str()),
        None => Some(0),
    }
    .unwrap_or(items.len());
    let rest: Vec<(K, T)> = items.into_iter().skip(start).collect();
    let more = rest.len() > limit;
    let mut out = Vec::new();
    let mut last = None;
    for (k, v) in rest.into_iter().take(limit) {
        last = Some(k.as_ref().to_owned());
        out.push(v);
    }
    Ok((out, if more { last } else { None }))
}

impl State {
    fn metadata(&self, id: &str) -> KeyMetadata {
        let k = &self.keys[id];
        KeyMetadata {
            aws_account_id: self.account.clone(),
            key_id: id.into(),
            arn: self.key_arn(id),
            creation_date: k.created,
            enabled: k.state == KeyState::Enabled,
            description: k.description.clone(),
            key_usage: "ENCRYPT_DECRYPT".into(),
            key_state: k.state.as_str().into(),
            deletion_date: k.deletion_date,
            pending_deletion_window_in_days: k.pending_window_days,
            origin: "AWS_KMS".into(),
            key_manager: "CUSTOMER".into(),
            customer_master_key_spec: SYMMETRIC_DEFAULT.into(),
            key_spec: SYMMETRIC_DEFAULT.into(),
            encryption_algorithms: vec![SYMMETRIC_DEFAULT.into()],
            multi_region: false,
        }
    }

    /// A key that may change state: not pending deletion.
    fn not_pending(&self, id: &str) -> Result<&KeyEntry, KmsError> {
        let k = &self.keys[id];
        if k.state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                self.key_arn(id)
            )));
        }
        Ok(k)
    }
}

impl Engine {
    pub(super) fn create_key(
        &self,
        who: Who<'_>,
        r: CreateKeyRequest,
    ) -> Result<KeyMetadataResponse, KmsError> {
        for (what, value, ok) in [
            ("KeySpec", &r.key_spec, SYMMETRIC_DEFAULT),
            (
                "CustomerMasterKeySpec",
                &r.customer_master_key_spec,
                SYMMETRIC_DEFAULT,
            ),
            ("KeyUsage", &r.key_usage, "ENCRYPT_DECRYPT"),
            ("Origin", &r.origin, "AWS_KMS"),
        ] {
            match value.as_deref() {
                Some(v) if v != ok => return Err(unsupported(what, v)),
                _ => {}
            }
        }
        let description = r.description.unwrap_or_default();
        if description.len() > 8192 {
            return Err(KmsError::validation(
                "Description must be at most 8192 characters",
            ));
        }
        let policy = r
            .policy
            .as_deref()
            .map(super::policy::Policy::parse)
            .transpose()?;
        let tags = super::meta::tag_map(r.tags.unwrap_or_default())?;
        let bypass = r.bypass_policy_lockout_safety_check.unwrap_or(false);
        let material = DataKey::generate().map_err(|e| KmsError::internal(e.to_string()))?;
        self.mutate(|st| {
            let uuid = new_uuid();
            let id = format_uuid(&uuid);
            if !bypass {
                let default = st.default_policy();
                st.check_lockout(who, &id, policy.as_ref().unwrap_or(&default))?;
            }
            let t = now();
            st.keys.insert(
                id.clone(),
                KeyEntry {
                    uuid,
                    created: t,
                    description,
                    state: KeyState::Enabled,
                    deletion_date: None,
                    pending_window_days: None,
                    rotation_enabled: false,
                    rotation_period_days: 365,
                    rotation_anchor: t,
                    versions: vec![material],
                    policy,
                    tags,
                    grants: Vec::new(),
                    rotations: Vec::new(),
                },
            );
            Ok(KeyMetadataResponse {
                key_metadata: st.metadata(&id),
            })
        })
    }

    pub(super) fn describe_key(
        &self,
        who: Who<'_>,
        r: KeyIdRequest,
    ) -> Result<KeyMetadataResponse, KmsError> {
        let key_id = required(r.key_id, "keyId")?;
        let st = self.lock()?;
        let id = st.resolve(&key_id, Aliases::Allowed)?;
        st.authorize(who, &id, Ask::op("DescribeKey"))?;
        Ok(KeyMetadataResponse {
            key_metadata: st.metadata(&id),
        })
    }

    pub(super) fn list_keys(&self, r: ListRequest) -> Result<ListKeysResponse, KmsError> {
        let st = self.lock()?;
        let items = st
            .keys
            .keys()
            .map(|id| {
                let entry = KeyListEntry {
                    key_id: id.clone(),
                    key_arn: st.key_arn(id),
                };
                (id.clone(), entry)
            })
            .collect();
        let (keys, next_marker) = page(items, r.limit, r.marker)?;
        Ok(ListKeysResponse {
            truncated: next_marker.is_some(),
            keys,
            next_marker,
        })
    }

    pub(super) fn create_alias(&self, who: Who<'_>, r: AliasRequest) -> Result<Empty, KmsError> {
        let name = required(r.alias_name, "aliasName")?;
        let target = required(r.target_key_id, "targetKeyId")?;
        check_alias_name(&name)?;
        check_alias_target(&target)?;
        self.mutate(|st| {
            let id = st.resolve(&target, Aliases::Refused)?;
            st.authorize(who, &id, Ask::op("CreateAlias"))?;
            st.not_pending(&id)?;
            if st.aliases.contains_key(&name) {
                return Err(KmsError::AlreadyExists(format!(
                    "An alias with the name {} already exists",
                    st.alias_arn(&name)
                )));
            }
            let t = now();
            st.aliases.insert(
                name,
                AliasEntry {
                    target: id,
                    created: t,
                    updated: t,
                },
            );
            Ok(Empty {})
        })
    }

    pub(super) fn update_alias(&self, who: Who<'_>, r: AliasRequest) -> Result<Empty, KmsError> {
        let name = required(r.alias_name, "aliasName")?;
        let target = required(r.target_key_id, "targetKeyId")?;
        check_alias_name(&name)?;
        check_alias_target(&target)?;
        self.mutate(|st| {
            let id = st.resolve(&target, Aliases::Refused)?;
            st.authorize(who, &id, Ask::op("UpdateAlias"))?;
            st.not_pending(&id)?;
            if let Some(old) = st.aliases.get(&name) {
                st.authorize(who, &old.target, Ask::op("UpdateAlias"))?;
            }
            let arn = st.alias_arn(&name);
            let alias = st
                .aliases
                .get_mut(&name)
                .ok_or_else(|| KmsError::NotFound(format!("Alias {arn} is not found.")))?;
            alias.target = id;
            alias.updated = now();
            Ok(Empty {})
        })
    }

    pub(super) fn delete_alias(&self, who: Who<'_>, r: AliasRequest) -> Result<Empty, KmsError> {
        let name = required(r.alias_name, "aliasName")?;
        check_alias_name(&name)?;
        self.mutate(|st| {
            if let Some(a) = st.aliases.get(&name) {
                st.authorize(who, &a.target, Ask::op("DeleteAlias"))?;
            }
            if st.aliases.remove(&name).is_none() {
                return Err(KmsError::NotFound(format!(
                    "Alias {} is not found.",
                    st.alias_arn(&name)
                )));
            }
            Ok(Empty {})
        })
    }

    pub(super) fn list_aliases(&self, r: ListRequest) -> Result<ListAliasesResponse, KmsError> {
        let st = self.lock()?;
        let filter = r
            .key_id
            .as_deref()
            .map(|k| st.resolve(k, Aliases::Refused))
            .transpose()?;
        let items = st
            .aliases
            .iter()
            .filter(|(_, a)| filter.as_ref().is_none_or(|f| f == &a.target))
            .map(|(name, a)| {
                let entry = AliasListEntry {
                    alias_name: name.clone(),
                    alias_arn: st.alias_arn(name),
                    target_key_id: Some(a.target.clone()),
                    creation_date: Some(a.created),
                    last_updated_date: Some(a.updated),
                };
                (name.clone(), entry)
            })
            .collect();
        let (aliases, next_marker) = page(items, r.limit, r.marker)?;
        Ok(ListAliasesResponse {
            truncated: next_marker.is_some(),
            aliases,
            next_marker,
        })
    }

    pub(super) fn set_enabled(
        &self,
        who: Who<'_>,
        r: KeyIdRequest,
        enabled: bool,
    ) -> Result<Empty, KmsError> {
        let key_id = required(r.key_id, "keyId")?;
        self.mutate(|st| {
            let id = st.resolve(&key_id, Aliases::Refused)?;
            let op = if enabled { "EnableKey" } else { "DisableKey" };
            st.authorize(who, &id, Ask::op(op))?;
            st.not_pending(&id)?;
            let k = st.keys.get_mut(&id).expect("resolved");
            k.state = if enabled {
                KeyState::Enabled
            } else {
                KeyState::Disabled
            };
            Ok(Empty {})
        })
    }

    pub(super) fn schedule_deletion(
        &self,
        who: Who<'_>,
        r: ScheduleKeyDeletionRequest,
    ) -> Result<ScheduleKeyDeletionResponse, KmsError> {
        let key_id = required(r.key_id, "keyId")?;
        let days = in_range(
            r.pending_window_in_days.unwrap_or(30),
            7,
            30,
            "pendingWindowInDays",
        )?;
        self.mutate(|st| {
            let id = st.resolve(&key_id, Aliases::Refused)?;
            st.authorize(who, &id, Ask::op("ScheduleKeyDeletion"))?;
            st.not_pending(&id)?;
            let date = now() + days as f64 * 86400.0;
            let k = st.keys.get_mut(&id).expect("resolved");
            k.state = KeyState::PendingDeletion;
            k.deletion_date = Some(date);
            k.pending_window_days = Some(days);
            Ok(ScheduleKeyDeletionResponse {
                key_id: st.key_arn(&id),
                deletion_date: date,
                key_state: KeyState::PendingDeletion.as_str().into(),
                pending_window_in_days: Some(days),
            })
        })
    }

    pub(super) fn cancel_deletion(
        &self,
        who: Who<'_>,
        r: KeyIdRequest,
    ) -> Result<KeyIdResponse, KmsError> {
        let key_id = required(r.key_id, "keyId")?;
        self.mutate(|st| {
            let id = st.resolve(&key_id, Aliases::Refused)?;
            st.authorize(who, &id, Ask::op("CancelKeyDeletion"))?;
            let arn = st.key_arn(&id);
            let k = st.keys.get_mut(&id).expect("resolved");
            if k.state != KeyState::PendingDeletion {
                return Err(KmsError::InvalidState(format!(
                    "{arn} is not pending deletion."
                )));
            }
            // As in AWS, a key saved from deletion comes back disabled.
            k.state = KeyState::Disabled;
            k.deletion_date = None;
            k.pending_window_days = None;
            Ok(KeyIdResponse { key_id: arn })
        })
    }

    /// Resolves a key for a rotation operation `op`: it must be enabled.
    fn rotatable(st: &State, who: Who<'_>, key_id: &str, op: &str) -> Result<String, KmsError> {
        let id = st.resolve(key_id, Aliases::Refused)?;
        st.authorize(who, &id, Ask::op(op))?;
        st.usable(&id)?;
        Ok(id)
    }

    pub(super) fn enable_rotation(
        &self,
        who: Who<'_>,
        r: EnableKeyRotationRequest,
    ) -> Result<Empty, KmsError> {
        let key_id = required(r.key_id, "keyId")?;
        let days = in_range(
            r.rotation_period_in_days.unwrap_or(365),
            90,
            2560,
            "rotationPeriodInDays",
        )?;
        self.mutate(|st| {
            let id = Self::rotatable(st, who, &key_id, "EnableKeyRotation")?;
            let k = st.keys.get_mut(&id).expect("resolved");
            if !k.rotation_enabled {
                k.rotation_anchor = now();
            }
            k.rotation_enabled = true;
            k.rotation_period_days = days;
            Ok(Empty {})
        })
    }

    pub(super) fn disable_rotation(
        &self,
        who: Who<'_>,
        r: KeyIdRequest,
    ) -> Result<Empty, KmsError> {
        let key_id = required(r.key_id, "keyId")?;
        self.mutate(|st| {
            let id = Self::rotatable(st, who, &key_id, "DisableKeyRotation")?;
            st.keys.get_mut(&id).expect("resolved").rotation_enabled = false;
            Ok(Empty {})
        })
    }

    pub(super) fn rotation_status(
        &self,
        who: Who<'_>,
        r: KeyIdRequest,
    ) -> Result<GetKeyRotationStatusResponse, KmsError> {
        let key_id = required(r.key_id, "keyId")?;
        let st = self.lock()?;
        let id = st.resolve(&key_id, Aliases::Refused)?;
        st.authorize(who, &id, Ask::op("GetKeyRotationStatus"))?;
        let k = st.not_pending(&id)?;
        let on = k.rotation_enabled;
        Ok(GetKeyRotationStatusResponse {
            key_rotation_enabled: on,
            key_id: st.key_arn(&id),
            rotation_period_in_days: on.then_some(k.rotation_period_days),
            next_rotation_date: on
                .then_some(k.rotation_anchor + k.rotation_period_days as f64 * 86400.0),
        })
    }

    pub(super) fn rotate_on_demand(
        &self,
        who: Who<'_>,
        r: KeyIdRequest,
    ) -> Result<KeyIdResponse, KmsError> {
        let key_id = required(r.key_id, "keyId")?;
        let material = DataKey::generate().map_err(|e| KmsError::internal(e.to_string()))?;
        self.mutate(|st| {
            let id = Self::rotatable(st, who, &key_id, "RotateKeyOnDemand")?;
            let k = st.keys.get_mut(&id).expect("resolved");
            k.versions.push(material);
            k.rotations.push(Rotation {
                version: k.versions.len() as u32,
                date: now(),
                on_demand: true,
            });
            Ok(KeyIdResponse {
                key_id: st.key_arn(&id),
            })
        })
    }
}
