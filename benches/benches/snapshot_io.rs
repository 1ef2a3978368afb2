//! Snapshot write and read throughput on ~100 MB of f32 tensors shaped like a small
//! transformer (vocab 12288, hidden 512, 6 layers, intermediate 2048), each compared with the
//! essential work on the same bytes in the same run:
//! - write vs BLAKE3 hashing + zstd level 3 compression of every tensor;
//! - read vs zstd decompression + BLAKE3 hashing of every tensor.
//!
//! Baselines use the same per-tensor parallelism (rayon) as the format, so the ratio is the
//! format's own overhead: framing, the table, the state root, and copying into one object.

use benchmarks::{Report, mb_per_s, median_time, r3};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use rayon::prelude::*;
use snapshot_format::limits::ReadLimits;
use snapshot_format::snapshot::{
    self, Provenance, SnapshotKind, StateMeta, TensorView, WriteOptions,
};
use snapshot_format::{Codec, DType};

struct Tensor {
    name: String,
    shape: Vec<u64>,
    data: Vec<u8>,
}

/// Weights distributed roughly like trained ones: mean 0, standard deviation about 0.02
/// (a sum of four uniforms, computed without transcendental functions).
fn weights(rng: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 4);
    for _ in 0..n {
        let s: f32 = (0..4)
            .map(|_| (rng.next_u32() >> 8) as f32 / 16_777_216.0)
            .sum::<f32>()
            - 2.0;
        out.extend_from_slice(&(s * 0.035).to_le_bytes());
    }
    out
}

fn model() -> Vec<Tensor> {
    let (vocab, hidden, layers, inter) = (12288u64, 512u64, 6, 2048u64);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut shapes: Vec<(String, Vec<u64>)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![vocab, hidden],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![512, hidden],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![hidden]),
        ("embeddings.LayerNorm.bias".into(), vec![hidden]),
    ];
    for l in 0..layers {
        let p = format!("encoder.layer.{l}");
        for w in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ] {
            shapes.push((format!("{p}.{w}.weight"), vec![hidden, hidden]));
            shapes.push((format!("{p}.{w}.bias"), vec![hidden]));
        }
        shapes.push((
            format!("{p}.intermediate.dense.weight"),
            vec![inter, hidden],
        ));
        shapes.push((format!("{p}.intermediate.dense.bias"), vec![inter]));
        shapes.push((format!("{p}.output.dense.weight"), vec![hidden, inter]));
        shapes.push((format!("{p}.output.dense.bias"), vec![hidden]));
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            shapes.push((format!("{p}.{ln}.weight"), vec![hidden]));
            shapes.push((format!("{p}.{ln}.bias"), vec![hidden]));
        }
    }
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product::<u64>() as usize;
            Tensor {
                data: weights(&mut rng, n),
                name,
                shape,
            }
        })
        .collect()
}

