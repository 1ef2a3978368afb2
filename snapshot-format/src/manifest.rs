//! JSON artefacts: the run manifest, the environment fingerprint and the completion record.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::{DomainHasher, Hash32, context};
use crate::ledger;

/// Manifest format versions this reader understands.
pub const MANIFEST_VERSIONS: &[u16] = &[1];

/// Producer of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Engine {
    pub name: String,
    pub version: String,
}

/// How the run was recorded. Does not affect the bits of training.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    /// A checkpoint every this many steps (plus step 0 and the final step).
    pub checkpoint_interval: u64,
    /// Ledger records carry a state root every this many steps (and at every checkpoint).
    pub state_root_interval: u64,
    /// Codec of checkpoint tensors.
    #[serde(default = "codec_before_the_field")]
    pub codec: CheckpointCodec,
}

/// The codec of manifests written before `recording.codec` existed.
fn codec_before_the_field() -> CheckpointCodec {
    CheckpointCodec::Zstd
}

/// How a run stores its checkpoints' tensors: a configuration's `[recording] codec` and the
/// manifest's `recording.codec`, one type from the configuration file to the writer, named in
/// JSON and TOML as written here (`delta`, `planes`, `zstd`, `raw`); any other name is refused
/// where it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointCodec {
    /// Delta (codec 3) against the previous checkpoint: each element's difference from the
    /// reference's, stored as planes, with a keyframe (planes) every 8 checkpoints. The default: the smallest checkpoints (the
    /// `checkpoint_codecs` benchmark).
    #[default]
    Delta,
    /// Byte-grouped zstd (codec 2): each byte position of the elements as its own plane, so
    /// that exponents and mantissas are compressed apart; every checkpoint stands alone.
    Planes,
    /// zstd level 3 over each whole tensor (codec 1), the default of earlier runs.
    Zstd,
    /// Raw bytes: `replay check` runs at the speed of reading and hashing.
    Raw,
}

impl CheckpointCodec {
    /// Name recorded in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            CheckpointCodec::Zstd => "zstd",
            CheckpointCodec::Raw => "raw",
            CheckpointCodec::Planes => "planes",
            CheckpointCodec::Delta => "delta",
        }
    }

    /// Snapshot writer settings: zstd at level 3; planes (and a delta's planes) at level 1 in
    /// 256 KiB chunks (a float's exponent plane at `planes::EXPONENT_LEVEL`), a keyframe every
    /// 8 checkpoints (chosen by the `checkpoint_codecs` benchmark).
    pub fn write_options(self) -> crate::snapshot::WriteOptions {
        use crate::{Codec, delta, planes, snapshot::WriteOptions};
        let planes = WriteOptions {
            codec: Codec::Planes,
            zstd_level: planes::DEFAULT_LEVEL,
            chunk_bytes: planes::DEFAULT_CHUNK_BYTES,
            keyframe_every: delta::DEFAULT_KEYFRAME_EVERY,
            delta_transform: delta::DEFAULT_TRANSFORM,
        };
        match self {
            CheckpointCodec::Delta => WriteOptions {
                codec: Codec::Delta,
                ..planes
            },
            CheckpointCodec::Planes => planes,
            CheckpointCodec::Zstd => WriteOptions {
                codec: Codec::Zstd,
                ..WriteOptions::default()
            },
            CheckpointCodec::Raw => WriteOptions {
                codec: Codec::Raw,
                ..WriteOptions::default()
            },
        }
    }
}

/// A GPU's identity, for runs on CUDA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuFingerprint {
    pub name: String,
    pub compute_capability: String,
    pub sm_count: u64,
    pub memory_bytes: u64,
    pub driver_version: String,
    pub cuda_version: String,
}

/// Where a run was computed. Determinism is promised within an *environment class*: the
/// fields listed in [`EnvironmentFingerprint::CLASS_FIELDS`]. The other fields are recorded
/// for the investigator but do not change bits (each is tested or argued in
/// `specs/determinism.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentFingerprint {
    /// Compute backend: `flex` (CPU), `ndarray` (CPU) or `cuda`.
    pub backend: String,
    /// Device used, e.g. `cpu` or `cuda:0`.
    pub device: String,
    pub burn_version: String,
    /// What of the engine determines bits: numerics version and compiled backend features.
    pub engine_build: String,
    /// Target triple the engine was built for.
    pub target: String,
    /// C library and version (recorded for the investigator; the engine's numerics take no
    /// function from it).
    pub libc: String,
    /// The instruction-set level the CPU kernels run at: `x86-64-v3` (AVX2 and FMA, the same
    /// code with or without AVX-512), `x86-64-v2`, `x86-64`, or `aarch64`. Empty in manifests
    /// written before it was recorded.
    #[serde(default)]
    pub isa_level: String,
    /// Instruction-set features of the CPU, sorted (recorded for the investigator).
    pub cpu_features: Vec<String>,
    pub cpu_model: String,
    /// Worker threads (rayon) during the run.
    pub threads: u64,
    /// Data-parallel processes that trained the run, each computing its share of every step's
    /// micro-batches (`specs/determinism.md` §5.6); 1, one process, is left out. Not part of the
    /// class: it changes no bit.
    #[serde(default = "one_worker", skip_serializing_if = "is_one_worker")]
    pub workers: u64,
    pub os: String,
    pub rustc: String,
    pub gpu: Option<GpuFingerprint>,
}

