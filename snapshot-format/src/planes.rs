//! Codec 2, byte-grouped zstd (`planes`): the bytes of each element position stored as
//! separate planes, each compressed on its own, in fixed-size chunks.
//!
//! The bytes of a float differ in how predictable they are: the exponent of trained weights takes
//! a handful of values, the low mantissa bytes are close to uniform. Interleaved, they defeat a
//! general-purpose compressor; grouped, the exponent plane shrinks to a fraction and the
//! mantissa planes cost what their entropy says and no more. For floats the sign bit is first
//! rotated to the lowest bit, so that the highest plane holds exactly the exponent (F32, BF16)
//! or its top eight bits (F64), with the sign beside the mantissa's low bits.
//!
//! Layout (specs/snapshot-format.md §3.3.1), all integers little-endian:
//!
//! ```text
//! u32 chunk_bytes                       // a positive multiple of the element size, ≤ 64 MiB
//! n_chunks × size × { u8 method, u32 len }  // the index, chunk by chunk, plane 0 first
//! the streams, in index order
//! ```
//!
//! `n_chunks = ceil(raw_len / chunk_bytes)`; the last chunk may be short. Plane `p` of a chunk
//! of `m` elements holds byte `p` (0 = least significant) of each element's (rotated)
//! little-endian bits: `m` bytes. Method 0 stores those bytes; method 1 is exactly one zstd
//! frame whose content they are. Chunks decode independently, so decoding runs in parallel.

use rayon::prelude::*;
use zstd::zstd_safe::{CParameter, ParamSwitch};

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Largest chunk a reader accepts.
pub const MAX_CHUNK_BYTES: u32 = 64 << 20;

/// Chunk size the reference writer uses (the `checkpoint_codecs` benchmark: 256 KiB and 1 MiB
/// compress alike, 256 KiB decodes faster on all threads).
pub const DEFAULT_CHUNK_BYTES: u32 = 256 << 10;

/// zstd level of each plane in the reference writer, but a float's exponent plane (the
/// `checkpoint_codecs` benchmark: level 1 is both smaller and faster than level 3 on planes).
pub const DEFAULT_LEVEL: i32 = 1;

/// zstd level of a float's exponent plane (its top plane, after the rotation): zstd's fastest
/// (`ZSTD_minCLevel`), with the literals still Huffman-coded (`compress`), whatever the level
/// of the other planes. An exponent plane is close to independent bytes, so Huffman coding of
/// its literals is what shrinks it; the short matches level 1 finds there cost three times the
/// time for about the same size (MiniLM's checkpoint: 0.243 of the plane's bytes at 1,114 MB/s
/// against 0.247 at 365 MB/s on one thread; the demo's: 0.303 against 0.274).
pub const EXPONENT_LEVEL: i32 = -(1 << 17);

const STORED: u8 = 0;
const ZSTD: u8 = 1;
const INDEX_ENTRY: usize = 5;

/// Encode `data` (the raw canonical bytes of a tensor of `dtype`) as planes in chunks of
/// `chunk_bytes` (rounded down to a multiple of the element size, at least one element),
/// each plane zstd-compressed at `level` (a float's exponent plane at [`EXPONENT_LEVEL`]) or
/// stored when that is not smaller.
pub fn encode(dtype: DType, data: &[u8], chunk_bytes: u32, level: i32) -> Vec<u8> {
    let size = dtype.size() as usize;
    let chunk = (chunk_bytes.min(MAX_CHUNK_BYTES) as usize / size).max(1) * size;
    let exponent_plane = rotated(dtype).then_some(size - 1);
    let streams: Vec<Vec<(u8, Vec<u8>)>> = data
        .par_chunks(chunk)
        .map(|c| {
            split(dtype, c)
                .into_iter()
                .enumerate()
                .map(|(p, plane)| {
                    let level = if Some(p) == exponent_plane {
                        EXPONENT_LEVEL
                    } else {
                        level
                    };
                    match compress(&plane, level) {
                        Some(z) if z.len() < plane.len() => (ZSTD, z),
                        // Incompressible (or a zstd failure, which cannot lose data): stored.
                        _ => (STORED, plane),
                    }
                })
                .collect()
        })
        .collect();
    let index_len = streams.iter().map(Vec::len).sum::<usize>() * INDEX_ENTRY;
    let body: usize = streams.iter().flatten().map(|(_, s)| s.len()).sum();
    let mut out = Vec::with_capacity(4 + index_len + body);
    out.extend_from_slice(&(chunk as u32).to_le_bytes());
    for (method, s) in streams.iter().flatten() {
        out.push(*method);
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    }
    for (_, s) in streams.iter().flatten() {
        out.extend_from_slice(s);
    }
    out
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// One zstd frame of `plane` at `level`, with this thread's compression context (creating one
/// per plane costs more than compressing a small plane; a chunk's planes alternate between two
/// levels, so the context's level is set, not the context replaced). Literals are always
/// Huffman-coded: at negative levels zstd would otherwise store them as they are, and the
/// literals of a plane are most of it.
fn compress(plane: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let (current, c) = match slot.as_mut() {
            Some(s) => s,
            None => {
                let mut c = zstd::bulk::Compressor::new(level).ok()?;
                c.set_parameter(CParameter::LiteralCompressionMode(ParamSwitch::Enable))
                    .ok()?;
                slot.insert((level, c))
            }
        };
        if *current != level {
            c.set_parameter(CParameter::CompressionLevel(level)).ok()?;
            *current = level;
        }
        c.compress(plane).ok()
    })
}

