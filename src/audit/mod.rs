//! Audit logs. [`chain`] formats and verifies the tamper-evident JSON-lines records shared
//! by the KMS server's log and the mount's; [`ChainWriter`] (`writer.rs`, with its file
//! steps in `tail.rs`) appends them; [`head`] keeps the last record's hash apart from the
//! log; [`set`] verifies a rotated log with its head. This module is a leaf: it knows
//! nothing of keys or files, and callers must never hand it key bytes or plaintext.

pub mod chain;
pub mod head;
pub mod set;
mod tail;
mod writer;

pub use writer::{ChainOptions, ChainWriter, DEFAULT_ROTATE_BYTES, DEFAULT_SYNC_INTERVAL};
