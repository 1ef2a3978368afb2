//! Checkpoint codecs side by side on the same tensors: bytes kept and MB/s (encode, decode; one
//! thread and all) of zstd level 3 per tensor (codec 1), byte-grouped planes (codec 2) at several
//! levels and chunk sizes, deltas against an earlier checkpoint of the same run (zstd and planes
//! of the XOR, and codec 3 with either transform), and ZipNN 0.5.4 (Python, in the bench venv,
//! on the same bytes, full and delta mode). Then delta chains as runs store them, for several
//! keyframe intervals: bytes per checkpoint and the time to read the deepest one.
//!
//! The corpus: the F32 tensors (parameters and AdamW moments) of the demo's checkpoint at step
//! 200, trained here with a checkpoint every 5 steps; deltas against its checkpoints 10, 25, 50
//! and 100 steps earlier. With `CODEC_BENCH_RUNS=dir1:dir2…`, also each named run's last
//! checkpoint and its delta against the one before (e.g. a MiniLM or SmolLM2 + LoRA run).
//! Every encoding is decoded and compared with its input before it is timed.

use std::path::Path;
use std::time::Duration;

use benchmarks::{Report, mb_per_s, median_time, r3};
use rayon::prelude::*;
use run_store::CheckpointReader;
use run_store::Store;
use snapshot_format::delta::Transform;
use snapshot_format::limits::ReadLimits;
use snapshot_format::manifest::CheckpointCodec;
use snapshot_format::planes::{self, Target};
use snapshot_format::snapshot::Reference;
use snapshot_format::snapshot::{self, Provenance, SnapshotKind, StateMeta, TensorView};
use snapshot_format::{Codec, DType, layout};
use trainer::config::RunConfig;
use trainer::{demo, run};

/// The F32 tensors of one checkpoint, in table order.
struct Checkpoint {
    names: Vec<String>,
    tensors: Vec<Vec<u8>>,
}

impl Checkpoint {
    fn read(run: &Path, step: u64) -> Self {
        // Through its delta chain, as a run stores it.
        let snap = run_store::testing::checkpoint(run, step);
        let (names, tensors) = snap
            .header
            .tensors
            .iter()
            .zip(snap.data)
            .filter(|(t, _)| t.dtype == DType::F32)
            .map(|(t, d)| (t.name.clone(), d))
            .unzip();
        Checkpoint { names, tensors }
    }

    fn len(&self) -> u64 {
        self.tensors.iter().map(|t| t.len() as u64).sum()
    }

    fn concat(&self) -> Vec<u8> {
        self.tensors.concat()
    }

    /// Shapes of the tensors (each one-dimensional), for [`Self::views`].
    fn shapes(&self) -> Vec<[u64; 1]> {
        self.tensors.iter().map(|t| [t.len() as u64 / 4]).collect()
    }

    /// The tensors as a snapshot writer takes them.
    fn views<'a>(&'a self, shapes: &'a [[u64; 1]]) -> Vec<TensorView<'a>> {
        self.names
            .iter()
            .zip(&self.tensors)
            .zip(shapes)
            .map(|((name, data), shape)| TensorView {
                name,
                dtype: DType::F32,
                shape,
                data,
            })
            .collect()
    }

    /// zstd-3 bytes of the tensors, one frame each: what runs wrote before codec 2.
    fn zstd3_len(&self) -> u64 {
        self.tensors
            .par_iter()
            .map(|t| zstd::bulk::compress(t, 3).expect("zstd").len() as u64)
            .sum()
    }
}

#[derive(Clone, Copy)]
enum Method {
    Zstd(i32),
    Planes {
        level: i32,
        chunk: u32,
    },
    /// Codec 3 as the trainer writes it: the transform against the reference, as planes
    /// (level 1, 256 KiB chunks), plus its 47-byte reference per tensor. Deltas only.
    Delta(Transform),
}

