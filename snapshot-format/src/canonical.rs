//! The one bincode configuration of the format, and exact decoding under the safety limits.
//!
//! Configuration: bincode 2.0.1 `standard()` with little-endian byte order and *fixed-width*
//! integers: `u8`…`u64` are 1…8 little-endian bytes, `u128` 16 bytes, lengths of strings and
//! sequences are `u64`, enum variant indices `u32`, `Option` a `u8` tag (0 none, 1 some) then
//! the value, `bool` one byte, fixed arrays `[u8; N]` their N bytes with no length. Strings are
//! UTF-8. This makes every encoding canonical: one value, one byte string.

use bincode::config::{Configuration, Fixint, Limit, LittleEndian};

use crate::error::{Error, Result};
use crate::limits::MAX_HEADER_BYTES;

type Canonical = Configuration<LittleEndian, Fixint, Limit<MAX_HEADER_BYTES>>;

fn config() -> Canonical {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_HEADER_BYTES>()
}

/// The canonical bytes of a value.
pub fn encode<T: bincode::Encode>(value: &T) -> Vec<u8> {
    // Encoding into a Vec only fails for values over the limit, which the writers never build:
    // they validate sizes before encoding. A failure here is a bug, not bad input.
    bincode::encode_to_vec(value, config()).expect("canonical encoding of a validated value")
}

/// Decode a value that must span `bytes` exactly.
pub fn decode_exact<T: bincode::Decode<()>>(bytes: &[u8], artefact: &str) -> Result<T> {
    let (value, used) = bincode::decode_from_slice::<T, _>(bytes, config()).map_err(|e| {
        Error::MalformedHeader {
            artefact: artefact.to_string(),
            detail: e.to_string(),
        }
    })?;
    if used != bytes.len() {
        return Err(Error::MalformedHeader {
            artefact: artefact.to_string(),
            detail: format!(
                "{} unused bytes at the end of the header",
                bytes.len() - used
            ),
        });
    }
    Ok(value)
}
