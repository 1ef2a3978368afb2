//! GGUF files (llama.cpp's format): header, metadata, tensor table, and the tensors dequantized
//! to `f32` exactly as the block formats define them. Also a writer, for tests and fixtures.
//!
//! Layout (little-endian): magic `GGUF`, `u32` version (2 or 3), `u64` tensor count, `u64`
//! metadata count; metadata entries (string key, `u32` value type, value); tensor infos
//! (string name, `u32` rank, `u64` dims, innermost first, `u32` ggml type, `u64` offset into
//! the data section); padding to `general.alignment` (default 32); the data section. A string
//! is a `u64` length and UTF-8 bytes.
//!
//! Supported tensor types: F32, F16, Q8_0 (blocks of 32: `f16` scale `d`, 32 `i8`; `x = d·q`)
//! and Q4_1 (blocks of 32: `f16` scale `d`, `f16` minimum `m`, 16 bytes of nibbles; element `j`
//! is the low nibble of byte `j` and element `j + 16` its high nibble; `x = d·q + m`), each
//! product and sum rounded to `f32` separately (as llama.cpp's reference dequantization and
//! the `gguf` Python package compute them). Any other type is a clear error naming it.
//!
//! The reader treats the file as hostile: every count and length is checked against the file's
//! size and the limits below before anything is allocated for it.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The magic bytes.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Most metadata entries accepted.
pub const MAX_METADATA: u64 = 1 << 16;
/// Most tensors accepted.
pub const MAX_TENSORS: u64 = 1 << 16;
/// Most elements of one metadata array (a vocabulary is about 10^5).
pub const MAX_ARRAY: u64 = 1 << 24;
/// Highest tensor rank.
pub const MAX_RANK: u32 = 4;

/// ggml tensor types this reader dequantizes.
pub mod ggml_type {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_1: u32 = 3;
    pub const Q8_0: u32 = 8;
}

/// The name of a ggml type, for messages.
fn type_name(t: u32) -> String {
    match t {
        0 => "F32".into(),
        1 => "F16".into(),
        2 => "Q4_0".into(),
        3 => "Q4_1".into(),
        6 => "Q5_0".into(),
        7 => "Q5_1".into(),
        8 => "Q8_0".into(),
        9 => "Q8_1".into(),
        10..=15 => format!("K-quant type {t}"),
        30 => "BF16".into(),
        other => format!("type {other}"),
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as stored, innermost (fastest-varying) first.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Offset into the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in row-major order (outermost first), as PyTorch and safetensors write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file: metadata and tensor table, with the offset of its data section.
#[derive(Debug, Clone)]
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Byte offset of the data section in the file.
    pub data_offset: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    source: &'a str,
}

impl<'a> Reader<'a> {
    fn bad(&self, detail: impl Into<String>) -> Error {
        Error::BaseModel {
            path: self.source.to_string(),
            detail: format!("GGUF at byte {}: {}", self.at, detail.into()),
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| self.bad("length overflows"))?;
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                self.bad(format!(
                    "truncated: {n} bytes needed, {} left",
                    self.bytes.len() - self.at
                ))
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad("a string is not UTF-8"))
    }

    fn value(&mut self, kind: u32, depth: u32) -> Result<Value> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.bad(format!("boolean byte {b}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth > 0 {
                    return Err(self.bad("nested arrays are not supported"));
                }
                let inner = self.u32()?;
                let n = self.u64()?;
                if n > MAX_ARRAY {
                    return Err(self.bad(format!("array of {n} values exceeds {MAX_ARRAY}")));
                }
                // Every value takes at least one byte: a count beyond the rest of the file is
                // refused before anything is allocated for it.
                if n > (self.bytes.len() - self.at) as u64 {
                    return Err(self.bad(format!("array of {n} values is longer than the file")));
                }
                let mut out = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    out.push(self.value(inner, depth + 1)?);
                }
                Value::Array(out)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(self.bad(format!("unknown metadata value type {other}"))),
        })
    }
}

