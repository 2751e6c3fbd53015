//! Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant, and
//! the grant tokens cryptographic operations carry.
//!
//! A grant is kept with its key in the state file, so it is in force for every process
//! from the moment CreateGrant returns: a grant token (which names the grant) is checked
//! for form and otherwise adds nothing, where AWS needs it to bridge the time a new grant
//! takes to spread.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::access::{access_denied, Ask, Who};
use super::keys::{page, Empty};
use super::policy::{arn_account, principal_matches, Decision};
use super::state::{Grant, State};
use super::{now, required, Aliases, Engine};
use crate::kms::KmsError;

/// The operations a grant may allow (AWS's list).
const GRANT_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
];

/// What a grant token says before the grant id.
const TOKEN_PREFIX: &str = "kmsfs-grant-token:";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Constraints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption_context_subset: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption_context_equals: Option<BTreeMap<String, String>>,
}

/// The fields of every grant request.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct GrantRequest {
    key_id: Option<String>,
    grantee_principal: Option<String>,
    retiring_principal: Option<String>,
    operations: Option<Vec<String>>,
    constraints: Option<Constraints>,
    name: Option<String>,
    grant_token: Option<String>,
    grant_id: Option<String>,
    limit: Option<i64>,
    marker: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CreateGrantResponse {
    grant_token: String,
    grant_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct GrantListEntry {
    key_id: String,
    grant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    creation_date: f64,
    grantee_principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retiring_principal: Option<String>,
    issuing_account: String,
    operations: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    constraints: Option<Constraints>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListGrantsResponse {
    grants: Vec<GrantListEntry>,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
}

fn token_for(grant_id: &str) -> String {
    B64.encode(format!("{TOKEN_PREFIX}{grant_id}"))
}

/// The grant id a token names, if it is one of ours.
fn grant_of_token(token: &str) -> Option<String> {
    let text = String::from_utf8(B64.decode(token).ok()?).ok()?;
    text.strip_prefix(TOKEN_PREFIX).map(str::to_owned)
}

fn invalid_token() -> KmsError {
    KmsError::Validation {
        code: "InvalidGrantTokenException".into(),
        message: "The grant token is invalid.".into(),
    }
}

/// Checks the `GrantTokens` a request carries: at most ten, each one this KMS issued.
pub(super) fn check_grant_tokens(tokens: &[String]) -> Result<(), KmsError> {
    if tokens.len() > 10 {
        return Err(KmsError::validation(
            "1 validation error detected: Value at 'grantTokens' failed to satisfy constraint: Member must have length less than or equal to 10",
        ));
    }
    if tokens.iter().any(|t| grant_of_token(t).is_none()) {
        return Err(invalid_token());
    }
    Ok(())
}

fn check_operations(ops: &[String]) -> Result<(), KmsError> {
    if ops.is_empty() || ops.iter().any(|o| !GRANT_OPERATIONS.contains(&o.as_str())) {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value '{ops:?}' at 'operations' failed to satisfy constraint: Member must satisfy constraint: [Member must satisfy enum value set: [{}]]",
            GRANT_OPERATIONS.join(", ")
        )));
    }
    Ok(())
}

fn check_principal(p: &str, field: &str) -> Result<(), KmsError> {
    if arn_account(p).is_none() {
        return Err(KmsError::validation(format!(
            "Invalid {field}: {p} is not the ARN of an IAM principal"
        )));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), KmsError> {
    let ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '_' | '-'));
    if name.is_empty() || name.len() > 256 || !ok {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value '{name}' at 'name' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
        )));
    }
    Ok(())
}

fn grant_not_found(grant_id: &str) -> KmsError {
    KmsError::NotFound(format!("Grant ID {grant_id} not found"))
}

/// Whether a grant made from `parent` (which allows CreateGrant) is within it: no
/// operation more, and a constraint at least as strict.
fn within(parent: &Grant, ops: &[String], c: &Constraints) -> bool {
    let ops_ok = ops.iter().all(|o| parent.operations.contains(o));
    let has_all = |m: &Option<BTreeMap<String, String>>, want: &BTreeMap<String, String>| {
        m.as_ref()
            .is_some_and(|m| want.iter().all(|(k, v)| m.get(k) == Some(v)))
    };
    let eq_ok = parent
        .context_equals
        .as_ref()
        .is_none_or(|e| c.encryption_context_equals.as_ref() == Some(e));
    let sub_ok = parent.context_subset.as_ref().is_none_or(|s| {
        has_all(&c.encryption_context_equals, s) || has_all(&c.encryption_context_subset, s)
    });
    ops_ok && eq_ok && sub_ok
}

