//! A machine's keyring: the private key that opens the envelopes wrapped to
//! this machine. Either the SSH host ed25519 key (the default, nothing to set
//! up) or an age X25519 identity file made by `sohofs keyring init`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;

use crate::recipient::MachineRecipient;

/// The identity a machine uses when none is configured.
pub const SSH_HOST_KEY_DEFAULT: &str = "/etc/ssh/ssh_host_ed25519_key";
/// Identity files are a few hundred bytes; anything much larger is not one.
pub const IDENTITY_FILE_BYTES_MAX: u64 = 64 * 1024;

const AGE_SECRET_KEY_PREFIX: &str = "AGE-SECRET-KEY-1";
const OPENSSH_PRIVATE_KEY_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    // The I/O error is part of the message and not a `source`, so that an
    // error chain does not print it twice.
    #[error("read identity {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    #[error("write identity {path}: {cause}")]
    Write { path: PathBuf, cause: io::Error },
    #[error("{path} is {found} bytes, too large for an identity file (at most {IDENTITY_FILE_BYTES_MAX})")]
    TooLarge { path: PathBuf, found: u64 },
    #[error("{path} holds no age identity (AGE-SECRET-KEY-1…) and no OpenSSH private key")]
    NotAnIdentity { path: PathBuf },
    #[error("{path} holds {count} age identities; a machine keyring holds exactly one")]
    SeveralIdentities { path: PathBuf, count: usize },
    #[error("{path}: malformed {kind} private key")]
    Malformed { path: PathBuf, kind: &'static str },
    #[error("{path} is passphrase-protected; a machine key must open without a person")]
    Encrypted { path: PathBuf },
    #[error("{path} is not an ed25519 key; sohofs uses ssh-ed25519 host keys only")]
    UnsupportedSshKey { path: PathBuf },
}

/// The private half of a machine's keyring.
#[derive(Clone)]
pub enum MachineIdentity {
    X25519(age::x25519::Identity),
    /// Always an unencrypted ed25519 key (checked when loaded).
    SshEd25519(age::ssh::Identity),
}

/// What [`init_identity_file`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitOutcome {
    Created,
    /// The file was there and holds a valid identity; it was left as it was.
    Existing,
}

impl MachineIdentity {
    /// A new random age X25519 identity.
    pub fn generate() -> MachineIdentity {
        MachineIdentity::X25519(age::x25519::Identity::generate())
    }

