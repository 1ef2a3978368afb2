//! Cost of recording, on the demo model and data: the same training loop with recording off
//! (batches, forward, backward, optimizer) and on (plus, every step, copying the full state to
//! the host, hashing it into a state root and appending a ledger record; every 50 steps, a
//! ledger segment and a checkpoint in the default codec written to a local store), with the
//! checkpoints written on the training thread and in the background, and with state roots
//! every 10 steps only (the default for large models). The four loops advance in alternating
//! blocks so that drift of the machine affects all alike.

use std::time::{Duration, Instant};

use benchmarks::{DemoSession, DemoTraining, Report, r3};
use run_store::Store;
use snapshot_format::Hash32;
use snapshot_format::layout::is_checkpoint_step;
use snapshot_format::ledger::StepRecord;
use snapshot_format::manifest::CheckpointCodec;
use trainer::record::RunWriter;

struct Recorder {
    writer: RunWriter,
    /// A state root every this many steps (and at every checkpoint); the state is copied and
    /// hashed only then.
    root_every: u64,
    spent: Spent,
}

/// Where a recorder's time went.
#[derive(Default)]
struct Spent {
    capture: Duration,
    hash: Duration,
    checkpoint: Duration,
    checkpoints: u64,
}

fn step(demo: &DemoTraining, session: &mut DemoSession, rec: Option<&mut Recorder>, total: u64) {
    let (epoch, ids, out) = demo.step(session);
    let Some(rec) = rec else { return };
    let checkpoint = is_checkpoint_step(out.step, total, demo.config.recording.checkpoint_interval);
    let captured = (checkpoint || out.step.is_multiple_of(rec.root_every)).then(|| {
        let t = Instant::now();
        let state = session.capture();
        rec.spent.capture += t.elapsed();
        let t = Instant::now();
        let hashes = state.tensor_hashes();
        let root = state.root(&hashes).expect("root");
        rec.spent.hash += t.elapsed();
        (state, hashes, root)
    });
    rec.writer.record(StepRecord {
        step: out.step,
        epoch,
        lr_bits: out.lr_bits,
        batch_hash: demo.dataset.batch_hash(&ids),
        example_ids: ids,
        loss_bits: out.loss_bits,
        grad_norm_bits: out.grad_norm_bits,
        state_root: captured.as_ref().map(|(.., root)| *root),
        prev_hash: rec.writer.head(),
    });
    if let Some((state, hashes, root)) = captured.filter(|_| checkpoint) {
        let t = Instant::now();
        rec.writer
            .checkpoint(state, hashes, root)
            .expect("checkpoint");
        rec.spent.checkpoint += t.elapsed();
        rec.spent.checkpoints += 1;
    }
}

fn recorder(dir: &std::path::Path, background: bool, root_every: u64) -> Recorder {
    let store = Store::create(dir.to_str().expect("path")).expect("store");
    let writer = RunWriter::with_options(
        store,
        "bench",
        Hash32::ZERO,
        1,
        None,
        CheckpointCodec::default().write_options(),
    );
    Recorder {
        writer: if background {
            writer.in_background().expect("writer thread")
        } else {
            writer
        },
        root_every,
        spent: Spent::default(),
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
    // State roots every 10 steps: the default for models of 50M parameters or more.
    let sparse_roots = trainer::config::LARGE_MODEL_STATE_ROOT_INTERVAL;
    let (mut off, mut here, mut away, mut sparse) = (
        demo.session(),
        demo.session(),
        demo.session(),
        demo.session(),
    );
    let mut recs = [
        recorder(&tmp.path().join("here"), false, 1),
        recorder(&tmp.path().join("away"), true, 1),
        recorder(&tmp.path().join("sparse"), true, sparse_roots),
    ];
    // Warm-up outside the measurement: one step each, then restart from fresh sessions.
    step(&demo, &mut demo.session(), None, steps);
    let mut t = [Duration::ZERO; 4];
    let mut done = 0;
    while done < steps {
        let n = block.min(steps - done);
        let [rec_here, rec_away, rec_sparse] = &mut recs;
        let variants: [(&mut DemoSession, Option<&mut Recorder>); 4] = [
            (&mut off, None),
            (&mut here, Some(rec_here)),
            (&mut away, Some(rec_away)),
            (&mut sparse, Some(rec_sparse)),
        ];
        for (i, (session, mut rec)) in variants.into_iter().enumerate() {
            let started = Instant::now();
            for _ in 0..n {
                step(&demo, session, rec.as_deref_mut(), steps);
            }
            t[i] += started.elapsed();
        }
        done += n;
    }
    // The background writer's last checkpoint counts: wait for it.
    let [rec_here, rec_away, rec_sparse] = recs;
    let mut finished: Vec<Spent> = Vec::new();
    for (i, rec) in [(1, rec_here), (2, rec_away), (3, rec_sparse)] {
        let started = Instant::now();
        rec.writer.finish().expect("checkpoints stored");
        let waited = started.elapsed();
        t[i] += waited;
        let mut spent = rec.spent;
        spent.checkpoint += waited;
        finished.push(spent);
    }
    let per = |d: Duration| d.as_secs_f64() * 1e3 / steps as f64;
    let overhead =
        |d: Duration| (d.as_secs_f64() - t[0].as_secs_f64()) / t[0].as_secs_f64() * 100.0;
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
    rep.context("codec", CheckpointCodec::default().name());
    rep.context("checkpoints_written", finished[0].checkpoints);
    rep.context("rayon_threads", rayon_threads());
    rep.row(
        "recording off",
        &[
            ("ms/step", r3(per(t[0])).into()),
            ("steps/s", r3(steps as f64 / t[0].as_secs_f64()).into()),
        ],
    );
    for (rec, (i, roots, how)) in finished.iter().zip([
        (1, 1, "checkpoints written on the training thread"),
        (
            2,
            1,
            "checkpoints written in the background (the trainer's way)",
        ),
        (
            3,
            sparse_roots,
            "checkpoints written in the background (the default above 50M parameters)",
        ),
    ]) {
        let roots = match roots {
            1 => "every step".to_string(),
            n => format!("every {n} steps"),
        };
        rep.row(
            &format!("recording on (state root {roots}, checkpoint every {interval}), {how}"),
            &[
                ("ms/step", r3(per(t[i])).into()),
                ("steps/s", r3(steps as f64 / t[i].as_secs_f64()).into()),
                ("overhead %", r3(overhead(t[i])).into()),
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
            "  of which: time in checkpoint() and the final wait (amortised)",
            &[("ms/step", r3(per(rec.checkpoint)).into())],
        );
    }
    rep.finish();
    // The three loops trained identically: recording must not change the training itself.
    let bits = |s: &DemoSession| {
        s.capture()
            .tensors
            .iter()
            .map(|t| t.bytes().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bits(&off),
        bits(&here),
        "recording changed the trained state"
    );
    assert_eq!(
        bits(&off),
        bits(&away),
        "recording changed the trained state"
    );
    assert_eq!(
        bits(&off),
        bits(&sparse),
        "recording changed the trained state"
    );
}

fn rayon_threads() -> u64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
}