/// Bytes of `n` elements of `ggml_type`, or an error naming an unsupported type.
fn type_bytes(ggml_type: u32, n: u64, name: &str, source: &str) -> Result<u64> {
    let bad = |detail: String| Error::BaseModel {
        path: source.to_string(),
        detail: format!("tensor {name:?}: {detail}"),
    };
    let (block, size) = match ggml_type {
        ggml_type::F32 => (1, 4),
        ggml_type::F16 => (1, 2),
        ggml_type::Q8_0 => (32, 34),
        ggml_type::Q4_1 => (32, 20),
        other => {
            return Err(bad(format!(
                "{} is not supported (F32, F16, Q8_0 and Q4_1 are)",
                type_name(other)
            )));
        }
    };
    if !n.is_multiple_of(block) {
        return Err(bad(format!("{n} elements are not whole blocks of {block}")));
    }
    (n / block)
        .checked_mul(size)
        .ok_or_else(|| bad("size overflows".into()))
}

impl Gguf {
    /// Parse the header, metadata and tensor table of a GGUF file held in `bytes`, checking
    /// that every tensor's data lies within the file.
    pub fn parse(bytes: &[u8], source: &str) -> Result<Self> {
        let mut r = Reader {
            bytes,
            at: 0,
            source,
        };
        if r.take(4).map(|m| m != MAGIC).unwrap_or(true) {
            return Err(Error::BaseModel {
                path: source.into(),
                detail: "not a GGUF file (magic bytes)".into(),
            });
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.bad(format!("GGUF version {version} (2 and 3 are supported)")));
        }
        let tensor_count = r.u64()?;
        let kv_count = r.u64()?;
        if tensor_count > MAX_TENSORS || kv_count > MAX_METADATA {
            return Err(r.bad(format!(
                "{tensor_count} tensors and {kv_count} metadata entries exceed the limits \
                 ({MAX_TENSORS}, {MAX_METADATA})"
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r.value(kind, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.bad(format!("metadata key {key:?} appears twice")));
            }
        }
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = r.string()?;
            let rank = r.u32()?;
            if rank == 0 || rank > MAX_RANK {
                return Err(r.bad(format!("tensor {name:?} has rank {rank}")));
            }
            let mut dims = Vec::with_capacity(rank as usize);
            for _ in 0..rank {
                dims.push(r.u64()?);
            }
            let ggml_type = r.u32()?;
            let offset = r.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two() && *a <= 1 << 16)
                .ok_or_else(|| r.bad("general.alignment is not a power of two up to 65536"))?,
        } as usize;
        let data_offset = r.at.div_ceil(alignment) * alignment;
        let data_len = bytes.len().saturating_sub(data_offset) as u64;
        let mut seen = std::collections::HashSet::new();
        for t in &tensors {
            if !seen.insert(t.name.as_str()) {
                return Err(r.bad(format!("tensor {:?} appears twice", t.name)));
            }
            let n = t
                .dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| r.bad(format!("tensor {:?}: element count overflows", t.name)))?;
            let size = type_bytes(t.ggml_type, n, &t.name, source)?;
            if !t.offset.is_multiple_of(alignment as u64)
                || t.offset.checked_add(size).is_none_or(|end| end > data_len)
            {
                return Err(r.bad(format!(
                    "tensor {:?}: {size} bytes at offset {} lie outside the data section of {data_len} bytes (or are misaligned)",
                    t.name, t.offset
                )));
            }
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
            data_offset,
        })
    }

    /// The tensor info called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The elements of `t`, dequantized to `f32`, in storage order (row-major over
    /// [`TensorInfo::shape`]). `bytes` is the whole file.
    pub fn dequantize(&self, bytes: &[u8], t: &TensorInfo, source: &str) -> Result<Vec<f32>> {
        let n = t.elements();
        let size = type_bytes(t.ggml_type, n, &t.name, source)?;
        let start = self.data_offset + t.offset as usize;
        let data = &bytes[start..start + size as usize];
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        Ok(match t.ggml_type {
            ggml_type::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            ggml_type::F16 => data.chunks_exact(2).map(f16).collect(),
            ggml_type::Q8_0 => {
                let mut out = Vec::with_capacity(n as usize);
                for block in data.chunks_exact(34) {
                    let d = f16(&block[0..2]);
                    out.extend(block[2..].iter().map(|&q| d * f32::from(q as i8)));
                }
                out
            }
            ggml_type::Q4_1 => {
                let mut out = vec![0f32; n as usize];
                for (block, o) in data.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
                    let (d, m) = (f16(&block[0..2]), f16(&block[2..4]));
                    for (j, &q) in block[4..20].iter().enumerate() {
                        o[j] = d * f32::from(q & 0x0f) + m;
                        o[j + 16] = d * f32::from(q >> 4) + m;
                    }
                }
                out
            }
            _ => unreachable!("type_bytes accepted only the types above"),
        })
    }
}

