#![no_main]

use libfuzzer_sys::fuzz_target;
use sohofs_format::rpc_call::{check_call, Malformed};

fuzz_target!(|bytes: &[u8]| {
    // Any bytes from a client: an answer, never a panic. A record that passes
    // has at least a call header (xid, type, RPC version, program, version,
    // procedure) and two opaque_auth headers.
    if check_call(bytes).is_ok() {
        assert!(bytes.len() >= 40);
    } else if let Err(Malformed::TooLong { bytes: len, max, .. }) = check_call(bytes) {
        assert!(len > max);
    }
});
