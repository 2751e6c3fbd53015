//! `AWS_CA_BUNDLE` (or a profile's `ca_bundle`): the certificate authorities a client
//! trusts instead of the built-in roots, as the AWS CLI and SDKs take it. What a client
//! of `kmsfs kms serve --tls` names to trust the CA that server made.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::KmsError;

/// A rustls client configuration (ring, HTTP/1.1) trusting exactly the certificates of
/// the PEM bundle at `path`. Certificates rustls cannot use are skipped, as a system
/// bundle may hold some; a bundle with none it can use is an error.
pub fn client_tls(path: &Path) -> Result<rustls::ClientConfig, KmsError> {
    let bad = |message: String| {
        KmsError::Protocol(format!(
            "CA bundle {} (AWS_CA_BUNDLE or the profile's ca_bundle): {message}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad(
            "holds no usable certificate (expected PEM: -----BEGIN CERTIFICATE-----); point it at the file `kmsfs kms serve` printed as its CA bundle".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
