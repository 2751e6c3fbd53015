//! Who each access key of the server's credentials file is: every section is one
//! principal, named by its `principal_arn = ...` (a kmsfs extension that AWS SDKs ignore)
//! or else `arn:aws:iam::ACCOUNT:user/SECTION`. Key policies, grants, refusals and the
//! audit log name principals by these ARNs. Signatures are `sigv4`'s business, not this
//! module's.

use std::collections::BTreeMap;

use crate::kms::config::parse_ini;
use crate::kms::engine::policy::arn_account;
use crate::kms::engine::state::DEFAULT_ACCOUNT;
use crate::kms::engine::Caller;

/// Access key id -> the principal it signs for.
#[derive(Default, Debug)]
pub struct Principals(BTreeMap<String, Caller>);

impl Principals {
    /// Reads every section with an `aws_access_key_id` of a credentials file's text.
    /// `Err` names a section whose `principal_arn` is not an IAM or STS principal ARN.
    pub fn from_ini(text: &str) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        for (section, values) in parse_ini(text) {
            let Some(key) = values.get("aws_access_key_id") else {
                continue;
            };
            let caller = match values.get("principal_arn") {
                Some(arn) => {
                    let account = arn_account(arn).ok_or_else(|| {
                        format!(
                            "section [{section}]: principal_arn {arn:?} is not an ARN such as arn:aws:iam::{DEFAULT_ACCOUNT}:user/NAME"
                        )
                    })?;
                    Caller {
                        account: account.to_owned(),
                        arn: arn.clone(),
                    }
                }
                None => Caller {
                    arn: format!("arn:aws:iam::{DEFAULT_ACCOUNT}:user/{section}"),
                    account: DEFAULT_ACCOUNT.into(),
                },
            };
            out.insert(key.clone(), caller);
        }
        Ok(Principals(out))
    }

    /// The principal `access_key` signs for; a key the file did not name (a server made
    /// without its file's text) is the user named after the key.
    pub fn caller(&self, access_key: &str) -> Caller {
        self.0.get(access_key).cloned().unwrap_or_else(|| Caller {
            arn: format!("arn:aws:iam::{DEFAULT_ACCOUNT}:user/{access_key}"),
            account: DEFAULT_ACCOUNT.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_name_principals() {
        let p = Principals::from_ini(
            "[default]\naws_access_key_id = A1\naws_secret_access_key = s\n\
             [admin]\naws_access_key_id = A2\naws_secret_access_key = s\n\
             principal_arn = arn:aws:iam::444455556666:role/KeyAdmin\n",
        )
        .unwrap();
        assert_eq!(p.caller("A1").arn, "arn:aws:iam::111122223333:user/default");
        assert_eq!(
            p.caller("A2").arn,
            "arn:aws:iam::444455556666:role/KeyAdmin"
        );
        assert_eq!(p.caller("A2").account, "444455556666");
        assert_eq!(p.caller("A3").arn, "arn:aws:iam::111122223333:user/A3");
        let bad = Principals::from_ini("[x]\naws_access_key_id = A\nprincipal_arn = bob\n");
        assert!(bad.unwrap_err().contains("[x]"));
    }
}
