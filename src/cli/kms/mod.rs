//! `kmsfs kms ...`: run the local KMS server; two conveniences for people without the
//! AWS CLI (create a key, list keys) aimed at the built-in KMS's state or any KMS
//! endpoint (`keys.rs`); and a backup and restore of the built-in KMS's state
//! (`backup.rs`). Argument parsing and human-facing output only; the work is in
//! `kmsfs::kms`.

mod backup;
mod keys;
mod listen;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kmsfs::audit::chain::ChainWriter;
use kmsfs::kms::engine::state::write_atomic;
use kmsfs::kms::engine::Engine;
use kmsfs::kms::server::{self, Principals, Server};
use kmsfs::kms::sigv4::CredentialTable;

#[derive(Debug, clap::Subcommand)]
pub enum KmsCommand {
    /// Run the local KMS server (AWS KMS JSON protocol, SigV4-authenticated).
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:4600 (port 0 picks a free port).
        #[arg(long)]
        listen: String,
        /// State file holding the keys (created 0600 if missing).
        #[arg(long)]
        state: PathBuf,
        /// Hash-chained JSON-lines audit log to append to.
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// AWS shared-credentials file of accepted access keys (default: STATE.credentials,
        /// generated on first start).
        #[arg(long)]
        credentials: Option<PathBuf>,
        /// Delay every answer by this many milliseconds (to test client timeouts).
        #[arg(long, default_value_t = 0)]
        latency: u64,
        /// Answer this fraction of requests with ThrottlingException (to test retries).
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Seed for --fail-rate, for a reproducible sequence of failures.
        #[arg(long)]
        fail_seed: Option<u64>,
        #[command(flatten)]
        transport: listen::ListenArgs,
    },
    /// Create a symmetric key and print its ARN.
    CreateKey {
        /// Also create this alias (alias/NAME) for the key.
        #[arg(long)]
        alias: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        target: keys::Target,
    },
    /// List key ARNs, each followed by its aliases.
    ListKeys {
        #[command(flatten)]
        target: keys::Target,
    },
    /// Copy the built-in KMS's state (every master key) to OUT, 0600, as it stands under
    /// its lock.
    Backup {
        /// The state file (default: the one `kmsfs init` uses, in the XDG data directory).
        #[arg(long, value_name = "PATH")]
        state: Option<PathBuf>,
        /// Replace OUT if it exists.
        #[arg(long)]
        force: bool,
        /// Where the backup goes.
        out: PathBuf,
    },
    /// Put back the keys and aliases of a backup that the built-in KMS's state lacks
    /// (never removes or changes one it has).
    Restore {
        /// The state file (default: the one `kmsfs init` uses; created if missing).
        #[arg(long, value_name = "PATH")]
        state: Option<PathBuf>,
        /// A file `kmsfs kms backup` wrote (or a copy of a state file).
        backup: PathBuf,
    },
}

pub fn run(cmd: KmsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KmsCommand::Serve {
            listen,
            state,
            audit_log,
            credentials,
            latency,
            fail_rate,
            fail_seed,
            transport,
        } => serve(
            (&listen, &transport),
            &state,
            audit_log.as_deref(),
            credentials.as_deref(),
            latency,
            fail_rate,
            fail_seed,
        ),
        KmsCommand::CreateKey {
            alias,
            description,
            target,
        } => keys::create_key(alias, description, &target),
        KmsCommand::ListKeys { target } => keys::list_keys(&target),
        KmsCommand::Backup { state, force, out } => backup::backup(state, &out, force),
        KmsCommand::Restore { state, backup } => backup::restore(state, &backup),
    }
}

