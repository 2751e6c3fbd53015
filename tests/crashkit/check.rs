//! The checks after a crash, each what `docs/posix.md` ("What survives a crash") promises:
//! after a power cut, what was fsynced where its directory was fsynced too; after a killed
//! daemon, everything that was answered. Findings are collected, not panicked on, so that a
//! round reports all it saw with its seed.

use std::collections::BTreeSet;
use std::path::Path;

use super::model::{DirId, Model, Node};

const BLOCK: usize = 4096;

#[derive(Default)]
pub struct Findings {
    /// Broken promises.
    pub failures: Vec<String>,
    /// What was seen that nothing promises (reported, not failed).
    pub notes: Vec<String>,
    /// Paths (relative to the mount) whose content was checked exactly.
    pub exact: BTreeSet<String>,
    /// Paths of files being written at the crash, excused from reading without error.
    pub excused: BTreeSet<String>,
}

impl Findings {
    pub fn fail(&mut self, what: String) {
        self.failures.push(what);
    }
}

/// The names in directory `path`, or the error listing it.
fn list(path: &Path) -> std::io::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for e in std::fs::read_dir(path)? {
        names.insert(e?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// How `got` differs from `want`, in a line.
fn differ(got: &[u8], want: &[u8]) -> String {
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    match at {
        Some(at) => format!(
            "differs from byte {at} (block {}); length {} (want {})",
            at / BLOCK,
            got.len(),
            want.len()
        ),
        None => format!("length {} (want {})", got.len(), want.len()),
    }
}

fn expect_content(mnt: &Path, rel: &str, want: &[u8], why: &str, f: &mut Findings) {
    match std::fs::read(mnt.join(rel)) {
        Ok(got) if got == want => {}
        Ok(got) => f.fail(format!("{rel} ({why}): {}", differ(&got, want))),
        Err(e) => f.fail(format!("{rel} ({why}): read failed: {e}")),
    }
    f.exact.insert(rel.to_owned());
}

fn expect_link(mnt: &Path, rel: &str, target: &str, f: &mut Findings) {
    match std::fs::read_link(mnt.join(rel)) {
        Ok(t) if t.as_os_str() == target => {}
        Ok(t) => f.fail(format!("{rel}: symlink to {t:?}, want {target:?}")),
        Err(e) => f.fail(format!("{rel}: readlink failed: {e}")),
    }
}

/// After a power cut and `fsck --repair`: walking each worker's tree along names that
/// were durable (their directory fsynced since they got them, untouched since), every
/// such name is there, every such directory lists, every symlink points where it did,
/// every such file opens, and every file fsynced since its last write reads back exactly;
/// every file of the mount reads without error and starts with the bytes it had at its
/// last fsync that no write changed since (appends and truncates included), but, with
/// `in_place_may_fail` (format versions before 4), a file with a block rewritten in place
/// since (noted: the gap `docs/posix.md` names).
pub fn after_power_cut(models: &[&Model], mnt: &Path, in_place_may_fail: bool) -> Findings {
    let mut f = Findings::default();
    for m in models {
        durable_dir(m, 0, mnt, &mut f);
    }
    for rel in whole_tree(mnt, false, &mut f) {
        // A name an unanswered operation touched may hold any file: read it, no more.
        let (candidates, unsure) = match files_at(models, &rel) {
            Some(c) => (c, false),
            None => (Vec::new(), true),
        };
        let at_risk = in_place_may_fail
            && candidates
                .iter()
                .any(|(m, id)| m.may_fail_after_power_cut(*id));
        match std::fs::read(mnt.join(&rel)) {
            Err(e) if at_risk => f.notes.push(format!(
                "{rel}: read failed after fsck --repair: {e} (a block rewritten in place)"
            )),
            Err(e) => f.fail(format!("{rel}: read failed after fsck --repair: {e}")),
            Ok(_)
                if unsure || at_risk || candidates.iter().any(|(m, id)| m.files[*id].kept == 0) => {
            }
            Ok(got) => {
                let keeps = |(m, id): &(&Model, usize)| {
                    let file = &m.files[*id];
                    got.len() >= file.kept && got[..file.kept] == file.data[..file.kept]
                };
                if !candidates.is_empty() && !candidates.iter().any(keeps) {
                    let (m, id) = candidates[0];
                    let want = &m.files[id].data[..m.files[id].kept];
                    f.fail(format!(
                        "{rel}: the bytes fsynced and not changed since: {}",
                        differ(&got[..want.len().min(got.len())], want)
                    ));
                }
            }
        }
    }
    f
}

/// The files the one at `rel` may be (its worker's top directory first, its name last:
/// names are not reused within a worker, but a rename may have replaced one).
fn files_at<'m>(models: &[&'m Model], rel: &str) -> Option<Vec<(&'m Model, usize)>> {
    let top = rel.split('/').next().unwrap_or_default();
    let leaf = rel.rsplit('/').next().unwrap_or_default();
    let mut out = Vec::new();
    for m in models.iter().filter(|m| m.top == top) {
        out.extend(m.files_named(leaf)?.into_iter().map(|id| (*m, id)));
    }
    Some(out)
}

