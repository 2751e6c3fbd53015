//! The crash-test kit (issue 19): a volume on an ext4 of its own that can lose power
//! (`disk`, `rig`), a seeded workload of several workers checked against an exact model
//! (`workload`, `model`, `rng`), the checks after a crash through the mount (`check`) and
//! on the ciphertext (`offline`), and one whole round (`round`). Tests take it in with
//! `mod crashkit;`. Needs root (loop devices, mounts), `fuse3` and `xfsprogs`.
//!
//! `KMSFS_CRASH_ROUNDS` sets how many rounds a test runs and `KMSFS_CRASH_SEED` the first
//! round's seed (round `i` runs seed + `i`); a failing round's panic names its seed, and
//! `KMSFS_CRASH_ROUNDS=1 KMSFS_CRASH_SEED=<seed>` runs it again. `KMSFS_BIN` runs the
//! tests against another kmsfs binary.
#![allow(dead_code)]

pub mod check;
pub mod disk;
pub mod model;
pub mod offline;
pub mod rig;
pub mod rng;
pub mod round;
pub mod tree;
pub mod workload;

/// How many rounds to run: `KMSFS_CRASH_ROUNDS`, else `default` (what CI runs).
pub fn rounds(default: u64) -> u64 {
    std::env::var("KMSFS_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The first round's seed: `KMSFS_CRASH_SEED`, else a new one from the clock.
pub fn first_seed() -> u64 {
    if let Some(seed) = std::env::var("KMSFS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return seed;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (now.as_nanos() as u64 ^ std::process::id() as u64) % 1_000_000_000
}

/// Runs `rounds` rounds of `round(seed)` from `first_seed()`, printing each round's
/// seed and summary, and panics at the first round that failed, with its seed and all
/// it found.
pub fn campaign(name: &str, default_rounds: u64, round: impl Fn(u64) -> round::Report) {
    let first = first_seed();
    let n = rounds(default_rounds);
    for i in 0..n {
        let seed = first.wrapping_add(i);
        let start = std::time::Instant::now();
        let report = round(seed);
        let f = &report.findings;
        println!(
            "{name} round {}/{n} seed {seed}: {} in {:.1}s",
            i + 1,
            report.summary,
            start.elapsed().as_secs_f64()
        );
        for note in &f.notes {
            println!("  note: {note}");
        }
        if !f.failures.is_empty() {
            let mut shown: Vec<String> = f.failures.iter().take(40).cloned().collect();
            if f.failures.len() > shown.len() {
                shown.push(format!("... and {} more", f.failures.len() - shown.len()));
            }
            panic!(
                "{name}: round with seed {seed} failed ({}); replay with KMSFS_CRASH_ROUNDS=1 KMSFS_CRASH_SEED={seed}\n  {}",
                report.summary,
                shown.join("\n  ")
            );
        }
    }
}
