//! One test per reader error, each from hand-made bytes (see `common`, an encoder written from
//! the spec). Every test runs the in-memory reader and, where the error is visible to it, the
//! streaming reader.

mod common;

use common::{END_MARKER, RawSnapshot, Row, tensor_hash};
use snapshot_format::Error;
use snapshot_format::limits::{MAX_HEADER_BYTES, MAX_TENSORS, ReadLimits};
use snapshot_format::snapshot::{self, SnapshotReader};

const NAME: &str = "checkpoints/step-000000000005.snap";

/// The in-memory reader's error; the verifying reader (which streams tensor data into the
/// hashes instead of keeping it) must reject the same bytes with the same variant.
fn decode(bytes: &[u8]) -> Error {
    let e = snapshot::decode(bytes, NAME, &ReadLimits::default()).expect_err("must be rejected");
    let v =
        snapshot::verify(bytes, NAME, &ReadLimits::default()).expect_err("verify must reject too");
    assert_eq!(
        std::mem::discriminant(&e),
        std::mem::discriminant(&v),
        "decode: {e}\nverify: {v}"
    );
    e
}

fn stream(bytes: &[u8]) -> Error {
    let limits = ReadLimits::default();
    match SnapshotReader::new(std::io::Cursor::new(bytes), NAME, &limits) {
        Err(e) => e,
        Ok(r) => r
            .finish()
            .expect_err("must be rejected by the streaming reader"),
    }
}

fn zstd_frame(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).expect("compress")
}

/// A zstd frame that does not declare its content size (as a streaming compressor writes).
fn zstd_frame_without_size(data: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    enc.include_contentsize(false).expect("option");
    std::io::Write::write_all(&mut enc, data).expect("write");
    enc.finish().expect("finish")
}

#[test]
fn valid_hand_made_snapshot_is_accepted_by_both_readers() {
    let bytes = RawSnapshot::valid().to_bytes();
    let s = snapshot::decode(&bytes, NAME, &ReadLimits::default()).expect("valid");
    assert_eq!(s.header.tensors.len(), 2);
    let h = snapshot::verify(&bytes, NAME, &ReadLimits::default()).expect("valid");
    assert_eq!(h, s.header);
    let r = SnapshotReader::new(std::io::Cursor::new(&bytes), NAME, &ReadLimits::default())
        .expect("valid");
    r.finish().expect("valid");
}

#[test]
fn rejects_truncated_object_at_every_length() {
    let bytes = RawSnapshot::valid().to_bytes();
    for cut in 0..bytes.len() {
        let e = decode(&bytes[..cut]);
        assert!(
            matches!(e, Error::Truncated { .. }),
            "cut at {cut} of {}: {e}",
            bytes.len()
        );
        assert!(
            matches!(stream(&bytes[..cut]), Error::Truncated { .. }),
            "cut at {cut}"
        );
    }
}

#[test]
fn rejects_truncated_header() {
    let bytes = RawSnapshot::valid().to_bytes();
    let e = decode(&bytes[..20]);
    assert!(matches!(e, Error::Truncated { available: 20, .. }), "{e}");
    assert_eq!(e.artefact(), Some(NAME));
}

#[test]
fn rejects_truncated_data_section() {
    let bytes = RawSnapshot::valid().to_bytes();
    let e = decode(&bytes[..bytes.len() - 10]);
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
}