fn durable_dir(m: &Model, d: DirId, mnt: &Path, f: &mut Findings) {
    let dir_rel = m.dir_path(d);
    let names = match list(&mnt.join(&dir_rel)) {
        Ok(n) => n,
        Err(e) => return f.fail(format!("{dir_rel}/: durable directory does not list: {e}")),
    };
    for (name, node) in &m.dirs[d].durable {
        if m.durable_name(d, name).is_none() {
            continue;
        }
        let rel = m.path(d, name);
        if !names.contains(name) {
            f.fail(format!("{rel}: durable name missing"));
            continue;
        }
        match node {
            Node::File(id) if m.files[*id].clean => {
                expect_content(mnt, &rel, &m.files[*id].data, "fsynced", f)
            }
            // Its data may be torn, but a durable name opens: `fsync` of the directory
            // synced the headers of the files made before it.
            Node::File(_) => {
                if let Err(e) = std::fs::File::open(mnt.join(&rel)) {
                    f.fail(format!("{rel}: durable name does not open: {e}"));
                }
            }
            Node::Dir(sub) => durable_dir(m, *sub, mnt, f),
            Node::Link(target) => expect_link(mnt, &rel, target, f),
        }
    }
}

/// After a killed daemon: every name answered is there and no other (but those an
/// unanswered operation may have changed), every file reads back what was answered (and
/// its xattrs), and a file being written reads, with `strict_blocks`, block by block as
/// its old or its new content, with `strict_blocks` the file's plaintext block length.
pub fn after_kill(models: &[&Model], mnt: &Path, strict_blocks: Option<usize>) -> Findings {
    let mut f = Findings::default();
    for m in models {
        current_dir(m, 0, mnt, strict_blocks, &mut f);
    }
    whole_tree(mnt, true, &mut f);
    f
}

fn current_dir(m: &Model, d: DirId, mnt: &Path, strict: Option<usize>, f: &mut Findings) {
    let dir_rel = m.dir_path(d);
    let names = match list(&mnt.join(&dir_rel)) {
        Ok(n) => n,
        Err(e) => return f.fail(format!("{dir_rel}/: does not list: {e}")),
    };
    let unsure = |n: &str| m.unsure.contains(&(d, n.to_owned()));
    let entries = &m.dirs[d].entries;
    for name in names
        .iter()
        .filter(|n| !entries.contains_key(*n) && !unsure(n))
    {
        f.fail(format!(
            "{dir_rel}/{name}: there, but never made or was removed"
        ));
    }
    for (name, node) in entries {
        let rel = m.path(d, name);
        if unsure(name) {
            continue;
        }
        if !names.contains(name) {
            f.fail(format!("{rel}: answered name missing"));
            continue;
        }
        match node {
            Node::File(id) => {
                let file = &m.files[*id];
                match &file.pending {
                    Some(new) => {
                        f.excused.insert(rel.clone());
                        if let Some(block) = strict {
                            old_or_new_blocks(mnt, &rel, &[&file.data, new], block, f);
                        }
                    }
                    None => expect_content(mnt, &rel, &file.data, "answered", f),
                }
                if !file.xattrs_unsure {
                    expect_xattrs(mnt, &rel, file, f);
                }
            }
            Node::Dir(sub) => current_dir(m, *sub, mnt, strict, f),
            Node::Link(target) => expect_link(mnt, &rel, target, f),
        }
    }
}