/// What a decoder needs to know of the tensor, and how to name it in errors.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub artefact: &'a str,
    pub tensor: &'a str,
    pub dtype: DType,
    pub raw_len: u64,
}

impl Target<'_> {
    fn corrupt(&self, detail: impl Into<String>) -> Error {
        Error::Decompress {
            artefact: self.artefact.to_string(),
            tensor: self.tensor.to_string(),
            detail: format!("planes: {}", detail.into()),
        }
    }
}

/// Decode a planes encoding into the tensor's raw canonical bytes, checking every length the
/// layout implies before allocating or decompressing.
pub fn decode(t: &Target<'_>, encoded: &[u8]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; t.raw_len as usize];
    decode_into(t, encoded, &mut out, None)?;
    Ok(out)
}

/// How [`decode_into`] combines each decoded chunk with what `out` holds: called with the
/// chunk of `out` and the decoded bytes for it.
pub type Combine<'a> = &'a (dyn Fn(&mut [u8], &[u8]) + Sync);

/// [`decode`] into `out` (`raw_len` bytes): the decoded bytes replace `out`'s, or, with
/// `combine`, each chunk is decoded into a scratch buffer of the worker and combined into
/// `out` (a delta undone in place against its reference, without a buffer for the tensor).
pub fn decode_into(
    t: &Target<'_>,
    encoded: &[u8],
    out: &mut [u8],
    combine: Option<Combine<'_>>,
) -> Result<()> {
    let size = t.dtype.size() as usize;
    let Some((head, rest)) = encoded.split_first_chunk::<4>() else {
        return Err(t.corrupt("shorter than its 4-byte chunk size"));
    };
    let chunk = u32::from_le_bytes(*head);
    if chunk == 0 || chunk > MAX_CHUNK_BYTES || !(chunk as usize).is_multiple_of(size) {
        return Err(t.corrupt(format!(
            "chunk size {chunk} is not a positive multiple of {size} up to {MAX_CHUNK_BYTES}"
        )));
    }
    let chunk = chunk as usize;
    let n_chunks = t.raw_len.div_ceil(chunk as u64);
    let index_len = n_chunks
        .checked_mul((size * INDEX_ENTRY) as u64)
        .filter(|&n| n <= rest.len() as u64)
        .ok_or_else(|| {
            t.corrupt(format!(
                "the index of {n_chunks} chunks × {size} planes does not fit in {} bytes",
                rest.len()
            ))
        })? as usize;
    let (index, body) = rest.split_at(index_len);
    let mut offset = 0usize;
    let mut planes = Vec::with_capacity(index_len / INDEX_ENTRY);
    for entry in index.chunks_exact(INDEX_ENTRY) {
        let method = entry[0];
        let len = u32::from_le_bytes([entry[1], entry[2], entry[3], entry[4]]) as usize;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| t.corrupt("a stream runs past the end of the encoding"))?;
        planes.push((method, &body[offset..end]));
        offset = end;
    }
    if offset != body.len() {
        return Err(t.corrupt(format!(
            "{} bytes follow the last stream",
            body.len() - offset
        )));
    }
    if out.len() as u64 != t.raw_len {
        return Err(t.corrupt(format!(
            "{} bytes to decode into for a tensor of {}",
            out.len(),
            t.raw_len
        )));
    }
    out.par_chunks_mut(chunk)
        .zip(planes.par_chunks(size))
        .try_for_each(|(raw, streams)| {
            let m = raw.len() / size;
            let mut decoded = Vec::with_capacity(size);
            for &(method, stream) in streams {
                decoded.push(decode_plane(t, method, stream, m)?);
            }
            match combine {
                None => join(t.dtype, &decoded, raw),
                Some(combine) => SCRATCH.with(|cell| {
                    let mut scratch = cell.borrow_mut();
                    scratch.resize(raw.len(), 0);
                    join(t.dtype, &decoded, &mut scratch);
                    combine(raw, &scratch);
                }),
            }
            Ok(())
        })?;
    Ok(())
}