#[test]
fn rejects_bad_magic() {
    let mut s = RawSnapshot::valid();
    s.magic = *b"PK\x03\x04zip!";
    let e = decode(&s.to_bytes());
    assert!(
        matches!(
            e,
            Error::BadMagic {
                expected: "snapshot",
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(stream(&s.to_bytes()), Error::BadMagic { .. }));
}

#[test]
fn rejects_future_version() {
    let mut s = RawSnapshot::valid();
    s.version = 2;
    let e = decode(&s.to_bytes());
    assert!(
        matches!(e, Error::UnsupportedVersion { found: 2, supported, .. } if supported == [1]),
        "{e}"
    );
    assert!(e.to_string().contains("version 2"));
    assert!(matches!(
        stream(&s.to_bytes()),
        Error::UnsupportedVersion { found: 2, .. }
    ));
}

#[test]
fn rejects_reserved_flags() {
    let mut s = RawSnapshot::valid();
    s.flags = 0x0100;
    assert!(matches!(
        decode(&s.to_bytes()),
        Error::ReservedFlags { flags: 0x0100, .. }
    ));
    assert!(matches!(stream(&s.to_bytes()), Error::ReservedFlags { .. }));
}

#[test]
fn rejects_header_length_over_limit_before_allocating() {
    let mut s = RawSnapshot::valid();
    s.header_len_override = Some(u32::MAX);
    let e = decode(&s.to_bytes());
    assert!(
        matches!(e, Error::HeaderTooLarge { declared, max, .. } if declared == u32::MAX as u64 && max == MAX_HEADER_BYTES as u64),
        "{e}"
    );
    // The streaming reader must refuse before trying to read 4 GiB.
    assert!(matches!(
        stream(&s.to_bytes()),
        Error::HeaderTooLarge { .. }
    ));
}

#[test]
fn rejects_zero_header_length() {
    let mut s = RawSnapshot::valid();
    s.header_len_override = Some(0);
    assert!(matches!(
        decode(&s.to_bytes()),
        Error::HeaderTooLarge { declared: 0, .. }
    ));
}

#[test]
fn rejects_corrupted_header_digest() {
    let mut s = RawSnapshot::valid();
    s.corrupt_digest = true;
    assert!(matches!(
        decode(&s.to_bytes()),
        Error::HeaderDigestMismatch { .. }
    ));
    assert!(matches!(
        stream(&s.to_bytes()),
        Error::HeaderDigestMismatch { .. }
    ));
}

#[test]
fn rejects_flipped_bit_in_header() {
    let s = RawSnapshot::valid();
    let mut bytes = s.to_bytes();
    bytes[16 + 3] ^= 0x10; // inside the step field of the header
    assert!(matches!(decode(&bytes), Error::HeaderDigestMismatch { .. }));
}

#[test]
fn rejects_malformed_header_bytes() {
    // A digest-correct header that is not a valid encoding: a string length far past the end.
    let mut s = RawSnapshot::valid();
    s.run_id = String::new();
    let good = s.header();
    let mut header = good.clone();
    // The run_id length field sits right after the 48-byte StateMeta.
    header[48..56].copy_from_slice(&u64::MAX.to_le_bytes());
    let bytes = envelope_with_header(&header, &s.data);
    assert!(
        matches!(decode(&bytes), Error::MalformedHeader { .. }),
        "{}",
        decode(&bytes)
    );

    // Unused bytes at the end of the header are malformed too.
    let mut padded = good;
    padded.push(0);
    let bytes = envelope_with_header(&padded, &s.data);
    let e = decode(&bytes);
    assert!(
        matches!(&e, Error::MalformedHeader { detail, .. } if detail.contains("unused")),
        "{e}"
    );
}

fn envelope_with_header(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&common::SNAPSHOT_MAGIC);
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
    let digest = common::h(common::CTX_ENVELOPE, &out);
    out.extend_from_slice(&digest);
    out.extend_from_slice(data);
    out.extend_from_slice(&END_MARKER);
    out
}

#[test]
fn rejects_missing_end_marker() {
    let mut s = RawSnapshot::valid();
    s.end = b"\x89RVENX\r\n".to_vec();
    assert!(matches!(
        decode(&s.to_bytes()),
        Error::MissingEndMarker { .. }
    ));
    assert!(matches!(
        stream(&s.to_bytes()),
        Error::MissingEndMarker { .. }
    ));
}

#[test]
fn rejects_trailing_bytes() {
    let mut bytes = RawSnapshot::valid().to_bytes();
    bytes.extend_from_slice(b"appended");
    assert!(matches!(
        decode(&bytes),
        Error::TrailingBytes { extra: 8, .. }
    ));
    assert!(matches!(
        stream(&bytes),
        Error::TrailingBytes { extra: 8, .. }
    ));
}

#[test]
fn rejects_bytes_between_data_and_end_marker() {
    let mut s = RawSnapshot::valid();
    s.data.extend_from_slice(&[0; 5]); // not described by any row
    assert!(matches!(
        decode(&s.to_bytes()),
        Error::TrailingBytes { extra: 5, .. }
    ));
}

#[test]
fn rejects_too_many_tensors() {
    let mut s = RawSnapshot::valid();
    s.rows.clear();
    s.data.clear();
    let count = MAX_TENSORS + 1;
    for i in 0..count {
        s.push(&format!("t{i:07}"), 12, &[], 0, &[1]);
    }
    let e = decode(&s.to_bytes());
    assert!(
        matches!(e, Error::TooManyTensors { count: c, .. } if c == count),
        "{e}"
    );
}

#[test]
fn rejects_invalid_tensor_names() {
    for bad in ["", "a\nb", &"x".repeat(1025)] {
        let mut s = RawSnapshot::valid();
        s.rows[0].name = bad.to_string();
        s.rows[0].hash = tensor_hash(bad, 2, &[2, 2], &s.data[..16]);
        let e = decode(&s.to_bytes());
        assert!(matches!(e, Error::InvalidTensorName { .. }), "{bad:?}: {e}");
    }
}

#[test]
fn rejects_duplicate_tensor_names() {
    let mut s = RawSnapshot::valid();
    s.rows[1].name = "a".into();
    let e = decode(&s.to_bytes());
    assert!(
        matches!(&e, Error::DuplicateTensorName { name, .. } if name == "a"),
        "{e}"
    );
    assert!(matches!(
        stream(&s.to_bytes()),
        Error::DuplicateTensorName { .. }
    ));
}

#[test]
fn rejects_unsorted_tensor_names() {
    let mut s = RawSnapshot::valid();
    s.rows.swap(0, 1);
    s.relayout();
    let e = decode(&s.to_bytes());
    assert!(
        matches!(&e, Error::UnsortedTensorNames { previous, name, .. } if previous == "b" && name == "a"),
        "{e}"
    );
}

#[test]
fn rejects_unknown_dtype() {
    let mut s = RawSnapshot::valid();
    s.rows[1].dtype = 99;
    assert!(matches!(
        decode(&s.to_bytes()),
        Error::UnknownDType { code: 99, .. }
    ));
}

#[test]
fn rejects_unknown_codec() {
    let mut s = RawSnapshot::valid();
    s.rows[1].codec = 7;
    assert!(matches!(
        decode(&s.to_bytes()),
        Error::UnknownCodec { id: 7, .. }
    ));
}

#[test]
fn rejects_rank_over_limit() {
    let mut s = RawSnapshot::valid();
    s.rows[1].shape = vec![1; 17];
    assert!(matches!(
        decode(&s.to_bytes()),
        Error::RankTooLarge { rank: 17, .. }
    ));
}

#[test]
fn rejects_length_overflow() {
    let mut s = RawSnapshot::valid();
    s.rows[1].shape = vec![1 << 32, 1 << 32, 2]; // 2^65 elements: overflows u64
    let e = decode(&s.to_bytes());
    assert!(
        matches!(
            e,
            Error::LengthOverflow {
                what: "element count",
                ..
            }
        ),
        "{e}"
    );

    let mut s = RawSnapshot::valid();
    s.rows[0].shape = vec![1 << 20, 1 << 19]; // 2^39 elements of 4 bytes: over MAX_TENSOR_BYTES
    let e = decode(&s.to_bytes());
    assert!(
        matches!(
            e,
            Error::LengthOverflow {
                what: "raw byte length",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn rejects_an_encoding_longer_than_its_codec_allows() {
    // No encoding is longer than the raw bytes but for a delta's 47-byte prefix: a header
    // cannot make a reader gather more than the decoded limit allows (and offsets cannot
    // overflow).
    for (codec, encoded, max) in [(1u16, 4, 3), (2, u64::MAX - 5, 3), (3, 3 + 48, 3 + 47)] {
        let mut s = RawSnapshot::valid();
        s.rows[1].codec = codec;
        s.rows[1].encoded_len = encoded;
        let e = decode(&s.to_bytes());
        assert!(
            matches!(&e, Error::EncodedTooLarge { tensor, encoded: n, max: m, .. }
                if tensor == "b" && *n == encoded && *m == max),
            "codec {codec}: {e}"
        );
    }
}

#[test]
fn rejects_raw_length_mismatch() {
    let mut s = RawSnapshot::valid();
    s.rows[1].raw_len = 4;
    let e = decode(&s.to_bytes());
    assert!(
        matches!(
            e,
            Error::RawLengthMismatch {
                declared: 4,
                expected: 3,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn rejects_raw_codec_with_different_encoded_length() {
    let mut s = RawSnapshot::valid();
    s.rows[1].encoded_len = 2;
    s.data.pop();
    let e = decode(&s.to_bytes());
    assert!(
        matches!(
            e,
            Error::RawCodecLengthMismatch {
                encoded: 2,
                raw: 3,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn rejects_overlapping_offsets() {
    let mut s = RawSnapshot::valid();
    s.rows[1].offset = 8; // `a` occupies 0..16
    let e = decode(&s.to_bytes());
    assert!(
        matches!(
            e,
            Error::OverlappingTensors {
                offset: 8,
                expected: 16,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        stream(&s.to_bytes()),
        Error::OverlappingTensors { .. }
    ));
}

#[test]
fn rejects_hole_between_tensors() {
    let mut s = RawSnapshot::valid();
    s.rows[1].offset = 20;
    let b = s.data.split_off(16);
    s.data.extend_from_slice(&[0; 4]);
    s.data.extend_from_slice(&b);
    let e = decode(&s.to_bytes());
    assert!(
        matches!(
            e,
            Error::HoleBeforeTensor {
                offset: 20,
                expected: 16,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn rejects_out_of_range_tensor() {
    // The table claims a longer last tensor than the data present; the end marker is intact,
    // so the table is lying rather than the file being cut short.
    let mut s = RawSnapshot::valid();
    s.rows[1].codec = 1;
    s.data.truncate(17);
    let e = decode(&s.to_bytes());
    assert!(
        matches!(&e, Error::TensorOutOfRange { tensor, end: 19, data_len: 17, .. } if tensor == "b"),
        "{e}"
    );
}

#[test]
fn rejects_snapshot_over_callers_decoded_limit() {
    let bytes = RawSnapshot::valid().to_bytes();
    let limits = ReadLimits::up_to(10);
    let e = snapshot::decode(&bytes, NAME, &limits).expect_err("over limit");
    assert!(
        matches!(
            e,
            Error::DecodedTooLarge {
                declared: 19,
                max: 10,
                ..
            }
        ),
        "{e}"
    );
}

fn with_zstd_b(frame: Vec<u8>, raw: &[u8], declared_shape: &[u64]) -> RawSnapshot {
    let mut s = RawSnapshot::valid();
    s.rows.pop();
    s.data.truncate(16);
    s.push_encoded("b", 12, declared_shape, 1, raw, &frame);
    s
}

#[test]
fn rejects_decompression_bomb_declared_in_frame() {
    // 256 raw bytes declared; the frame (shorter than that) holds and declares 1 MiB.
    let big = vec![0u8; 1 << 20];
    let s = with_zstd_b(zstd_frame(&big), &[0; 256], &[256]);
    let e = decode(&s.to_bytes());
    assert!(
        matches!(e, Error::DecodedSizeExceeded { declared: 256, .. }),
        "{e}"
    );
}

#[test]
fn rejects_decompression_bomb_without_declared_size() {
    // The frame does not declare its size: the reader must stop after 256 + 1 bytes.
    let big = vec![0u8; 1 << 20];
    let s = with_zstd_b(zstd_frame_without_size(&big), &[0; 256], &[256]);
    let e = decode(&s.to_bytes());
    assert!(
        matches!(e, Error::DecodedSizeExceeded { declared: 256, .. }),
        "{e}"
    );
    assert!(matches!(
        stream(&s.to_bytes()),
        Error::DecodedSizeExceeded { .. }
    ));
}

#[test]
fn rejects_short_decoded_tensor() {
    let s = with_zstd_b(zstd_frame_without_size(&[1; 8]), &[1; 64], &[64]);
    let e = decode(&s.to_bytes());
    assert!(
        matches!(
            e,
            Error::DecodedSizeShort {
                declared: 64,
                found: 8,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn rejects_corrupt_zstd_stream() {
    let s = with_zstd_b(b"definitely not zstd".to_vec(), &[1; 64], &[64]);
    assert!(matches!(decode(&s.to_bytes()), Error::Decompress { .. }));
    assert!(matches!(stream(&s.to_bytes()), Error::Decompress { .. }));
}

#[test]
fn rejects_bytes_after_zstd_frame() {
    let mut frame = zstd_frame(&[3; 64]);
    frame.extend_from_slice(b"junk");
    let s = with_zstd_b(frame, &[3; 64], &[64]);
    let e = decode(&s.to_bytes());
    assert!(
        matches!(&e, Error::Decompress { detail, .. } if detail.contains("follow")),
        "{e}"
    );
    assert!(matches!(stream(&s.to_bytes()), Error::Decompress { .. }));
}

#[test]
fn rejects_non_canonical_bool() {
    let mut s = RawSnapshot::valid();
    s.rows.pop();
    s.data.truncate(16);
    s.push("b", 13, &[3], 0, &[1, 2, 0]);
    let e = decode(&s.to_bytes());
    assert!(
        matches!(
            e,
            Error::NonCanonicalBool {
                index: 1,
                byte: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn rejects_hash_mismatch_in_one_tensor() {
    let s = RawSnapshot::valid();
    let mut bytes = s.to_bytes();
    let end = bytes.len() - 8;
    bytes[end - 1] ^= 0x01; // last byte of tensor `b`
    let e = decode(&bytes);
    assert!(
        matches!(&e, Error::TensorHashMismatch { tensor, .. } if tensor == "b"),
        "{e}"
    );
    assert!(e.to_string().contains(NAME) && e.to_string().contains("\"b\""));
    assert!(matches!(stream(&bytes), Error::TensorHashMismatch { .. }));
}

#[test]
fn rejects_state_root_that_does_not_match_table() {
    let mut s = RawSnapshot::valid();
    s.state_root = Some([0xab; 32]);
    assert!(matches!(
        decode(&s.to_bytes()),
        Error::StateRootMismatch { .. }
    ));
    assert!(matches!(
        stream(&s.to_bytes()),
        Error::StateRootMismatch { .. }
    ));
}

#[test]
fn rejects_row_whose_hash_was_rewritten_without_the_root() {
    // An attacker rewrites a tensor and its table hash, but not the state root.
    let mut s = RawSnapshot::valid();
    let root = {
        let hashes: Vec<[u8; 32]> = s.rows.iter().map(|r| r.hash).collect();
        common::state_root(&s.meta, &hashes)
    };
    s.state_root = Some(root);
    s.data[16] = 99;
    let new_b = s.data[16..].to_vec();
    s.rows[1] = Row {
        hash: tensor_hash("b", 12, &[3], &new_b),
        ..s.rows[1].clone()
    };
    assert!(matches!(
        decode(&s.to_bytes()),
        Error::StateRootMismatch { .. }
    ));
}

#[test]
fn rejects_unsorted_metadata_entries() {
    // StateMeta with two extra entries out of order: keys "z" then "a", both U64.
    let mut s = RawSnapshot::valid();
    let mut meta = Vec::new();
    for v in [5u64, 1, 3, 42, 0] {
        common::put_u64(&mut meta, v);
    }
    common::put_u64(&mut meta, 2);
    for key in ["z", "a"] {
        common::put_str(&mut meta, key);
        meta.extend_from_slice(&0u32.to_le_bytes()); // MetaValue::U64
        common::put_u64(&mut meta, 1);
    }
    s.meta = meta;
    let e = decode(&s.to_bytes());
    assert!(
        matches!(&e, Error::MalformedHeader { detail, .. } if detail.contains("sorted")),
        "{e}"
    );
}
