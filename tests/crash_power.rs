//! Power cuts (issue 19): the ext4 under a volume shut down with its journal unflushed,
//! mounted again, then checked against the model of what was fsynced
//! (`docs/posix.md`, "What survives a crash"). `crashkit/mod.rs` says how to run more
//! rounds or replay a seed.

mod crashkit;

use crashkit::check::Findings;
use crashkit::offline;
use crashkit::rig::Rig;
use crashkit::rng::Rng;
use crashkit::round::{self, Crash};

#[test]
fn power_cut_rounds_keep_what_was_fsynced() {
    crashkit::campaign("power cut", 40, |seed| round::run(Crash::PowerCut, seed));
}

/// Issue 19, as first seen: a power cut right after `kmsfs init` and one fsynced file
/// (its directory fsynced too) left the root's `kmsfs.dirid` 0 bytes, and with it the
/// whole volume unreadable.
#[test]
fn a_power_cut_right_after_init_keeps_the_volume_and_its_fsynced_file() {
    use std::io::Write;
    let mut rig = Rig::on_ext4(&[]);
    rig.mount();
    let data = Rng::new(19).bytes(10_000);
    let mut file = std::fs::File::create(rig.p("kept")).unwrap();
    file.write_all(&data).unwrap();
    file.sync_all().unwrap();
    std::fs::File::open(&rig.mnt).unwrap().sync_all().unwrap();
    rig.power_cut(|| drop(file));
    let mut f = Findings::default();
    offline::cipher_tree(&rig, false, &mut f);
    let (code, report) = rig.fsck();
    offline::sort_fsck(code, &report, &["kept".to_owned()].into(), &mut f);
    if rig.try_mount().is_ok() {
        match std::fs::read(rig.p("kept")) {
            Ok(got) if got == data => {}
            Ok(got) => f.fail(format!("kept: {} bytes, not what was fsynced", got.len())),
            Err(e) => f.fail(format!("kept: {e}")),
        }
    } else {
        f.fail("the volume does not mount".into());
    }
    assert!(f.failures.is_empty(), "{}", f.failures.join("\n"));
}
