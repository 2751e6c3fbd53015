//! Key policies: parsing and checking a policy document, and evaluating it for one request
//! as AWS does (an explicit `Deny` wins, then any `Allow`, else no decision).
//!
//! The grammar kept is the part of AWS's policy language that key policies use:
//! `Effect`, `Principal` (`"*"` or `{"AWS": ARN | account | [..]}`), `Action`/`NotAction`
//! with `*` and `?` wildcards, `Resource`/`NotResource`, and `Condition` with the string,
//! ARN, `Bool` and `Null` operators, their `IfExists` forms and `ForAnyValue:` /
//! `ForAllValues:` set qualifiers. This module knows no keys, grants or state: the caller
//! hands it a [`Request`] and gets a [`Decision`].

use serde_json::Value;

use crate::kms::{EncryptionContext, KmsError};

/// AWS's largest key policy, in bytes.
pub const MAX_POLICY_LEN: usize = 32768;

/// A parsed key policy, with the text it came from (GetKeyPolicy returns that text).
#[derive(Clone, Debug)]
pub struct Policy {
    pub text: String,
    statements: Vec<Statement>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

/// A list of patterns, or everything but them (`NotAction`, `NotResource`).
#[derive(Clone, Debug)]
struct Patterns {
    not: bool,
    items: Vec<String>,
}

#[derive(Clone, Debug)]
struct Statement {
    effect: Effect,
    /// `None` is `"*"`: every principal.
    principals: Option<Vec<String>>,
    actions: Patterns,
    resources: Patterns,
    conditions: Vec<Condition>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    Bool,
    Null,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Set {
    Single,
    AnyValue,
    AllValues,
}

#[derive(Clone, Debug)]
struct Condition {
    op: Op,
    negated: bool,
    if_exists: bool,
    set: Set,
    key: String,
    values: Vec<String>,
}

/// What a policy is asked about one request.
pub struct Request<'a> {
    /// The caller's principal ARN.
    pub principal: &'a str,
    /// The caller's account.
    pub account: &'a str,
    /// `kms:Operation`.
    pub action: &'a str,
    /// The key ARN.
    pub resource: &'a str,
    /// The request's encryption context, for operations that take one.
    pub context: Option<&'a EncryptionContext>,
    /// Further condition keys of this request (lower-case name, values).
    pub extra: &'a [(&'a str, Vec<String>)],
}

/// What a policy says about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// Neither: a grant may still allow it.
    Silent,
}

/// AWS's name for a policy document it cannot accept.
pub fn malformed(message: impl Into<String>) -> KmsError {
    KmsError::Validation {
        code: "MalformedPolicyDocumentException".into(),
        message: message.into(),
    }
}

/// AWS's default key policy for a key made without one: the account may do anything with
/// the key that its identities' own permissions allow.
pub fn default_policy_text(account: &str) -> String {
    format!(
        r#"{{
  "Version" : "2012-10-17",
  "Id" : "key-default-1",
  "Statement" : [ {{
    "Sid" : "Enable IAM User Permissions",
    "Effect" : "Allow",
    "Principal" : {{
      "AWS" : "arn:aws:iam::{account}:root"
    }},
    "Action" : "kms:*",
    "Resource" : "*"
  }} ]
}}"#
    )
}

/// `*` matches any run of characters, `?` any one.
pub fn glob(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let eq = |a: char, b: char| {
        if ignore_case {
            a.to_lowercase().eq(b.to_lowercase())
        } else {
            a == b
        }
    };
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && eq(p[pi], t[ti]))) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A policy value (string, number, boolean, or a list of them) as strings.
fn strings(v: &Value, what: &str) -> Result<Vec<String>, KmsError> {
    let one = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(malformed(format!(
            "{what} must be a string or a list of strings"
        ))),
    };
    match v {
        Value::Array(items) if !items.is_empty() => items.iter().map(one).collect(),
        Value::Array(_) => Err(malformed(format!("{what} must not be empty"))),
        other => Ok(vec![one(other)?]),
    }
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The account an IAM or STS principal ARN belongs to.
pub fn arn_account(arn: &str) -> Option<&str> {
    let rest = arn
        .strip_prefix("arn:aws:iam::")
        .or_else(|| arn.strip_prefix("arn:aws:sts::"))?;
    let (account, name) = rest.split_once(':')?;
    (is_account(account) && !name.is_empty()).then_some(account)
}

