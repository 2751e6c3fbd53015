//! Where the Transit backend gets its OpenBao token, and how it keeps it alive: AppRole
//! (role id and secret id from files), a token file (what the OpenBao or Vault agent
//! writes and rewrites), `BAO_TOKEN`/`VAULT_TOKEN`, or the file the `bao`/`vault` CLI logs
//! in to (`~/.bao-token`, `~/.vault-token`), in that order. A token with a TTL is renewed
//! (`renew-self`) once two thirds of it have passed; an AppRole token that cannot be
//! renewed any more is replaced by a new login, and a token file is read again whenever it
//! changes, so a mount outlives any one token.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::http::{Http, Request};
use crate::kms::KmsError;

/// Where the token comes from. `Debug` shows no token.
#[derive(Clone, PartialEq)]
pub enum Source {
    /// AppRole login at `auth/MOUNT/login`.
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
    },
    /// A file holding the token (an agent's sink, or the CLI's token file).
    File(PathBuf),
    /// A token from the environment, named by its variable.
    Env { var: &'static str, token: String },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::AppRole { mount, .. } => write!(f, "AppRole at auth/{mount}"),
            Source::File(p) => write!(f, "token file {}", p.display()),
            Source::Env { var, .. } => write!(f, "token from {var}"),
        }
    }
}

impl Source {
    /// The first source `env` offers, in the module's order.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, KmsError> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(role) = env("KMSFS_BAO_ROLE_ID_FILE") {
            let secret = env("KMSFS_BAO_SECRET_ID_FILE").ok_or_else(|| {
                config("KMSFS_BAO_ROLE_ID_FILE is set but KMSFS_BAO_SECRET_ID_FILE is not: AppRole needs both")
            })?;
            return Ok(Source::AppRole {
                mount: env("KMSFS_BAO_APPROLE_PATH").unwrap_or_else(|| "approle".into()),
                role_id_file: role.into(),
                secret_id_file: secret.into(),
            });
        }
        if let Some(f) = env("KMSFS_BAO_TOKEN_FILE") {
            return Ok(Source::File(f.into()));
        }
        for var in ["BAO_TOKEN", "VAULT_TOKEN"] {
            if let Some(token) = env(var) {
                return Ok(Source::Env { var, token });
            }
        }
        // Without HOME there is no CLI token file to look for (not one in the working
        // directory).
        for name in [".bao-token", ".vault-token"] {
            let Some(f) = env("HOME").map(|h| PathBuf::from(h).join(name)) else {
                break;
            };
            if f.is_file() {
                return Ok(Source::File(f));
            }
        }
        Err(config(
            "no OpenBao token: set BAO_TOKEN (or VAULT_TOKEN), KMSFS_BAO_TOKEN_FILE (a file an agent keeps a token in), or KMSFS_BAO_ROLE_ID_FILE and KMSFS_BAO_SECRET_ID_FILE (AppRole), or log in with `bao login`",
        ))
    }
}

fn config(m: &str) -> KmsError {
    KmsError::AccessDenied {
        code: "NoToken".into(),
        message: m.into(),
    }
}

/// The token in use and when to look at it again.
#[derive(Default)]
struct State {
    token: Option<Zeroizing<String>>,
    /// When to renew (or log in again, or read the file again); `None`: never expires.
    refresh_at: Option<Instant>,
    renewable: bool,
    /// The token file's modification time when it was read.
    file_mtime: Option<SystemTime>,
}

/// A token, kept alive.
pub struct Auth {
    source: Source,
    state: Mutex<State>,
}

fn read_trimmed(path: &PathBuf) -> Result<Zeroizing<String>, KmsError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        config(&format!(
            "cannot read the OpenBao token file {}: {e}",
            path.display()
        ))
    })?);
    Ok(Zeroizing::new(text.trim().to_owned()))
}

/// When to refresh a token with `ttl_s` seconds left: after two thirds of them.
fn refresh_after(ttl_s: u64) -> Option<Instant> {
    (ttl_s > 0).then(|| Instant::now() + Duration::from_secs(ttl_s) * 2 / 3)
}

