//! `kmsfs kms ...`: run the local KMS server, and two conveniences for people without the
//! AWS CLI (create a key, list keys) aimed at any KMS endpoint. Argument parsing and
//! human-facing output only; the work is in `kmsfs::kms`.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kmsfs::audit::chain::ChainWriter;
use kmsfs::kms::client::HttpKms;
use kmsfs::kms::config::ClientConfig;
use kmsfs::kms::engine::state::write_atomic;
use kmsfs::kms::engine::Engine;
use kmsfs::kms::server::{self, Server};
use kmsfs::kms::sigv4::CredentialTable;
use kmsfs::kms::wire::{
    AliasRequest, CreateKeyRequest, KeyMetadataResponse, ListAliasesResponse, ListKeysResponse,
    ListRequest,
};

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
    },
    /// Create a symmetric key and print its ARN.
    CreateKey {
        /// Also create this alias (alias/NAME) for the key.
        #[arg(long)]
        alias: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// KMS endpoint URL (default: AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL, or AWS).
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// List key ARNs, each followed by its aliases.
    ListKeys {
        /// KMS endpoint URL (default: AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL, or AWS).
        #[arg(long)]
        endpoint: Option<String>,
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
        } => serve(
            &listen,
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
            endpoint,
        } => create_key(alias, description, endpoint.as_deref()),
        KmsCommand::ListKeys { endpoint } => list_keys(endpoint.as_deref()),
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
            return Some("set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile, and AWS_REGION or --endpoint");
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
) -> anyhow::Result<(CredentialTable, PathBuf, bool)> {
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
    if table.0.is_empty() {
        bail!(
            "credentials file {} has no section with aws_access_key_id and aws_secret_access_key",
            path.display()
        );
    }
    Ok((table, path, generated))
}

fn serve(
    listen: &str,
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
    let (table, cred_path, generated) = load_credentials(credentials, state)?;
    let mut srv = Server::new(Arc::new(engine), table);
    if let Some(p) = audit_log {
        srv = srv.with_audit(ChainWriter::open(p)?);
    }
    srv.set_latency(Duration::from_millis(latency_ms));
    srv.set_fail_rate(fail_rate, fail_seed);
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on http://{addr}")?;
    writeln!(
        out,
        "credentials: {}{}",
        cred_path.display(),
        if generated { " (generated)" } else { "" }
    )?;
    out.flush()?;
    drop(out);
    server::spawn(listener, Arc::new(srv))?.wait()?;
    Ok(ExitCode::SUCCESS)
}

fn client(endpoint: Option<&str>) -> anyhow::Result<HttpKms> {
    let config = ClientConfig::from_env(endpoint)?;
    Ok(HttpKms::new(config)?)
}

fn create_key(
    alias: Option<String>,
    description: Option<String>,
    endpoint: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let kms = client(endpoint)?;
    let created: KeyMetadataResponse = kms
        .call_json(
            "CreateKey",
            &CreateKeyRequest {
                description,
                ..Default::default()
            },
        )
        .with_context(|| format!("CreateKey at {} failed", kms.config().endpoint))?;
    let arn = created.key_metadata.arn;
    if let Some(name) = alias {
        let name = if name.starts_with("alias/") {
            name
        } else {
            format!("alias/{name}")
        };
        let _: serde_json::Value = kms
            .call_json(
                "CreateAlias",
                &AliasRequest {
                    alias_name: Some(name.clone()),
                    target_key_id: Some(arn.clone()),
                },
            )
            .with_context(|| format!("key {arn} was created, but creating {name} failed"))?;
    }
    println!("{arn}");
    Ok(ExitCode::SUCCESS)
}

fn list_keys(endpoint: Option<&str>) -> anyhow::Result<ExitCode> {
    let kms = client(endpoint)?;
    let mut aliases = Vec::new();
    let mut marker = None;
    loop {
        let page: ListAliasesResponse = kms.call_json(
            "ListAliases",
            &ListRequest {
                marker: marker.take(),
                ..Default::default()
            },
        )?;
        aliases.extend(page.aliases);
        match page.next_marker {
            Some(m) if page.truncated => marker = Some(m),
            _ => break,
        }
    }
    loop {
        let page: ListKeysResponse = kms.call_json(
            "ListKeys",
            &ListRequest {
                marker: marker.take(),
                ..Default::default()
            },
        )?;
        for k in &page.keys {
            let names: Vec<&str> = aliases
                .iter()
                .filter(|a| a.target_key_id.as_deref() == Some(k.key_id.as_str()))
                .map(|a| a.alias_name.as_str())
                .collect();
            println!("{}\t{}", k.key_arn, names.join(" "));
        }
        match page.next_marker {
            Some(m) if page.truncated => marker = Some(m),
            _ => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}
