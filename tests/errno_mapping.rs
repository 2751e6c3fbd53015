//! The one errno mapping: KMS denials are EACCES, outages and every kind of damage EIO,
//! system errors pass through.

use fuser::Errno;
use kmsfs::file::FileError;
use kmsfs::fs::errno::{errno, FsError};
use kmsfs::kms::KmsError;
use kmsfs::volume::VolumeError;

fn kms(source: KmsError) -> FsError {
    FsError::Volume(VolumeError::Kms {
        path: "a".into(),
        source,
    })
}

#[test]
fn kms_denials_are_eacces_and_everything_else_eio() {
    let denied = KmsError::AccessDenied {
        code: "AccessDeniedException".into(),
        message: "no".into(),
    };
    assert_eq!(errno(&kms(denied)), Errno::EACCES);
    assert_eq!(errno(&kms(KmsError::Disabled("off".into()))), Errno::EACCES);
    assert_eq!(errno(&kms(KmsError::Timeout("slow".into()))), Errno::EIO);
    assert_eq!(
        errno(&kms(KmsError::InvalidCiphertext("x".into()))),
        Errno::EIO
    );
    let tampered = FsError::Volume(VolumeError::File {
        path: "a".into(),
        source: FileError::BlockAuth { block_no: 3 },
    });
    assert_eq!(errno(&tampered), Errno::EIO);
    assert_eq!(
        errno(&FsError::Sys(rustix::io::Errno::NOTEMPTY)),
        Errno::ENOTEMPTY
    );
    assert_eq!(errno(&FsError::NotFound), Errno::ENOENT);
}
