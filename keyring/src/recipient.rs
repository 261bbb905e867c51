//! Public halves of machine keyrings, as published in LDAP.

use std::fmt;
use std::str::FromStr;

/// A recipient string longer than this is refused before parsing: an
/// ssh-ed25519 line with a long comment is about 150 bytes, an age recipient 62.
pub const RECIPIENT_TEXT_BYTES_MAX: usize = 4096;

/// The public key a data key is wrapped to: an age X25519 recipient
/// (`age1...`) or an SSH host key (`ssh-ed25519 AAAA... [comment]`).
#[derive(Clone)]
pub enum MachineRecipient {
    X25519(age::x25519::Recipient),
    SshEd25519(age::ssh::Recipient),
}

/// Why a published string is not a recipient sohofs can wrap to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecipientError {
    #[error("empty recipient")]
    Empty,
    #[error("recipient is {found} bytes, more than {RECIPIENT_TEXT_BYTES_MAX}")]
    TooLong { found: usize },
    #[error("unsupported key type {key_type:?} (sohofs wraps to age1… and ssh-ed25519 keys only)")]
    UnsupportedKeyType { key_type: String },
    #[error("malformed {kind} recipient")]
    Malformed { kind: &'static str },
}

impl MachineRecipient {
    /// The kind, as `sohofs keyring` prints it.
    pub fn kind(&self) -> &'static str {
        match self {
            MachineRecipient::X25519(_) => "age-x25519",
            MachineRecipient::SshEd25519(_) => "ssh-ed25519",
        }
    }

    /// A short stable name of the key (BLAKE3 of the canonical text, 16 hex
    /// digits), for logs and listings; the envelope keeps the full text.
    pub fn fingerprint(&self) -> String {
        let hash = blake3::hash(self.to_string().as_bytes());
        hash.to_hex()[..16].to_string()
    }

    pub(crate) fn as_age(&self) -> &dyn age::Recipient {
        match self {
            MachineRecipient::X25519(recipient) => recipient,
            MachineRecipient::SshEd25519(recipient) => recipient,
        }
    }
}

impl FromStr for MachineRecipient {
    type Err = RecipientError;

    /// Accepts surrounding whitespace and, for SSH keys, a trailing comment.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() > RECIPIENT_TEXT_BYTES_MAX {
            return Err(RecipientError::TooLong { found: text.len() });
        }
        let text = text.trim();
        let Some(first_word) = text.split_whitespace().next() else {
            return Err(RecipientError::Empty);
        };
        if first_word.starts_with("age1") && first_word.len() == text.len() {
            return age::x25519::Recipient::from_str(text)
                .map(MachineRecipient::X25519)
                .map_err(|_| RecipientError::Malformed { kind: "age X25519" });
        }
        if first_word == "ssh-ed25519" {
            // The comment (third word on) is not part of the key.
            let key: Vec<&str> = text.split_whitespace().take(2).collect();
            return age::ssh::Recipient::from_str(&key.join(" "))
                .ok()
                .filter(|recipient| matches!(recipient, age::ssh::Recipient::SshEd25519(..)))
                .map(MachineRecipient::SshEd25519)
                .ok_or(RecipientError::Malformed { kind: "ssh-ed25519" });
        }
        let key_type: String = first_word.chars().take(32).collect();
        Err(RecipientError::UnsupportedKeyType { key_type })
    }
}

/// The canonical text: `age1...`, or `ssh-ed25519 AAAA...` without a comment.
impl fmt::Display for MachineRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MachineRecipient::X25519(recipient) => write!(f, "{recipient}"),
            MachineRecipient::SshEd25519(recipient) => write!(f, "{recipient}"),
        }
    }
}

impl fmt::Debug for MachineRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineRecipient({self})")
    }
}

impl PartialEq for MachineRecipient {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for MachineRecipient {}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: &str = "age1r6cdtdgzp2phkf6723n9xhscvt5dze7fum7mdcc6v7ye4jgw7faskzyzlz";
    const SSH: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGMk3qFVhnfpdvXrUq0yhgdVlyb6PcMhYy6sxePwmcDf";

    #[test]
    fn age_and_ssh_recipients_parse_to_their_canonical_text() {
        let age: MachineRecipient = format!("  {AGE}\n").parse().unwrap();
        assert_eq!(age.kind(), "age-x25519");
        assert_eq!(age.to_string(), AGE);
        let ssh: MachineRecipient = format!("{SSH} root@ws-beta").parse().unwrap();
        assert_eq!(ssh.kind(), "ssh-ed25519");
        assert_eq!(ssh.to_string(), SSH);
        assert_eq!(ssh, SSH.parse().unwrap());
        assert_ne!(age.fingerprint(), ssh.fingerprint());
        assert_eq!(age.fingerprint().len(), 16);
    }

    #[test]
    fn other_strings_are_refused_with_their_reason() {
        assert_eq!("".parse::<MachineRecipient>().unwrap_err(), RecipientError::Empty);
        assert_eq!(
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ root@x"
                .parse::<MachineRecipient>()
                .unwrap_err(),
            RecipientError::UnsupportedKeyType {
                key_type: "ssh-rsa".into()
            }
        );
        assert_eq!(
            "age1notakey".parse::<MachineRecipient>().unwrap_err(),
            RecipientError::Malformed { kind: "age X25519" }
        );
        assert_eq!(
            "ssh-ed25519 AAAAbroken".parse::<MachineRecipient>().unwrap_err(),
            RecipientError::Malformed { kind: "ssh-ed25519" }
        );
        // An ssh-rsa key body under an ed25519 label is not an ed25519 key.
        assert!("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ"
            .parse::<MachineRecipient>()
            .is_err());
        let long = "a".repeat(RECIPIENT_TEXT_BYTES_MAX + 1);
        assert!(matches!(
            long.parse::<MachineRecipient>(),
            Err(RecipientError::TooLong { .. })
        ));
    }
}
