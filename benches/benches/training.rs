//! Cost of recording, on the demo model and data: the same training loop with recording off
//! (batches, forward, backward, optimizer) and on (plus, every step, copying the full state to
//! the host, hashing it into a state root and appending a ledger record; every 50 steps, a
//! ledger segment and a zstd checkpoint written to a local store). The two loops advance in
//! alternating blocks so that drift of the machine affects both alike.

use std::time::{Duration, Instant};

use benchmarks::{DemoSession, DemoTraining, Report, r3};
use snapshot_format::ledger::StepRecord;
use snapshot_format::{Hash32, Store};
use trainer::record::RunWriter;
use trainer::run::is_checkpoint_step;

struct Recorder {
    writer: RunWriter,
    capture: Duration,
    hash: Duration,
    checkpoint: Duration,
    checkpoints: u64,
}

fn step(demo: &DemoTraining, session: &mut DemoSession, rec: Option<&mut Recorder>, total: u64) {
    let (epoch, ids, out) = demo.step(session);
    let Some(rec) = rec else { return };
    let t = Instant::now();
    let state = session.capture();
    rec.capture += t.elapsed();
    let t = Instant::now();
    let hashes = state.tensor_hashes();
    let root = state.root(&hashes).expect("root");
    rec.hash += t.elapsed();
    rec.writer.record(StepRecord {
        step: out.step,
        epoch,
        lr_bits: out.lr_bits,
        batch_hash: demo.dataset.batch_hash(&ids),
        example_ids: ids,
        loss_bits: out.loss_bits,
        grad_norm_bits: out.grad_norm_bits,
        state_root: Some(root),
        prev_hash: rec.writer.head(),
    });
    if is_checkpoint_step(out.step, total, demo.config.recording.checkpoint_interval) {
        let t = Instant::now();
        rec.writer
            .checkpoint(&state, &hashes, root)
            .expect("checkpoint");
        rec.checkpoint += t.elapsed();
        rec.checkpoints += 1;
    }
}

fn main() {
    trainer::alloc::keep_freed_pages();
    let steps: u64 = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let block = 10;
    let tmp = tempfile::tempdir().expect("tmp");
    let demo = DemoTraining::new(steps);
    let interval = demo.config.recording.checkpoint_interval;
    let (mut off, mut on) = (demo.session(), demo.session());
    let store = Store::create(tmp.path().join("run").to_str().expect("path")).expect("store");
    let mut rec = Recorder {
        writer: RunWriter::new(store, "bench", Hash32::ZERO, 1, None),
        capture: Duration::ZERO,
        hash: Duration::ZERO,
        checkpoint: Duration::ZERO,
        checkpoints: 0,
    };
    // Warm-up outside the measurement: one step each, then restart from fresh sessions.
    step(&demo, &mut demo.session(), None, steps);
    let (mut t_off, mut t_on) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    while done < steps {
        let n = block.min(steps - done);
        let t = Instant::now();
        for _ in 0..n {
            step(&demo, &mut off, None, steps);
        }
        t_off += t.elapsed();
        let t = Instant::now();
        for _ in 0..n {
            step(&demo, &mut on, Some(&mut rec), steps);
        }
        t_on += t.elapsed();
        done += n;
    }
    let per = |d: Duration| d.as_secs_f64() * 1e3 / steps as f64;
    let overhead = (t_on.as_secs_f64() - t_off.as_secs_f64()) / t_off.as_secs_f64() * 100.0;
    let mut rep = Report::new("training");
    rep.context(
        "model",
        "demo BERT-style classifier (2 layers, hidden 256, 4 heads, seq 32, batch 32)",
    );
    rep.context("parameters", off.parameter_count());
    rep.context(
        "state_tensor_mb",
        r3(off
            .capture()
            .tensors
            .iter()
            .map(|t| t.bytes().len())
            .sum::<usize>() as f64
            / 1e6),
    );
    rep.context("steps_per_variant", steps);
    rep.context("checkpoint_interval", interval);
    rep.context("checkpoints_written", rec.checkpoints);
    rep.context("rayon_threads", rayon_threads());
    rep.row(
        "recording off",
        &[
            ("ms/step", r3(per(t_off)).into()),
            ("steps/s", r3(steps as f64 / t_off.as_secs_f64()).into()),
        ],
    );
    rep.row(
        "recording on (state root every step, checkpoint every 50)",
        &[
            ("ms/step", r3(per(t_on)).into()),
            ("steps/s", r3(steps as f64 / t_on.as_secs_f64()).into()),
            ("overhead %", r3(overhead).into()),
        ],
    );
    rep.row(
        "  of which: copy state to host",
        &[("ms/step", r3(per(rec.capture)).into())],
    );
    rep.row(
        "  of which: hash tensors + state root",
        &[("ms/step", r3(per(rec.hash)).into())],
    );
    rep.row(
        "  of which: segment + checkpoint writes (amortised)",
        &[("ms/step", r3(per(rec.checkpoint)).into())],
    );
    rep.finish();
    // Both loops trained identically: recording must not change the training itself.
    assert_eq!(
        off.capture()
            .tensors
            .iter()
            .map(|t| t.bytes().to_vec())
            .collect::<Vec<_>>(),
        on.capture()
            .tensors
            .iter()
            .map(|t| t.bytes().to_vec())
            .collect::<Vec<_>>(),
        "recording changed the trained state"
    );
}

fn rayon_threads() -> u64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
}
