#![no_main]

use libfuzzer_sys::fuzz_target;
use sohofs_format::{ShardHeader, SHARD_HEADER_BYTES};
use sohofs_fuzz::decode_and_round_trip;

/// Reserved byte ranges of the shard header, written as zero and not read.
const RESERVED: [std::ops::Range<usize>; 2] = [6..8, 25..28];

fuzz_target!(|bytes: &[u8]| {
    let decoded = decode_and_round_trip(bytes, ShardHeader::decode, |header| {
        header.encode().to_vec()
    });
    if let Some(header) = decoded {
        // Every byte but the reserved ones is read, so re-encoding gives the
        // input back with its reserved bytes zeroed.
        let mut canonical = bytes[..SHARD_HEADER_BYTES].to_vec();
        for range in RESERVED {
            canonical[range].fill(0);
        }
        assert_eq!(header.encode().as_slice(), canonical.as_slice());
    }
});