impl Method {
    fn label(self) -> String {
        match self {
            Method::Zstd(l) => format!("zstd-{l} per tensor (codec 1)"),
            Method::Planes { level, chunk } => format!(
                "planes zstd-{level} (exponent plane zstd-fastest), {} KiB chunks (codec 2)",
                chunk >> 10
            ),
            Method::Delta(Transform::Xor) => "delta, XOR as planes (codec 3, transform 0)".into(),
            Method::Delta(Transform::Difference) => {
                "delta, zigzag difference as planes (codec 3, transform 1)".into()
            }
        }
    }

    fn planes_of(t: &[u8], dtype: DType) -> Vec<u8> {
        planes::encode(dtype, t, planes::DEFAULT_CHUNK_BYTES, planes::DEFAULT_LEVEL)
    }

    fn unplanes(e: &[u8], dtype: DType, raw_len: usize) -> Vec<u8> {
        let target = Target {
            artefact: "bench",
            tensor: "t",
            dtype,
            raw_len: raw_len as u64,
        };
        planes::decode(&target, e).expect("planes")
    }

    /// Encode `t`, against `r` when given (the XOR for codecs 1 and 2).
    fn encode(self, t: &[u8], r: Option<&[u8]>) -> Vec<u8> {
        let xor = |t: &[u8]| match r {
            Some(r) => t.iter().zip(r).map(|(x, y)| x ^ y).collect(),
            None => t.to_vec(),
        };
        match self {
            Method::Zstd(l) => zstd::bulk::compress(&xor(t), l).expect("zstd"),
            Method::Planes { level, chunk } => planes::encode(DType::F32, &xor(t), chunk, level),
            Method::Delta(tr) => {
                let moved = tr.forward(t, r.expect("a delta has a reference"), 4);
                let mut out = vec![0u8; snapshot_format::delta::PREFIX_LEN];
                out.extend(Self::planes_of(&moved, tr.inner_dtype(DType::F32)));
                out
            }
        }
    }

    fn decode(self, e: &[u8], raw_len: usize, r: Option<&[u8]>) -> Vec<u8> {
        let mut out = match self {
            Method::Zstd(_) => zstd::bulk::decompress(e, raw_len).expect("zstd"),
            Method::Planes { .. } => Self::unplanes(e, DType::F32, raw_len),
            Method::Delta(tr) => {
                let e = &e[snapshot_format::delta::PREFIX_LEN..];
                let mut moved = Self::unplanes(e, tr.inner_dtype(DType::F32), raw_len);
                tr.inverse(&mut moved, r.expect("a delta has a reference"), 4);
                return moved;
            }
        };
        if let Some(r) = r {
            out.iter_mut().zip(r).for_each(|(x, y)| *x ^= y);
        }
        out
    }
}

/// Encode and decode `tensors` (against `reference`'s when given, which encode and decode
/// include) with `method` on `threads` threads: (bytes out, encode time, decode time).
fn measure(
    method: Method,
    tensors: &Checkpoint,
    reference: Option<&Checkpoint>,
    threads: usize,
) -> (u64, Duration, Duration) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        assert!(
            reference.is_none_or(|r| r.names == tensors.names),
            "the same tensors"
        );
        let reference_of = |i: usize| reference.map(|r| r.tensors[i].as_slice());
        let encode = || -> Vec<Vec<u8>> {
            tensors
                .tensors
                .par_iter()
                .enumerate()
                .map(|(i, t)| method.encode(t, reference_of(i)))
                .collect()
        };
        let decode = |encoded: &[Vec<u8>]| -> Vec<Vec<u8>> {
            encoded
                .par_iter()
                .zip(&tensors.tensors)
                .enumerate()
                .map(|(i, (e, t))| method.decode(e, t.len(), reference_of(i)))
                .collect()
        };
        let encoded = encode();
        assert!(
            decode(&encoded) == tensors.tensors,
            "{} round trip",
            method.label()
        );
        let bytes = encoded.iter().map(|e| e.len() as u64).sum();
        let t_enc = median_time(3, encode);
        let t_dec = median_time(3, || decode(&encoded));
        (bytes, t_enc, t_dec)
    })
}

