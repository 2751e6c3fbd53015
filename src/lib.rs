//! kmsfs: a FUSE filesystem that encrypts each file with its own data key from a KMS.
//!
//! # Layout
//! Dependencies point one way, downward (see `shared/STYLE.md` in the project):
//!
//! - `format`: bytes <-> structs and offset arithmetic. No IO, no keys.
//! - `crypto`: key derivation and sealing/opening of one block or header. No IO.
//! - [`kms`]: the KMS trait, the AWS-compatible HTTP client, and the local KMS (engine and
//!   server).
//! - [`audit`]: hash-chained JSON-lines logs (a leaf).
//! - [`secret`]: the only home of plaintext key bytes.
//! - `file`: whole-file encode/decode built from `format` and `crypto`.
//! - `cli` (in the binary): argument parsing and human-facing output only.

pub mod audit;
pub mod kms;
pub mod secret;
