//! The local KMS, in-process: every operation the server offers, with AWS KMS semantics
//! and AWS error names, over a mutex-guarded copy of [`state::State`].
//!
//! With a state file, that copy is only a cache: any number of processes may share the
//! file, so every change is made under the file's lock from a fresh read of it, and reads
//! take the file again once it has changed (`store.rs`). Nothing writes back a copy read
//! earlier.
//!
//! [`Engine::call`] takes an operation name and its JSON body, as the server receives
//! them; [`Engine`] also implements [`Kms`] directly, so a mount can embed it without
//! HTTP. The engine knows no HTTP, signatures or audit log (the server owns those).
//!
//! Key identifiers are resolved as AWS does: key id, key ARN, alias name and alias ARN
//! for the cryptographic operations and `DescribeKey`; key id or key ARN only for the
//! operations that change a key. Keys pending deletion are purged once their deletion
//! date has passed, and keys with automatic rotation get a new backing version once their
//! rotation period has elapsed; both happen lazily at the next call.

mod access;
pub mod backup;
pub mod blob;
mod crypt;
mod dispatch;
mod grants;
mod keys;
mod meta;
pub mod policy;
pub mod state;
mod store;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{clock, EncryptionContext, GeneratedDataKey, Kms, KmsError};
use crate::secret::{DataKey, SecretBytes};
pub use access::Caller;
use access::Who;
pub use state::StateError;
use state::{format_uuid, parse_uuid, KeyEntry, KeyState, State};
use store::{Mode, Stamp};

/// The local KMS.
pub struct Engine {
    state: Mutex<Cached>,
    path: Option<PathBuf>,
}

/// This process's copy of the state, and which version of the file it was read from
/// (`None` in memory).
struct Cached {
    st: State,
    seen: Option<Stamp>,
}

impl std::ops::Deref for Cached {
    type Target = State;
    fn deref(&self) -> &State {
        &self.st
    }
}

impl std::ops::DerefMut for Cached {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.st
    }
}

/// Whether an identifier may name an alias.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Aliases {
    Allowed,
    Refused,
}

fn now() -> f64 {
    // Millisecond precision, as AWS timestamps have.
    (clock::epoch_secs(SystemTime::now()) * 1000.0).floor() / 1000.0
}