/// A tensor to write: name, row-major shape (outermost first), ggml type, and `f32` values
/// (quantized on writing for Q8_0 and Q4_1).
#[derive(Debug, Clone)]
pub struct WriteTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub ggml_type: u32,
    pub values: Vec<f32>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    let (kind, bytes): (u32, Vec<u8>) = match v {
        Value::U8(x) => (0, vec![*x]),
        Value::I8(x) => (1, x.to_le_bytes().to_vec()),
        Value::U16(x) => (2, x.to_le_bytes().to_vec()),
        Value::I16(x) => (3, x.to_le_bytes().to_vec()),
        Value::U32(x) => (4, x.to_le_bytes().to_vec()),
        Value::I32(x) => (5, x.to_le_bytes().to_vec()),
        Value::F32(x) => (6, x.to_le_bytes().to_vec()),
        Value::Bool(x) => (7, vec![u8::from(*x)]),
        Value::String(s) => {
            let mut b = Vec::new();
            put_string(&mut b, s);
            (8, b)
        }
        Value::Array(a) => {
            let mut b = Vec::new();
            let inner = a.first().map(value_kind).unwrap_or(4);
            b.extend(inner.to_le_bytes());
            b.extend((a.len() as u64).to_le_bytes());
            for x in a {
                let mut one = Vec::new();
                put_value(&mut one, x);
                b.extend(&one[4..]); // without the element's own type
            }
            (9, b)
        }
        Value::U64(x) => (10, x.to_le_bytes().to_vec()),
        Value::I64(x) => (11, x.to_le_bytes().to_vec()),
        Value::F64(x) => (12, x.to_le_bytes().to_vec()),
    };
    out.extend(kind.to_le_bytes());
    out.extend(bytes);
}

