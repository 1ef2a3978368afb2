//! Cost of verification, side by side with the work it checks, on the demo model and data:
//! - replay of a segment against the original training of that same segment: the run is
//!   recorded with `--max-steps 50`, then `trainer resume` trains segment 2 (loading checkpoint
//!   50, training and recording 50 steps), and `replay verify --segment 2` replays it (loading
//!   checkpoint 50, re-executing and checking 50 steps, comparing the final state);
//! - `replay check` (every artefact decoded and cross-checked, every tensor hash verified)
//!   against reading every byte of the run and hashing it with BLAKE3, for the same run (a
//!   checkpoint every tenth of the steps) stored with each checkpoint codec: delta (the
//!   default, chains of up to 8), planes, zstd and raw; and against reading and hashing the
//!   same states stored raw (what a check costs at the least, whatever the codec: it hashes
//!   every raw byte).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use benchmarks::{Report, median_time, r3};
use indicatif::ProgressBar;
use replay::Verdict;
use replay::commands::verify::{Scope, VerifyOptions};
use replay::context::LoadOptions;
use snapshot_format::manifest::CheckpointCodec;
use trainer::backend::DeviceSpec;
use trainer::config::RunConfig;
use trainer::demo;
use trainer::run::{self, RunOptions};

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// (bytes, median time to read and hash every object, median time of `replay check`).
fn check_against_baseline(dir: &Path) -> (u64, Duration, Duration) {
    let mut paths = Vec::new();
    files(dir, &mut paths);
    let bytes: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let runs = 5;
    let read_hash = median_time(runs, || {
        paths
            .iter()
            .map(|p| {
                let b = std::fs::read(p).expect("read");
                let mut h = blake3::Hasher::new();
                h.update_rayon(&b);
                h.finalize()
            })
            .collect::<Vec<_>>()
    });
    let location = dir.to_str().expect("utf-8");
    let check = median_time(runs, || {
        let r = replay::commands::check::check(
            location,
            &LoadOptions::default(),
            &replay::commands::check::Attested::default(),
            &ProgressBar::hidden(),
        )
        .expect("check");
        assert_eq!(r.header.verdict, Verdict::Ok);
        r
    });
    (bytes, read_hash, check)
}

fn main() {
    trainer::alloc::keep_freed_pages();
    let steps: u64 = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let half = steps / 2;
    let tmp = tempfile::tempdir().expect("tmp");
    let config_path = demo::write_assets(&tmp.path().join("assets"), steps).expect("assets");
    let mut config = RunConfig::from_file(&config_path).expect("config");
    config.recording.checkpoint_interval = half;
    let out = tmp.path().join("run");
    let out_s = out.to_str().expect("utf-8");
    let first = RunOptions {
        max_steps: Some(half),
        ..RunOptions::default()
    };
    let (_, t_seg1) = timed(|| run::start(&config, out_s, &first).expect("segment 1"));
    let (_, t_seg2) = timed(|| run::resume(out_s, &RunOptions::default()).expect("segment 2"));
    let verify_segment = |n: u64| {
        let o = VerifyOptions {
            scope: Scope::Segment(n),
            device: DeviceSpec::Cpu,
            shard: None,
            load: LoadOptions::default(),
            attest: None,
        };
        let (r, t) = timed(|| {
            replay::commands::verify::verify(out_s, &o, &ProgressBar::hidden()).expect("verify")
        });
        assert_eq!(r.header.verdict, Verdict::Verified);
        t
    };
    let v_seg2 = verify_segment(2);
    let v_seg1 = verify_segment(1);

    let checks: Vec<(&str, (u64, Duration, Duration))> = [
        ("delta", CheckpointCodec::Delta),
        ("planes", CheckpointCodec::Planes),
        ("zstd", CheckpointCodec::Zstd),
        ("raw", CheckpointCodec::Raw),
    ]
    .into_iter()
    .map(|(name, codec)| {
        let dir = tmp.path().join(format!("run-{name}"));
        let mut c = config.clone();
        c.recording.codec = codec;
        c.recording.checkpoint_interval = (steps / 10).max(1);
        run::start(&c, dir.to_str().expect("utf-8"), &RunOptions::default()).expect("run");
        (name, check_against_baseline(&dir))
    })
    .collect();

    let mut rep = Report::new("replay");
    rep.context(
        "model",
        "demo BERT-style classifier (2.7M parameters), state root every step",
    );
    rep.context("steps_per_segment", half);
    rep.context(
        "check_runs",
        format!(
            "{steps} steps, a checkpoint every {} steps",
            (steps / 10).max(1)
        ),
    );
    let secs = |d: Duration| r3(d.as_secs_f64());
    rep.row(
        "segment 2: trainer resume (load checkpoint, train + record)",
        &[("s", secs(t_seg2).into())],
    );
    rep.row(
        "segment 2: replay verify --segment 2",
        &[
            ("s", secs(v_seg2).into()),
            (
                "ratio to training",
                r3(v_seg2.as_secs_f64() / t_seg2.as_secs_f64()).into(),
            ),
        ],
    );
    rep.row(
        "segment 1: trainer run --max-steps (set-up, checkpoint 0, train + record)",
        &[("s", secs(t_seg1).into())],
    );
    rep.row(
        "segment 1: replay verify --segment 1",
        &[
            ("s", secs(v_seg1).into()),
            (
                "ratio to training",
                r3(v_seg1.as_secs_f64() / t_seg1.as_secs_f64()).into(),
            ),
        ],
    );
    // Every run holds the same states: reading and hashing them stored raw is what checking
    // costs at the least per state, whatever the codec.
    let raw_read_hash = checks
        .iter()
        .find(|(codec, _)| *codec == "raw")
        .map(|(_, (_, read_hash, _))| *read_hash)
        .expect("the raw run");
    for (codec, (bytes, read_hash, check)) in checks {
        let mb = bytes as f64 / 1e6;
        rep.row(
            &format!("{codec} checkpoints: read every object + BLAKE3 (baseline)"),
            &[
                ("s", secs(read_hash).into()),
                ("MB", r3(mb).into()),
                ("MB/s", r3(mb / read_hash.as_secs_f64()).into()),
            ],
        );
        rep.row(
            &format!("{codec} checkpoints: replay check"),
            &[
                ("s", secs(check).into()),
                ("MB", r3(mb).into()),
                ("MB/s", r3(mb / check.as_secs_f64()).into()),
                (
                    "speed relative to baseline",
                    r3(read_hash.as_secs_f64() / check.as_secs_f64()).into(),
                ),
                (
                    "speed relative to read + BLAKE3 of the states stored raw",
                    r3(raw_read_hash.as_secs_f64() / check.as_secs_f64()).into(),
                ),
            ],
        );
    }
    rep.finish();
}
