//! Audit logs. [`chain`] is the tamper-evident JSON-lines writer and verifier shared by the
//! KMS server's log and (later) the mount's. This module is a leaf: it knows nothing of
//! keys or files, and callers must never hand it key bytes or plaintext.

pub mod chain;