impl State {
    fn entry(&self, id: &str, g: &Grant) -> GrantListEntry {
        let constraints = Constraints {
            encryption_context_subset: g.context_subset.clone(),
            encryption_context_equals: g.context_equals.clone(),
        };
        GrantListEntry {
            key_id: self.key_arn(id),
            grant_id: g.id.clone(),
            name: g.name.clone(),
            creation_date: g.created,
            grantee_principal: g.grantee.clone(),
            retiring_principal: g.retiring.clone(),
            issuing_account: format!("arn:aws:iam::{}:root", g.issuing_account),
            operations: g.operations.clone(),
            constraints: (constraints != Constraints::default()).then_some(constraints),
        }
    }

    /// Whether `who` may create a grant of `ops` under `c` on key `id`: the key policy,
    /// or a grant of CreateGrant that the new grant stays within.
    fn may_create_grant(
        &self,
        who: Who<'_>,
        id: &str,
        r: &GrantRequest,
        ops: &[String],
        c: &Constraints,
    ) -> Result<(), KmsError> {
        let Who::Principal(caller) = who else {
            return Ok(());
        };
        let extra = [
            ("kms:grantoperations", ops.to_vec()),
            (
                "kms:granteeprincipal",
                r.grantee_principal.iter().cloned().collect(),
            ),
            (
                "kms:retiringprincipal",
                r.retiring_principal.iter().cloned().collect(),
            ),
            ("kms:grantisforawsresource", vec!["false".to_owned()]),
        ];
        let ask = Ask {
            operation: "CreateGrant",
            context: None,
            extra: &extra,
        };
        match self.decide(&self.policy_of(id), caller, id, ask) {
            Decision::Allow => Ok(()),
            Decision::Deny => Err(access_denied(
                &caller.arn,
                "CreateGrant",
                &self.key_arn(id),
                true,
            )),
            Decision::Silent => {
                let by_grant = self.keys[id].grants.iter().any(|g| {
                    principal_matches(&g.grantee, &caller.arn, &caller.account)
                        && g.operations.iter().any(|o| o == "CreateGrant")
                        && within(g, ops, c)
                });
                if by_grant {
                    Ok(())
                } else {
                    Err(access_denied(
                        &caller.arn,
                        "CreateGrant",
                        &self.key_arn(id),
                        false,
                    ))
                }
            }
        }
    }

    /// Where grant `grant_id` is: its key id and index.
    fn find_grant(&self, grant_id: &str) -> Option<(String, usize)> {
        self.keys.iter().find_map(|(id, k)| {
            k.grants
                .iter()
                .position(|g| g.id == grant_id)
                .map(|i| (id.clone(), i))
        })
    }
}

