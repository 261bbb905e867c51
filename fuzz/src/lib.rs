//! The properties that the fuzz targets check on sohofs-format's decoders.
//!
//! A decoder must not panic on any input. Where it accepts an input, the value
//! must survive a round trip: encoding it and decoding that gives the value
//! back. The bytes themselves need not survive: postcard reads an over-long
//! varint (`80 00` is 0) and the fixed headers ignore their reserved bytes, so
//! re-encoding gives the canonical form, not always the input.

use std::fmt::Debug;

use sohofs_format::DecodeError;

/// Decodes `bytes`; if that succeeds, asserts the round trip and returns the
/// value.
pub fn decode_and_round_trip<T: PartialEq + Debug>(
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
    encode: impl Fn(&T) -> Vec<u8>,
) -> Option<T> {
    let value = decode(bytes).ok()?;
    let encoded = encode(&value);
    match decode(&encoded) {
        Ok(again) => assert_eq!(again, value, "value changed over a round trip"),
        Err(error) => panic!("the encoding of {value:?} is refused: {error}"),
    }
    Some(value)
}
