//! Element types and tensor codecs, with their on-disk numeric codes.

use std::fmt;

/// Element type of a tensor. The numeric code is what the format stores; codes are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    /// One byte per element, 0 or 1.
    Bool,
}

impl DType {
    /// Every dtype, in code order.
    pub const ALL: [DType; 13] = [
        DType::F64,
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U64,
        DType::U32,
        DType::U16,
        DType::U8,
        DType::Bool,
    ];

    /// The code stored in the tensor table.
    pub fn code(self) -> u8 {
        match self {
            DType::F64 => 1,
            DType::F32 => 2,
            DType::F16 => 3,
            DType::BF16 => 4,
            DType::I64 => 5,
            DType::I32 => 6,
            DType::I16 => 7,
            DType::I8 => 8,
            DType::U64 => 9,
            DType::U32 => 10,
            DType::U16 => 11,
            DType::U8 => 12,
            DType::Bool => 13,
        }
    }

    /// The dtype for a stored code, if the code is known.
    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.code() == code)
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The name used in specs, JSON output and safetensors (`F32`, `BF16`, `BOOL`, …).
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U64 => "U64",
            DType::U32 => "U32",
            DType::U16 => "U16",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a tensor's raw bytes are encoded in the data section.
///
/// Codec ids 0..=255 are reserved for this specification; 256..=65535 are free for private
/// experiments, which a conforming reader rejects as unknown. See `specs/snapshot-format.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Id 0: the raw bytes themselves.
    Raw,
    /// Id 1: one zstd frame holding the raw bytes.
    Zstd,
    /// Id 2: byte-grouped zstd, the bytes of each element position as separate planes in
    /// chunks ([`crate::planes`]).
    Planes,
    /// Id 3: XOR-delta against the tensor of the same name in an earlier checkpoint of the run,
    /// named by step and state root, the XOR stored with an inner codec ([`crate::delta`]).
    Delta,
}

impl Codec {
    /// The id stored in the tensor table.
    pub fn id(self) -> u16 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd => 1,
            Codec::Planes => 2,
            Codec::Delta => 3,
        }
    }

    /// The codec for a stored id, if the id is known.
    pub fn from_id(id: u16) -> Option<Codec> {
        match id {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Planes),
            3 => Some(Codec::Delta),
            _ => None,
        }
    }

    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd => "zstd",
            Codec::Planes => "planes",
            Codec::Delta => "delta",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for d in DType::ALL {
            assert!(seen.insert(d.code()));
            assert_eq!(DType::from_code(d.code()), Some(d));
        }
        assert_eq!(DType::from_code(0), None);
        assert_eq!(DType::from_code(14), None);
        for c in [Codec::Raw, Codec::Zstd, Codec::Planes, Codec::Delta] {
            assert_eq!(Codec::from_id(c.id()), Some(c));
        }
        assert_eq!(Codec::from_id(4), None);
    }
}
