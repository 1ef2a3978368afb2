//! The envelope shared by every binary artefact: magic, version, header, digest, payload, end.
//!
//! ```text
//! offset      size  field
//! 0           8     magic (one per kind of object)
//! 8           2     format version, u16 little-endian
//! 10          2     flags, u16 little-endian; MUST be 0 in version 1
//! 12          4     header length H, u32 little-endian; 1 <= H <= MAX_HEADER_BYTES
//! 16          H     header: canonical bincode (see `canonical`)
//! 16+H        32    digest: BLAKE3-derive(ENVELOPE, bytes[0 .. 16+H])
//! 48+H        P     payload (snapshots: the data section; other kinds: empty)
//! 48+H+P      8     end marker 89 52 56 45 4E 44 0D 0A ("\x89RVEND\r\n")
//! ```
//!
//! The payload length P is not stored here: each kind derives it from its header. The object
//! is exactly 56 + H + P bytes long.

use std::io::Read;

use crate::error::{Error, Result};
use crate::hash::{DomainHasher, Hash32, context};
use crate::limits::MAX_HEADER_BYTES;

/// Size of the fixed preamble.
pub const PREAMBLE_LEN: usize = 16;
/// Size of the header digest.
pub const DIGEST_LEN: usize = 32;
/// The end marker.
pub const END_MARKER: [u8; 8] = *b"\x89RVEND\r\n";
/// Fixed bytes around header and payload.
pub const OVERHEAD: u64 = (PREAMBLE_LEN + DIGEST_LEN + END_MARKER.len()) as u64;

/// A kind of enveloped object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// First eight bytes.
    pub magic: [u8; 8],
    /// Human name used in errors ("snapshot", "ledger segment", …).
    pub name: &'static str,
    /// Versions this reader understands; the first is the one written.
    pub versions: &'static [u16],
}

/// Checkpoint and export snapshots.
pub const SNAPSHOT: Kind = Kind {
    magic: *b"\x89RVSNAP\n",
    name: "snapshot",
    versions: &[1],
};
/// Ledger segments.
pub const LEDGER_SEGMENT: Kind = Kind {
    magic: *b"\x89RVLEDG\n",
    name: "ledger segment",
    versions: &[1],
};
/// Dataset manifests.
pub const DATASET_MANIFEST: Kind = Kind {
    magic: *b"\x89RVDSET\n",
    name: "dataset manifest",
    versions: &[1],
};
/// Detached signatures.
pub const SIGNATURE: Kind = Kind {
    magic: *b"\x89RVSIGN\n",
    name: "signature",
    versions: &[1],
};

impl Kind {
    /// The version this writer produces.
    pub fn current_version(&self) -> u16 {
        self.versions[0]
    }
}

/// Encode an object: preamble, header, digest, payload pieces in order, end marker.
pub fn encode(kind: Kind, header: &[u8], payload: &[&[u8]]) -> Vec<u8> {
    let mut out = head(kind, header);
    for piece in payload {
        out.extend_from_slice(piece);
    }
    out.extend_from_slice(&END_MARKER);
    out
}

/// Preamble, header and digest: everything before the payload.
pub fn head(kind: Kind, header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREAMBLE_LEN + header.len() + DIGEST_LEN);
    out.extend_from_slice(&kind.magic);
    out.extend_from_slice(&kind.current_version().to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    let header_len = u32::try_from(header.len()).expect("writers keep headers under the limit");
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header);
    let digest = digest(&out);
    out.extend_from_slice(&digest.0);
    out
}

pub(crate) fn digest(preamble_and_header: &[u8]) -> Hash32 {
    let mut h = DomainHasher::new(context::ENVELOPE);
    h.bytes(preamble_and_header);
    h.finish()
}

