//! kmsfs: a FUSE filesystem that encrypts each file with its own data key from a KMS.
//!
//! # Layout
//! Dependencies point one way, downward (`docs/architecture.md` walks through them, and
//! `docs/style.md` says how the code is written):
//!
//! - `cli` (in the binary): argument parsing and human-facing output only.
//! - [`mount`]: mount checks, the FUSE session, process hardening; [`control`]: the
//!   daemon's control socket (`kmsfs status`).
//! - [`fs`]: the FUSE glue. It translates between FUSE and the volume, nothing more.
//! - [`ops`]: offline operations (fsck, rewrap, rekey, decrypt/export, import).
//! - [`volume`]: a volume as a service: configuration, KMS connection, key cache and
//!   data-key pool, audit records, creating and opening files.
//! - [`namespace`]: every on-disk step of the ciphertext directory's names and entries.
//! - [`file`](mod@file): ciphertext files read and written by plaintext offset, built from
//!   `format` and `crypto`; no FUSE types and no KMS.
//! - [`key_cache`]: the key cache, a [`kms::Kms`] decorator.
//! - [`kms`]: the one-trait KMS seam, its HTTP client and the local KMS (engine and server).
//! - [`audit`]: hash-chained JSON-lines logs.
//! - [`format`](mod@format): bytes <-> structs and offset arithmetic. No IO, no keys.
//! - [`crypto`]: key derivation and sealing/opening of one block or header. No IO.
//! - [`secret`]: the only home of plaintext key bytes, and the only `unsafe` code.

#![deny(unsafe_code)]

pub mod audit;
pub mod control;
pub mod crypto;
pub mod file;
pub mod format;
pub mod fs;
pub mod key_cache;
pub mod kms;
pub mod mount;
pub mod namespace;
pub mod ops;
pub mod secret;
pub mod volume;

/// An error and its causes on one line, `outer: cause: cause`: every error type here
/// either prints its cause or exposes it as its source, never both.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