fn main() {
    trainer::alloc::keep_freed_pages();
    let tensors = model();
    let bytes: u64 = tensors.iter().map(|t| t.data.len() as u64).sum();
    let views: Vec<TensorView<'_>> = tensors
        .iter()
        .map(|t| TensorView {
            name: &t.name,
            dtype: DType::F32,
            shape: &t.shape,
            data: &t.data,
        })
        .collect();
    let state = StateMeta {
        step: 1000,
        ..Default::default()
    };
    let prov = Provenance {
        run_id: "bench".into(),
        kind: SnapshotKind::Checkpoint,
        parent: None,
        producer: "bench".into(),
    };
    let runs = 9;

    // A writer holds every compressed tensor until the object is stored, so its baseline keeps
    // them too.
    let base_write = median_time(runs, || {
        tensors
            .par_iter()
            .map(|t| {
                (
                    blake3::hash(&t.data),
                    zstd::bulk::compress(&t.data, 3).expect("compress"),
                )
            })
            .collect::<Vec<_>>()
    });
    let base_write_discard = median_time(runs, || {
        tensors
            .par_iter()
            .map(|t| {
                (
                    blake3::hash(&t.data),
                    zstd::bulk::compress(&t.data, 3)
                        .map(|c| c.len())
                        .unwrap_or(0),
                )
            })
            .collect::<Vec<_>>()
    });
    let base_hash = median_time(runs, || {
        tensors
            .par_iter()
            .map(|t| blake3::hash(&t.data))
            .collect::<Vec<_>>()
    });
    let state_root = median_time(runs, || snapshot::state_root(&state, &views, None));
    let write = median_time(runs, || {
        snapshot::encode(&state, &prov, &views, None, WriteOptions::default()).map(|e| e.len())
    });
    let write_raw = median_time(runs, || {
        snapshot::encode(
            &state,
            &prov,
            &views,
            None,
            WriteOptions {
                codec: Codec::Raw,
                ..WriteOptions::default()
            },
        )
        .map(|e| e.len())
    });
    let encoded = snapshot::encode(&state, &prov, &views, None, WriteOptions::default())
        .expect("encode")
        .to_vec();
    let compressed: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| zstd::bulk::compress(&t.data, 3).expect("compress"))
        .collect();
    // A reader returns every decoded tensor, so its baseline keeps them too.
    let base_read = median_time(runs, || {
        compressed
            .par_iter()
            .zip(&tensors)
            .map(|(c, t)| {
                let raw = zstd::bulk::decompress(c, t.data.len()).expect("decompress");
                let h = blake3::hash(&raw);
                (raw, h)
            })
            .collect::<Vec<_>>()
    });
    let base_read_discard = median_time(runs, || {
        compressed
            .par_iter()
            .zip(&tensors)
            .map(|(c, t)| {
                blake3::hash(&zstd::bulk::decompress(c, t.data.len()).expect("decompress"))
            })
            .collect::<Vec<_>>()
    });
    // The streaming reader holds one tensor at a time on one thread: its baseline does too.
    let base_read_serial = median_time(runs, || {
        compressed
            .iter()
            .zip(&tensors)
            .map(|(c, t)| {
                blake3::hash(&zstd::bulk::decompress(c, t.data.len()).expect("decompress"))
            })
            .collect::<Vec<_>>()
    });
    let limits = ReadLimits::default();
    let read = median_time(runs, || {
        snapshot::decode(&encoded, "bench", &limits).map(|s| s.data.len())
    });
    let read_stream = median_time(runs, || {
        let mut r = snapshot::SnapshotReader::new(std::io::Cursor::new(&encoded), "bench", &limits)
            .expect("header");
        while r.next_tensor().expect("tensor").is_some() {}
        r.finish().map(|h| h.tensors.len())
    });

    let mut rep = Report::new("snapshot-format");
    rep.context("tensors", tensors.len() as u64);
    rep.context("raw_mb", r3(bytes as f64 / 1e6));
    rep.context("snapshot_mb_zstd3", r3(encoded.len() as f64 / 1e6));
    rep.context(
        "compression_saved_percent",
        r3(100.0 * (1.0 - encoded.len() as f64 / bytes as f64)),
    );
    rep.context("rayon_threads", rayon::current_num_threads() as u64);
    rep.context("runs_per_figure", runs as u64);
    let row = |rep: &mut Report,
               label: &str,
               d: std::time::Duration,
               base: Option<std::time::Duration>| {
        let mut v = vec![
            ("ms", serde_json::json!(r3(d.as_secs_f64() * 1e3))),
            ("MB/s", serde_json::json!(r3(mb_per_s(bytes, d)))),
        ];
        if let Some(b) = base {
            v.push((
                "ratio to baseline",
                serde_json::json!(r3(d.as_secs_f64() / b.as_secs_f64())),
            ));
        }
        rep.row(label, &v);
    };
    let rows = [
        (
            "baseline: BLAKE3 + zstd-3 compress, keeping the output",
            base_write,
            None,
        ),
        ("write snapshot (zstd-3)", write, Some(base_write)),
        (
            "(baseline discarding each output)",
            base_write_discard,
            None,
        ),
        (
            "baseline: zstd decompress + BLAKE3, keeping the tensors",
            base_read,
            None,
        ),
        ("read snapshot, in memory (parallel)", read, Some(base_read)),
        (
            "(baseline discarding each tensor after hashing)",
            base_read_discard,
            None,
        ),
        (
            "baseline: zstd decompress + BLAKE3, one thread, one tensor at a time",
            base_read_serial,
            None,
        ),
        (
            "read snapshot, streaming (one tensor at a time)",
            read_stream,
            Some(base_read_serial),
        ),
        ("baseline: BLAKE3 only", base_hash, None),
        (
            "state root only (per-step cost)",
            state_root,
            Some(base_hash),
        ),
        ("write snapshot (raw codec)", write_raw, Some(base_hash)),
    ];
    for (label, d, base) in rows {
        row(&mut rep, label, d, base);
    }
    rep.finish();
}