/// Validate the 16-byte preamble; returns the version and the header length.
fn parse_preamble(kind: Kind, pre: &[u8], artefact: &str) -> Result<(u16, usize)> {
    let magic = &pre[0..8];
    if magic != kind.magic {
        return Err(Error::BadMagic {
            artefact: artefact.to_string(),
            expected: kind.name,
            found: hex::encode(magic),
        });
    }
    let version = u16::from_le_bytes([pre[8], pre[9]]);
    if !kind.versions.contains(&version) {
        return Err(Error::UnsupportedVersion {
            artefact: artefact.to_string(),
            found: version,
            supported: kind.versions,
        });
    }
    let flags = u16::from_le_bytes([pre[10], pre[11]]);
    if flags != 0 {
        return Err(Error::ReservedFlags {
            artefact: artefact.to_string(),
            flags,
        });
    }
    let header_len = u32::from_le_bytes([pre[12], pre[13], pre[14], pre[15]]) as usize;
    if header_len == 0 || header_len > MAX_HEADER_BYTES {
        return Err(Error::HeaderTooLarge {
            artefact: artefact.to_string(),
            declared: header_len as u64,
            max: MAX_HEADER_BYTES as u64,
        });
    }
    Ok((version, header_len))
}

fn check_digest(preamble_and_header: &[u8], stored: &[u8], artefact: &str) -> Result<()> {
    let computed = digest(preamble_and_header);
    if computed.0 != stored {
        let mut s = [0u8; 32];
        s.copy_from_slice(stored);
        return Err(Error::HeaderDigestMismatch {
            artefact: artefact.to_string(),
            stored: Hash32(s),
            computed,
        });
    }
    Ok(())
}

/// An object whose preamble, header and digest have been checked; the payload is not yet.
#[derive(Debug)]
pub struct Opened<'a> {
    /// Format version found.
    pub version: u16,
    /// Header bytes (digest verified).
    pub header: &'a [u8],
    rest: &'a [u8],
    artefact: &'a str,
}

/// Check preamble, header length and digest of an in-memory object.
pub fn open<'a>(kind: Kind, bytes: &'a [u8], artefact: &'a str) -> Result<Opened<'a>> {
    let truncated = |needed: u64| Error::Truncated {
        artefact: artefact.to_string(),
        needed,
        available: bytes.len() as u64,
    };
    let pre = bytes
        .get(..PREAMBLE_LEN)
        .ok_or_else(|| truncated(OVERHEAD))?;
    let (version, header_len) = parse_preamble(kind, pre, artefact)?;
    let header_end = PREAMBLE_LEN + header_len;
    let digest_end = header_end + DIGEST_LEN;
    let stored = bytes
        .get(header_end..digest_end)
        .ok_or_else(|| truncated(OVERHEAD + header_len as u64))?;
    check_digest(&bytes[..header_end], stored, artefact)?;
    Ok(Opened {
        version,
        header: &bytes[PREAMBLE_LEN..header_end],
        rest: &bytes[digest_end..],
        artefact,
    })
}

impl<'a> Opened<'a> {
    /// Payload bytes present, if the object ends with an intact end marker (so that a table
    /// claiming more data than this is lying, rather than the object being cut short).
    pub fn marked_payload_len(&self) -> Option<u64> {
        self.rest
            .ends_with(&END_MARKER)
            .then(|| (self.rest.len() - END_MARKER.len()) as u64)
    }

    /// Split off a payload of exactly `payload_len` bytes and check the end marker and that
    /// nothing follows it.
    pub fn payload(&self, payload_len: u64) -> Result<&'a [u8]> {
        let available = self.rest.len() as u64;
        let needed = payload_len
            .checked_add(END_MARKER.len() as u64)
            .ok_or_else(|| Error::Truncated {
                artefact: self.artefact.to_string(),
                needed: u64::MAX,
                available,
            })?;
        if available < needed {
            let prefix = (PREAMBLE_LEN + self.header.len() + DIGEST_LEN) as u64;
            return Err(Error::Truncated {
                artefact: self.artefact.to_string(),
                needed: prefix.saturating_add(needed),
                available: prefix + available,
            });
        }
        let p = payload_len as usize;
        let extra = available - needed;
        if self.rest[p..p + END_MARKER.len()] == END_MARKER {
            if extra != 0 {
                return Err(Error::TrailingBytes {
                    artefact: self.artefact.to_string(),
                    extra,
                });
            }
        } else if self.rest.ends_with(&END_MARKER) {
            // The marker is intact at the very end: bytes sit between payload and marker.
            return Err(Error::TrailingBytes {
                artefact: self.artefact.to_string(),
                extra,
            });
        } else {
            return Err(Error::MissingEndMarker {
                artefact: self.artefact.to_string(),
            });
        }
        Ok(&self.rest[..p])
    }
}

