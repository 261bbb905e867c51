//! The data keys one client holds: the volume key (policy 0, the standard
//! tier) and, for each protected directory's policy, the keys of the epochs
//! whose envelope this machine can open.
//!
//! The table is pure bookkeeping: opening an envelope is the [`KeyOpener`]'s
//! job (the `sohofs` binary gives one built on the keyring crate), and the
//! volume feeds the table what meta says of the policies.
//!
//! Access rule: a client may seal or open data of a policy only while it
//! holds the key of the policy's *current* epoch. Keys of older epochs are
//! kept only to read pieces a rekey has not re-sealed yet; a machine taken
//! out of the group loses the current epoch at the next sync, and with it
//! all access, even to data it could still decrypt.

use std::collections::{HashMap, HashSet};

use sohofs_format::{KeyEnvelope, PolicyId, PolicyRecord, NAME_KEY_EPOCH, VOLUME_POLICY};

use crate::codec::DataKey;
use crate::error::{FsError, FsResult};
use crate::names::NameKey;

/// What a client tells its opener about keys, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEvent {
    /// An envelope was opened with this machine's identity.
    Unwrapped {
        policy: PolicyId,
        epoch: u32,
        group: String,
    },
    /// This machine is not among the recipients of a policy's current epoch.
    Denied {
        policy: PolicyId,
        epoch: u32,
        group: String,
    },
}

/// Opens key envelopes with this machine's identity.
pub trait KeyOpener: Send + Sync {
    /// `Ok(Some(key))` when the envelope has a stanza for this machine,
    /// `Ok(None)` when it has none, `Err` when it is damaged.
    fn open(&self, envelope: &KeyEnvelope) -> Result<Option<DataKey>, String>;

    /// Told of every unwrap and denial (once per policy and epoch).
    fn event(&self, event: KeyEvent);
}

/// One policy as this client knows it.
struct PolicyKeys {
    record: PolicyRecord,
    keys: HashMap<u32, DataKey>,
    /// Epochs whose envelope this machine could not open, with the hash of
    /// the envelope refused: tried again only when the envelope changes (a
    /// grant re-wraps the same epoch to more machines).
    refused: HashMap<u32, blake3::Hash>,
    /// Epochs whose denial was logged (one line per policy and epoch).
    denial_logged: HashSet<u32>,
}

pub struct KeyTable {
    volume_key: DataKey,
    policies: HashMap<PolicyId, PolicyKeys>,
}

