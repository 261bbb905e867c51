//! The one error type of the volume API, of POSIX kinds, and its wire form.

use sohofs_format::messages::ErrorKind;
use sohofs_format::DecodeError;

/// An error of the volume API. `fuse` maps each kind to an errno (and `nfs` to
/// an `nfsstat3`) in one exhaustive match.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("file name too long")]
    NameTooLong,
    #[error("no space left on the volume: {0}")]
    NoSpace(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("data is corrupt: {0}")]
    Corrupt(String),
    #[error("stale file handle")]
    Stale,
    #[error("permission denied")]
    Permission,
    #[error("no such extended attribute")]
    NoXattr,
    #[error("result out of range")]
    Range,
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("cross-device link")]
    CrossDevice,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("file too large")]
    TooBig,
    /// The data's key policy is not wrapped to this machine (EACCES).
    #[error("permission denied: this machine is not approved for the directory's key")]
    Access,
}

impl FsError {
    /// The kind sent over the wire.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FsError::NotFound => ErrorKind::NotFound,
            FsError::Exists => ErrorKind::Exists,
            FsError::NotDir => ErrorKind::NotDir,
            FsError::IsDir => ErrorKind::IsDir,
            FsError::NotEmpty => ErrorKind::NotEmpty,
            FsError::Invalid(_) => ErrorKind::Invalid,
            FsError::NameTooLong => ErrorKind::NameTooLong,
            FsError::NoSpace(_) => ErrorKind::NoSpace,
            FsError::Io(_) => ErrorKind::Io,
            FsError::Corrupt(_) => ErrorKind::Corrupt,
            FsError::Stale => ErrorKind::Stale,
            FsError::Permission => ErrorKind::Permission,
            FsError::NoXattr => ErrorKind::NoXattr,
            FsError::Range => ErrorKind::Range,
            FsError::Unavailable(_) => ErrorKind::Unavailable,
            FsError::CrossDevice => ErrorKind::CrossDevice,
            FsError::Protocol(_) => ErrorKind::Protocol,
            FsError::TooBig => ErrorKind::TooBig,
            FsError::Access => ErrorKind::Access,
        }
    }

    /// The error a remote peer meant by `kind`.
    pub fn from_kind(kind: ErrorKind) -> FsError {
        match kind {
            ErrorKind::NotFound => FsError::NotFound,
            ErrorKind::Exists => FsError::Exists,
            ErrorKind::NotDir => FsError::NotDir,
            ErrorKind::IsDir => FsError::IsDir,
            ErrorKind::NotEmpty => FsError::NotEmpty,
            ErrorKind::Invalid => FsError::Invalid("refused by the server"),
            ErrorKind::NameTooLong => FsError::NameTooLong,
            ErrorKind::NoSpace => FsError::NoSpace("reported by the server".into()),
            ErrorKind::Io => FsError::Io("reported by the server".into()),
            ErrorKind::Corrupt => FsError::Corrupt("reported by the server".into()),
            ErrorKind::Stale => FsError::Stale,
            ErrorKind::Permission => FsError::Permission,
            ErrorKind::NoXattr => FsError::NoXattr,
            ErrorKind::Range => FsError::Range,
            ErrorKind::Unavailable => FsError::Unavailable("reported by the server".into()),
            ErrorKind::CrossDevice => FsError::CrossDevice,
            ErrorKind::Protocol => FsError::Protocol("reported by the server".into()),
            ErrorKind::TooBig => FsError::TooBig,
            ErrorKind::Access => FsError::Access,
        }
    }

    /// Retrying the same call elsewhere (another node, later) may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, FsError::Io(_) | FsError::Unavailable(_))
    }

    /// Stored bytes failed their check.
    pub fn is_corruption(&self) -> bool {
        matches!(self, FsError::Corrupt(_))
    }
}

impl From<DecodeError> for FsError {
    fn from(error: DecodeError) -> Self {
        FsError::Corrupt(error.to_string())
    }
}

pub type FsResult<T> = Result<T, FsError>;
