#![no_main]

use libfuzzer_sys::fuzz_target;
use sohofs_format::frame::{decode_body, encode_body};
use sohofs_format::messages::{NodeRequest, NodeResponse};
use sohofs_fuzz::decode_and_round_trip;

fuzz_target!(|bytes: &[u8]| {
    decode_and_round_trip(bytes, |body| decode_body::<NodeRequest>(body), encode_body);
    decode_and_round_trip(bytes, |body| decode_body::<NodeResponse>(body), encode_body);
});