fn value_kind(v: &Value) -> u32 {
    let mut b = Vec::new();
    put_value(&mut b, v);
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Quantize `values` (a multiple of 32 long) to Q8_0 or Q4_1 blocks as llama.cpp's reference
/// quantizers do (scale from the block's maximum magnitude; Q4_1 from its range), or encode
/// them as F32 or F16.
fn encode_tensor(t: &WriteTensor) -> Vec<u8> {
    let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
    match t.ggml_type {
        ggml_type::F32 => t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ggml_type::F16 => t.values.iter().flat_map(|&v| f16(v)).collect(),
        ggml_type::Q8_0 => t
            .values
            .chunks(32)
            .flat_map(|b| {
                let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let mut out = f16(d).to_vec();
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
                out
            })
            .collect(),
        ggml_type::Q4_1 => t
            .values
            .chunks(32)
            .flat_map(|b| {
                let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q = |v: f32| (((v - min) * id + 0.5) as u8).min(15);
                let mut out = f16(d).to_vec();
                out.extend(f16(min));
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
                out
            })
            .collect(),
        other => panic!("cannot write ggml type {other}"),
    }
}

/// Write a GGUF v3 file (alignment 32).
pub fn write(metadata: &[(&str, Value)], tensors: &[WriteTensor]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(MAGIC);
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut out, k);
        put_value(&mut out, v);
    }
    let data: Vec<Vec<u8>> = tensors.iter().map(encode_tensor).collect();
    let mut offset = 0u64;
    for (t, d) in tensors.iter().zip(&data) {
        put_string(&mut out, &t.name);
        out.extend((t.shape.len() as u32).to_le_bytes());
        for &dim in t.shape.iter().rev() {
            out.extend((dim as u64).to_le_bytes());
        }
        out.extend(t.ggml_type.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (d.len() as u64).div_ceil(32) * 32;
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    for d in &data {
        out.extend(d);
        out.resize(out.len().div_ceil(32) * 32, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let values: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.037).collect();
        write(
            &[
                ("general.architecture", Value::String("llama".into())),
                ("llama.block_count", Value::U32(1)),
                (
                    "tokenizer.ggml.tokens",
                    Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
                ),
            ],
            &[
                WriteTensor {
                    name: "f32".into(),
                    shape: vec![2, 32],
                    ggml_type: ggml_type::F32,
                    values: values.clone(),
                },
                WriteTensor {
                    name: "q8".into(),
                    shape: vec![2, 32],
                    ggml_type: ggml_type::Q8_0,
                    values: values.clone(),
                },
                WriteTensor {
                    name: "q41".into(),
                    shape: vec![64],
                    ggml_type: ggml_type::Q4_1,
                    values,
                },
            ],
        )
    }

    #[test]
    fn written_files_read_back_and_dequantize_within_a_quantum() {
        let bytes = sample();
        let g = Gguf::parse(&bytes, "s.gguf").expect("parse");
        assert_eq!(g.version, 3);
        assert_eq!(g.get("llama.block_count").and_then(Value::as_u64), Some(1));
        assert_eq!(
            g.get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(<[Value]>::len),
            Some(2)
        );
        let t = g.tensor("f32").expect("tensor");
        assert_eq!((t.dims.clone(), t.shape()), (vec![32, 2], vec![2, 32]));
        let exact: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.037).collect();
        assert_eq!(g.dequantize(&bytes, t, "s").expect("f32"), exact);
        for (name, tolerance) in [
            ("q8", 1.2 * 0.037 * 33.0 / 127.0),
            ("q41", 0.037 * 63.0 / 15.0),
        ] {
            let got = g
                .dequantize(&bytes, g.tensor(name).expect("tensor"), "s")
                .expect("dequantize");
            for (a, b) in got.iter().zip(&exact) {
                assert!((a - b).abs() <= tolerance, "{name}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn hostile_files_are_clear_errors() {
        let good = sample();
        let msg = |b: &[u8]| Gguf::parse(b, "x.gguf").expect_err("refused").to_string();
        assert!(msg(b"GGML").contains("not a GGUF"));
        assert!(msg(&good[..good.len() - 40]).contains("outside the data section"));
        assert!(msg(&good[..30]).contains("truncated"));
        let mut version = good.clone();
        version[4] = 9;
        assert!(msg(&version).contains("version 9"));
        let mut count = good.clone();
        count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(msg(&count).contains("exceed the limits"));
        // A Q4_0 tensor: a clear error naming the type.
        let q40 = write(
            &[],
            &[WriteTensor {
                name: "w".into(),
                shape: vec![32],
                ggml_type: ggml_type::F32,
                values: vec![0.0; 32],
            }],
        );
        let g = Gguf::parse(&q40, "q").expect("parse");
        let mut t = g.tensors[0].clone();
        t.ggml_type = 2;
        let e = g.dequantize(&q40, &t, "q.gguf").expect_err("Q4_0");
        assert!(e.to_string().contains("Q4_0 is not supported"), "{e}");
        // Every truncation of a valid file is an error, never a panic.
        for n in 0..good.len() {
            let _ = Gguf::parse(&good[..n], "t");
        }
    }
}