fn principals(v: &Value) -> Result<Option<Vec<String>>, KmsError> {
    let invalid = || malformed("Policy contains a statement with one or more invalid principals.");
    match v {
        Value::String(s) if s == "*" => Ok(None),
        Value::Object(map) if !map.is_empty() => {
            let mut out = Vec::new();
            for (kind, value) in map {
                let names = strings(value, "Principal").map_err(|_| invalid())?;
                match kind.as_str() {
                    "AWS" => {
                        for n in names {
                            if n != "*" && !is_account(&n) && arn_account(&n).is_none() {
                                return Err(invalid());
                            }
                            out.push(n);
                        }
                    }
                    // Service and federated principals never call the local KMS.
                    "Service" | "Federated" | "CanonicalUser" => {}
                    _ => return Err(invalid()),
                }
            }
            if out.iter().any(|n| n == "*") {
                return Ok(None);
            }
            Ok(Some(out))
        }
        _ => Err(invalid()),
    }
}

fn patterns(st: &serde_json::Map<String, Value>, name: &str) -> Result<Patterns, KmsError> {
    let not_name = format!("Not{name}");
    match (st.get(name), st.get(&not_name)) {
        (Some(v), None) => Ok(Patterns {
            not: false,
            items: strings(v, name)?,
        }),
        (None, Some(v)) => Ok(Patterns {
            not: true,
            items: strings(v, &not_name)?,
        }),
        (Some(_), Some(_)) => Err(malformed(format!(
            "Policy contains a statement with both {name} and {not_name}."
        ))),
        (None, None) => Err(malformed(format!(
            "Policy contains a statement with no {}.",
            name.to_lowercase()
        ))),
    }
}

fn conditions(v: Option<&Value>) -> Result<Vec<Condition>, KmsError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let Value::Object(ops) = v else {
        return Err(malformed("Condition must be an object"));
    };
    let mut out = Vec::new();
    for (name, keys) in ops {
        let (set, rest) = if let Some(r) = name.strip_prefix("ForAnyValue:") {
            (Set::AnyValue, r)
        } else if let Some(r) = name.strip_prefix("ForAllValues:") {
            (Set::AllValues, r)
        } else {
            (Set::Single, name.as_str())
        };
        let (if_exists, base) = match rest.strip_suffix("IfExists") {
            Some(b) => (true, b),
            None => (false, rest),
        };
        let (op, negated) = match base {
            "StringEquals" | "ArnEquals" => (Op::StringEquals, false),
            "StringNotEquals" | "ArnNotEquals" => (Op::StringEquals, true),
            "StringEqualsIgnoreCase" => (Op::StringEqualsIgnoreCase, false),
            "StringNotEqualsIgnoreCase" => (Op::StringEqualsIgnoreCase, true),
            "StringLike" | "ArnLike" => (Op::StringLike, false),
            "StringNotLike" | "ArnNotLike" => (Op::StringLike, true),
            "Bool" => (Op::Bool, false),
            "Null" if !if_exists && set == Set::Single => (Op::Null, false),
            _ => {
                return Err(malformed(format!(
                    "Policy contains the condition operator {name}, which the local KMS does not support."
                )))
            }
        };
        let Value::Object(keys) = keys else {
            return Err(malformed(format!(
                "Condition operator {name} must map keys to values"
            )));
        };
        for (key, values) in keys {
            out.push(Condition {
                op,
                negated,
                if_exists,
                set,
                key: key.to_lowercase(),
                values: strings(values, "Condition value")?,
            });
        }
    }
    Ok(out)
}

fn statement(v: &Value) -> Result<Statement, KmsError> {
    let Value::Object(st) = v else {
        return Err(malformed("Each statement must be an object"));
    };
    let effect = match st.get("Effect").and_then(Value::as_str) {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        _ => {
            return Err(malformed(
                "Policy contains a statement with an invalid Effect.",
            ))
        }
    };
    if st.contains_key("NotPrincipal") {
        return Err(malformed(
            "Policy contains NotPrincipal, which the local KMS does not support.",
        ));
    }
    let principals = match st.get("Principal") {
        Some(p) => principals(p)?,
        None => return Err(malformed("Policy contains a statement with no principal.")),
    };
    let actions = patterns(st, "Action")?;
    for a in &actions.items {
        if a != "*" && !a.contains(':') {
            return Err(malformed(format!("Policy contains an invalid action: {a}")));
        }
    }
    Ok(Statement {
        effect,
        principals,
        actions,
        resources: patterns(st, "Resource")?,
        conditions: conditions(st.get("Condition"))?,
    })
}

