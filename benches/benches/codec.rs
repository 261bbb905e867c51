//! The chunk codec at one full chunk (4 MiB), next to the bare library calls
//! it is built from, so that what our layer adds (copies, allocations,
//! associated data, shard splitting) shows as the gap between neighbours.
//!
//! Every benchmark reports throughput in plaintext bytes of one chunk, so the
//! figures compare directly:
//!
//! - `encrypt+encode`: `codec::seal` then `codec::encode_stripe` (4+2), the
//!   CPU work of flushing one chunk; next to `seal`, `encode_stripe`, bare
//!   XChaCha20-Poly1305 encryption and bare `ReedSolomon::encode`;
//! - `decode+decrypt`: `codec::decode_stripe` then `codec::open`, with all
//!   six shards and with two data shards missing (the worst case: both must
//!   be rebuilt from parity); next to each step and the bare library calls;
//! - `blake3`: what a node spends hashing shards (the 4 MiB of data shards
//!   of a chunk, plus 2 MiB of parity, on every put and every get).
//!
//! Run: `cargo bench -p sohofs-benches --bench codec`.

use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::RngCore;
use reed_solomon_erasure::galois_8::ReedSolomon;
use sohofs_storage::codec::{self, DataKey, PiecePlace};

const CHUNK_BYTES: usize = 4 * 1024 * 1024;
const DATA_SHARDS: usize = 4;
const PARITY_SHARDS: usize = 2;
/// Which shards the degraded read lacks: two data shards, so that both must
/// be reconstructed (losing parity shards would cost nothing).
const MISSING_SHARDS: [usize; 2] = [0, 1];

fn place() -> PiecePlace {
    PiecePlace {
        volume_id: 0x5eed,
        ino: 42,
        chunk_index: 7,
        base: 0,
        piece_id: 0x0123_4567_89ab_cdef,
        key_id: 1,
        key_epoch: 1,
    }
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

/// Copies of `shards`, with the ones at `missing` left out.
fn shards_without(shards: &[Vec<u8>], missing: &[usize]) -> Vec<Option<Vec<u8>>> {
    shards
        .iter()
        .enumerate()
        .map(|(index, shard)| (!missing.contains(&index)).then(|| shard.clone()))
        .collect()
}

fn encrypt_and_encode(c: &mut Criterion) {
    let key = DataKey::generate();
    let place = place();
    let plaintext = random_bytes(CHUNK_BYTES);
    let sealed = codec::seal(&key, &place, &plaintext);

    let mut group = c.benchmark_group("encrypt+encode 4MiB");
    group.throughput(Throughput::Bytes(CHUNK_BYTES as u64));

    group.bench_function("codec seal + encode_stripe 4+2", |b| {
        b.iter(|| {
            let sealed = codec::seal(&key, &place, &plaintext);
            codec::encode_stripe(&sealed, DATA_SHARDS, PARITY_SHARDS).expect("encode")
        })
    });
    group.bench_function("codec seal", |b| b.iter(|| codec::seal(&key, &place, &plaintext)));
    group.bench_function("codec encode_stripe 4+2", |b| {
        b.iter(|| codec::encode_stripe(&sealed, DATA_SHARDS, PARITY_SHARDS).expect("encode"))
    });

    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let nonce = XNonce::default();
    group.bench_function("bare XChaCha20Poly1305 encrypt", |b| {
        b.iter(|| cipher.encrypt(&nonce, plaintext.as_slice()).expect("encrypt"))
    });

    // The library encodes in place into shards the caller has already cut;
    // cutting them is part of what `encode_stripe` adds.
    let reed_solomon = ReedSolomon::new(DATA_SHARDS, PARITY_SHARDS).expect("4+2 is valid");
    let shard_bytes = codec::shard_len(sealed.len(), DATA_SHARDS);
    let mut shards: Vec<Vec<u8>> = sealed
        .chunks(shard_bytes)
        .map(|piece| {
            let mut shard = piece.to_vec();
            shard.resize(shard_bytes, 0);
            shard
        })
        .collect();
    shards.resize(DATA_SHARDS + PARITY_SHARDS, vec![0u8; shard_bytes]);
    group.bench_function("bare ReedSolomon::encode 4+2", |b| {
        b.iter(|| reed_solomon.encode(&mut shards).expect("encode"))
    });

    group.bench_function("bare blake3", |b| b.iter(|| blake3::hash(&plaintext)));
    group.finish();
}

fn decode_and_decrypt(c: &mut Criterion) {
    let key = DataKey::generate();
    let place = place();
    let plaintext = random_bytes(CHUNK_BYTES);
    let sealed = codec::seal(&key, &place, &plaintext);
    let shards = codec::encode_stripe(&sealed, DATA_SHARDS, PARITY_SHARDS).expect("encode");
    let sealed_len = sealed.len();

    // A benchmark that measures wrong results measures nothing.
    for missing in [&[][..], &MISSING_SHARDS[..]] {
        let decoded = codec::decode_stripe(shards_without(&shards, missing), DATA_SHARDS, PARITY_SHARDS, sealed_len)
            .expect("decode");
        assert_eq!(codec::open(&key, &place, &decoded).expect("open"), plaintext);
    }

    let mut group = c.benchmark_group("decode+decrypt 4MiB");
    group.throughput(Throughput::Bytes(CHUNK_BYTES as u64));

    for (label, missing) in [("all shards", &[][..]), ("2 data shards missing", &MISSING_SHARDS[..])] {
        // The shards are cloned outside the timed part: `decode_stripe` takes
        // them by value, as the volume hands over what it fetched.
        group.bench_function(format!("codec decode_stripe + open, {label}"), |b| {
            b.iter_batched(
                || shards_without(&shards, missing),
                |present| {
                    let decoded =
                        codec::decode_stripe(present, DATA_SHARDS, PARITY_SHARDS, sealed_len).expect("decode");
                    codec::open(&key, &place, &decoded).expect("open")
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_function(format!("codec decode_stripe, {label}"), |b| {
            b.iter_batched(
                || shards_without(&shards, missing),
                |present| codec::decode_stripe(present, DATA_SHARDS, PARITY_SHARDS, sealed_len).expect("decode"),
                BatchSize::LargeInput,
            )
        });
    }

    let reed_solomon = ReedSolomon::new(DATA_SHARDS, PARITY_SHARDS).expect("4+2 is valid");
    group.bench_function("bare ReedSolomon::reconstruct_data, 2 data shards missing", |b| {
        b.iter_batched(
            || shards_without(&shards, &MISSING_SHARDS),
            |mut present| {
                reed_solomon.reconstruct_data(&mut present).expect("reconstruct");
                present
            },
            BatchSize::LargeInput,
        )
    });

    group.bench_function("codec open", |b| {
        b.iter(|| codec::open(&key, &place, &sealed).expect("open"))
    });

    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let nonce = XNonce::default();
    let ciphertext = cipher.encrypt(&nonce, plaintext.as_slice()).expect("encrypt");
    group.bench_function("bare XChaCha20Poly1305 decrypt", |b| {
        b.iter(|| cipher.decrypt(&nonce, ciphertext.as_slice()).expect("decrypt"))
    });
    group.finish();
}

/// Two cores, shared with compilers: short, few samples; each benchmark
/// costs about 4 s. Command-line flags (`--measurement-time`, ...) still win:
/// `criterion_group!` applies them over this.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = codec_benches;
    config = config();
    targets = encrypt_and_encode, decode_and_decrypt
}
criterion_main!(codec_benches);
