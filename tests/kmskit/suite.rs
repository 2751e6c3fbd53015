//! The conformance suite's fixtures: a [`Backend`] is a KMS under test, either the
//! in-process engine ([`local`]) or the HTTP server through the HTTP client ([`remote`]),
//! and [`conformance!`] runs each check it lists against both. A test file includes this
//! as `mod suite` beside `kmskit/mod.rs` as `mod common`, at its root.
#![allow(dead_code)]

use kmsfs::kms::engine::Engine;
use kmsfs::kms::{EncryptionContext, Kms, KmsError};
use serde_json::{json, Value};

use crate::common::TestServer;

/// A KMS under test: the trait, plus raw JSON operations for everything else.
pub trait Backend {
    fn kms(&self) -> &dyn Kms;
    fn call(&self, op: &str, req: Value) -> Result<Value, KmsError>;

    fn ok(&self, op: &str, req: Value) -> Value {
        self.call(op, req.clone())
            .unwrap_or_else(|e| panic!("{op} {req} failed: {e}"))
    }

    /// The AWS error name `op` fails with.
    fn err(&self, op: &str, req: Value) -> String {
        match self.call(op, req.clone()) {
            Ok(v) => panic!("{op} {req} succeeded: {v}"),
            Err(e) => e.aws_code().to_owned(),
        }
    }

    fn create_key(&self) -> String {
        self.ok("CreateKey", json!({}))["KeyMetadata"]["Arn"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

pub struct Local(pub Engine);
impl Backend for Local {
    fn kms(&self) -> &dyn Kms {
        &self.0
    }
    fn call(&self, op: &str, req: Value) -> Result<Value, KmsError> {
        let out = self.0.call(op, req.to_string().as_bytes())?;
        Ok(serde_json::from_slice(&out).unwrap())
    }
}

pub struct Remote {
    pub client: kmsfs::kms::client::HttpKms,
    _server: TestServer,
}
impl Backend for Remote {
    fn kms(&self) -> &dyn Kms {
        &self.client
    }
    fn call(&self, op: &str, req: Value) -> Result<Value, KmsError> {
        let out = self.client.call(op, req.to_string().into_bytes())?;
        Ok(serde_json::from_slice(&out).unwrap())
    }
}

/// The local KMS in this process.
pub fn local() -> Local {
    Local(Engine::in_memory())
}

/// The local KMS behind its HTTP server, reached through the HTTP client.
pub fn remote() -> Remote {
    let server = TestServer::start(Engine::in_memory());
    Remote {
        client: server.client(),
        _server: server,
    }
}

/// An encryption context of `pairs`.
pub fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .fold(EncryptionContext::new(), |c, (k, v)| c.with(k, v))
}

/// The key id (UUID) at the end of a key ARN.
pub fn key_id_of(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap()
}

/// Runs each named check, a `fn(&dyn Backend)` of the calling file, as one test against
/// the engine (`engine::NAME`) and one against the HTTP server (`http::NAME`).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod engine {
            $(#[test] fn $name() { super::$name(&$crate::suite::local()) })*
        }
        mod http {
            $(#[test] fn $name() { super::$name(&$crate::suite::remote()) })*
        }
    };
}

pub(crate) use conformance;
