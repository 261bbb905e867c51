#![no_main]

use libfuzzer_sys::fuzz_target;
use sohofs_format::{NfsHandle, NFS_HANDLE_BYTES};
use sohofs_fuzz::decode_and_round_trip;

fuzz_target!(|bytes: &[u8]| {
    let decoded = decode_and_round_trip(bytes, NfsHandle::decode, |handle| handle.encode().to_vec());
    if let Some(handle) = decoded {
        // Nothing is ignored: an accepted handle is exactly its encoding.
        assert_eq!(bytes.len(), NFS_HANDLE_BYTES);
        assert_eq!(handle.encode().as_slice(), bytes);
    }
});