impl KeyTable {
    pub fn new(volume_key: DataKey) -> KeyTable {
        KeyTable {
            volume_key,
            policies: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Takes meta's list of policies; returns the ids whose envelopes hold an
    /// epoch this table has neither opened nor been refused.
    pub fn update(&mut self, records: Vec<PolicyRecord>) -> Vec<PolicyId> {
        let live: HashSet<PolicyId> = records.iter().map(|r| r.id).collect();
        self.policies.retain(|id, _| live.contains(id));
        let mut to_fetch = Vec::new();
        for record in records {
            let entry = self.policies.entry(record.id).or_insert_with(|| PolicyKeys {
                record: record.clone(),
                keys: HashMap::new(),
                refused: HashMap::new(),
                denial_logged: HashSet::new(),
            });
            // A destroyed epoch's key goes with its envelope.
            entry
                .keys
                .retain(|epoch, _| *epoch == NAME_KEY_EPOCH || record.live_epochs.contains(epoch));
            let unknown = record
                .live_epochs
                .iter()
                .chain(std::iter::once(&NAME_KEY_EPOCH))
                .any(|e| !entry.keys.contains_key(e) && !entry.refused.contains_key(e));
            entry.record = record;
            if unknown {
                to_fetch.push(entry.record.id);
            }
        }
        to_fetch
    }

    /// Policies whose current key (or name key) this machine was refused:
    /// their envelopes are looked at again, for a grant.
    pub fn refused_policies(&self) -> Vec<PolicyId> {
        self.policies
            .values()
            .filter(|p| {
                [p.record.current_epoch, NAME_KEY_EPOCH]
                    .iter()
                    .any(|e| !p.keys.contains_key(e) && p.refused.contains_key(e))
            })
            .map(|p| p.record.id)
            .collect()
    }

    /// The first time access to `policy`'s current epoch is denied: what to
    /// log and audit (then `None` until the epoch changes).
    pub fn first_denial(&mut self, policy: PolicyId) -> Option<KeyEvent> {
        let entry = self.policies.get_mut(&policy)?;
        let epoch = entry.record.current_epoch;
        if !entry.denial_logged.insert(epoch) {
            return None;
        }
        Some(KeyEvent::Denied {
            policy,
            epoch,
            group: entry.record.group.clone(),
        })
    }

    /// Opens the envelopes of a policy that this table has not tried yet,
    /// or that changed since they were refused.
    pub fn take_envelopes(&mut self, envelopes: &[KeyEnvelope], opener: Option<&dyn KeyOpener>) {
        for envelope in envelopes {
            let Some(entry) = self.policies.get_mut(&envelope.policy_id) else {
                continue;
            };
            let epoch = envelope.epoch;
            let hash = blake3::hash(&envelope.age);
            if entry.keys.contains_key(&epoch) || entry.refused.get(&epoch) == Some(&hash) {
                continue;
            }
            let group = entry.record.group.clone();
            let opened = match opener {
                Some(opener) => opener.open(envelope),
                None => Ok(None),
            };
            match opened {
                Ok(Some(key)) => {
                    entry.keys.insert(epoch, key);
                    entry.refused.remove(&epoch);
                    entry.denial_logged.remove(&epoch);
                    if let Some(opener) = opener.filter(|_| epoch != NAME_KEY_EPOCH) {
                        opener.event(KeyEvent::Unwrapped {
                            policy: envelope.policy_id,
                            epoch,
                            group,
                        });
                    }
                }
                // Not among the recipients: logged when access is denied.
                Ok(None) => {
                    entry.refused.insert(epoch, hash);
                }
                Err(error) => {
                    entry.refused.insert(epoch, hash);
                    tracing::error!(policy = envelope.policy_id, epoch, %error, "a key envelope is damaged");
                }
            }
        }
    }

    /// Whether data of `policy` may be read and written here now.
    pub fn has_access(&self, policy: PolicyId) -> bool {
        if policy == VOLUME_POLICY {
            return true;
        }
        self.policies
            .get(&policy)
            .is_some_and(|p| p.keys.contains_key(&p.record.current_epoch))
    }

    /// The epoch and key new data of `policy` is sealed under.
    pub fn sealing(&self, policy: PolicyId) -> FsResult<(u32, DataKey)> {
        if policy == VOLUME_POLICY {
            return Ok((0, self.volume_key.clone()));
        }
        let p = self.policies.get(&policy).ok_or(FsError::Access)?;
        let epoch = p.record.current_epoch;
        let key = p.keys.get(&epoch).ok_or(FsError::Access)?;
        Ok((epoch, key.clone()))
    }

    /// The key a piece sealed under `policy` at `epoch` opens with.
    pub fn opening(&self, policy: PolicyId, epoch: u32) -> FsResult<DataKey> {
        if policy == VOLUME_POLICY {
            return Ok(self.volume_key.clone());
        }
        if !self.has_access(policy) {
            return Err(FsError::Access);
        }
        let p = self.policies.get(&policy).ok_or(FsError::Access)?;
        p.keys.get(&epoch).cloned().ok_or(FsError::Access)
    }

    /// A key of `policy` this machine holds while it has access (epoch 0:
    /// the name key) — what an admin re-wraps for more machines.
    pub fn held(&self, policy: PolicyId, epoch: u32) -> Option<DataKey> {
        if !self.has_access(policy) {
            return None;
        }
        self.policies.get(&policy)?.keys.get(&epoch).cloned()
    }

    /// The key of `policy` at `epoch` if this machine unwrapped it, access
    /// or not (the volume key for policy 0): for checking what an identity
    /// can decrypt.
    pub fn unwrapped(&self, policy: PolicyId, epoch: u32) -> Option<DataKey> {
        if policy == VOLUME_POLICY {
            return Some(self.volume_key.clone());
        }
        self.policies.get(&policy)?.keys.get(&epoch).cloned()
    }

    /// The key that seals names and symlink targets of `policy`.
    pub fn name_key(&self, policy: PolicyId) -> FsResult<NameKey> {
        if !self.has_access(policy) {
            return Err(FsError::Access);
        }
        let p = self.policies.get(&policy).ok_or(FsError::Access)?;
        let key = p.keys.get(&NAME_KEY_EPOCH).ok_or(FsError::Access)?;
        Ok(NameKey::derive(key.as_bytes(), policy, NAME_KEY_EPOCH))
    }

    /// The policy's record as last fetched.
    pub fn record(&self, policy: PolicyId) -> Option<&PolicyRecord> {
        self.policies.get(&policy).map(|p| &p.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Opens envelopes whose age bytes are `b"for-me:" ++ key`.
    struct TestOpener(Mutex<Vec<KeyEvent>>);

    impl KeyOpener for TestOpener {
        fn open(&self, envelope: &KeyEnvelope) -> Result<Option<DataKey>, String> {
            match envelope.age.strip_prefix(b"for-me:") {
                Some(key) => Ok(Some(DataKey::from_bytes(key.try_into().map_err(|_| "bad length")?))),
                None if envelope.age == b"broken" => Err("broken".into()),
                None => Ok(None),
            }
        }
        fn event(&self, event: KeyEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    fn record(current: u32, live: &[u32]) -> PolicyRecord {
        PolicyRecord {
            id: 7,
            group: "cn=finance".into(),
            dir: 2,
            current_epoch: current,
            live_epochs: live.to_vec(),
            created: 0,
        }
    }

    fn envelope(epoch: u32, mine: bool, byte: u8) -> KeyEnvelope {
        let mut age = if mine { b"for-me:".to_vec() } else { b"other".to_vec() };
        if mine {
            age.extend_from_slice(&[byte; 32]);
        }
        KeyEnvelope {
            policy_id: 7,
            epoch,
            recipients: Vec::new(),
            age,
        }
    }

    #[test]
    fn access_follows_the_current_epoch() {
        let opener = TestOpener(Mutex::new(Vec::new()));
        let mut table = KeyTable::new(DataKey::from_bytes([1; 32]));
        assert_eq!(table.update(vec![record(1, &[1])]), vec![7]);
        assert!(!table.has_access(7), "no envelope opened yet");
        table.take_envelopes(&[envelope(0, true, 8), envelope(1, true, 9)], Some(&opener));
        assert!(table.has_access(7));
        assert!(table.name_key(7).is_ok());
        assert_eq!(table.sealing(7).unwrap().0, 1);
        assert_eq!(table.opening(7, 1).unwrap().as_bytes(), &[9; 32]);
        assert!(table.update(vec![record(1, &[1])]).is_empty(), "nothing new to fetch");

        // Revoked: the next epoch is not wrapped to this machine.
        assert_eq!(table.update(vec![record(2, &[1, 2])]), vec![7]);
        table.take_envelopes(&[envelope(1, true, 9), envelope(2, false, 0)], Some(&opener));
        assert!(!table.has_access(7));
        assert_eq!(table.sealing(7).unwrap_err(), FsError::Access);
        assert_eq!(
            table.opening(7, 1).unwrap_err(),
            FsError::Access,
            "old key held, access gone"
        );
        assert_eq!(table.name_key(7).unwrap_err(), FsError::Access, "names go with access");
        assert!(
            table.update(vec![record(2, &[1, 2])]).is_empty(),
            "no new epoch to fetch"
        );
        assert!(matches!(table.first_denial(7), Some(KeyEvent::Denied { epoch: 2, .. })));
        assert_eq!(table.first_denial(7), None, "one line per policy and epoch");
        let events = opener.0.lock().unwrap().clone();
        assert!(matches!(events[0], KeyEvent::Unwrapped { epoch: 1, .. }));
        assert_eq!(
            events.len(),
            1,
            "a refusal is reported when access is denied, not when the envelope is read"
        );

        // The same envelope again is not opened again; a re-wrapped one that
        // names this machine (a grant) gives access back.
        assert_eq!(table.refused_policies(), vec![7]);
        table.take_envelopes(&[envelope(2, false, 0)], Some(&opener));
        assert!(!table.has_access(7));
        table.take_envelopes(&[envelope(2, true, 10)], Some(&opener));
        assert!(table.has_access(7));
        assert_eq!(table.sealing(7).unwrap().1.as_bytes(), &[10; 32]);
        assert!(table.refused_policies().is_empty());
    }

    #[test]
    fn a_destroyed_epoch_takes_its_key_and_the_volume_key_always_works() {
        let mut table = KeyTable::new(DataKey::from_bytes([1; 32]));
        table.update(vec![record(2, &[1, 2])]);
        table.take_envelopes(
            &[envelope(0, true, 2), envelope(1, true, 3), envelope(2, true, 4)],
            Some(&TestOpener(Mutex::new(vec![]))),
        );
        assert!(table.opening(7, 1).is_ok());
        table.update(vec![record(2, &[2])]);
        assert_eq!(table.opening(7, 1).unwrap_err(), FsError::Access);
        assert_eq!(table.opening(7, 2).unwrap().as_bytes(), &[4; 32]);
        assert!(
            table.name_key(7).is_ok(),
            "the name key is not an epoch a rekey destroys"
        );
        assert_eq!(table.opening(0, 0).unwrap().as_bytes(), &[1; 32]);
        assert_eq!(table.sealing(0).unwrap().0, 0);
        table.update(Vec::new());
        assert!(!table.has_access(7), "a policy meta no longer lists is forgotten");
    }

    #[test]
    fn a_damaged_envelope_or_no_opener_denies() {
        let mut table = KeyTable::new(DataKey::from_bytes([1; 32]));
        table.update(vec![record(1, &[1])]);
        let mut broken = envelope(1, false, 0);
        broken.age = b"broken".to_vec();
        table.take_envelopes(&[broken], Some(&TestOpener(Mutex::new(vec![]))));
        assert!(!table.has_access(7));
        let mut table = KeyTable::new(DataKey::from_bytes([1; 32]));
        table.update(vec![record(1, &[1])]);
        table.take_envelopes(&[envelope(1, true, 1)], None);
        assert!(!table.has_access(7));
    }
}
