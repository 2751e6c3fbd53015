//! kmsfs: a FUSE filesystem that encrypts each file with its own data key from a KMS.
//!
//! # Layout
//! Dependencies point one way, downward (see `shared/STYLE.md` in the project):
//!
//! - [`format`](mod@format): bytes <-> structs and offset arithmetic. No IO, no keys.
//! - [`crypto`]: key derivation and sealing/opening of one block or header. No IO.
//! - [`secret`]: the only home of plaintext key bytes.
//! - [`file`](mod@file): ciphertext files read and written by plaintext offset, built from
//!   `format` and `crypto`; no FUSE types and no KMS.
//! - [`kms`]: the one-trait KMS seam, its HTTP client and the local KMS (engine and server).
//! - [`audit`]: hash-chained JSON-lines logs.
//! - `cli` (in the binary): argument parsing and human-facing output only.

pub mod audit;
pub mod control;
pub mod crypto;
pub mod file;
pub mod format;
pub mod fs;
pub mod key_cache;
pub mod kms;
pub mod mount;
pub mod ops;
pub mod secret;
pub mod volume;
