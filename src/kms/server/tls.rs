//! HTTPS for the local KMS: a certificate and key from PEM files, or a certificate made at
//! start by a CA of the server's own, whose certificate is the file clients name in
//! `AWS_CA_BUNDLE`.
//!
//! The CA (its key 0600) is made once and kept beside the state file, so clients keep
//! trusting the server across restarts; the server's certificate is made afresh at each
//! start for the names it is reached by, so listening on another address needs no new
//! bundle. TLS is rustls with ring, the same stack the client's reqwest uses.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use tokio_rustls::TlsAcceptor;

use crate::kms::engine::state::write_new;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{path} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("the certificate and key do not make a TLS server: {0}")]
    Config(String),
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A TLS server from a PEM certificate chain (the server's first) and its PEM private key.
pub fn from_files(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem_err("certificate", cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err("certificate", cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err("private key", key))?;
    acceptor(chain, key)
}

/// A PEM reading error about `what` at `path`.
fn pem_err(what: &'static str, path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError {
    let path = path.to_owned();
    move |e| TlsError::Pem {
        what,
        path: path.clone(),
        message: e.to_string(),
    }
}

/// What [`self_signed`] made and where its CA is.
pub struct SelfSigned {
    pub acceptor: TlsAcceptor,
    /// The CA certificate: what clients name in `AWS_CA_BUNDLE`.
    pub ca_path: PathBuf,
    /// Whether the CA was made now (first start).
    pub ca_generated: bool,
    /// The names and addresses the server's certificate is good for.
    pub names: Vec<String>,
}

/// A TLS server whose certificate, good for `names`, is signed by the CA kept at
/// `ca_path` (its key at `ca_path` + `.key`), made there first if missing.
pub fn self_signed(ca_path: &Path, names: &[String]) -> Result<SelfSigned, TlsError> {
    let key_path = with_suffix(ca_path, ".key");
    let (ca_key, ca_generated) = ca_key(ca_path, &key_path)?;
    let ca_params = ca_params(&ca_key);
    let issuer = Issuer::new(ca_params, ca_key);
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = CertificateParams::new(names.to_vec()).map_err(gen)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kmsfs kms serve");
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(825);
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(gen)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen)?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| TlsError::Generate(e.to_owned()))?;
    Ok(SelfSigned {
        acceptor: acceptor(vec![cert.der().clone()], key_der)?,
        ca_path: ca_path.to_owned(),
        ca_generated,
        names: names.to_vec(),
    })
}

/// The names a server listening on `ip` is reached by: `localhost` and the loopback
/// addresses, the machine's host name, `ip` itself unless it is a wildcard, and `extra`.
pub fn default_names(ip: IpAddr, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if !host.trim().is_empty() {
        names.push(host.trim().to_owned());
    }
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The CA's key from `key_path`, or a new one written there (0600) with the CA's
/// certificate at `ca_path`; `true` when made now.
fn ca_key(ca_path: &Path, key_path: &Path) -> Result<(KeyPair, bool), TlsError> {
    match std::fs::read_to_string(key_path) {
        Ok(pem) => {
            let key = KeyPair::from_pem(&pem).map_err(|e| TlsError::Pem {
                what: "CA key",
                path: key_path.to_owned(),
                message: e.to_string(),
            })?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
            let key = KeyPair::generate().map_err(gen)?;
            let mut params = ca_params(&key);
            let now = OffsetDateTime::now_utc();
            params.not_before = now - Duration::days(1);
            params.not_after = now + Duration::days(3650);
            params.serial_number = Some(random_serial());
            let cert = params.self_signed(&key).map_err(gen)?;
            let write = |path: &Path, text: String| {
                write_new(path, text.as_bytes()).map_err(|source| TlsError::Write {
                    path: path.to_owned(),
                    source,
                })
            };
            write(key_path, key.serialize_pem())?;
            write(ca_path, cert.pem())?;
            Ok((key, true))
        }
        Err(e) => Err(TlsError::Pem {
            what: "CA key",
            path: key_path.to_owned(),
            message: e.to_string(),
        }),
    }
}

/// The CA's parameters, the same at every start for one key: its name carries a digest
/// of the key, so CAs of two servers never share a name.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    let digest = Sha256::digest(rcgen::PublicKeyData::der_bytes(key));
    let name = format!("kmsfs kms serve CA {}", hex::encode(&digest[..8]));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn random_serial() -> SerialNumber {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).expect("system random number generator");
    raw[0] &= 0x7f;
    SerialNumber::from_slice(&raw)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A rustls server (ring, HTTP/1.1) for `chain` and `key`.
fn acceptor(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
