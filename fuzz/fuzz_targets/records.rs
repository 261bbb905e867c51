#![no_main]

use libfuzzer_sys::fuzz_target;
use sohofs_format::{ChunkRecord, Dentry, GcRecord, Inode, KeyEnvelope, NodeRecord, PolicyRecord, VolumeRecord};
use sohofs_fuzz::decode_and_round_trip;

fuzz_target!(|bytes: &[u8]| {
    let accepted = [
        decode_and_round_trip(bytes, Inode::decode, Inode::encode).is_some(),
        decode_and_round_trip(bytes, Dentry::decode, Dentry::encode).is_some(),
        decode_and_round_trip(bytes, VolumeRecord::decode, VolumeRecord::encode).is_some(),
        decode_and_round_trip(bytes, ChunkRecord::decode, ChunkRecord::encode).is_some(),
        decode_and_round_trip(bytes, NodeRecord::decode, NodeRecord::encode).is_some(),
        decode_and_round_trip(bytes, GcRecord::decode, GcRecord::encode).is_some(),
        decode_and_round_trip(bytes, KeyEnvelope::decode, KeyEnvelope::encode).is_some(),
        decode_and_round_trip(bytes, PolicyRecord::decode, PolicyRecord::encode).is_some(),
    ];
    // The magics differ, so no bytes are two records at once.
    assert!(accepted.iter().filter(|&&accepted| accepted).count() <= 1);
});
