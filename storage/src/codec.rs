//! Chunk crypto and erasure coding: the pure, CPU-bound part of the data path.
//!
//! A piece of plaintext is sealed once with XChaCha20-Poly1305 under a data
//! key; the associated data binds it to its place (volume, inode, chunk index,
//! base offset, piece id, key id and epoch), so a ciphertext moved elsewhere
//! fails to open. The sealed bytes (`nonce | ciphertext | tag`) are then split
//! into k data shards, zero-padded to equal length, plus m parity shards.
//!
//! These functions are blocking; async callers run them on the blocking pool.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::error::{FsError, FsResult};

pub const NONCE_BYTES: usize = 24;
pub const TAG_BYTES: usize = 16;
pub const SEAL_OVERHEAD_BYTES: usize = NONCE_BYTES + TAG_BYTES;
pub const DATA_KEY_BYTES: usize = 32;

/// A 256-bit data key. Never logged, never sent to meta or nodes in clear.
#[derive(Clone)]
pub struct DataKey([u8; DATA_KEY_BYTES]);

impl DataKey {
    pub fn generate() -> DataKey {
        let mut key = [0u8; DATA_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        DataKey(key)
    }

    pub fn from_bytes(bytes: [u8; DATA_KEY_BYTES]) -> DataKey {
        DataKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; DATA_KEY_BYTES] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Where a piece belongs; all of it is authenticated, none of it is secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PiecePlace {
    pub volume_id: u128,
    pub ino: u64,
    pub chunk_index: u64,
    pub base: u32,
    pub piece_id: u128,
    pub key_id: u64,
    pub key_epoch: u32,
}

const AD_MAGIC: &[u8; 8] = b"sohofs/1";
const AD_BYTES: usize = 8 + 16 + 8 + 8 + 4 + 16 + 8 + 4;

impl PiecePlace {
    fn associated_data(&self) -> [u8; AD_BYTES] {
        let mut ad = [0u8; AD_BYTES];
        let mut at = 0;
        for part in [
            &AD_MAGIC[..],
            &self.volume_id.to_le_bytes(),
            &self.ino.to_le_bytes(),
            &self.chunk_index.to_le_bytes(),
            &self.base.to_le_bytes(),
            &self.piece_id.to_le_bytes(),
            &self.key_id.to_le_bytes(),
            &self.key_epoch.to_le_bytes(),
        ] {
            ad[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        debug_assert_eq!(at, AD_BYTES);
        ad
    }
}

/// Encrypts `plaintext` for `place`: returns `nonce | ciphertext | tag`.
pub fn seal(key: &DataKey, place: &PiecePlace, plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ad = place.associated_data();
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &ad,
            },
        )
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    let mut sealed = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    sealed
}

/// Decrypts what [`seal`] made for the same `place`; a wrong key, place or any
/// changed byte gives [`FsError::Corrupt`].
pub fn open(key: &DataKey, place: &PiecePlace, sealed: &[u8]) -> FsResult<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD_BYTES {
        return Err(FsError::Corrupt(format!(
            "sealed piece of {} bytes is shorter than its nonce and tag",
            sealed.len()
        )));
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let ad = place.associated_data();
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &ad,
            },
        )
        .map_err(|_| FsError::Corrupt(format!("piece {:032x} failed authentication", place.piece_id)))
}

/// Length of each shard for `sealed_len` bytes over `data_shards`.
pub fn shard_len(sealed_len: usize, data_shards: usize) -> usize {
    sealed_len.div_ceil(data_shards).max(1)
}

fn reed_solomon(data_shards: usize, parity_shards: usize) -> FsResult<ReedSolomon> {
    ReedSolomon::new(data_shards, parity_shards).map_err(|e| {
        FsError::Invalid(if data_shards == 0 {
            "k must be at least 1"
        } else {
            leak_rs_error(e)
        })
    })
}

fn leak_rs_error(error: reed_solomon_erasure::Error) -> &'static str {
    match error {
        reed_solomon_erasure::Error::TooFewDataShards => "too few data shards",
        reed_solomon_erasure::Error::TooFewParityShards => "too few parity shards",
        reed_solomon_erasure::Error::TooManyShards => "k + m is larger than 256",
        _ => "bad erasure-coding parameters",
    }
}

/// Splits `sealed` into `data_shards` + `parity_shards` equal shards.
pub fn encode_stripe(sealed: &[u8], data_shards: usize, parity_shards: usize) -> FsResult<Vec<Vec<u8>>> {
    let len = shard_len(sealed.len(), data_shards);
    let mut shards: Vec<Vec<u8>> = Vec::with_capacity(data_shards + parity_shards);
    for index in 0..data_shards {
        let start = (index * len).min(sealed.len());
        let end = ((index + 1) * len).min(sealed.len());
        let mut shard = Vec::with_capacity(len);
        shard.extend_from_slice(&sealed[start..end]);
        shard.resize(len, 0);
        shards.push(shard);
    }
    shards.resize(data_shards + parity_shards, vec![0u8; len]);
    if parity_shards > 0 {
        reed_solomon(data_shards, parity_shards)?
            .encode(&mut shards)
            .map_err(|e| FsError::Invalid(leak_rs_error(e)))?;
    }
    Ok(shards)
}