thread_local! {
    /// A worker's decoded chunk before [`decode_into`] combines it (reused: no page is faulted
    /// in per chunk).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn decode_plane(t: &Target<'_>, method: u8, stream: &[u8], len: usize) -> Result<Vec<u8>> {
    match method {
        STORED if stream.len() == len => Ok(stream.to_vec()),
        STORED => Err(t.corrupt(format!(
            "a stored plane of {} bytes where {len} are expected",
            stream.len()
        ))),
        ZSTD => {
            match zstd::zstd_safe::find_frame_compressed_size(stream) {
                Ok(n) if n == stream.len() => {}
                Ok(_) => return Err(t.corrupt("bytes follow a plane's zstd frame")),
                Err(code) => return Err(t.corrupt(zstd::zstd_safe::get_error_name(code))),
            }
            if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(stream)
                && declared > len as u64
            {
                return Err(exceeded(t));
            }
            let mut out = Vec::with_capacity(len);
            let n = DECOMPRESSOR.with(|cell| -> Result<usize> {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = Some(
                        zstd::bulk::Decompressor::new().map_err(|e| t.corrupt(e.to_string()))?,
                    );
                }
                let Some(d) = slot.as_mut() else {
                    unreachable!("initialised above")
                };
                d.decompress_to_buffer(stream, &mut out).map_err(|e| {
                    if e.to_string().contains("Destination buffer is too small") {
                        exceeded(t)
                    } else {
                        t.corrupt(e.to_string())
                    }
                })
            })?;
            if n != len {
                return Err(Error::DecodedSizeShort {
                    artefact: t.artefact.to_string(),
                    tensor: t.tensor.to_string(),
                    declared: t.raw_len,
                    found: n as u64,
                });
            }
            Ok(out)
        }
        other => Err(t.corrupt(format!("unknown plane method {other}"))),
    }
}

fn exceeded(t: &Target<'_>) -> Error {
    Error::DecodedSizeExceeded {
        artefact: t.artefact.to_string(),
        tensor: t.tensor.to_string(),
        declared: t.raw_len,
    }
}

