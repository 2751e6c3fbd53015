//! Operating a volume offline, without FUSE: checking it (`fsck`) and mending what a crash
//! left (`fsck --repair`), moving its keys (`rewrap`, `rekey`), and getting plaintext in
//! and out (`decrypt`, `export`, `import`).
//! Built on `volume`, its `namespace` and `file`, like the mount; no FUSE types here.

mod error;
pub mod export;
pub mod fsck;
pub mod import;
mod meta;
pub mod rekey;
pub mod repair;
pub mod rewrap;
pub mod walk;

pub use error::OpsError;
