//! The one errno mapping: KMS denials (denied, disabled or pending-deletion keys) are EACCES, outages and every kind of damage EIO,
//! system errors pass through.

use fuser::Errno;
use kmsfs::file::FileError;
use kmsfs::fs::errno::{errno, FsError};
use kmsfs::kms::KmsError;
use kmsfs::namespace::{NameError, NamespaceError};
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
    // A key pending deletion refuses its use: permission, not an outage (issue 21).
    let pending = KmsError::InvalidState("pending deletion".into());
    assert_eq!(errno(&kms(pending)), Errno::EACCES);
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
}

#[test]
fn namespace_errors_name_their_errno() {
    let ns = |e: NamespaceError| errno(&FsError::Namespace(e));
    assert_eq!(ns(NameError::Reserved.into()), Errno::ENOENT);
    assert_eq!(ns(NameError::TooLong.into()), Errno::ENAMETOOLONG);
    assert_eq!(ns(NameError::Undecryptable.into()), Errno::EIO);
    assert_eq!(ns(NamespaceError::NotEmpty), Errno::ENOTEMPTY);
    let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
    assert_eq!(ns(NamespaceError::DirRecord(missing)), Errno::EIO);
    let taken = std::io::Error::from_raw_os_error(rustix::io::Errno::EXIST.raw_os_error());
    assert_eq!(ns(NamespaceError::Io(taken)), Errno::EEXIST);
    // Through the volume too (offline paths).
    let through = FsError::Volume(VolumeError::Namespace(NamespaceError::NotEmpty));
    assert_eq!(errno(&through), Errno::ENOTEMPTY);
    assert_eq!(
        errno(&FsError::Namespace(NamespaceError::TooSmall)),
        Errno::ERANGE
    );
    assert_eq!(errno(&FsError::NotImplemented), Errno::ENOSYS);
}