impl Policy {
    /// Parses and checks a key policy document (MalformedPolicyDocumentException when AWS
    /// would refuse it, or when it uses what this KMS cannot evaluate).
    pub fn parse(text: &str) -> Result<Policy, KmsError> {
        if text.is_empty() || text.len() > MAX_POLICY_LEN {
            return Err(KmsError::validation(format!(
                "1 validation error detected: Value at 'policy' failed to satisfy constraint: Member must have length between 1 and {MAX_POLICY_LEN}"
            )));
        }
        let doc: Value = serde_json::from_str(text)
            .map_err(|_| malformed("The policy is not in valid JSON format."))?;
        let Value::Object(doc) = doc else {
            return Err(malformed("The policy must be a JSON object."));
        };
        if let Some(v) = doc.get("Version") {
            if !matches!(v.as_str(), Some("2012-10-17" | "2008-10-17")) {
                return Err(malformed("The policy has an unknown Version."));
            }
        }
        let statements = match doc.get("Statement") {
            Some(Value::Array(items)) if !items.is_empty() => {
                items.iter().map(statement).collect::<Result<_, _>>()?
            }
            Some(one @ Value::Object(_)) => vec![statement(one)?],
            _ => return Err(malformed("The policy contains no statement.")),
        };
        Ok(Policy {
            text: text.to_owned(),
            statements,
        })
    }

    /// What the policy says about `req`.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        let mut allowed = false;
        for st in &self.statements {
            if st.applies(req) {
                match st.effect {
                    Effect::Deny => return Decision::Deny,
                    Effect::Allow => allowed = true,
                }
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::Silent
        }
    }
}

/// Whether a policy or grant principal names the caller: `*`, the caller's account (by
/// number or root ARN), its ARN, or the role whose session it is.
pub fn principal_matches(named: &str, principal: &str, account: &str) -> bool {
    if named == "*" || named == principal {
        return true;
    }
    if named == account || named == format!("arn:aws:iam::{account}:root") {
        return true;
    }
    // A role session `arn:aws:sts::A:assumed-role/R/S` is the role `arn:aws:iam::A:role/R`.
    if let Some(rest) = principal.strip_prefix(&format!("arn:aws:sts::{account}:assumed-role/")) {
        if let Some((role, _session)) = rest.split_once('/') {
            return named == format!("arn:aws:iam::{account}:role/{role}");
        }
    }
    false
}

impl Statement {
    fn applies(&self, req: &Request<'_>) -> bool {
        let principal_ok = match &self.principals {
            None => true,
            Some(names) => names
                .iter()
                .any(|n| principal_matches(n, req.principal, req.account)),
        };
        let action_ok =
            self.actions.not != self.actions.items.iter().any(|a| glob(a, req.action, true));
        let resource_ok = self.resources.not
            != self
                .resources
                .items
                .iter()
                .any(|r| glob(r, req.resource, false));
        principal_ok && action_ok && resource_ok && self.conditions.iter().all(|c| c.holds(req))
    }
}

/// The values a request has for a condition key (empty when it has none).
fn request_values(req: &Request<'_>, key: &str) -> Vec<String> {
    if let Some(name) = key.strip_prefix("kms:encryptioncontext:") {
        // Condition key names are not case sensitive, so neither is the context key here.
        return req
            .context
            .into_iter()
            .flat_map(|c| c.0.iter())
            .filter(|(k, _)| k.to_lowercase() == name)
            .map(|(_, v)| v.clone())
            .collect();
    }
    match key {
        "kms:encryptioncontextkeys" => req
            .context
            .map(|c| c.0.keys().cloned().collect())
            .unwrap_or_default(),
        "kms:calleraccount" | "aws:principalaccount" => vec![req.account.to_owned()],
        "aws:principalarn" => vec![req.principal.to_owned()],
        _ => req
            .extra
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
    }
}

impl Condition {
    fn matches_one(&self, value: &str) -> bool {
        let hit = self.values.iter().any(|p| match self.op {
            Op::StringEquals => p == value,
            Op::StringEqualsIgnoreCase | Op::Bool => p.eq_ignore_ascii_case(value),
            Op::StringLike => glob(p, value, false),
            Op::Null => false,
        });
        hit != self.negated
    }

    fn holds(&self, req: &Request<'_>) -> bool {
        let values = request_values(req, &self.key);
        if self.op == Op::Null {
            let absent = values.is_empty();
            return self
                .values
                .iter()
                .any(|p| p.eq_ignore_ascii_case(if absent { "true" } else { "false" }));
        }
        if values.is_empty() {
            return match self.set {
                Set::AllValues => true,
                Set::AnyValue => self.if_exists,
                Set::Single => self.if_exists || self.negated,
            };
        }
        match self.set {
            Set::AllValues => values.iter().all(|v| self.matches_one(v)),
            Set::AnyValue => values.iter().any(|v| self.matches_one(v)),
            Set::Single if self.negated => values.iter().all(|v| self.matches_one(v)),
            Set::Single => values.iter().any(|v| self.matches_one(v)),
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