impl Engine {
    pub(super) fn create_grant(
        &self,
        who: Who<'_>,
        r: GrantRequest,
    ) -> Result<CreateGrantResponse, KmsError> {
        let key_id = required(r.key_id.clone(), "keyId")?;
        let grantee = required(r.grantee_principal.clone(), "granteePrincipal")?;
        let ops = required(r.operations.clone(), "operations")?;
        check_operations(&ops)?;
        check_principal(&grantee, "GranteePrincipal")?;
        if let Some(p) = &r.retiring_principal {
            check_principal(p, "RetiringPrincipal")?;
        }
        if let Some(n) = &r.name {
            check_name(n)?;
        }
        let c = r.constraints.clone().unwrap_or_default();
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| KmsError::internal(e.to_string()))?;
        self.mutate(|st| {
            let id = st.resolve(&key_id, Aliases::Refused)?;
            st.may_create_grant(who, &id, &r, &ops, &c)?;
            st.usable(&id)?;
            let grant = Grant {
                id: hex::encode(raw),
                name: r.name.clone(),
                created: now(),
                grantee,
                retiring: r.retiring_principal.clone(),
                operations: ops,
                context_equals: c.encryption_context_equals,
                context_subset: c.encryption_context_subset,
                issuing_account: match who {
                    Who::Principal(caller) => caller.account.clone(),
                    Who::Local => st.account.clone(),
                },
            };
            let grants = &mut st.keys.get_mut(&id).expect("resolved").grants;
            // A named grant asked for again with the same terms is the same grant.
            let same = |g: &&Grant| {
                g.name.is_some()
                    && Grant {
                        id: g.id.clone(),
                        created: g.created,
                        issuing_account: g.issuing_account.clone(),
                        ..grant.clone()
                    } == **g
            };
            let grant_id = match grants.iter().find(same) {
                Some(g) => g.id.clone(),
                None => {
                    let gid = grant.id.clone();
                    grants.push(grant);
                    gid
                }
            };
            Ok(CreateGrantResponse {
                grant_token: token_for(&grant_id),
                grant_id,
            })
        })
    }

    pub(super) fn list_grants(
        &self,
        who: Who<'_>,
        r: GrantRequest,
    ) -> Result<ListGrantsResponse, KmsError> {
        let key_id = required(r.key_id, "keyId")?;
        let st = self.lock()?;
        let id = st.resolve(&key_id, Aliases::Refused)?;
        st.authorize(who, &id, Ask::op("ListGrants"))?;
        let items = st.keys[&id]
            .grants
            .iter()
            .enumerate()
            .filter(|(_, g)| r.grant_id.as_ref().is_none_or(|w| &g.id == w))
            .filter(|(_, g)| r.grantee_principal.as_ref().is_none_or(|w| &g.grantee == w))
            .map(|(i, g)| (format!("{i:010}"), st.entry(&id, g)))
            .collect();
        grants_page(items, r.limit, r.marker)
    }

    /// Grants on any key that `RetiringPrincipal` may retire (the caller's own
    /// permission to list them is its credential's, as AWS leaves it to IAM).
    pub(super) fn list_retirable_grants(
        &self,
        r: GrantRequest,
    ) -> Result<ListGrantsResponse, KmsError> {
        let retiring = required(r.retiring_principal, "retiringPrincipal")?;
        check_principal(&retiring, "RetiringPrincipal")?;
        let st = self.lock()?;
        let items = st
            .keys
            .iter()
            .flat_map(|(id, k)| k.grants.iter().map(move |g| (id, g)))
            .filter(|(_, g)| g.retiring.as_deref() == Some(retiring.as_str()))
            .map(|(id, g)| (format!("{id}/{}", g.id), st.entry(id, g)))
            .collect();
        grants_page(items, r.limit, r.marker)
    }

    /// Retires a grant named by its token, or by key and grant id. Who may: the grant's
    /// retiring principal, its grantee if it allows RetireGrant, and its account's root.
    pub(super) fn retire_grant(&self, who: Who<'_>, r: GrantRequest) -> Result<Empty, KmsError> {
        let by_token = match &r.grant_token {
            Some(t) => Some(grant_of_token(t).ok_or_else(invalid_token)?),
            None => None,
        };
        self.mutate(|st| {
            let (id, index) = match (&by_token, &r.key_id, &r.grant_id) {
                (Some(gid), _, _) => st.find_grant(gid).ok_or_else(|| grant_not_found(gid))?,
                (None, Some(key_id), Some(gid)) => {
                    let id = st.resolve(key_id, Aliases::Refused)?;
                    let i = st.keys[&id]
                        .grants
                        .iter()
                        .position(|g| &g.id == gid)
                        .ok_or_else(|| grant_not_found(gid))?;
                    (id, i)
                }
                _ => {
                    return Err(KmsError::validation(
                        "Either GrantToken, or both KeyId and GrantId, must be specified",
                    ))
                }
            };
            if let Who::Principal(caller) = who {
                let g = &st.keys[&id].grants[index];
                let named = |p: &str| principal_matches(p, &caller.arn, &caller.account);
                let root = format!("arn:aws:iam::{}:root", g.issuing_account);
                let may = g.retiring.as_deref().is_some_and(named)
                    || (named(&g.grantee) && g.operations.iter().any(|o| o == "RetireGrant"))
                    || caller.arn == root;
                if !may {
                    return Err(access_denied(
                        &caller.arn,
                        "RetireGrant",
                        &st.key_arn(&id),
                        false,
                    ));
                }
            }
            st.keys.get_mut(&id).expect("found").grants.remove(index);
            Ok(Empty {})
        })
    }

    pub(super) fn revoke_grant(&self, who: Who<'_>, r: GrantRequest) -> Result<Empty, KmsError> {
        let key_id = required(r.key_id, "keyId")?;
        let grant_id = required(r.grant_id, "grantId")?;
        self.mutate(|st| {
            let id = st.resolve(&key_id, Aliases::Refused)?;
            st.authorize(who, &id, Ask::op("RevokeGrant"))?;
            let grants = &mut st.keys.get_mut(&id).expect("resolved").grants;
            let i = grants
                .iter()
                .position(|g| g.id == grant_id)
                .ok_or_else(|| grant_not_found(&grant_id))?;
            grants.remove(i);
            Ok(Empty {})
        })
    }
}

/// One page of `ListGrants`' answer (`keys::page`).
fn grants_page(
    items: Vec<(String, GrantListEntry)>,
    limit: Option<i64>,
    marker: Option<String>,
) -> Result<ListGrantsResponse, KmsError> {
    let (grants, next_marker) = page(items, limit, marker)?;
    Ok(ListGrantsResponse {
        truncated: next_marker.is_some(),
        grants,
        next_marker,
    })
}
