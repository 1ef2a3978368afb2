//! An encoder written from `specs/snapshot-format.md` alone, independent of the crate's writer.
//! Tests use it to hand-make bytes (valid and deliberately broken) and to check that the crate
//! and the spec agree byte for byte.
#![allow(dead_code)]

pub const CTX_TENSOR: &str = "training-replay-verifier v1 tensor";
pub const CTX_STATE_ROOT: &str = "training-replay-verifier v1 state root";
pub const CTX_ENVELOPE: &str = "training-replay-verifier v1 envelope digest";
pub const SNAPSHOT_MAGIC: [u8; 8] = [0x89, b'R', b'V', b'S', b'N', b'A', b'P', b'\n'];
pub const END_MARKER: [u8; 8] = [0x89, b'R', b'V', b'E', b'N', b'D', b'\r', b'\n'];

pub fn h(ctx: &str, bytes: &[u8]) -> [u8; 32] {
    *blake3::Hasher::new_derive_key(ctx)
        .update(bytes)
        .finalize()
        .as_bytes()
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Spec 3.4: tensor hash.
pub fn tensor_hash(name: &str, dtype: u8, shape: &[u64], raw: &[u8]) -> [u8; 32] {
    let mut b = Vec::new();
    put_str(&mut b, name);
    b.push(dtype);
    put_u64(&mut b, shape.len() as u64);
    for d in shape {
        put_u64(&mut b, *d);
    }
    put_u64(&mut b, raw.len() as u64);
    b.extend_from_slice(raw);
    h(CTX_TENSOR, &b)
}

/// Spec 3.1: `StateMeta` with no rng streams and no extra entries.
pub fn state_meta(step: u64, epoch: u64, position: u64, master_seed: u64) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [step, epoch, position, master_seed, 0, 0] {
        put_u64(&mut b, v);
    }
    b
}

/// Spec 3.4: state root.
pub fn state_root(meta: &[u8], hashes: &[[u8; 32]]) -> [u8; 32] {
    let mut b = Vec::new();
    put_u64(&mut b, meta.len() as u64);
    b.extend_from_slice(meta);
    put_u64(&mut b, hashes.len() as u64);
    for t in hashes {
        b.extend_from_slice(t);
    }
    h(CTX_STATE_ROOT, &b)
}

#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub dtype: u8,
    pub shape: Vec<u64>,
    pub codec: u16,
    pub offset: u64,
    pub encoded_len: u64,
    pub raw_len: u64,
    pub hash: [u8; 32],
}

/// A snapshot described field by field; `to_bytes` lays it out per spec 2 and 3.
#[derive(Clone, Debug)]
pub struct RawSnapshot {
    pub magic: [u8; 8],
    pub version: u16,
    pub flags: u16,
    pub meta: Vec<u8>,
    pub run_id: String,
    pub rows: Vec<Row>,
    /// `None`: the correct root for `meta` and the rows' hashes.
    pub state_root: Option<[u8; 32]>,
    pub data: Vec<u8>,
    /// Replaces the header length field when set.
    pub header_len_override: Option<u32>,
    pub corrupt_digest: bool,
    pub end: Vec<u8>,
}

impl RawSnapshot {
    /// Two tensors stored raw: `a` F32 [2, 2] and `b` U8 [3].
    pub fn valid() -> Self {
        let a: Vec<u8> = [1.0f32, -2.0, 0.5, f32::from_bits(0x7fc0_0001)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b = vec![7u8, 8, 9];
        let mut s = RawSnapshot {
            magic: SNAPSHOT_MAGIC,
            version: 1,
            flags: 0,
            meta: state_meta(5, 1, 3, 42),
            run_id: "vector-run".into(),
            rows: vec![],
            state_root: None,
            data: vec![],
            header_len_override: None,
            corrupt_digest: false,
            end: END_MARKER.to_vec(),
        };
        s.push("a", 2, &[2, 2], 0, &a);
        s.push("b", 12, &[3], 0, &b);
        s
    }

    /// Append a tensor whose encoding is `encoded` (raw bytes for codec 0).
    pub fn push_encoded(
        &mut self,
        name: &str,
        dtype: u8,
        shape: &[u64],
        codec: u16,
        raw: &[u8],
        encoded: &[u8],
    ) {
        self.rows.push(Row {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            codec,
            offset: self.data.len() as u64,
            encoded_len: encoded.len() as u64,
            raw_len: raw.len() as u64,
            hash: tensor_hash(name, dtype, shape, raw),
        });
        self.data.extend_from_slice(encoded);
    }

    pub fn push(&mut self, name: &str, dtype: u8, shape: &[u64], codec: u16, raw: &[u8]) {
        self.push_encoded(name, dtype, shape, codec, raw, raw);
    }

    pub fn header(&self) -> Vec<u8> {
        let mut b = self.meta.clone();
        // Provenance: run_id, kind = Checkpoint (u32 0), parent = None (u8 0), producer.
        put_str(&mut b, &self.run_id);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.push(0);
        put_str(&mut b, "spec-encoder");
        let root = self.state_root.unwrap_or_else(|| {
            let hashes: Vec<[u8; 32]> = self.rows.iter().map(|r| r.hash).collect();
            state_root(&self.meta, &hashes)
        });
        b.extend_from_slice(&root);
        put_u64(&mut b, self.rows.len() as u64);
        for r in &self.rows {
            put_str(&mut b, &r.name);
            b.push(r.dtype);
            put_u64(&mut b, r.shape.len() as u64);
            for d in &r.shape {
                put_u64(&mut b, *d);
            }
            b.extend_from_slice(&r.codec.to_le_bytes());
            put_u64(&mut b, r.offset);
            put_u64(&mut b, r.encoded_len);
            put_u64(&mut b, r.raw_len);
            b.extend_from_slice(&r.hash);
        }
        b
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let header = self.header();
        let mut out = Vec::new();
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        let hl = self.header_len_override.unwrap_or(header.len() as u32);
        out.extend_from_slice(&hl.to_le_bytes());
        out.extend_from_slice(&header);
        let mut digest = h(CTX_ENVELOPE, &out);
        if self.corrupt_digest {
            digest[0] ^= 1;
        }
        out.extend_from_slice(&digest);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.end);
        out
    }

    /// Recompute the offsets of all rows so that they are contiguous again.
    pub fn relayout(&mut self) {
        let mut off = 0;
        for r in &mut self.rows {
            r.offset = off;
            off += r.encoded_len;
        }
    }
}