/// One case: a checkpoint, and the reference it is a delta against, if any.
struct Case<'a> {
    label: String,
    target: &'a Checkpoint,
    reference: Option<&'a Checkpoint>,
    /// zstd-3 bytes of the full checkpoint: what a run writes today.
    today: u64,
}

const METHODS: [Method; 5] = [
    Method::Zstd(3),
    Method::Planes {
        level: 1,
        chunk: 256 << 10,
    },
    Method::Planes {
        level: 1,
        chunk: 1 << 20,
    },
    Method::Planes {
        level: 3,
        chunk: 256 << 10,
    },
    Method::Planes {
        level: 3,
        chunk: 1 << 20,
    },
];

fn main() {
    trainer::alloc::keep_freed_pages();
    let all = rayon::current_num_threads();
    let tmp = tempfile::tempdir().expect("tmp");
    let config_path = demo::write_assets(&tmp.path().join("assets"), 200).expect("assets");
    let mut config = RunConfig::from_file(&config_path).expect("config");
    config.recording.checkpoint_interval = 5;
    config.recording.codec = CheckpointCodec::Raw;
    let demo_run = tmp.path().join("run");
    run::start(
        &config,
        demo_run.to_str().expect("utf-8"),
        &run::RunOptions::default(),
    )
    .expect("demo run");
    let full = Checkpoint::read(&demo_run, 200);
    let earlier: Vec<(u64, Checkpoint)> = [10u64, 25, 50, 100]
        .into_iter()
        .map(|k| (k, Checkpoint::read(&demo_run, 200 - k)))
        .collect();
    let mut extra: Vec<(String, Checkpoint, Checkpoint, u64)> = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in std::env::var("CODEC_BENCH_RUNS")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
    {
        // Relative to the workspace root (an absolute path stays as it is).
        let dir = root.join(name);
        let mut steps: Vec<u64> = std::fs::read_dir(dir.join(layout::CHECKPOINTS))
            .expect("checkpoints")
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                layout::parse_checkpoint(&format!("{}{}", layout::CHECKPOINTS, name.to_str()?))
            })
            .collect();
        steps.sort();
        let [.., before, last] = steps[..] else {
            panic!("{name}: fewer than two checkpoints")
        };
        let label = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(name)
            .to_string();
        extra.push((
            label,
            Checkpoint::read(&dir, last),
            Checkpoint::read(&dir, before),
            last - before,
        ));
    }

    let zstd_bytes = |c: &Checkpoint| measure(Method::Zstd(3), c, None, all).0;
    let today = zstd_bytes(&full);
    let mut cases = vec![Case {
        label: "demo step 200, full".into(),
        target: &full,
        reference: None,
        today,
    }];
    for (k, r) in &earlier {
        cases.push(Case {
            label: format!("demo step 200, delta against step {}", 200 - k),
            target: &full,
            reference: Some(r),
            today,
        });
    }
    for (name, last, before, k) in &extra {
        let today = zstd_bytes(last);
        cases.push(Case {
            label: format!("{name} last checkpoint, full"),
            target: last,
            reference: None,
            today,
        });
        cases.push(Case {
            label: format!("{name} last checkpoint, delta ({k} steps)"),
            target: last,
            reference: Some(before),
            today,
        });
    }

    // ZipNN on the same bytes: each case's tensors concatenated into one file.
    let files = tmp.path().join("zipnn");
    std::fs::create_dir_all(&files).expect("dir");
    let mut args: Vec<String> = vec!["--threads".into(), "1".into(), all.to_string()];
    args.extend(["--runs".into(), "3".into()]);
    for (i, c) in cases.iter().enumerate() {
        let f = files.join(format!("{i}.bin"));
        std::fs::write(&f, c.target.concat()).expect("write");
        let mut arg = format!("{i}={}", f.display());
        if let Some(r) = c.reference {
            let rf = files.join(format!("{i}-ref.bin"));
            std::fs::write(&rf, r.concat()).expect("write");
            arg.push_str(&format!(":{}", rf.display()));
        }
        args.push(arg);
    }

    let mut rep = Report::new("checkpoint_codecs");
    rep.context(
        "corpus",
        format!(
            "F32 tensors (parameters, AdamW moments) of the demo's checkpoint at step 200: {:.1} MB",
            full.len() as f64 / 1e6
        ),
    );
    rep.context("threads", all);
    let zipnn = benchmarks::pytorch(&mut rep, "zipnn_codec.py", &args);
    if let Some(z) = &zipnn {
        rep.context("zipnn", z["zipnn"].clone());
    }
    let one = "1".to_string();
    let many = all.to_string();
    for (i, case) in cases.iter().enumerate() {
        let raw = case.target.len();
        let row = |rep: &mut Report, method: &str, bytes: u64, t: [Option<Duration>; 4]| {
            let speed = |d: Option<Duration>| {
                d.map_or(serde_json::Value::Null, |d| r3(mb_per_s(raw, d)).into())
            };
            rep.row(
                &format!("{}: {method}", case.label),
                &[
                    ("ratio", r3(bytes as f64 / raw as f64).into()),
                    (
                        "vs zstd-3 full",
                        r3(bytes as f64 / case.today as f64).into(),
                    ),
                    ("encode MB/s 1 thread", speed(t[0])),
                    ("decode MB/s 1 thread", speed(t[1])),
                    ("encode MB/s all", speed(t[2])),
                    ("decode MB/s all", speed(t[3])),
                ],
            );
        };
        let deltas = [
            Method::Delta(Transform::Xor),
            Method::Delta(Transform::Difference),
        ];
        let methods = METHODS.iter().chain(if case.reference.is_some() {
            &deltas[..]
        } else {
            &[]
        });
        for &m in methods {
            let (bytes, e1, d1) = measure(m, case.target, case.reference, 1);
            let (_, ea, da) = measure(m, case.target, case.reference, all);
            row(
                &mut rep,
                &m.label(),
                bytes,
                [Some(e1), Some(d1), Some(ea), Some(da)],
            );
        }
        if let Some(z) = zipnn.as_ref().map(|z| &z["cases"][i.to_string()]) {
            let t = |threads: &String, what: &str| {
                z["threads"][threads][what]
                    .as_f64()
                    .map(Duration::from_secs_f64)
            };
            let label = if z["round_trip"].as_bool() == Some(true) {
                "ZipNN 0.5.4".to_string()
            } else {
                "ZipNN 0.5.4 (its round trip did NOT return the input)".to_string()
            };
            row(
                &mut rep,
                &label,
                z["bytes_out"].as_u64().unwrap_or(0),
                [
                    t(&one, "encode_s"),
                    t(&one, "decode_s"),
                    t(&many, "encode_s"),
                    t(&many, "decode_s"),
                ],
            );
        }
    }

    // replay check's work on each codec, as the trainer writes it: decode + verify a whole
    // snapshot of the full checkpoint, against BLAKE3 alone over the same raw bytes.
    let shapes = full.shapes();
    let views = full.views(&shapes);
    let provenance = Provenance {
        run_id: "bench".into(),
        kind: SnapshotKind::Checkpoint,
        parent: None,
        producer: "checkpoint_codecs".into(),
    };
    let raw = full.len();
    let hash_only = median_time(3, || snapshot::hash_tensors(&views));
    rep.row(
        "check: BLAKE3 of the raw tensors alone",
        &[("MB/s all", r3(mb_per_s(raw, hash_only)).into())],
    );
    for codec in [
        CheckpointCodec::Raw,
        CheckpointCodec::Zstd,
        CheckpointCodec::Planes,
    ] {
        let options = codec.write_options();
        let bytes = snapshot::encode(&StateMeta::default(), &provenance, &views, None, options)
            .expect("encode")
            .to_vec();
        let t = median_time(3, || {
            snapshot::verify(&bytes, "bench", &ReadLimits::default()).expect("verify")
        });
        rep.row(
            &format!("check: snapshot::verify, {} checkpoint", codec.name()),
            &[
                ("MB/s all", r3(mb_per_s(raw, t)).into()),
                (
                    "vs BLAKE3 alone",
                    r3(hash_only.as_secs_f64() / t.as_secs_f64()).into(),
                ),
            ],
        );
    }
    chains(
        &mut rep,
        &demo_run,
        &provenance,
        hash_only.as_secs_f64() / raw as f64,
    );
    rep.finish();
}

