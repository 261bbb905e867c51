#![no_main]

use libfuzzer_sys::fuzz_target;
use sohofs_format::frame::FrameHeader;
use sohofs_format::{FRAME_BODY_BYTES_MAX, FRAME_DATA_BYTES_MAX, FRAME_HEADER_BYTES};
use sohofs_fuzz::decode_and_round_trip;

/// The reserved byte of the frame header, written as zero and not read.
const RESERVED_AT: usize = 7;

fuzz_target!(|bytes: &[u8]| {
    let decoded = decode_and_round_trip(bytes, FrameHeader::decode, |header| {
        header.encode().to_vec()
    });
    if let Some(header) = decoded {
        // The decoder promises lengths that are safe to allocate.
        assert!(header.body_len <= FRAME_BODY_BYTES_MAX);
        assert!(header.data_len <= FRAME_DATA_BYTES_MAX);
        let mut canonical = bytes[..FRAME_HEADER_BYTES].to_vec();
        canonical[RESERVED_AT] = 0;
        assert_eq!(header.encode().as_slice(), canonical.as_slice());
    }
});
