//! Checkpoint codecs side by side on the same tensors: bytes kept and MB/s (encode, decode; one
//! thread and all) of zstd level 3 per tensor (codec 1), byte-grouped planes (codec 2) at several
//! levels and chunk sizes, XOR deltas against an earlier checkpoint of the same run, and ZipNN
//! 0.5.4 (Python, in the bench venv, on the same bytes, full and delta mode).
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
use snapshot_format::limits::ReadLimits;
use snapshot_format::planes::{self, Target};
use snapshot_format::snapshot::{self, Provenance, SnapshotKind, StateMeta, TensorView};
use snapshot_format::{DType, layout};
use trainer::config::{CheckpointCodec, RunConfig};
use trainer::{demo, run};

/// The F32 tensors of one checkpoint, in table order.
struct Checkpoint {
    names: Vec<String>,
    tensors: Vec<Vec<u8>>,
}

impl Checkpoint {
    fn read(run: &Path, step: u64) -> Self {
        let path = run.join(layout::checkpoint(step));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let snap = snapshot::decode(&bytes, "checkpoint", &ReadLimits::default()).expect("decode");
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

    /// This checkpoint's tensors XOR `reference`'s, tensor by tensor.
    fn xor(&self, reference: &Checkpoint) -> Vec<Vec<u8>> {
        assert_eq!(self.names, reference.names, "the same tensors");
        self.tensors
            .par_iter()
            .zip(&reference.tensors)
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x ^ y).collect())
            .collect()
    }

    fn concat(&self) -> Vec<u8> {
        self.tensors.concat()
    }
}

#[derive(Clone, Copy)]
enum Method {
    Zstd(i32),
    Planes { level: i32, chunk: u32 },
}

impl Method {
    fn label(self) -> String {
        match self {
            Method::Zstd(l) => format!("zstd-{l} per tensor (codec 1)"),
            Method::Planes { level, chunk } => {
                format!("planes zstd-{level}, {} KiB chunks (codec 2)", chunk >> 10)
            }
        }
    }

    fn encode(self, t: &[u8]) -> Vec<u8> {
        match self {
            Method::Zstd(l) => zstd::bulk::compress(t, l).expect("zstd"),
            Method::Planes { level, chunk } => planes::encode(DType::F32, t, chunk, level),
        }
    }

    fn decode(self, e: &[u8], raw_len: usize) -> Vec<u8> {
        match self {
            Method::Zstd(_) => zstd::bulk::decompress(e, raw_len).expect("zstd"),
            Method::Planes { .. } => {
                let target = Target {
                    artefact: "bench",
                    tensor: "t",
                    dtype: DType::F32,
                    raw_len: raw_len as u64,
                };
                planes::decode(&target, e).expect("planes")
            }
        }
    }
}

/// Encode and decode `tensors` (XORed with `reference`'s when given, which encode and decode
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
        let encode = || -> Vec<Vec<u8>> {
            let input = match reference {
                Some(r) => tensors.xor(r),
                None => tensors.tensors.clone(),
            };
            input.par_iter().map(|t| method.encode(t)).collect()
        };
        let decode = |encoded: &[Vec<u8>]| -> Vec<Vec<u8>> {
            let out: Vec<Vec<u8>> = encoded
                .par_iter()
                .zip(&tensors.tensors)
                .map(|(e, t)| method.decode(e, t.len()))
                .collect();
            match reference {
                Some(r) => out
                    .par_iter()
                    .zip(&r.tensors)
                    .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x ^ y).collect())
                    .collect(),
                None => out,
            }
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
        for m in METHODS {
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
    let shapes: Vec<[u64; 1]> = full.tensors.iter().map(|t| [t.len() as u64 / 4]).collect();
    let views: Vec<TensorView<'_>> = full
        .names
        .iter()
        .zip(&full.tensors)
        .zip(&shapes)
        .map(|((name, data), shape)| TensorView {
            name,
            dtype: DType::F32,
            shape,
            data,
        })
        .collect();
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
    rep.finish();
}