/// `Some(value)` or the AWS "Member must not be null" validation error.
fn required<T>(v: Option<T>, field: &str) -> Result<T, KmsError> {
    v.ok_or_else(|| {
        KmsError::validation(format!(
            "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

fn in_range(v: i64, lo: i64, hi: i64, field: &str) -> Result<i64, KmsError> {
    if v < lo || v > hi {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value '{v}' at '{field}' failed to satisfy constraint: Member must have value between {lo} and {hi}"
        )));
    }
    Ok(v)
}

impl Engine {
    /// An engine whose keys live only in memory (tests, throwaway setups).
    pub fn in_memory() -> Self {
        Engine {
            state: Mutex::new(Cached {
                st: State::empty(),
                seen: None,
            }),
            path: None,
        }
    }

    /// Opens (or creates, under the lock) the state file at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let (st, seen) = match store::read(path)? {
            Some(found) => parse(path, found)?,
            None => {
                let _lock = store::lock(path, Mode::Exclusive)?;
                match store::read(path)? {
                    Some(found) => parse(path, found)?,
                    None => {
                        let st = State::empty();
                        st.save(path)?;
                        let seen = store::stamp(path)?;
                        (st, seen)
                    }
                }
            }
        };
        Ok(Engine {
            state: Mutex::new(Cached {
                st,
                seen: Some(seen),
            }),
            path: Some(path.into()),
        })
    }

    /// Whether `op` only reads the key state and computes, in microseconds (unless a
    /// rotation or deletion has come due: then any operation saves the state first, with
    /// `fsync`; or another process changed the file: then it is read again). Operations
    /// not listed here, and unknown ones, may write the state.
    pub fn only_reads(op: &str) -> bool {
        matches!(
            op,
            "GenerateDataKey"
                | "GenerateDataKeyWithoutPlaintext"
                | "Decrypt"
                | "Encrypt"
                | "ReEncrypt"
                | "DescribeKey"
                | "ListKeys"
                | "ListAliases"
                | "GetKeyRotationStatus"
                | "GenerateRandom"
                | "GetKeyPolicy"
                | "ListKeyPolicies"
                | "ListResourceTags"
                | "ListKeyRotations"
                | "ListGrants"
                | "ListRetirableGrants"
        )
    }

    /// Parses the request, runs `f`, serializes its answer.
    fn json<Req: DeserializeOwned, Resp: Serialize>(
        &self,
        body: &[u8],
        f: impl FnOnce(Req) -> Result<Resp, KmsError>,
    ) -> Result<Vec<u8>, KmsError> {
        let body = if body.is_empty() { &b"{}"[..] } else { body };
        let req: Req = serde_json::from_slice(body).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("failed to satisfy constraint") {
                KmsError::validation(msg)
            } else {
                KmsError::serialization(format!("could not parse the request body: {msg}"))
            }
        })?;
        let resp = f(req)?;
        serde_json::to_vec(&resp).map_err(|e| KmsError::internal(e.to_string()))
    }

    /// Locks this process's copy of the state, first read again if the file changed
    /// since, with due deletions and rotations applied (and saved) under the file lock.
    fn lock(&self) -> Result<MutexGuard<'_, Cached>, KmsError> {
        let mut c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = &self.path {
            if Some(store::stamp(path).map_err(saving)?) != c.seen {
                let (st, seen) =
                    parse(path, store::read_existing(path).map_err(saving)?).map_err(saving)?;
                *c = Cached {
                    st,
                    seen: Some(seen),
                };
            }
        }
        let t = now();
        if c.keys
            .values()
            .any(|k| deletion_due(k, t) || rotation_due(k, t))
        {
            self.change(&mut c, |_| Ok::<_, KmsError>(()))?;
        }
        Ok(c)
    }

    /// Applies `f` to the state and saves it; if saving fails the change is undone.
    fn mutate<T>(&self, f: impl FnOnce(&mut State) -> Result<T, KmsError>) -> Result<T, KmsError> {
        let mut c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.change(&mut c, f)
    }

    /// Applies due deletions and rotations, then `f`, to the state file as it is once the
    /// exclusive lock is held, and saves it. `c` takes the result only once it is saved,
    /// so a change that cannot be saved is undone, and a copy read earlier is never
    /// written back.
    fn change<T, E: From<KmsError>>(
        &self,
        c: &mut Cached,
        f: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, E> {
        let Some(path) = &self.path else {
            apply_due(&mut c.st, now())?;
            return f(&mut c.st);
        };
        let _lock = store::lock(path, Mode::Exclusive).map_err(saving)?;
        let (mut st, seen) =
            parse(path, store::read_existing(path).map_err(saving)?).map_err(saving)?;
        let due = apply_due(&mut st, now())?;
        let before = st.to_bytes();
        let out = f(&mut st)?;
        if due || st.to_bytes() != before {
            st.save(path).map_err(saving)?;
            c.seen = Some(store::stamp(path).map_err(saving)?);
        } else {
            c.seen = Some(seen);
        }
        c.st = st;
        Ok(out)
    }
}

/// The parsed state and the identity of the file it came from.
fn parse(path: &Path, (bytes, seen): store::Contents) -> Result<(State, Stamp), StateError> {
    let st = State::from_bytes(&bytes).map_err(|reason| StateError::Corrupt {
        path: path.into(),
        reason,
    })?;
    Ok((st, seen))
}

/// A state file that cannot be read or saved, as the KMS error clients see.
fn saving(e: StateError) -> KmsError {
    KmsError::internal(format!("KMS state: {}", crate::describe(&e)))
}

fn deletion_due(k: &KeyEntry, t: f64) -> bool {
    k.deletion_date.is_some_and(|d| d <= t)
}

fn rotation_due(k: &KeyEntry, t: f64) -> bool {
    let due = k.rotation_anchor + k.rotation_period_days as f64 * 86400.0;
    k.rotation_enabled && k.state == KeyState::Enabled && due <= t
}

/// Purges keys past their deletion date (and their aliases); rotates keys due. Whether
/// anything was due.
fn apply_due(st: &mut State, t: f64) -> Result<bool, KmsError> {
    let expired: Vec<String> = st
        .keys
        .iter()
        .filter(|(_, k)| deletion_due(k, t))
        .map(|(id, _)| id.clone())
        .collect();
    for id in &expired {
        st.keys.remove(id);
        st.aliases.retain(|_, a| &a.target != id);
    }
    let mut rotated = false;
    for k in st.keys.values_mut().filter(|k| rotation_due(k, t)) {
        k.versions
            .push(DataKey::generate().map_err(|e| KmsError::internal(e.to_string()))?);
        k.rotations.push(state::Rotation {
            version: k.versions.len() as u32,
            date: t,
            on_demand: false,
        });
        k.rotation_anchor = t;
        rotated = true;
    }
    Ok(rotated || !expired.is_empty())
}