fn expect_xattrs(mnt: &Path, rel: &str, file: &super::model::FileState, f: &mut Findings) {
    let path = mnt.join(rel);
    for (key, want) in &file.xattrs {
        let mut buf = vec![0u8; 512];
        match rustix::fs::getxattr(&path, key.as_str(), &mut buf[..]) {
            Ok(n) if buf[..n] == want[..] => {}
            Ok(n) => f.fail(format!("{rel}: xattr {key} is {n} bytes, not as set")),
            Err(e) => f.fail(format!("{rel}: xattr {key}: {e}")),
        }
    }
}

/// Each piece of the file (and its length) is that of one of `versions`, where pieces end
/// at the mount's 4 KiB pages (what the kernel hands the daemon) and at the format's
/// blocks of `block_len` bytes (what a cut `pwrite` keeps or drops); the last piece may be
/// cut short where a write was cut between its pieces. Every block reads, not even failing
/// where the write was changing the file's length (`docs/format.md`, "The length record").
fn old_or_new_blocks(
    mnt: &Path,
    rel: &str,
    versions: &[&Vec<u8>],
    block_len: usize,
    f: &mut Findings,
) {
    let (len, got) = match std::fs::read(mnt.join(rel)) {
        Ok(got) => (got.len(), got),
        Err(e) => return f.fail(format!("{rel} (being written): read failed: {e}")),
    };
    let min = versions.iter().map(|v| v.len()).min().unwrap();
    let max = versions.iter().map(|v| v.len()).max().unwrap();
    if len < min || len > max {
        return f.fail(format!(
            "{rel} (being written): length {len} outside {min}..={max}"
        ));
    }
    let mut ends: Vec<usize> = (1..=len / BLOCK).map(|i| i * BLOCK).collect();
    ends.extend((1..=len / block_len).map(|i| i * block_len));
    ends.push(len);
    ends.sort_unstable();
    ends.dedup();
    let mut start = 0;
    for end in ends.into_iter().filter(|&e| e > 0) {
        let piece = &got[start..end];
        let last = end == len;
        let fits = versions.iter().any(|v| {
            let vp = &v[start.min(v.len())..end.min(v.len())];
            vp == piece || (last && v.len() >= start && v[start..].starts_with(piece))
        });
        if !fits {
            return f.fail(format!(
                "{rel} (being written): bytes {start}..{end} are neither its old nor its new content"
            ));
        }
        start = end;
    }
}

/// Every directory of the mount lists and every entry stats; with `read_files`, every
/// file but those `excused` reads without error. Returns the regular files' paths.
fn whole_tree(mnt: &Path, read_files: bool, f: &mut Findings) -> Vec<String> {
    let mut files = Vec::new();
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let dir = mnt.join(&rel);
        let names = match list(&dir) {
            Ok(n) => n,
            Err(e) => {
                f.fail(format!("{rel}/: does not list: {e}"));
                continue;
            }
        };
        for name in names {
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            match std::fs::symlink_metadata(mnt.join(&child)) {
                Err(e) => f.fail(format!("{child}: stat failed: {e}")),
                Ok(m) if m.is_dir() => todo.push(child),
                Ok(m) if m.is_file() => {
                    if read_files && !f.excused.contains(&child) {
                        if let Err(e) = std::fs::read(mnt.join(&child)) {
                            f.fail(format!("{child}: read failed: {e}"));
                        }
                    }
                    files.push(child);
                }
                Ok(_) => {}
            }
        }
    }
    files
}
