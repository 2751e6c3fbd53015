//! One crash round: a fresh volume on its own ext4, the workload's workers running on the
//! mount, a crash (power cut or killed daemon) after a number of answered operations that
//! the seed picks, then the checks. The seed fixes every worker's operations and the
//! crash point counted in operations; where in-flight calls stand at that moment is up to
//! the scheduler, so a replay crashes at the same count, not at the same instant.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::check::{self, Findings};
use super::offline;
use super::rig::Rig;
use super::rng::Rng;
use super::workload::{Mix, Outcome, Shared, Worker};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Crash {
    PowerCut,
    KillDaemon,
}

/// What a round saw: failures (broken promises) and notes.
pub struct Report {
    pub seed: u64,
    pub summary: String,
    pub findings: Findings,
}

/// Runs one round with `seed`, every kind of operation.
pub fn run(crash: Crash, seed: u64) -> Report {
    run_mix(crash, seed, Mix::All)
}

/// Runs one round with `seed`, the workers drawing from `mix`.
pub fn run_mix(crash: Crash, seed: u64, mix: Mix) -> Report {
    let mut rng = Rng::new(seed ^ if crash == Crash::PowerCut { 1 } else { 2 });
    let mut rig = Rig::on_ext4(&[]);
    // Blocks being written at a kill read old or new only where the format promises it;
    // after a power cut only fsynced files are read, exactly.
    let strict = crash == Crash::KillDaemon && (rig.format >= 3 || strict_blocks_forced());
    let block_len = if rig.format == 4 { 4068 } else { 4096 };
    rig.mount();
    let workers = rng.range(3, 6) as usize;
    for t in 0..workers {
        std::fs::create_dir(rig.p(&format!("t{t}"))).unwrap();
    }
    std::fs::File::open(&rig.mnt).unwrap().sync_all().unwrap();
    let crash_after = rng.range(5, 400) as usize;
    let shared = Arc::new(Shared::default());
    let handles: Vec<_> = (0..workers)
        .map(|t| {
            let worker = Worker::new(&rig.mnt, &format!("t{t}"), rng.fork(t as u64), mix);
            let shared = shared.clone();
            std::thread::spawn(move || worker.run(shared, 100_000))
        })
        .collect();
    let start = Instant::now();
    while shared.ops.load(Ordering::SeqCst) < crash_after
        && !handles.iter().all(|h| h.is_finished())
        && start.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let answered = shared.ops.load(Ordering::SeqCst);
    shared.crashed.store(true, Ordering::SeqCst);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let join = || {
        shared.stop.store(true, Ordering::SeqCst);
        outcomes = handles
            .into_iter()
            .map(|h| h.join().expect("a worker panicked"))
            .collect();
    };
    let mut f = Findings::default();
    match crash {
        Crash::PowerCut => {
            rig.power_cut(join);
            // What a power cut may leave (a new file whose data never reached the disk)
            // is `fsck --repair`'s to remove, as docs/posix.md says; the checks below then
            // hold the volume to having nothing else wrong.
            match rig.repair() {
                Ok(done) if !done.is_empty() => f.notes.push(format!("repaired: {done:?}")),
                Ok(_) => {}
                Err(e) => f.fail(format!("fsck --repair: {e}")),
            }
            offline::cipher_tree(&rig, true, &mut f);
            let (code, report) = rig.fsck();
            rig.mount();
            let models: Vec<_> = outcomes.iter().map(|o| &o.model).collect();
            // Version 4 keeps even a block rewritten in place since the last fsync.
            let in_place_may_fail = rig.format < 4 && !strict_blocks_forced();
            let seen = check::after_power_cut(&models, &rig.mnt, in_place_may_fail);
            merge(&mut f, seen);
            rig.unmount();
            offline::sort_fsck(code, &report, &f.exact.clone(), &mut f);
        }
        Crash::KillDaemon => {
            rig.kill_daemon();
            join();
            // Odd seeds detach the dead mount and look at the ciphertext before anything
            // mounts it again; even seeds mount over it at once, as a restarted service
            // does. A failure of either is reported and the round goes on.
            let detach_first = seed % 2 == 1;
            let mut fsck = None;
            if detach_first {
                if let Err(e) = rig.try_detach() {
                    f.fail(e);
                    rig.force_detach();
                }
                offline::cipher_tree(&rig, false, &mut f);
                fsck = Some(rig.fsck());
            }
            if let Err(e) = rig.try_mount() {
                f.fail(format!("mounting again after the kill: {e}"));
                rig.force_detach();
                rig.mount();
            }
            let models: Vec<_> = outcomes.iter().map(|o| &o.model).collect();
            merge(
                &mut f,
                check::after_kill(&models, &rig.mnt, strict.then_some(block_len)),
            );
            rig.unmount();
            if !detach_first {
                offline::cipher_tree(&rig, false, &mut f);
            }
            let (code, report) = fsck.unwrap_or_else(|| rig.fsck());
            offline::sort_fsck(code, &report, &f.exact.clone(), &mut f);
        }
    }
    for o in &outcomes {
        if let Some(e) = &o.failure {
            f.fail(e.clone());
        }
    }
    if answered < crash_after {
        f.notes.push(format!(
            "crashed after {answered} operations, not {crash_after}"
        ));
    }
    // The system calls of each worker a failure names, to replay it by hand.
    if !f.failures.is_empty() {
        for o in &outcomes {
            let top = format!("{}/", o.model.top);
            if f.failures.iter().any(|l| l.contains(&top)) {
                f.notes.push(format!("{top} did: {}", o.trace.join("; ")));
            }
        }
    }
    if let Ok(dir) = std::env::var("KMSFS_CRASH_KEEP") {
        if !f.failures.is_empty() {
            let to = std::path::Path::new(&dir).join(format!("seed-{seed}"));
            rig.keep(&to);
            f.notes
                .push(format!("image and keys kept in {}", to.display()));
        }
    }
    let ops: Vec<usize> = outcomes.iter().map(|o| o.ops).collect();
    let summary = format!(
        "{crash:?}, {mix:?}, {workers} workers, crash after {answered} answered operations {ops:?}, {} paths read exactly, format {}, strict blocks {}",
        f.exact.len(),
        match rig.format {
            0 => "default".to_owned(),
            v => v.to_string(),
        },
        if strict { "on" } else { "off" }
    );
    Report {
        seed,
        summary,
        findings: f,
    }
}

/// `KMSFS_CRASH_STRICT_BLOCKS=1` holds blocks being written at a kill, and after a power
/// cut blocks rewritten in place since the last fsync, to their old or new content on any
/// format version (version 3 promises the first, version 4 both; on older versions this
/// shows what the checks would catch).
fn strict_blocks_forced() -> bool {
    std::env::var("KMSFS_CRASH_STRICT_BLOCKS").is_ok_and(|v| v == "1")
}

fn merge(into: &mut Findings, from: Findings) {
    into.failures.extend(from.failures);
    into.notes.extend(from.notes);
    into.exact.extend(from.exact);
    into.excused.extend(from.excused);
}
