//! Backing `stat` -> the plaintext view's attributes: regular files report their plaintext
//! size (computed from the ciphertext size, no key needed); everything else passes through.

use fuser::{FileAttr, FileType, INodeNo};
use rustix::fs::Stat;

use crate::namespace::system_time as time;
use crate::volume::Volume;

pub fn to_attr(ino: u64, st: &Stat, volume: &Volume) -> FileAttr {
    let kind = kind_of(rustix::fs::FileType::from_raw_mode(st.st_mode));
    let size = match kind {
        FileType::RegularFile => volume.plain_size(st.st_size as u64),
        FileType::Symlink => volume.names().symlink_len(st.st_size as u64),
        _ => st.st_size as u64,
    };
    let mtime = time(st.st_mtime, st.st_mtime_nsec as i64);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec as i64),
        mtime,
        ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
        crtime: mtime,
        kind,
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// The FUSE type of an entry of the ciphertext directory.
pub fn kind_of(t: rustix::fs::FileType) -> FileType {
    use rustix::fs::FileType as Rx;
    match t {
        Rx::Directory => FileType::Directory,
        Rx::Symlink => FileType::Symlink,
        Rx::Fifo => FileType::NamedPipe,
        Rx::Socket => FileType::Socket,
        Rx::CharacterDevice => FileType::CharDevice,
        Rx::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}