fn one_worker() -> u64 {
    1
}

fn is_one_worker(n: &u64) -> bool {
    *n == 1
}

impl EnvironmentFingerprint {
    /// The fields that define the environment class.
    pub const CLASS_FIELDS: &'static [&'static str] = &[
        "backend",
        "burn_version",
        "engine_build",
        "target",
        "isa_level",
        "gpu.name",
        "gpu.compute_capability",
        "gpu.driver_version",
        "gpu.cuda_version",
    ];

    fn class_values(&self) -> Vec<(&'static str, String)> {
        let gpu = |f: fn(&GpuFingerprint) -> &String| {
            self.gpu.as_ref().map(|g| f(g).clone()).unwrap_or_default()
        };
        vec![
            ("backend", self.backend.clone()),
            ("burn_version", self.burn_version.clone()),
            ("engine_build", self.engine_build.clone()),
            ("target", self.target.clone()),
            ("isa_level", self.isa_level.clone()),
            ("gpu.name", gpu(|g| &g.name)),
            ("gpu.compute_capability", gpu(|g| &g.compute_capability)),
            ("gpu.driver_version", gpu(|g| &g.driver_version)),
            ("gpu.cuda_version", gpu(|g| &g.cuda_version)),
        ]
    }

    /// Environment class: `BLAKE3-derive(ENVIRONMENT_CLASS, (u64 len ‖ field name ‖ u64 len ‖
    /// value)…)` over [`Self::CLASS_FIELDS`] in order.
    pub fn class(&self) -> Hash32 {
        let mut h = DomainHasher::new(context::ENVIRONMENT_CLASS);
        for (name, value) in self.class_values() {
            h.prefixed(name.as_bytes()).prefixed(value.as_bytes());
        }
        h.finish()
    }

    /// Class fields that differ: `(field, self's value, other's value)`.
    pub fn class_differences(&self, other: &Self) -> Vec<(&'static str, String, String)> {
        self.class_values()
            .into_iter()
            .zip(other.class_values())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, b)| (a.0, a.1, b.1))
            .collect()
    }
}

/// The run manifest (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunManifest {
    pub format_version: u16,
    pub run_id: String,
    /// Seconds since the Unix epoch when the run started.
    pub created_unix: u64,
    pub engine: Engine,
    /// Everything that determines the bits of the run: model, hyper-parameters, seeds, base
    /// model hash, dataset root. Its hash is bound into the ledger's genesis.
    pub spec: serde_json::Value,
    /// [`spec_hash`] of `spec`.
    pub spec_hash: Hash32,
    /// State root at step 0 (after initialisation, before the first update).
    pub initial_state_root: Hash32,
    /// [`ledger::genesis`] of `spec_hash` and `initial_state_root`.
    pub genesis: Hash32,
    pub recording: Recording,
    pub environment: EnvironmentFingerprint,
}

/// Largest integer magnitude a spec may hold: 2^53. RFC 8785 writes numbers as IEEE-754
/// doubles, so two integers above it can canonicalise to the same text and the same spec hash.
pub const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// Reject any integer in `value` whose magnitude exceeds [`MAX_EXACT_INTEGER`], naming its path:
/// the spec hash is one-to-one only on exactly representable numbers.
pub fn check_exact_integers(value: &serde_json::Value) -> std::result::Result<(), String> {
    fn walk(v: &serde_json::Value, path: &str) -> std::result::Result<(), String> {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match v {
            serde_json::Value::Number(n) => {
                let too_big = match (n.as_u64(), n.as_i64()) {
                    (Some(u), _) => u > MAX_EXACT_INTEGER,
                    (None, Some(i)) => i.unsigned_abs() > MAX_EXACT_INTEGER,
                    (None, None) => false,
                };
                if too_big {
                    return Err(format!(
                        "{path}: {n} exceeds 2^53, the largest integer the spec hash (RFC 8785 \
                         canonical JSON) represents exactly"
                    ));
                }
                Ok(())
            }
            serde_json::Value::Array(a) => a
                .iter()
                .enumerate()
                .try_for_each(|(i, x)| walk(x, &format!("{path}[{i}]"))),
            serde_json::Value::Object(m) => m.iter().try_for_each(|(k, x)| walk(x, &join(k))),
            _ => Ok(()),
        }
    }
    walk(value, "")
}

impl Recording {
    /// Intervals of at least 1 (the codec is one of [`CheckpointCodec`]'s by its type).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.checkpoint_interval == 0 {
            return Err("recording.checkpoint_interval: must be at least 1".into());
        }
        if self.state_root_interval == 0 {
            return Err("recording.state_root_interval: must be at least 1".into());
        }
        Ok(())
    }
}

