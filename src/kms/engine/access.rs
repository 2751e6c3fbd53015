//! Who is asking, and whether they may: a key's policy and its grants, evaluated for one
//! request as AWS does (an explicit `Deny` in the policy wins; otherwise an `Allow` from
//! the policy or a grant; otherwise `AccessDeniedException`).
//!
//! The engine in a mount or an offline tool asks as [`Who::Local`]: it holds the state
//! file, and with it every key, so no policy could stop it. Only the server's callers,
//! named by their credentials, are [`Who::Principal`]. Per-operation limits of a
//! credential (`kms_allowed_operations`) are the server's, checked before this.

use super::policy::{default_policy_text, principal_matches, Decision, Policy, Request};
use super::state::{Grant, State};
use crate::kms::{EncryptionContext, KmsError};

/// A principal the server authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// `arn:aws:iam::ACCOUNT:user/NAME`, or what the credentials file names.
    pub arn: String,
    pub account: String,
}

/// Who a request runs for.
#[derive(Clone, Copy, Debug)]
pub enum Who<'a> {
    /// This process, which holds the state file.
    Local,
    Principal(&'a Caller),
}

/// What is asked of a key, beyond who asks.
#[derive(Clone, Copy)]
pub struct Ask<'a> {
    /// The operation, as a grant names it (`Decrypt`, `ReEncryptFrom`, ...).
    pub operation: &'a str,
    pub context: Option<&'a EncryptionContext>,
    /// Further condition keys (lower-case names) and their values.
    pub extra: &'a [(&'a str, Vec<String>)],
}

impl<'a> Ask<'a> {
    pub fn op(operation: &'a str) -> Self {
        Ask {
            operation,
            context: None,
            extra: &[],
        }
    }

    pub fn with_context(operation: &'a str, context: &'a EncryptionContext) -> Self {
        Ask {
            operation,
            context: Some(context),
            extra: &[],
        }
    }
}

/// AWS's refusal of `operation` on `key_arn` to `principal`.
pub fn access_denied(principal: &str, operation: &str, key_arn: &str, explicit: bool) -> KmsError {
    let why = if explicit {
        "with an explicit deny in a resource-based policy".to_owned()
    } else {
        format!("because no resource-based policy allows the kms:{operation} action")
    };
    KmsError::AccessDenied {
        code: "AccessDeniedException".into(),
        message: format!(
            "User: {principal} is not authorized to perform: kms:{operation} on resource: {key_arn} {why}"
        ),
    }
}

/// Whether a grant's encryption-context constraint lets a request's context through.
/// Constraint keys are matched without regard to case and values exactly, as AWS does.
pub fn constraints_hold(g: &Grant, ctx: Option<&EncryptionContext>) -> bool {
    let empty = EncryptionContext::new();
    let ctx = ctx.unwrap_or(&empty);
    let find = |k: &str| {
        ctx.0
            .iter()
            .find(|(ck, _)| ck.eq_ignore_ascii_case(k))
            .map(|(_, v)| v)
    };
    let subset_ok =
        |c: &std::collections::BTreeMap<String, String>| c.iter().all(|(k, v)| find(k) == Some(v));
    if let Some(eq) = &g.context_equals {
        if eq.len() != ctx.0.len() || !subset_ok(eq) {
            return false;
        }
    }
    g.context_subset.as_ref().is_none_or(subset_ok)
}

/// Operations a grant's constraint does not apply to (they take no encryption context).
fn takes_context(operation: &str) -> bool {
    matches!(
        operation,
        "Decrypt"
            | "Encrypt"
            | "GenerateDataKey"
            | "GenerateDataKeyWithoutPlaintext"
            | "ReEncryptFrom"
            | "ReEncryptTo"
    )
}

impl State {
    /// AWS's default key policy for this account.
    pub(super) fn default_policy(&self) -> Policy {
        Policy::parse(&default_policy_text(&self.account)).expect("the default policy parses")
    }

    /// Key `id`'s policy: its own, or AWS's default for a key made without one.
    pub(super) fn policy_of(&self, id: &str) -> std::borrow::Cow<'_, Policy> {
        match &self.keys[id].policy {
            Some(p) => std::borrow::Cow::Borrowed(p),
            None => std::borrow::Cow::Owned(self.default_policy()),
        }
    }

    /// What `policy` says about `caller` asking `ask` of key `id`.
    pub(super) fn decide(
        &self,
        policy: &Policy,
        caller: &Caller,
        id: &str,
        ask: Ask<'_>,
    ) -> Decision {
        let action = format!("kms:{}", ask.operation);
        let resource = self.key_arn(id);
        policy.evaluate(&Request {
            principal: &caller.arn,
            account: &caller.account,
            action: &action,
            resource: &resource,
            context: ask.context,
            extra: ask.extra,
        })
    }

    /// The grant on key `id` that lets `caller` do `ask`, if any.
    pub(super) fn granting(&self, caller: &Caller, id: &str, ask: Ask<'_>) -> Option<&Grant> {
        self.keys[id].grants.iter().find(|g| {
            principal_matches(&g.grantee, &caller.arn, &caller.account)
                && g.operations.iter().any(|o| o == ask.operation)
                && (!takes_context(ask.operation) || constraints_hold(g, ask.context))
        })
    }

    /// Refuses `ask` on key `id` unless the key's policy or one of its grants allows it.
    pub(super) fn authorize(&self, who: Who<'_>, id: &str, ask: Ask<'_>) -> Result<(), KmsError> {
        let Who::Principal(caller) = who else {
            return Ok(());
        };
        match self.decide(&self.policy_of(id), caller, id, ask) {
            Decision::Allow => Ok(()),
            Decision::Deny => Err(access_denied(
                &caller.arn,
                ask.operation,
                &self.key_arn(id),
                true,
            )),
            Decision::Silent if self.granting(caller, id, ask).is_some() => Ok(()),
            Decision::Silent => Err(access_denied(
                &caller.arn,
                ask.operation,
                &self.key_arn(id),
                false,
            )),
        }
    }
}
