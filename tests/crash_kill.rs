//! Killed daemons (issue 19): SIGKILL to the daemon while the workload runs, `kmsfs
//! mount` over the dead mount, then checked against the model of what was answered
//! (`docs/posix.md`, "What survives a crash"). `crashkit/mod.rs` says how to run more
//! rounds or replay a seed.

mod crashkit;

use crashkit::round::{self, Crash};
use crashkit::workload::Mix;

#[test]
fn killed_daemon_rounds_keep_what_was_answered() {
    crashkit::campaign("kill", 40, |seed| round::run(Crash::KillDaemon, seed));
}

/// Issue 19, as first seen: a SIGKILL in the middle of creates left a file of 0 bytes
/// (its name made before its header was written).
#[test]
fn a_kill_in_the_middle_of_creates_leaves_no_file_without_its_header() {
    crashkit::campaign("kill during creates", 10, |seed| {
        round::run_mix(Crash::KillDaemon, seed, Mix::Creates)
    });
}