/// Whether the sign bit is rotated to the lowest bit before splitting.
fn rotated(dtype: DType) -> bool {
    matches!(dtype, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
}

/// The planes of one chunk.
fn split(dtype: DType, chunk: &[u8]) -> Vec<Vec<u8>> {
    match dtype.size() {
        8 => split_n::<8>(chunk, rotated(dtype)),
        4 => split_n::<4>(chunk, rotated(dtype)),
        2 => split_n::<2>(chunk, rotated(dtype)),
        _ => vec![chunk.to_vec()],
    }
}

/// Interleave the planes of one chunk into `raw`.
fn join(dtype: DType, planes: &[Vec<u8>], raw: &mut [u8]) {
    match dtype.size() {
        8 => join_n::<8>(planes, raw, rotated(dtype)),
        4 => join_n::<4>(planes, raw, rotated(dtype)),
        2 => join_n::<2>(planes, raw, rotated(dtype)),
        _ => raw.copy_from_slice(&planes[0]),
    }
}

// Rotating an element's `8N` bits left by one moves the top bit of each byte into the next
// byte's bit 0 (the sign, top bit of byte N-1, into byte 0). Splitting rotates each element as
// an integer; joining undoes it byte by byte: byte p of the element is `r[p] >> 1 |
// r[p+1 mod N] << 7`.

fn split_n<const N: usize>(chunk: &[u8], rotate: bool) -> Vec<Vec<u8>> {
    let m = chunk.len() / N;
    let mut planes: [Vec<u8>; N] = std::array::from_fn(|_| vec![0u8; m]);
    let mut outs = planes.each_mut().map(|p| &mut p[..m]);
    // One pass over the elements, each read as an integer and rotated whole: the compiler
    // unrolls the byte loop (N is a constant), and each plane is written in order.
    for (i, e) in chunk.chunks_exact(N).enumerate() {
        let mut word = [0u8; 8];
        word[..N].copy_from_slice(e);
        let mut v = u64::from_le_bytes(word);
        if rotate {
            v = ((v << 1) | (v >> (8 * N - 1))) & (u64::MAX >> (64 - 8 * N));
        }
        for (p, out) in outs.iter_mut().enumerate() {
            out[i] = (v >> (8 * p)) as u8;
        }
    }
    planes.into()
}

fn join_n<const N: usize>(planes: &[Vec<u8>], raw: &mut [u8], rotate: bool) {
    let m = raw.len() / N;
    let planes: [&[u8]; N] = std::array::from_fn(|p| &planes[p][..m]);
    for (i, e) in raw.chunks_exact_mut(N).enumerate() {
        for p in 0..N {
            e[p] = if rotate {
                (planes[p][i] >> 1) | (planes[(p + 1) % N][i] << 7)
            } else {
                planes[p][i]
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target(dtype: DType, raw_len: usize) -> Target<'static> {
        Target {
            artefact: "test",
            tensor: "t",
            dtype,
            raw_len: raw_len as u64,
        }
    }

    /// Bytes shaped like f32 weights: a narrow band of exponents, noisy mantissas.
    fn weights(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = ((x >> 40) as f32 / 16_777_216.0 - 0.5) * 0.08;
                v.to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn weights_round_trip_and_shrink_more_than_plain_zstd() {
        let raw = weights(300_000);
        let planes = encode(DType::F32, &raw, 64 << 10, 3);
        assert_eq!(
            decode(&target(DType::F32, raw.len()), &planes).expect("decodes"),
            raw
        );
        let plain = zstd::bulk::compress(&raw, 3).expect("zstd");
        assert!(
            planes.len() < plain.len(),
            "planes {} bytes, zstd {} bytes",
            planes.len(),
            plain.len()
        );
    }

    #[test]
    fn the_writers_level_huffman_codes_the_exponent_plane() {
        // One chunk of weights whose exponent plane holds independent bytes: only entropy
        // coding of the literals shrinks it, which zstd leaves out at negative levels (the
        // exponent plane's) unless it is turned on.
        let raw = weights(1 << 16);
        let enc = encode(DType::F32, &raw, 1 << 20, DEFAULT_LEVEL);
        let top = &enc[4 + 3 * INDEX_ENTRY..4 + 4 * INDEX_ENTRY];
        assert_eq!(top[0], ZSTD);
        let len = u32::from_le_bytes([top[1], top[2], top[3], top[4]]) as f64;
        let exponents = &split(DType::F32, &raw)[3];
        let mut counts = [0u64; 256];
        exponents.iter().for_each(|&b| counts[b as usize] += 1);
        let m = exponents.len() as f64;
        let entropy_bytes: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| -(c as f64) * (c as f64 / m).log2() / 8.0)
            .sum();
        assert!(
            len < entropy_bytes * 1.1,
            "exponent plane: {len} bytes for {entropy_bytes:.0} bytes of entropy ({m} bytes raw)"
        );
        assert_eq!(
            decode(&target(DType::F32, raw.len()), &enc).expect("decodes"),
            raw
        );
    }

    #[test]
    fn the_rotation_puts_the_f32_exponent_in_the_top_plane() {
        let raw: Vec<u8> = [1.5f32, -1.5, -0.0, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let planes = split(DType::F32, &raw);
        // 1.5 and -1.5 share the exponent 127; they differ only in the lowest bit of plane 0.
        assert_eq!(planes[3], vec![127, 127, 0, 255]);
        assert_eq!(planes[0][0] & 1, 0);
        assert_eq!(planes[0][1] & 1, 1);
        let mut back = vec![0u8; raw.len()];
        join(DType::F32, &planes, &mut back);
        assert_eq!(back, raw);
    }

    #[test]
    fn hostile_encodings_are_specific_errors() {
        let raw = weights(1000);
        let good = encode(DType::F32, &raw, 1024, 3);
        let t = target(DType::F32, raw.len());
        let detail = |bytes: &[u8]| match decode(&t, bytes) {
            Err(Error::Decompress { detail, .. }) => detail,
            other => panic!("expected a decompress error, got {other:?}"),
        };
        assert!(detail(&good[..3]).contains("4-byte chunk size"));
        let mut odd = good.clone();
        odd[..4].copy_from_slice(&6u32.to_le_bytes());
        assert!(detail(&odd).contains("multiple of 4"));
        assert!(detail(&good[..40]).contains("index"));
        assert!(detail(&good[..good.len() - 1]).contains("past the end"));
        let mut longer = good.clone();
        longer.push(0);
        assert!(detail(&longer).contains("follow the last stream"));
        let mut method = good.clone();
        method[4] = 9;
        assert!(detail(&method).contains("unknown plane method 9"));
        // A shorter tensor than the encoding describes: its index then ends early.
        assert!(decode(&target(DType::F32, raw.len() - 4), &good).is_err());
        // A longer one: the index would need more entries than there are bytes.
        assert!(decode(&target(DType::F32, raw.len() * 100), &good).is_err());
    }

    #[test]
    fn a_plane_that_decodes_to_more_bytes_is_a_bomb() {
        // One chunk of 4 one-byte elements whose only plane is a zstd frame of `content`.
        let decode_frame_of = |content: &[u8]| {
            let frame = zstd::bulk::compress(content, 3).expect("zstd");
            let mut enc = 4u32.to_le_bytes().to_vec();
            enc.push(ZSTD);
            enc.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            enc.extend_from_slice(&frame);
            decode(&target(DType::U8, 4), &enc)
        };
        assert!(matches!(
            decode_frame_of(&[7u8; 1000]),
            Err(Error::DecodedSizeExceeded { .. })
        ));
        assert!(matches!(
            decode_frame_of(&[7u8; 2]),
            Err(Error::DecodedSizeShort { .. })
        ));
        assert_eq!(decode_frame_of(&[7u8; 4]).expect("decodes"), vec![7u8; 4]);
    }

    proptest! {
        #[test]
        fn every_dtype_round_trips(
            code in 1u8..=13,
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            chunk in 1u32..300,
            level in prop_oneof![Just(EXPONENT_LEVEL), -5i32..4],
        ) {
            let dtype = DType::from_code(code).expect("a dtype");
            let size = dtype.size() as usize;
            let raw = &bytes[..bytes.len() / size * size];
            let enc = encode(dtype, raw, chunk, level);
            prop_assert_eq!(decode(&target(dtype, raw.len()), &enc).expect("decodes"), raw);
        }

        /// The decoder of codec 2 fuzzed: arbitrary bytes, and valid encodings with bytes
        /// flipped, are decoded or refused with an error, never a panic, and a result is never
        /// longer or shorter than the tensor.
        #[test]
        fn the_decoder_never_panics(
            code in 1u8..=13,
            raw_len in 0usize..200,
            junk in proptest::collection::vec(any::<u8>(), 0..300),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        ) {
            let dtype = DType::from_code(code).expect("a dtype");
            let size = dtype.size() as usize;
            let raw_len = raw_len / size * size;
            let t = target(dtype, raw_len);
            if let Ok(out) = decode(&t, &junk) {
                prop_assert_eq!(out.len(), raw_len);
            }
            let mut enc = encode(dtype, &weights(raw_len.div_ceil(4))[..raw_len], 16, 3);
            for (at, x) in flips {
                let at = at % enc.len();
                enc[at] ^= x;
            }
            if let Ok(out) = decode(&t, &enc) {
                prop_assert_eq!(out.len(), raw_len);
            }
        }
    }
}