/// Streaming counterpart of [`open`]: reads and checks preamble, header and digest from `r`,
/// returning the version and the header bytes. The payload is left unread.
pub fn read_open<R: Read>(kind: Kind, r: &mut R, artefact: &str) -> Result<(u16, Vec<u8>)> {
    let mut pre = [0u8; PREAMBLE_LEN];
    read_exact(r, &mut pre, artefact, 0)?;
    let (version, header_len) = parse_preamble(kind, &pre, artefact)?;
    // The header length is bounded by MAX_HEADER_BYTES above, so this allocation is bounded.
    let mut buf = vec![0u8; PREAMBLE_LEN + header_len + DIGEST_LEN];
    buf[..PREAMBLE_LEN].copy_from_slice(&pre);
    read_exact(r, &mut buf[PREAMBLE_LEN..], artefact, PREAMBLE_LEN as u64)?;
    let header_end = PREAMBLE_LEN + header_len;
    check_digest(&buf[..header_end], &buf[header_end..], artefact)?;
    buf.truncate(header_end);
    buf.drain(..PREAMBLE_LEN);
    Ok((version, buf))
}

/// Streaming check of the end marker and of end-of-input after the payload.
pub fn read_close<R: Read>(r: &mut R, artefact: &str, offset: u64) -> Result<()> {
    let mut end = [0u8; 8];
    read_exact(r, &mut end, artefact, offset)?;
    if end != END_MARKER {
        return Err(Error::MissingEndMarker {
            artefact: artefact.to_string(),
        });
    }
    let mut extra = 0u64;
    let mut sink = [0u8; 4096];
    loop {
        match r.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => extra += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(Error::from_io(artefact, source)),
        }
    }
    if extra != 0 {
        return Err(Error::TrailingBytes {
            artefact: artefact.to_string(),
            extra,
        });
    }
    Ok(())
}

/// `read_exact` that reports a short read as [`Error::Truncated`] with absolute offsets.
pub fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], artefact: &str, offset: u64) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(Error::Truncated {
                    artefact: artefact.to_string(),
                    needed: offset + buf.len() as u64,
                    available: offset + filled as u64,
                });
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(Error::from_io(artefact, source)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_and_without_payload() {
        let bytes = encode(LEDGER_SEGMENT, b"header", &[b"pay", b"load"]);
        assert_eq!(bytes.len() as u64, OVERHEAD + 6 + 7);
        let o = open(LEDGER_SEGMENT, &bytes, "x").expect("opens");
        assert_eq!(o.header, b"header");
        assert_eq!(o.payload(7).expect("payload"), b"payload");
        assert!(matches!(
            o.payload(6),
            Err(Error::TrailingBytes { extra: 1, .. })
        ));
        assert!(matches!(o.payload(8), Err(Error::Truncated { .. })));

        let mut r = std::io::Cursor::new(&bytes);
        let (v, h) = read_open(LEDGER_SEGMENT, &mut r, "x").expect("streams");
        assert_eq!((v, h.as_slice()), (1, &b"header"[..]));
        let mut p = [0u8; 7];
        read_exact(&mut r, &mut p, "x", 0).expect("payload");
        read_close(&mut r, "x", 0).expect("closes");
    }

    #[test]
    fn kinds_do_not_open_each_other() {
        let bytes = encode(LEDGER_SEGMENT, b"h", &[]);
        assert!(matches!(
            open(SNAPSHOT, &bytes, "x"),
            Err(Error::BadMagic {
                expected: "snapshot",
                ..
            })
        ));
    }
}