/// Spec hash: `BLAKE3-derive(SPEC, RFC 8785 canonical JSON of spec)`.
pub fn spec_hash(spec: &serde_json::Value) -> Hash32 {
    // Canonicalising a serde_json::Value cannot fail: it holds no non-string keys and no
    // non-finite numbers.
    let canonical = serde_json_canonicalizer::to_vec(spec).unwrap_or_default();
    let mut h = DomainHasher::new(context::SPEC);
    h.bytes(&canonical);
    h.finish()
}

impl RunManifest {
    /// Parse and check the format version and the commitments (spec hash and genesis).
    pub fn from_json(bytes: &[u8], artefact: &str) -> Result<Self> {
        let m: RunManifest = serde_json::from_slice(bytes).map_err(|e| Error::Json {
            artefact: artefact.to_string(),
            detail: e.to_string(),
        })?;
        if !MANIFEST_VERSIONS.contains(&m.format_version) {
            return Err(Error::UnsupportedVersion {
                artefact: artefact.to_string(),
                found: m.format_version,
                supported: MANIFEST_VERSIONS,
            });
        }
        let invalid = |detail: String| Error::Json {
            artefact: artefact.to_string(),
            detail,
        };
        check_exact_integers(&m.spec).map_err(|d| invalid(format!("spec.{d}")))?;
        m.recording.validate().map_err(invalid)?;
        let computed = spec_hash(&m.spec);
        if computed != m.spec_hash {
            return Err(Error::SpecHashMismatch {
                artefact: artefact.to_string(),
                stored: m.spec_hash,
                computed,
            });
        }
        Ok(m)
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        to_pretty_json(self)
    }

    /// The genesis hash implied by the commitments (compare with `genesis` and with the
    /// first ledger record's `prev_hash`).
    pub fn computed_genesis(&self) -> Hash32 {
        ledger::genesis(&self.spec_hash, &self.initial_state_root)
    }
}

/// Written once when a run completes (`complete.json`): without it, a run whose last
/// segments were deleted would look like a run that crashed early.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    pub run_id: String,
    pub final_step: u64,
    pub segments: u64,
    pub ledger_head: Hash32,
    pub final_state_root: Hash32,
}

impl Completion {
    /// Parse.
    pub fn from_json(bytes: &[u8], artefact: &str) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::Json {
            artefact: artefact.to_string(),
            detail: e.to_string(),
        })
    }
    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        to_pretty_json(self)
    }
}

fn to_pretty_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs to JSON cannot fail.
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codec_is_one_of_four_names_and_zstd_when_absent() {
        let recording = |codec: &str| {
            serde_json::from_str::<Recording>(&format!(
                r#"{{"checkpoint_interval": 4, "state_root_interval": 1{codec}}}"#
            ))
        };
        for (name, codec) in [
            ("delta", CheckpointCodec::Delta),
            ("planes", CheckpointCodec::Planes),
            ("zstd", CheckpointCodec::Zstd),
            ("raw", CheckpointCodec::Raw),
        ] {
            let r = recording(&format!(r#", "codec": "{name}""#)).expect(name);
            assert_eq!(r.codec, codec);
            assert_eq!(serde_json::to_value(codec).expect("json"), name);
            assert_eq!(codec.name(), name);
        }
        assert_eq!(recording("").expect("absent").codec, CheckpointCodec::Zstd);
        assert!(recording(r#", "codec": "lz4""#).is_err());
    }

    #[test]
    fn spec_hash_ignores_key_order_and_whitespace_but_not_values() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"lr": 0.001, "seed": 7, "model": {"d": 64, "h": 4}}"#)
                .expect("json");
        let b: serde_json::Value =
            serde_json::from_str(r#"{ "model":{"h":4,"d":64},"seed":7,"lr":0.001 }"#)
                .expect("json");
        let c: serde_json::Value =
            serde_json::from_str(r#"{"lr": 0.002, "seed": 7, "model": {"d": 64, "h": 4}}"#)
                .expect("json");
        assert_eq!(spec_hash(&a), spec_hash(&b));
        assert_ne!(spec_hash(&a), spec_hash(&c));
    }

    #[test]
    fn integers_beyond_2_pow_53_are_rejected_because_they_would_collide() {
        let a = serde_json::json!({"run": {"seed": MAX_EXACT_INTEGER + 1}});
        let b = serde_json::json!({"run": {"seed": MAX_EXACT_INTEGER}});
        // The collision the check prevents:
        assert_eq!(spec_hash(&a), spec_hash(&b));
        let e = check_exact_integers(&a).expect_err("too large");
        assert!(e.starts_with("run.seed: 9007199254740993"), "{e}");
        assert!(check_exact_integers(&b).is_ok());
        let neg = serde_json::json!({"x": [1, -9007199254740993i64]});
        assert!(
            check_exact_integers(&neg)
                .expect_err("too small")
                .starts_with("x[1]")
        );
    }
}