impl State {
    fn key_arn(&self, id: &str) -> String {
        format!("arn:aws:kms:{}:{}:key/{id}", self.region, self.account)
    }

    fn alias_arn(&self, name: &str) -> String {
        format!("arn:aws:kms:{}:{}:{name}", self.region, self.account)
    }

    /// Resolves any identifier to a key id (UUID text).
    fn resolve(&self, key_id: &str, aliases: Aliases) -> Result<String, KmsError> {
        let arn_prefix = format!("arn:aws:kms:{}:{}:", self.region, self.account);
        let local = key_id.strip_prefix(&arn_prefix);
        let alias = match local {
            Some(rest) if rest.starts_with("alias/") => Some(rest),
            None if key_id.starts_with("alias/") => Some(key_id),
            _ => None,
        };
        if let Some(name) = alias {
            if aliases == Aliases::Refused {
                return Err(KmsError::NotFound(format!(
                    "Invalid keyId {key_id}: this operation takes a key id or key ARN"
                )));
            }
            return match self.aliases.get(name) {
                Some(a) => Ok(a.target.clone()),
                None => Err(KmsError::NotFound(format!(
                    "Alias {} is not found.",
                    self.alias_arn(name)
                ))),
            };
        }
        let id = local.and_then(|r| r.strip_prefix("key/")).unwrap_or(key_id);
        let uuid = parse_uuid(id)
            .ok_or_else(|| KmsError::NotFound(format!("Invalid keyId '{key_id}'")))?;
        let id = format_uuid(&uuid);
        if !self.keys.contains_key(&id) {
            return Err(KmsError::NotFound(format!(
                "Key '{}' does not exist",
                self.key_arn(&id)
            )));
        }
        Ok(id)
    }

    /// The key if it may be used for cryptography.
    fn usable(&self, id: &str) -> Result<&KeyEntry, KmsError> {
        let k = &self.keys[id];
        match k.state {
            KeyState::Enabled => Ok(k),
            KeyState::Disabled => Err(KmsError::Disabled(format!(
                "{} is disabled.",
                self.key_arn(id)
            ))),
            KeyState::PendingDeletion => Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                self.key_arn(id)
            ))),
        }
    }
}

fn secret_to_data_key(s: &SecretBytes) -> Result<DataKey, KmsError> {
    DataKey::from_slice(s.expose_secret()).map_err(|_| {
        KmsError::Protocol(format!(
            "the KMS returned a {}-byte data key, expected 32",
            s.len()
        ))
    })
}

impl Kms for Engine {
    fn generate_data_key(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<GeneratedDataKey, KmsError> {
        let (plain, wrapped, key_arn) =
            self.generate((Who::Local, "GenerateDataKey"), key_id, ctx, 32)?;
        Ok(GeneratedDataKey {
            key: secret_to_data_key(&plain)?,
            wrapped,
            key_arn,
        })
    }

    fn decrypt(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let (plain, _) = self.open_blob((Who::Local, "Decrypt"), Some(key_id), wrapped, ctx)?;
        secret_to_data_key(&plain)
    }

    fn re_encrypt(
        &self,
        wrapped: &[u8],
        ctx: &EncryptionContext,
        source_key_id: &str,
        dest_key_id: &str,
    ) -> Result<(Vec<u8>, String), KmsError> {
        let (plain, _) = self.open_blob(
            (Who::Local, "ReEncryptFrom"),
            Some(source_key_id),
            wrapped,
            ctx,
        )?;
        self.seal(
            (Who::Local, "ReEncryptTo"),
            dest_key_id,
            plain.expose_secret(),
            ctx,
        )
    }

    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &SecretBytes,
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        if plaintext.is_empty() {
            return Err(KmsError::validation("Plaintext must be 1 to 4096 bytes"));
        }
        Ok(self
            .seal(
                (Who::Local, "Encrypt"),
                key_id,
                plaintext.expose_secret(),
                ctx,
            )?
            .0)
    }
}

#[cfg(test)]
mod tests;
