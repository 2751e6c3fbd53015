//! The checks of an unmounted volume after a crash, on its ciphertext: every directory has
//! its record, every file its header (`kmsfs inspect`), every long name its `.name` file,
//! and what `kmsfs fsck --json` says, sorted into what breaks a promise and what does not.

use std::collections::BTreeSet;
use std::path::Path;

use super::check::Findings;
use super::rig::Rig;

/// Problems `fsck` may find in a file that was being written, not fsynced, at a crash:
/// its blocks or its length, or (after a power cut, for a new file whose header never
/// reached the disk while some of its data did) its header. Anything else (a name, a
/// directory record) is never allowed; that a file with a durable name opens is checked
/// through the mount (`check::after_power_cut`).
const TORN: [&str; 4] = [
    "block_auth",
    "invalid_cipher_len",
    "nonzero_slack",
    "not_kmsfs",
];

/// Walks the ciphertext directory (kmsfs's own `.kmsfs-*` leftovers aside): a directory
/// without a whole `kmsfs.dirid`, a file of 0 bytes or whose header `kmsfs inspect` cannot
/// read, or a long-name stand-in without its `.name` file, is a failure. A file whose
/// length is impossible (cut mid-block) is a note: only its content is at stake, and
/// the content checks say whether it mattered. After a power cut (`torn_headers`), so is
/// a file whose header cannot be read: a new file whose name was never made durable can
/// reach the disk without its header, and the checks through the mount say whether a
/// durable name was among them.
pub fn cipher_tree(rig: &Rig, torn_headers: bool, f: &mut Findings) {
    let mut todo = vec![rig.cipher.clone()];
    let mut inspected = 0;
    while let Some(dir) = todo.pop() {
        let shown = dir.strip_prefix(&rig.cipher).unwrap().display().to_string();
        match std::fs::read(dir.join("kmsfs.dirid")) {
            Ok(rec) if rec.len() == 26 && rec.starts_with(b"KMSFSDIR") => {}
            Ok(rec) => f.fail(format!(
                "cipher /{shown}: kmsfs.dirid is {} bytes, not a record",
                rec.len()
            )),
            Err(e) => f.fail(format!("cipher /{shown}: no kmsfs.dirid: {e}")),
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                f.fail(format!("cipher /{shown}: does not list: {e}"));
                continue;
            }
        };
        let names: BTreeSet<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for name in &names {
            let path = dir.join(name);
            let rel = format!("{shown}/{name}");
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                f.fail(format!("cipher {rel}: stat failed"));
                continue;
            };
            let long_stand_in = name.starts_with("kmsfs.long.") && !name.ends_with(".name");
            if long_stand_in && !long_name_whole(&dir.join(format!("{name}.name"))) {
                f.fail(format!(
                    "cipher {rel}: long name without a whole .name file"
                ));
            }
            if name.starts_with(".kmsfs-")
                || name == "kmsfs.conf"
                || name == "kmsfs.dirid"
                || name.starts_with("kmsfs.dirid.")
                || name.ends_with(".name")
            {
                continue;
            }
            if meta.is_dir() {
                todo.push(path);
            } else if meta.is_file() {
                inspected += 1;
                header_is_there(rig, &path, &rel, meta.len(), torn_headers, f);
            }
        }
    }
    f.notes
        .push(format!("ciphertext: {inspected} file headers inspected"));
}

/// A `.name` file holds an encrypted name: base64url, never empty (zeros are what a file
/// whose data never reached the disk reads as).
fn long_name_whole(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|n| {
        !n.is_empty()
            && n.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(b))
    })
}

fn header_is_there(rig: &Rig, path: &Path, rel: &str, len: u64, torn: bool, f: &mut Findings) {
    if len == 0 {
        return f.fail(format!("cipher {rel}: a file of 0 bytes (no header)"));
    }
    let out = rig.kmsfs(&["inspect", "--json", path.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        if json.get("file_id").is_none() {
            let line = format!("cipher {rel}: inspect: {err} ({len} bytes)");
            return match torn {
                true => f.notes.push(line),
                false => f.fail(line),
            };
        }
    }
    if json.get("file_id").is_none() {
        return f.fail(format!(
            "cipher {rel}: inspect failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if !out.status.success() {
        f.notes.push(format!(
            "cipher {rel}: header whole, length impossible ({len} bytes): {}",
            json["message"]
        ));
    }
}

/// What `kmsfs fsck --json` said of the unmounted volume (`Rig::fsck`), sorted: damage to a header, a name or a
/// directory record, or to a file in `exact` (whose content was promised), fails; torn
/// blocks of other files are noted. `unchecked` entries fail (fsck could not read them).
pub fn sort_fsck(
    code: i32,
    report: &serde_json::Value,
    exact: &BTreeSet<String>,
    f: &mut Findings,
) {
    let damaged = report["damaged"].as_array().cloned().unwrap_or_default();
    let unchecked = report["unchecked"].as_array().cloned().unwrap_or_default();
    f.notes.push(format!(
        "fsck: exit {code}, {} files, {} directories, {} damaged, {} unchecked",
        report["files"],
        report["directories"],
        damaged.len(),
        unchecked.len()
    ));
    if report.get("files").is_none() {
        return f.fail(format!("fsck gave no report (exit {code}): {report}"));
    }
    for d in &damaged {
        let path = d["path"].as_str().unwrap_or("?").trim_start_matches('/');
        let problem = d["problem"].as_str().unwrap_or("?");
        let line = format!("fsck: {path}: {problem} ({})", d["detail"]);
        if !TORN.contains(&problem) || exact.contains(path) {
            f.fail(line);
        } else {
            f.notes.push(line);
        }
    }
    for u in &unchecked {
        f.fail(format!(
            "fsck could not check {}: {}",
            u["path"], u["reason"]
        ));
    }
    if code != 0 && code != 4 {
        f.fail(format!("fsck exit {code}: {report}"));
    }
}
