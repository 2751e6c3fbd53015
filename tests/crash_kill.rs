//! Killed daemons (issue 19): SIGKILL to the daemon while the workload runs, `kmsfs
//! mount` over the dead mount, then checked against the model of what was answered
//! (`docs/posix.md`, "What survives a crash"). `crashkit/mod.rs` says how to run more
//! rounds or replay a seed.

mod crashkit;

use crashkit::round::{self, Crash};

#[test]
fn killed_daemon_rounds_keep_what_was_answered() {
    crashkit::campaign("kill", 40, |seed| round::run(Crash::KillDaemon, seed));
}
