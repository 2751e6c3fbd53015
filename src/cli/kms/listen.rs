//! `kmsfs kms serve`'s listener: HTTPS from files or from a CA of its own, and plain HTTP
//! only where it cannot leave the machine unless asked for (`--insecure-http`).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kmsfs::kms::server::{tls, Server};

/// How `kms serve` speaks to its clients.
#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// Serve HTTPS with a certificate signed by a CA of the server's own, made on first
    /// start beside the state file (STATE.ca.pem, printed: clients name it in
    /// AWS_CA_BUNDLE).
    #[arg(long, conflicts_with_all = ["tls_cert", "insecure_http"])]
    tls: bool,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls_key",
        conflicts_with = "insecure_http"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Another name or address the --tls certificate is good for (besides localhost, the
    /// loopback addresses, the host name and the listening address); repeatable.
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_name: Vec<String>,
    /// Allow plain HTTP on an address other than loopback: requests, data keys and
    /// signed requests then cross the network in the clear.
    #[arg(long)]
    insecure_http: bool,
}

/// What the server is reached through, for its first lines of output.
pub struct Listening {
    pub listener: TcpListener,
    /// `https` or `http`.
    pub scheme: &'static str,
    /// The CA bundle `--tls` made or used, and whether it was made now.
    pub ca_bundle: Option<(PathBuf, bool)>,
}

/// Binds `listen` and sets `server` up for TLS as `args` ask, refusing plain HTTP off
/// loopback without `--insecure-http`.
pub fn bind(
    listen: &str,
    state: &Path,
    args: &ListenArgs,
    server: Server,
) -> anyhow::Result<(Listening, Server)> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let mut ca_bundle = None;
    let server = if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        server.with_tls(tls::from_files(cert, key)?)
    } else if args.tls {
        let names = tls::default_names(addr.ip(), &args.tls_name);
        let made = tls::self_signed(&with_suffix(state, ".ca.pem"), &names)?;
        ca_bundle = Some((made.ca_path, made.ca_generated));
        server.with_tls(made.acceptor)
    } else {
        if !addr.ip().is_loopback() && !args.insecure_http {
            bail!(
                "refusing plain HTTP on {addr}: requests and the data keys in their answers would cross the network in the clear. Serve HTTPS with --tls (a certificate from a CA it makes, for clients' AWS_CA_BUNDLE) or --tls-cert/--tls-key, listen on 127.0.0.1, or pass --insecure-http"
            );
        }
        server
    };
    let scheme = server.scheme();
    Ok((
        Listening {
            listener,
            scheme,
            ca_bundle,
        },
        server,
    ))
}

/// The first lines `kms serve` prints: where it listens, then (by the caller) its
/// credentials, then the CA bundle clients must trust, if it made one.
pub fn print_ca_bundle(out: &mut impl Write, l: &Listening) -> std::io::Result<()> {
    if let Some((path, generated)) = &l.ca_bundle {
        writeln!(
            out,
            "ca bundle: {}{} (clients: AWS_CA_BUNDLE={})",
            path.display(),
            if *generated { " (generated)" } else { "" },
            path.display()
        )?;
    }
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