    /// Reads an age identity file or an OpenSSH ed25519 private key.
    pub fn load(path: &Path) -> Result<MachineIdentity, IdentityError> {
        let read_error = |cause| IdentityError::Read {
            path: path.to_path_buf(),
            cause,
        };
        let metadata = fs::metadata(path).map_err(read_error)?;
        if metadata.len() > IDENTITY_FILE_BYTES_MAX {
            return Err(IdentityError::TooLarge {
                path: path.to_path_buf(),
                found: metadata.len(),
            });
        }
        if metadata.mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", metadata.mode() & 0o777),
                "identity file is readable by others than its owner"
            );
        }
        let text = fs::read_to_string(path).map_err(read_error)?;
        MachineIdentity::parse(&text, path)
    }

    /// Parses the text of an identity file; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<MachineIdentity, IdentityError> {
        if text.contains(OPENSSH_PRIVATE_KEY_BEGIN) {
            return parse_ssh(text, path);
        }
        let keys: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with(AGE_SECRET_KEY_PREFIX))
            .collect();
        match keys.as_slice() {
            [] => Err(IdentityError::NotAnIdentity {
                path: path.to_path_buf(),
            }),
            [key] => age::x25519::Identity::from_str(key)
                .map(MachineIdentity::X25519)
                .map_err(|_| IdentityError::Malformed {
                    path: path.to_path_buf(),
                    kind: "age X25519",
                }),
            several => Err(IdentityError::SeveralIdentities {
                path: path.to_path_buf(),
                count: several.len(),
            }),
        }
    }

    /// The public half, to publish in LDAP.
    pub fn recipient(&self) -> MachineRecipient {
        match self {
            MachineIdentity::X25519(identity) => MachineRecipient::X25519(identity.to_public()),
            MachineIdentity::SshEd25519(identity) => {
                // Checked in `parse_ssh`: an unencrypted ed25519 key always
                // yields its public key.
                let recipient = age::ssh::Recipient::try_from(identity.clone())
                    .expect("a loaded ssh identity is an unencrypted ed25519 key");
                MachineRecipient::SshEd25519(recipient)
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        self.recipient().kind()
    }

    pub(crate) fn as_age(&self) -> &dyn age::Identity {
        match self {
            MachineIdentity::X25519(identity) => identity,
            MachineIdentity::SshEd25519(identity) => identity,
        }
    }

    /// The identity file text, in the layout `age-keygen` writes. `None` for
    /// an SSH key, which sohofs never writes.
    fn identity_file_text(&self) -> Option<String> {
        match self {
            MachineIdentity::X25519(identity) => Some(format!(
                "# sohofs machine identity (age X25519); keep it private\n# public key: {}\n{}\n",
                identity.to_public(),
                identity.to_string().expose_secret()
            )),
            MachineIdentity::SshEd25519(_) => None,
        }
    }
}

fn parse_ssh(text: &str, path: &Path) -> Result<MachineIdentity, IdentityError> {
    let identity = age::ssh::Identity::from_buffer(text.as_bytes(), None).map_err(|_| IdentityError::Malformed {
        path: path.to_path_buf(),
        kind: "OpenSSH",
    })?;
    match &identity {
        // The key type shows in its public half (the private key type is
        // not exported by age).
        age::ssh::Identity::Unencrypted(_) => match age::ssh::Recipient::try_from(identity.clone()) {
            Ok(age::ssh::Recipient::SshEd25519(..)) => Ok(MachineIdentity::SshEd25519(identity)),
            _ => Err(IdentityError::UnsupportedSshKey {
                path: path.to_path_buf(),
            }),
        },
        age::ssh::Identity::Encrypted(_) => Err(IdentityError::Encrypted {
            path: path.to_path_buf(),
        }),
        age::ssh::Identity::Unsupported(_) => Err(IdentityError::UnsupportedSshKey {
            path: path.to_path_buf(),
        }),
    }
}

/// Makes a new age identity file at `path` (mode 0600) unless one is there.
/// An existing file is never overwritten: if it holds a valid identity, that
/// identity is returned with [`InitOutcome::Existing`]; if not, the error says
/// why. The file appears whole or not at all (written beside it, synced, then
/// hard-linked into place, which fails if the name was taken meanwhile).
pub fn init_identity_file(path: &Path) -> Result<(MachineIdentity, InitOutcome), IdentityError> {
    if path.symlink_metadata().is_ok() {
        return MachineIdentity::load(path).map(|identity| (identity, InitOutcome::Existing));
    }
    let identity = MachineIdentity::generate();
    let text = identity
        .identity_file_text()
        .expect("a generated identity is an age identity");
    let write_error = |cause| IdentityError::Write {
        path: path.to_path_buf(),
        cause,
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| write_error(io::ErrorKind::InvalidInput.into()))?;
    // `/etc/sohofs/machine.age` on a fresh machine: make the folder (0700,
    // it holds a secret) as `mkdir -p` would.
    if !directory.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&directory)
            .map_err(write_error)?;
    }
    let staging = directory.join(format!(".{}.{}.tmp", file_name.to_string_lossy(), std::process::id()));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staging)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| fs::hard_link(&staging, path));
    let _ = fs::remove_file(&staging);
    match linked {
        Ok(()) => {}
        // Another `init` won the race: use what it made.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            return MachineIdentity::load(path).map(|identity| (identity, InitOutcome::Existing));
        }
        Err(error) => return Err(write_error(error)),
    }
    fs::File::open(&directory)
        .and_then(|dir| dir.sync_all())
        .map_err(write_error)?;
    Ok((identity, InitOutcome::Created))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test keys shipped with the test directory (tests/ldap/keys).
    pub(crate) fn test_key(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/ldap/keys")
            .join(name)
    }

    #[test]
    fn age_and_ssh_identities_load_with_their_public_halves() {
        let alpha = MachineIdentity::load(&test_key("ws-alpha.age")).unwrap();
        assert_eq!(alpha.kind(), "age-x25519");
        assert_eq!(
            alpha.recipient().to_string(),
            "age1r6cdtdgzp2phkf6723n9xhscvt5dze7fum7mdcc6v7ye4jgw7faskzyzlz"
        );
        let beta = MachineIdentity::load(&test_key("ws-beta_ed25519")).unwrap();
        assert_eq!(beta.kind(), "ssh-ed25519");
        let published = fs::read_to_string(test_key("ws-beta_ed25519.pub")).unwrap();
        assert_eq!(beta.recipient(), published.parse().unwrap());
    }

    #[test]
    fn files_that_are_not_one_usable_identity_are_refused() {
        let path = Path::new("x");
        assert!(matches!(
            MachineIdentity::parse("# nothing here\n", path),
            Err(IdentityError::NotAnIdentity { .. })
        ));
        assert!(matches!(
            MachineIdentity::parse("AGE-SECRET-KEY-1BROKEN\n", path),
            Err(IdentityError::Malformed { .. })
        ));
        let one = fs::read_to_string(test_key("ws-alpha.age")).unwrap();
        let other = fs::read_to_string(test_key("ws-gamma.age")).unwrap();
        assert!(matches!(
            MachineIdentity::parse(&format!("{one}{other}"), path),
            Err(IdentityError::SeveralIdentities { count: 2, .. })
        ));
        let truncated = fs::read_to_string(test_key("ws-beta_ed25519")).unwrap();
        assert!(MachineIdentity::parse(&truncated[..truncated.len() / 2], path).is_err());
    }

    #[test]
    fn init_creates_a_private_identity_once_and_then_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine.age");
        let (made, outcome) = init_identity_file(&path).unwrap();
        assert_eq!(outcome, InitOutcome::Created);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let loaded = MachineIdentity::load(&path).unwrap();
        assert_eq!(loaded.recipient(), made.recipient());

        let (again, outcome) = init_identity_file(&path).unwrap();
        assert_eq!(outcome, InitOutcome::Existing);
        assert_eq!(again.recipient(), made.recipient());
        // Nothing but the identity is left in the folder.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn init_refuses_to_overwrite_a_file_that_is_not_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        fs::write(&path, "shopping list\n").unwrap();
        assert!(matches!(
            init_identity_file(&path),
            Err(IdentityError::NotAnIdentity { .. })
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), "shopping list\n");
    }
}
