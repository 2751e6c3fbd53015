//! `kmsfs kms create-key` and `list-keys`, on the built-in KMS's state file in this process
//! or on a KMS endpoint, chosen as `kmsfs init` chooses its KMS.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kmsfs::kms::client::HttpKms;
use kmsfs::kms::config::ClientConfig;
use kmsfs::kms::engine::Engine;
use kmsfs::kms::wire::{
    AliasRequest, CreateKeyRequest, KeyMetadataResponse, ListAliasesResponse, ListKeysResponse,
    ListRequest,
};
use kmsfs::volume::default_local_kms_state;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Which KMS a command talks to.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// KMS endpoint URL, or `aws` for AWS KMS from the AWS configuration. Default:
    /// AWS_ENDPOINT_URL_KMS or AWS_ENDPOINT_URL if set, else the built-in KMS's state.
    #[arg(long, value_name = "URL|aws", conflicts_with = "state")]
    endpoint: Option<String>,
    /// The built-in KMS's state file, used directly (no `kms serve` needed; default: the
    /// one `kmsfs init` uses, in the XDG data directory).
    #[arg(long, value_name = "PATH")]
    state: Option<PathBuf>,
}

/// A connection for administrative calls.
enum Admin {
    Local(Engine),
    Http(HttpKms),
}

impl Admin {
    /// Connects; `create` says whether a missing state file may be made.
    fn open(t: &Target, create: bool) -> anyhow::Result<(Admin, String)> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = match (&t.state, t.endpoint.as_deref()) {
            (None, Some("aws")) => Some(None),
            (None, Some(url)) => Some(Some(url.to_owned())),
            (None, None)
                if env("AWS_ENDPOINT_URL_KMS")
                    .or(env("AWS_ENDPOINT_URL"))
                    .is_some() =>
            {
                Some(None)
            }
            _ => None,
        };
        if let Some(endpoint) = endpoint {
            let kms = HttpKms::new(ClientConfig::from_env(endpoint.as_deref())?)?;
            let name = kms.config().endpoint.clone();
            return Ok((Admin::Http(kms), name));
        }
        let state = t.state.clone().unwrap_or_else(default_local_kms_state);
        if !create && !state.exists() {
            bail!(
                "the built-in KMS has no state file at {} (kmsfs init makes it); give --state PATH or --endpoint URL",
                state.display()
            );
        }
        if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        let name = format!("the built-in KMS ({})", state.display());
        Ok((Admin::Local(Engine::open(&state)?), name))
    }

    fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: &str,
        req: &Req,
    ) -> anyhow::Result<Resp> {
        Ok(match self {
            Admin::Local(e) => serde_json::from_slice(&e.call(op, &serde_json::to_vec(req)?)?)?,
            Admin::Http(h) => h.call_json(op, req)?,
        })
    }
}

pub fn create_key(
    alias: Option<String>,
    description: Option<String>,
    target: &Target,
) -> anyhow::Result<ExitCode> {
    let (kms, name) = Admin::open(target, true)?;
    let created: KeyMetadataResponse = kms
        .call(
            "CreateKey",
            &CreateKeyRequest {
                description,
                ..Default::default()
            },
        )
        .with_context(|| format!("CreateKey at {name} failed"))?;
    let arn = created.key_metadata.arn;
    if let Some(alias) = alias {
        let alias = if alias.starts_with("alias/") {
            alias
        } else {
            format!("alias/{alias}")
        };
        let _: serde_json::Value = kms
            .call(
                "CreateAlias",
                &AliasRequest {
                    alias_name: Some(alias.clone()),
                    target_key_id: Some(arn.clone()),
                },
            )
            .with_context(|| format!("key {arn} was created, but creating {alias} failed"))?;
    }
    println!("{arn}");
    Ok(ExitCode::SUCCESS)
}

pub fn list_keys(target: &Target) -> anyhow::Result<ExitCode> {
    let (kms, _) = Admin::open(target, false)?;
    let mut aliases = Vec::new();
    let mut marker = None;
    loop {
        let page: ListAliasesResponse = kms.call(
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
        let page: ListKeysResponse = kms.call(
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