/// Delta chains as a run stores them (codec 3, the trainer's settings), over the demo's
/// checkpoints every 10 steps from 0 to 200, for several keyframe intervals K: bytes against
/// raw and against zstd-3, the time to read the deepest checkpoint from a cold reader (it
/// reads its whole chain), and `replay check`'s work on the K = 8 chain, every checkpoint in
/// order. `hash_s_per_byte`: BLAKE3 alone, for the comparison.
fn chains(rep: &mut Report, run: &Path, provenance: &Provenance, hash_s_per_byte: f64) {
    let steps: Vec<u64> = (0..=200).step_by(10).collect();
    let chain: Vec<Checkpoint> = steps.iter().map(|&s| Checkpoint::read(run, s)).collect();
    let raw: u64 = chain.iter().map(Checkpoint::len).sum();
    let today: u64 = chain.iter().map(Checkpoint::zstd3_len).sum();
    let label = |k: u32| {
        format!(
            "chain of {} checkpoints every 10 steps, keyframe every {k}",
            steps.len()
        )
    };
    for k in [1u32, 2, 4, 8, 16, 32] {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::create(dir.path().to_str().expect("utf-8")).expect("store");
        let options = snapshot::WriteOptions {
            keyframe_every: k,
            ..CheckpointCodec::Delta.write_options()
        };
        assert_eq!(options.codec, Codec::Delta);
        let mut reference: Option<Reference> = None;
        let (mut bytes, mut deepest) = (0u64, (0u32, 0u64));
        for (&step, c) in steps.iter().zip(&chain) {
            let shapes = c.shapes();
            let views = c.views(&shapes);
            let meta = StateMeta {
                step,
                ..StateMeta::default()
            };
            let enc = snapshot::encode_against(
                &meta,
                provenance,
                &views,
                None,
                options,
                reference.as_ref(),
            )
            .expect("encode");
            let depth = enc.depths.iter().copied().max().unwrap_or(0);
            if depth >= deepest.0 {
                deepest = (depth, step);
            }
            bytes += enc.len();
            reference = Some(Reference::new(step, enc.state_root, &views, &enc.depths));
            store
                .put_new(&layout::checkpoint(step), enc.to_vec())
                .expect("put");
        }
        let read = median_time(3, || {
            let reader = CheckpointReader::new(store.clone(), ReadLimits::default());
            reader.read(deepest.1).expect("read")
        });
        let mut row: Vec<(&str, serde_json::Value)> = vec![
            ("ratio", r3(bytes as f64 / raw as f64).into()),
            ("vs zstd-3 full", r3(bytes as f64 / today as f64).into()),
            ("objects read for the deepest", (deepest.0 + 1).into()),
            ("read deepest s", r3(read.as_secs_f64()).into()),
        ];
        if k == 8 {
            let check = median_time(3, || {
                let reader = CheckpointReader::new(store.clone(), ReadLimits::default());
                for &step in &steps {
                    reader.check(step, true).0.expect("check");
                }
            });
            row.push(("check MB/s all", r3(mb_per_s(raw, check)).into()));
            row.push((
                "check vs BLAKE3 alone",
                r3(hash_s_per_byte * raw as f64 / check.as_secs_f64()).into(),
            ));
        }
        rep.row(&label(k), &row);
    }
}
