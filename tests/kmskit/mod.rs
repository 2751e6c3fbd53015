//! Shared test fixtures: an in-process KMS server on 127.0.0.1:0 and clients for it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use kmsfs::audit::chain::ChainWriter;
use kmsfs::kms::client::HttpKms;
use kmsfs::kms::config::ClientConfig;
use kmsfs::kms::engine::Engine;
use kmsfs::kms::server::{spawn, Principals, Server, ServerHandle};
use kmsfs::kms::sigv4::CredentialTable;
use kmsfs::kms::KmsError;

pub const ACCESS_KEY: &str = "AKIATESTTESTTESTTEST";
pub const SECRET_KEY: &str = "testsecret/testsecret+testsecret0123456";

pub fn credentials_ini() -> String {
    format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
}

pub struct TestServer {
    pub server: Arc<Server>,
    pub handle: ServerHandle,
}

impl TestServer {
    pub fn start(engine: Engine) -> Self {
        Self::start_with(Server::new(
            Arc::new(engine),
            CredentialTable::from_ini(&credentials_ini()),
        ))
    }

    /// A server whose principals are the sections of `ini` (a credentials file's text),
    /// writing its audit log to `log`.
    pub fn with_principals(ini: &str, log: &std::path::Path) -> Self {
        let server = Server::new(
            Arc::new(Engine::in_memory()),
            CredentialTable::from_ini(ini),
        )
        .with_principals(Principals::from_ini(ini).unwrap())
        .with_audit(ChainWriter::open(log).unwrap());
        Self::start_with(server)
    }

    pub fn start_with(server: Server) -> Self {
        let server = Arc::new(server);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let handle = spawn(listener, server.clone()).unwrap();
        TestServer { server, handle }
    }

    pub fn url(&self) -> String {
        self.handle.url()
    }

    /// A client with fast retries, so retry tests do not wait long.
    pub fn client(&self) -> HttpKms {
        self.client_with(|_| {})
    }

    pub fn client_with(&self, tweak: impl FnOnce(&mut ClientConfig)) -> HttpKms {
        client_for(&self.url(), ACCESS_KEY, SECRET_KEY, tweak)
    }
}

pub fn client_for(
    url: &str,
    access_key: &str,
    secret: &str,
    tweak: impl FnOnce(&mut ClientConfig),
) -> HttpKms {
    let vars = [
        ("AWS_ACCESS_KEY_ID", access_key.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_owned()),
        ("HOME", "/nonexistent".to_owned()),
    ];
    let mut config = ClientConfig::resolve(
        |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()),
        Some(url),
    )
    .unwrap();
    config.base_backoff = Duration::from_millis(5);
    config.max_backoff = Duration::from_millis(50);
    tweak(&mut config);
    HttpKms::new(config).unwrap()
}

/// Any operation, JSON in and out.
pub fn call(
    kms: &HttpKms,
    op: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, KmsError> {
    kms.call_json::<_, serde_json::Value>(op, &body)
}