impl Auth {
    pub fn new(source: Source) -> Self {
        Auth {
            source,
            state: Mutex::new(State::default()),
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The token to send, renewed, read again or replaced first if it is due.
    pub fn token(&self, http: &Http) -> Result<Zeroizing<String>, KmsError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let due = st.refresh_at.is_some_and(|t| Instant::now() >= t);
        let file_changed = match &self.source {
            Source::File(f) => {
                std::fs::metadata(f).and_then(|m| m.modified()).ok() != st.file_mtime
            }
            _ => false,
        };
        if st.token.is_none() || file_changed {
            *st = self.obtain(http)?;
        } else if due {
            // A refresh that fails leaves the token in use until it expires: tried again
            // shortly, not failing the call that found it due.
            if let Err(e) = self.refresh(http, &mut st) {
                tracing::warn!("OpenBao: could not renew the token (trying again in 5 s): {e}");
                st.refresh_at = Some(Instant::now() + Duration::from_secs(5));
            }
        }
        Ok(st.token.clone().expect("obtained above"))
    }

    /// How long until the token is due for its renewal (or reading again, or a new
    /// login); `None` when it never expires or none was obtained yet.
    pub fn due_in(&self) -> Option<Duration> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.refresh_at
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// After OpenBao refused `refused` (403): whether a call may be tried again with another
    /// token. OpenBao answers 403 both for a token that expired (or was revoked) and for one
    /// whose policy lacks the capability; the first is replaced, the second kept (a new
    /// login would not help and would use up the AppRole's secret id). A token another
    /// thread has already replaced is not forgotten again.
    pub fn forget(&self, refused: &str, http: &Http) -> bool {
        if matches!(self.source, Source::Env { .. }) {
            return false;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.token.as_deref() {
            Some(t) if t == refused => {}
            _ => return true,
        }
        let probe = http.call(&Request {
            post: false,
            path: "auth/token/lookup-self",
            token: Some(refused),
            body: None,
        });
        if probe.is_ok() {
            return false; // the token is good: the policy refused the call
        }
        *st = State::default();
        true
    }

    fn obtain(&self, http: &Http) -> Result<State, KmsError> {
        let mut st = State::default();
        match &self.source {
            Source::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let role_id = read_trimmed(role_id_file)?;
                let secret_id = read_trimmed(secret_id_file)?;
                let body = Zeroizing::new(
                    json!({ "role_id": *role_id, "secret_id": *secret_id }).to_string(),
                );
                let path = format!("auth/{mount}/login");
                let answer = http.call(&Request {
                    post: true,
                    path: &path,
                    token: None,
                    body: Some(body.as_bytes()),
                })?;
                let v: Value = serde_json::from_slice(&answer)
                    .map_err(|e| KmsError::Protocol(format!("{path}: {e}")))?;
                let auth = &v["auth"];
                let token = auth["client_token"].as_str().ok_or_else(|| {
                    KmsError::Protocol(format!("{path} answered without a token"))
                })?;
                st.token = Some(Zeroizing::new(token.to_owned()));
                st.renewable = auth["renewable"].as_bool().unwrap_or(false);
                let ttl = auth["lease_duration"].as_u64().unwrap_or(0);
                st.refresh_at = refresh_after(ttl);
                tracing::info!("OpenBao: logged in at {path} (token TTL {ttl} s)");
                Ok(st)
            }
            Source::File(f) => {
                st.file_mtime = std::fs::metadata(f).and_then(|m| m.modified()).ok();
                st.token = Some(read_trimmed(f)?);
                self.look_up(http, &mut st)?;
                Ok(st)
            }
            Source::Env { token, .. } => {
                st.token = Some(Zeroizing::new(token.to_string()));
                self.look_up(http, &mut st)?;
                Ok(st)
            }
        }
    }

    /// Learns the token's TTL and whether it renews (`lookup-self`).
    fn look_up(&self, http: &Http, st: &mut State) -> Result<(), KmsError> {
        let token = st.token.clone().expect("set by the caller");
        let answer = http.call(&Request {
            post: false,
            path: "auth/token/lookup-self",
            token: Some(&token),
            body: None,
        })?;
        let v: Value = serde_json::from_slice(&answer)
            .map_err(|e| KmsError::Protocol(format!("lookup-self: {e}")))?;
        st.renewable = v["data"]["renewable"].as_bool().unwrap_or(false);
        st.refresh_at = refresh_after(v["data"]["ttl"].as_u64().unwrap_or(0));
        Ok(())
    }

    /// Renews the token; an AppRole token that cannot be renewed (any more) is replaced by
    /// a new login, and a token file is read again.
    fn refresh(&self, http: &Http, st: &mut State) -> Result<(), KmsError> {
        if st.renewable {
            let token = st.token.clone().expect("refresh follows obtain");
            let renewed = http.call(&Request {
                post: true,
                path: "auth/token/renew-self",
                token: Some(&token),
                body: Some(b"{}"),
            });
            if let Ok(answer) = renewed {
                let v: Value = serde_json::from_slice(&answer)
                    .map_err(|e| KmsError::Protocol(format!("renew-self: {e}")))?;
                let ttl = v["auth"]["lease_duration"].as_u64().unwrap_or(0);
                // Renewal capped by the token's max TTL: close to the end, log in again.
                if ttl > 2 || matches!(self.source, Source::Env { .. }) {
                    st.refresh_at = refresh_after(ttl);
                    tracing::debug!("OpenBao: token renewed (TTL {ttl} s)");
                    return Ok(());
                }
            }
        }
        match self.source {
            Source::Env { .. } => {
                // Nothing else to turn to: try again at the next call.
                st.refresh_at = Some(Instant::now() + Duration::from_secs(5));
                Ok(())
            }
            _ => {
                *st = self.obtain(http)?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_taken_in_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = Source::from_env(&env(&[("BAO_TOKEN", "b"), ("VAULT_TOKEN", "v")])).unwrap();
        assert_eq!(
            s,
            Source::Env {
                var: "BAO_TOKEN",
                token: "b".into()
            }
        );
        let s = Source::from_env(&env(&[
            ("VAULT_TOKEN", "v"),
            ("KMSFS_BAO_TOKEN_FILE", "/t"),
        ]));
        assert_eq!(s.unwrap(), Source::File("/t".into()));
        let s = Source::from_env(&env(&[
            ("BAO_TOKEN", "b"),
            ("KMSFS_BAO_ROLE_ID_FILE", "/r"),
            ("KMSFS_BAO_SECRET_ID_FILE", "/s"),
        ]));
        assert!(matches!(s.unwrap(), Source::AppRole { mount, .. } if mount == "approle"));
        let half = Source::from_env(&env(&[("KMSFS_BAO_ROLE_ID_FILE", "/r")]));
        assert!(half
            .unwrap_err()
            .to_string()
            .contains("KMSFS_BAO_SECRET_ID_FILE"));
        let none = Source::from_env(&env(&[("HOME", "/nonexistent")]));
        assert!(none.unwrap_err().to_string().contains("BAO_TOKEN"));
    }
}