/// One line of what to do next for errors from `run`, if there is something specific.
pub fn hint(err: &anyhow::Error) -> Option<&'static str> {
    use kmsfs::kms::config::ClientConfigError;
    use kmsfs::kms::engine::StateError;
    use kmsfs::kms::KmsError;
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<KmsError>() {
            return Some(match e {
                // OpenBao's (docs/kms.md, "OpenBao and Vault Transit").
                KmsError::AccessDenied { code, .. } if code == "NoToken" => {
                    "give kmsfs an OpenBao token: BAO_TOKEN, KMSFS_BAO_TOKEN_FILE, or KMSFS_BAO_ROLE_ID_FILE and KMSFS_BAO_SECRET_ID_FILE (AppRole)"
                }
                KmsError::AccessDenied { code, .. } if code == "PermissionDenied" => {
                    "add the capability the message names to the token's policy (`bao policy write`); docs/kms.md lists what a volume needs"
                }
                KmsError::Unavailable { code, .. } if code == "Sealed" => {
                    "unseal OpenBao (`bao operator unseal`); a mount recovers by itself once it answers"
                }
                KmsError::NotFound(m) if m.contains("encryption key not found") => {
                    "the Transit key does not exist: check --key MOUNT/NAME (`bao list MOUNT/keys`)"
                }
                KmsError::AccessDenied { code, .. } if code == "NoCredentials" => {
                    "give credentials through one of the sources named (e.g. AWS_PROFILE with a profile in ~/.aws/config); for `kmsfs kms serve`, AWS_SHARED_CREDENTIALS_FILE=the file it printed"
                }
                KmsError::AccessDenied { code, .. } if code == "CredentialsError" => {
                    "fix the credential source the error names, or configure one earlier in the chain (e.g. AWS_PROFILE); on a machine without instance metadata, AWS_EC2_METADATA_DISABLED=true"
                }
                KmsError::AccessDenied { code, .. } if code == "AccessDeniedException" => {
                    "the key's policy or grants (or the access key's kms_allowed_operations on the local KMS) do not let this principal do that; ask the key's administrator (aws kms get-key-policy, list-grants)"
                }
                KmsError::AccessDenied { .. } => {
                    "check the access key: AWS_ACCESS_KEY_ID, AWS_PROFILE or AWS_SHARED_CREDENTIALS_FILE (for the local KMS, the file `kmsfs kms serve` printed)"
                }
                KmsError::Unavailable { .. } | KmsError::Timeout(_) | KmsError::Throttled(_) => {
                    "the KMS did not answer in time or refused the connection; check --endpoint / AWS_ENDPOINT_URL and try again"
                }
                KmsError::NotFound(_) => "run `kmsfs kms list-keys` to see the keys and aliases",
                _ => return None,
            });
        }
        if cause.downcast_ref::<ClientConfigError>().is_some() {
            return Some("set AWS_REGION (or a region in the profile) or an endpoint (--endpoint, AWS_ENDPOINT_URL_KMS)");
        }
        if cause.downcast_ref::<StateError>().is_some() {
            return Some(
                "the state file holds every key; restore it from a backup rather than deleting it",
            );
        }
    }
    None
}

/// `AKIA` + 16 characters, and a 40-character secret, like AWS's.
fn generate_credentials() -> String {
    let mut raw = [0u8; 56];
    getrandom::fill(&mut raw).expect("system random number generator");
    const ID: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let id: String = raw[..16]
        .iter()
        .map(|b| ID[*b as usize % 32] as char)
        .collect();
    let secret: String = raw[16..]
        .iter()
        .map(|b| SECRET[*b as usize % 64] as char)
        .collect();
    format!(
        "# Access keys accepted by `kmsfs kms serve`; usable as AWS_SHARED_CREDENTIALS_FILE.\n[default]\naws_access_key_id = AKIA{id}\naws_secret_access_key = {secret}\n"
    )
}

fn load_credentials(
    given: Option<&Path>,
    state: &Path,
) -> anyhow::Result<(CredentialTable, Principals, PathBuf, bool)> {
    let (path, generated) = match given {
        Some(p) => (p.to_path_buf(), false),
        None => {
            let mut name = state.file_name().unwrap_or_default().to_owned();
            name.push(".credentials");
            let p = state.with_file_name(name);
            if p.exists() {
                (p, false)
            } else {
                write_atomic(&p, generate_credentials().as_bytes())
                    .with_context(|| format!("cannot write credentials file {}", p.display()))?;
                (p, true)
            }
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read credentials file {}", path.display()))?;
    let table = CredentialTable::from_ini(&text);
    let principals = Principals::from_ini(&text)
        .map_err(|e| anyhow::anyhow!("credentials file {}: {e}", path.display()))?;
    if table.0.is_empty() {
        bail!(
            "credentials file {} has no section with aws_access_key_id and aws_secret_access_key",
            path.display()
        );
    }
    Ok((table, principals, path, generated))
}

fn serve(
    (listen, transport): (&str, &listen::ListenArgs),
    state: &Path,
    audit_log: Option<&Path>,
    credentials: Option<&Path>,
    latency_ms: u64,
    fail_rate: f64,
    fail_seed: Option<u64>,
) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&fail_rate) {
        bail!("--fail-rate must be between 0 and 1, got {fail_rate}");
    }
    let engine = Engine::open(state)?;
    let (table, principals, cred_path, generated) = load_credentials(credentials, state)?;
    let mut srv = Server::new(Arc::new(engine), table).with_principals(principals);
    if let Some(p) = audit_log {
        srv = srv.with_audit(ChainWriter::open(p)?);
    }
    srv.set_latency(Duration::from_millis(latency_ms));
    srv.set_fail_rate(fail_rate, fail_seed);
    let (listening, srv) = listen::bind(listen, state, transport, srv)?;
    let addr = listening.listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}://{addr}", listening.scheme)?;
    writeln!(
        out,
        "credentials: {}{}",
        cred_path.display(),
        if generated { " (generated)" } else { "" }
    )?;
    listen::print_ca_bundle(&mut out, &listening)?;
    out.flush()?;
    drop(out);
    server::spawn(listening.listener, Arc::new(srv))?.wait()?;
    Ok(ExitCode::SUCCESS)
}
