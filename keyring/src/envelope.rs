//! Data keys and their envelopes. A directory's data key (DEK) is 256 random
//! bits; it is stored only inside an age file — the envelope — with one
//! stanza per approved machine, so any one of those machines can open it and
//! nobody else can (meta and nodes hold envelopes, never keys).
//!
//! The envelope is a **binary** age v1 file, not ASCII-armored: it lives in a
//! meta record, where armor would cost a third more bytes and buy nothing.
//! `age -d -i IDENTITY` opens it as it is; the age CLI writes binary unless
//! asked for `-a`, so what it writes for our recipients is accepted too.

use std::io::{Read, Write};

use rand::RngCore;
use sohofs_format::{EnvelopeRecipient, KeyEnvelope, ENVELOPE_AGE_BYTES_MAX, ENVELOPE_RECIPIENTS_MAX};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::identity::MachineIdentity;
use crate::recipient::MachineRecipient;

pub const DATA_KEY_BYTES: usize = 32;

/// A directory data key. Zeroed when dropped; its Debug form hides it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; DATA_KEY_BYTES]);

impl DataKey {
    /// 256 bits from the operating system's generator.
    pub fn generate() -> DataKey {
        let mut bytes = [0u8; DATA_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        DataKey(bytes)
    }

    pub fn from_bytes(bytes: [u8; DATA_KEY_BYTES]) -> DataKey {
        DataKey(bytes)
    }

    pub fn expose_bytes(&self) -> &[u8; DATA_KEY_BYTES] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    #[error("no recipients: a key wrapped to nobody would be lost")]
    NoRecipients,
    #[error("{found} recipients, more than {ENVELOPE_RECIPIENTS_MAX}")]
    TooManyRecipients { found: usize },
    #[error("age refused the recipients: {0}")]
    Age(#[from] age::EncryptError),
    #[error("envelope would be {found} bytes, more than {ENVELOPE_AGE_BYTES_MAX}")]
    TooLarge { found: usize },
}

/// Why an envelope did not give a key.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum UnwrapError {
    /// No stanza opens with this identity: the machine is not approved (the
    /// caller turns this into EACCES). A damaged X25519 stanza addressed to
    /// this machine also lands here, since age cannot tell it from a stanza
    /// for someone else.
    #[error("this machine is not a recipient of the envelope")]
    NotRecipient,
    /// The bytes are not a well-formed age file holding one data key.
    #[error("corrupt envelope: {reason}")]
    Corrupt { reason: String },
}

impl UnwrapError {
    /// Access is refused, as opposed to data being damaged.
    pub fn is_denied(&self) -> bool {
        matches!(self, UnwrapError::NotRecipient)
    }