/// Rebuilds the sealed bytes from any `data_shards` of the shards; `None`
/// marks a shard that is missing or failed its hash.
pub fn decode_stripe(
    mut shards: Vec<Option<Vec<u8>>>,
    data_shards: usize,
    parity_shards: usize,
    sealed_len: usize,
) -> FsResult<Vec<u8>> {
    let present = shards.iter().filter(|s| s.is_some()).count();
    if shards.len() != data_shards + parity_shards || present < data_shards {
        return Err(FsError::Io(format!(
            "only {present} of {} shards readable, {data_shards} needed",
            data_shards + parity_shards
        )));
    }
    let len = shard_len(sealed_len, data_shards);
    if shards.iter().flatten().any(|s| s.len() != len) {
        return Err(FsError::Corrupt("shard length does not match its record".into()));
    }
    if shards[..data_shards].iter().any(|s| s.is_none()) {
        reed_solomon(data_shards, parity_shards)?
            .reconstruct_data(&mut shards)
            .map_err(|e| FsError::Io(format!("reconstruction failed: {}", leak_rs_error(e))))?;
    }
    let mut sealed = Vec::with_capacity(len * data_shards);
    for shard in shards.into_iter().take(data_shards) {
        sealed.extend_from_slice(&shard.expect("data shards are present after reconstruction"));
    }
    sealed.truncate(sealed_len);
    Ok(sealed)
}

/// Rebuilds every missing shard (data or parity) of a stripe from any
/// `data_shards` of them. Works on ciphertext: no key is needed, which is
/// why meta can repair stripes.
pub fn rebuild_shards(
    mut shards: Vec<Option<Vec<u8>>>,
    data_shards: usize,
    parity_shards: usize,
) -> FsResult<Vec<Vec<u8>>> {
    let present = shards.iter().filter(|s| s.is_some()).count();
    if shards.len() != data_shards + parity_shards || present < data_shards {
        return Err(FsError::Io(format!(
            "only {present} of {} shards readable, {data_shards} needed",
            data_shards + parity_shards
        )));
    }
    let mut lengths = shards.iter().flatten().map(Vec::len);
    let first = lengths.next().unwrap_or(0);
    if lengths.any(|len| len != first) {
        return Err(FsError::Corrupt("shards of one stripe differ in length".into()));
    }
    if present < shards.len() {
        reed_solomon(data_shards, parity_shards)?
            .reconstruct(&mut shards)
            .map_err(|e| FsError::Io(format!("reconstruction failed: {}", leak_rs_error(e))))?;
    }
    Ok(shards
        .into_iter()
        .map(|s| s.expect("every shard is present after reconstruction"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_data_and_parity_shards_are_rebuilt_exactly() {
        let sealed: Vec<u8> = (0..5_001u32).map(|i| (i * 13) as u8).collect();
        let shards = encode_stripe(&sealed, 4, 2).unwrap();
        let partial: Vec<Option<Vec<u8>>> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| (i != 1 && i != 5).then(|| s.clone()))
            .collect();
        assert_eq!(rebuild_shards(partial, 4, 2).unwrap(), shards);
        let too_few: Vec<Option<Vec<u8>>> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| (i < 3).then(|| s.clone()))
            .collect();
        assert!(rebuild_shards(too_few, 4, 2).is_err());
    }

    fn place() -> PiecePlace {
        PiecePlace {
            volume_id: 1,
            ino: 2,
            chunk_index: 3,
            base: 0,
            piece_id: 4,
            key_id: 0,
            key_epoch: 0,
        }
    }

    #[test]
    fn sealed_piece_opens_only_in_its_place() {
        let key = DataKey::generate();
        let sealed = seal(&key, &place(), b"hello");
        assert_eq!(open(&key, &place(), &sealed).unwrap(), b"hello");
        let moved = PiecePlace {
            chunk_index: 4,
            ..place()
        };
        assert!(open(&key, &moved, &sealed).unwrap_err().is_corruption());
        assert!(open(&DataKey::generate(), &place(), &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(open(&key, &place(), &flipped).is_err());
    }

    #[test]
    fn any_k_shards_rebuild_the_stripe() {
        let sealed: Vec<u8> = (0..10_007u32).map(|i| (i * 7) as u8).collect();
        let shards = encode_stripe(&sealed, 4, 2).unwrap();
        assert_eq!(shards.len(), 6);
        for lost_a in 0..6 {
            for lost_b in lost_a + 1..6 {
                let partial: Vec<Option<Vec<u8>>> = shards
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i != lost_a && i != lost_b).then(|| s.clone()))
                    .collect();
                assert_eq!(decode_stripe(partial, 4, 2, sealed.len()).unwrap(), sealed);
            }
        }
        let three: Vec<Option<Vec<u8>>> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| (i >= 3).then(|| s.clone()))
            .collect();
        assert!(decode_stripe(three, 4, 2, sealed.len()).is_err());
    }
}
