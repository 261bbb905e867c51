//! sohofs-keyring owns the keys of encrypted tiers: machine identities (an
//! SSH host ed25519 key or an age X25519 identity file), directory data keys
//! and their age envelopes, approval of machines by LDAP group membership,
//! the people of an LDAP group with the ids their homes get, and the audit
//! trail of grants, revokes, unwraps and denials.
//!
//! It knows nothing of FUSE, NFS, RocksDB or the volume: callers hand it
//! recipients, envelopes and identities, and it hands back keys or typed
//! errors (`UnwrapError::NotRecipient` is the one that becomes EACCES). The
//! byte layout of a stored envelope is `sohofs_format::KeyEnvelope`; this
//! crate fills it and opens it. Nothing here ever writes a plaintext key to
//! disk or to a log.

pub mod audit;
pub mod envelope;
pub mod identity;
pub mod ldap;
pub mod recipient;

pub use audit::{AuditAction, AuditEvent, AuditLog, AuditOutcome};
pub use envelope::{
    open_envelope, seal_envelope, unwrap_key, wrap_key, DataKey, Grantee, UnwrapError, WrapError, DATA_KEY_BYTES,
};
pub use identity::{init_identity_file, IdentityError, InitOutcome, MachineIdentity, SSH_HOST_KEY_DEFAULT};
pub use ldap::{
    Approval, ApprovedMachine, Directory, LdapConfig, LdapError, PosixUser, PosixUsers, UnusableMachine, UnusableUser,
};
pub use recipient::{MachineRecipient, RecipientError};