    pub fn is_corruption(&self) -> bool {
        matches!(self, UnwrapError::Corrupt { .. })
    }
}

/// Wraps `key` to every recipient as one binary age file.
pub fn wrap_key(key: &DataKey, recipients: &[MachineRecipient]) -> Result<Vec<u8>, WrapError> {
    if recipients.is_empty() {
        return Err(WrapError::NoRecipients);
    }
    if recipients.len() > ENVELOPE_RECIPIENTS_MAX {
        return Err(WrapError::TooManyRecipients {
            found: recipients.len(),
        });
    }
    let encryptor = age::Encryptor::with_recipients(recipients.iter().map(MachineRecipient::as_age))?;
    let mut sealed = Vec::with_capacity(128 + 160 * recipients.len());
    // Writing into a Vec cannot fail.
    let mut writer = encryptor.wrap_output(&mut sealed).expect("write to a Vec");
    writer.write_all(key.expose_bytes()).expect("write to a Vec");
    writer.finish().expect("write to a Vec");
    if sealed.len() > ENVELOPE_AGE_BYTES_MAX {
        return Err(WrapError::TooLarge { found: sealed.len() });
    }
    Ok(sealed)
}

/// Opens a binary age file holding a data key with `identity`.
pub fn unwrap_key(sealed: &[u8], identity: &MachineIdentity) -> Result<DataKey, UnwrapError> {
    let corrupt = |reason: String| UnwrapError::Corrupt { reason };
    if sealed.len() > ENVELOPE_AGE_BYTES_MAX {
        return Err(corrupt(format!(
            "{} bytes, more than {ENVELOPE_AGE_BYTES_MAX}",
            sealed.len()
        )));
    }
    let decryptor = age::Decryptor::new_buffered(sealed).map_err(|error| corrupt(error.to_string()))?;
    if decryptor.is_scrypt() {
        return Err(corrupt("passphrase-encrypted, not wrapped to machines".into()));
    }
    let mut reader = decryptor
        .decrypt(std::iter::once(identity.as_age()))
        .map_err(|error| match error {
            age::DecryptError::NoMatchingKeys => UnwrapError::NotRecipient,
            other => corrupt(other.to_string()),
        })?;
    // One byte more than a key, to see a payload that is too long.
    let mut payload = [0u8; DATA_KEY_BYTES + 1];
    let mut filled = 0;
    let read = loop {
        match reader.read(&mut payload[filled..]) {
            Ok(0) => break Ok(()),
            Ok(count) => {
                filled += count;
                if filled == payload.len() {
                    break Ok(());
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => break Err(error),
        }
    };
    let result = match read {
        Err(error) => Err(corrupt(format!("payload: {error}"))),
        Ok(()) if filled != DATA_KEY_BYTES => Err(corrupt(format!(
            "payload is {}{} bytes, a data key is {DATA_KEY_BYTES}",
            filled,
            if filled > DATA_KEY_BYTES { "+" } else { "" }
        ))),
        Ok(()) => {
            let mut key = [0u8; DATA_KEY_BYTES];
            key.copy_from_slice(&payload[..DATA_KEY_BYTES]);
            Ok(DataKey(key))
        }
    };
    payload.zeroize();
    result
}

/// A machine an envelope is wrapped to: its name in LDAP and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grantee {
    pub machine: String,
    pub recipient: MachineRecipient,
}

/// Wraps `key` for policy `policy_id` at `epoch` to `grantees`, as the
/// record meta stores.
pub fn seal_envelope(
    policy_id: u64,
    epoch: u32,
    key: &DataKey,
    grantees: &[Grantee],
) -> Result<KeyEnvelope, WrapError> {
    let recipients: Vec<MachineRecipient> = grantees.iter().map(|grantee| grantee.recipient.clone()).collect();
    let age = wrap_key(key, &recipients)?;
    Ok(KeyEnvelope {
        policy_id,
        epoch,
        recipients: grantees
            .iter()
            .map(|grantee| EnvelopeRecipient {
                machine: grantee.machine.clone(),
                recipient: grantee.recipient.to_string(),
            })
            .collect(),
        age,
    })
}

/// Opens a stored envelope with this machine's identity.
pub fn open_envelope(envelope: &KeyEnvelope, identity: &MachineIdentity) -> Result<DataKey, UnwrapError> {
    unwrap_key(&envelope.age, identity)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn identity(name: &str) -> MachineIdentity {
        MachineIdentity::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/ldap/keys")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn every_recipient_opens_the_key_and_nobody_else_does() {
        let alpha = identity("ws-alpha.age");
        let beta = identity("ws-beta_ed25519");
        let outsider = identity("ws-outsider.age");
        let key = DataKey::generate();
        let sealed = wrap_key(&key, &[alpha.recipient(), beta.recipient()]).unwrap();
        assert_eq!(unwrap_key(&sealed, &alpha).unwrap(), key);
        assert_eq!(unwrap_key(&sealed, &beta).unwrap(), key);
        let denied = unwrap_key(&sealed, &outsider).unwrap_err();
        assert_eq!(denied, UnwrapError::NotRecipient);
        assert!(denied.is_denied() && !denied.is_corruption());
    }

    #[test]
    fn a_sealed_envelope_names_its_grantees_and_opens() {
        let alpha = identity("ws-alpha.age");
        let key = DataKey::from_bytes([7; DATA_KEY_BYTES]);
        let grantee = Grantee {
            machine: "cn=ws-alpha,ou=machines,dc=example,dc=org".into(),
            recipient: alpha.recipient(),
        };
        let envelope = seal_envelope(42, 3, &key, &[grantee]).unwrap();
        assert_eq!((envelope.policy_id, envelope.epoch), (42, 3));
        assert_eq!(envelope.recipients[0].recipient, alpha.recipient().to_string());
        let stored = KeyEnvelope::decode(&envelope.encode()).unwrap();
        assert_eq!(open_envelope(&stored, &alpha).unwrap(), key);
    }

    #[test]
    fn damaged_envelopes_are_corrupt_not_denied() {
        let beta = identity("ws-beta_ed25519");
        let sealed = wrap_key(&DataKey::generate(), &[beta.recipient()]).unwrap();
        for cut in [0, 10, sealed.len() / 2, sealed.len() - 1] {
            let error = unwrap_key(&sealed[..cut], &beta).unwrap_err();
            assert!(error.is_corruption(), "cut at {cut}: {error:?}");
        }
        // Every single flipped byte fails; none panics, none gives a key.
        for index in 0..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[index] ^= 0x01;
            assert!(unwrap_key(&damaged, &beta).is_err(), "flip at {index}");
        }
        assert!(unwrap_key(b"not an age file at all", &beta)
            .unwrap_err()
            .is_corruption());
    }

    #[test]
    fn a_payload_that_is_not_one_key_is_corrupt() {
        let alpha = identity("ws-alpha.age");
        for length in [0, 31, 33, 100] {
            let encryptor = age::Encryptor::with_recipients(std::iter::once(alpha.recipient().as_age())).unwrap();
            let mut sealed = Vec::new();
            let mut writer = encryptor.wrap_output(&mut sealed).unwrap();
            writer.write_all(&vec![1u8; length]).unwrap();
            writer.finish().unwrap();
            let error = unwrap_key(&sealed, &alpha).unwrap_err();
            assert!(error.is_corruption(), "length {length}: {error:?}");
        }
    }

    #[test]
    fn nothing_is_wrapped_to_nobody() {
        assert!(matches!(
            wrap_key(&DataKey::generate(), &[]),
            Err(WrapError::NoRecipients)
        ));
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let key = DataKey::from_bytes([0xAB; DATA_KEY_BYTES]);
        assert_eq!(format!("{key:?}"), "DataKey(..)");
    }
}
