//! Backing up and restoring the local KMS's keys.
//!
//! A backup is the state file as it stands under the lock (so never a half-made change),
//! checked to parse. A restore only ever adds: the keys, backing-key versions and aliases
//! the current state lacks; what it has stays as it is, and a key id whose key material
//! differs stops the whole restore before anything is saved. Writing the backup file
//! itself is the caller's business.

use std::path::Path;

use zeroize::Zeroizing;

use super::state::{KeyState, State, StateError};
use super::store::{self, Mode};
use super::{now, Engine};
use crate::kms::KmsError;

/// A consistent copy of the state file at `path` and how many keys it holds.
pub fn snapshot(path: &Path) -> Result<(Zeroizing<Vec<u8>>, usize), StateError> {
    let _lock = store::lock(path, Mode::Shared)?;
    let (bytes, _) = store::read_existing(path)?;
    let st = State::from_bytes(&bytes).map_err(|reason| StateError::Corrupt {
        path: path.into(),
        reason,
    })?;
    Ok((bytes, st.keys.len()))
}

/// What a restore changed, for people.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Keys the state lacked (key ids).
    pub keys_added: Vec<String>,
    /// Keys the state had with fewer backing-key versions: the id and how many were added.
    pub versions_added: Vec<(String, usize)>,
    /// Keys already there with at least the backup's versions.
    pub keys_unchanged: usize,
    /// Restored keys whose deletion date had passed: restored disabled, deletion cancelled.
    pub deletion_cancelled: Vec<String>,
    pub aliases_added: Vec<String>,
    /// Aliases the state has pointing at another key than in the backup (left as they are).
    pub aliases_kept: Vec<String>,
}

/// Why a restore was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the backup is not a usable local KMS state file ({0})")]
    NotABackup(String),
    #[error("the backup holds keys of account {backup} and the state of account {current}: their ARNs differ; restore into a state file of its own (--state)")]
    OtherAccount { backup: String, current: String },
    #[error("key {0} is in both the backup and the state with different key material; nothing was restored (restore into a state file of its own with --state, and find out which copy volumes use)")]
    Conflict(String),
    #[error(transparent)]
    Kms(#[from] KmsError),
}

impl Engine {
    /// Adds what the backup `bytes` holds and the state lacks, under the lock, and saves.
    pub fn restore(&self, bytes: &[u8]) -> Result<RestoreReport, RestoreError> {
        let from = State::from_bytes(bytes).map_err(RestoreError::NotABackup)?;
        let mut c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.change(&mut c, |st| merge(st, from, now()))
    }
}

/// The account and region, which every ARN of a state carries.
fn home(st: &State) -> String {
    format!("{} in {}", st.account, st.region)
}

fn merge(st: &mut State, from: State, t: f64) -> Result<RestoreReport, RestoreError> {
    if st.keys.is_empty() {
        st.account.clone_from(&from.account);
        st.region.clone_from(&from.region);
    } else if home(st) != home(&from) {
        return Err(RestoreError::OtherAccount {
            backup: home(&from),
            current: home(st),
        });
    }
    let mut report = RestoreReport::default();
    for (id, mut k) in from.keys {
        let Some(cur) = st.keys.get_mut(&id) else {
            // A key restored past its deletion date would be purged again at once.
            if k.deletion_date.is_some_and(|d| d <= t) {
                k.state = KeyState::Disabled;
                k.deletion_date = None;
                k.pending_window_days = None;
                report.deletion_cancelled.push(id.clone());
            }
            report.keys_added.push(id.clone());
            st.keys.insert(id, k);
            continue;
        };
        let same = cur
            .versions
            .iter()
            .zip(&k.versions)
            .all(|(a, b)| a.expose_secret() == b.expose_secret());
        if !same {
            return Err(RestoreError::Conflict(id));
        }
        let extra = k.versions.len().saturating_sub(cur.versions.len());
        if extra > 0 {
            cur.versions.extend(k.versions.drain(cur.versions.len()..));
            report.versions_added.push((id, extra));
        } else {
            report.keys_unchanged += 1;
        }
    }
    for (name, a) in from.aliases {
        match st.aliases.get(&name) {
            None => {
                st.aliases.insert(name.clone(), a);
                report.aliases_added.push(name);
            }
            Some(cur) if cur.target != a.target => report.aliases_kept.push(name),
            Some(_) => {}
        }
    }
    Ok(report)
}
