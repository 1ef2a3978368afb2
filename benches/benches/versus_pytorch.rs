//! The engine against PyTorch on the demo's training step, side by side in one run: the same
//! architecture and parameter count (2,711,810), batch 32 × 32 tokens, AdamW, dropout 0.1,
//! gradient clipping. For each at 1 and 2 threads: milliseconds per step (median after a
//! warm-up), and whether the trained weights are bit-identical across two runs and across
//! thread counts. PyTorch runs `benches/pytorch/demo_step.py` in the bench's own venv
//! (`scripts/bench.sh` creates it with torch from PyPI; `BENCH_PYTHON` overrides it); without
//! it the PyTorch rows are left out and the benchmark says so.

use std::time::Instant;

use benchmarks::{DemoTraining, Report, r3};

const WARMUP: u64 = 3;

/// Median milliseconds per step of the demo over `steps` steps on `threads` threads, and the
/// state root after `check` steps of two fresh runs.
fn engine(demo: &DemoTraining, threads: usize, steps: u64, check: u64) -> (f64, [String; 2]) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        let mut session = demo.session();
        let mut times = Vec::new();
        for i in 0..WARMUP + steps {
            let t = Instant::now();
            demo.step(&mut session);
            if i >= WARMUP {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let roots = [0, 1].map(|_| {
            let mut s = demo.session();
            for _ in 0..check {
                demo.step(&mut s);
            }
            let state = s.capture();
            state.root(&state.tensor_hashes()).expect("root").to_hex()
        });
        (times[times.len() / 2], roots)
    })
}

fn main() {
    trainer::alloc::keep_freed_pages();
    let steps: u64 = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let check = 10;
    let demo = DemoTraining::new(WARMUP + steps + check);
    let mut rep = Report::new("versus_pytorch");
    rep.context("model", "demo BERT-style classifier, 2,711,810 parameters");
    rep.context("batch", "32 sequences of 32 tokens");
    rep.context("steps_timed", steps);
    rep.context("check_steps", check);

    let mut ours = Vec::new();
    for threads in [1usize, 2] {
        let (ms, roots) = engine(&demo, threads, steps, check);
        ours.push((threads, ms, roots));
    }
    let torch = benchmarks::pytorch(
        &mut rep,
        "demo_step.py",
        &[
            "--threads",
            "1",
            "2",
            "--steps",
            &steps.to_string(),
            "--check-steps",
            &check.to_string(),
        ],
    );
    let torch_ms = |threads: usize| -> Option<f64> {
        torch.as_ref()?["ms_per_step"][threads.to_string()].as_f64()
    };
    let same_threads = ours[0].2[0] == ours[1].2[0];
    for (threads, ms, roots) in &ours {
        let mut row = vec![
            ("ms/step", r3(*ms).into()),
            ("identical across runs", (roots[0] == roots[1]).into()),
            ("identical across 1 and 2 threads", same_threads.into()),
        ];
        if let Some(t) = torch_ms(*threads) {
            row.push(("× PyTorch's time", r3(ms / t).into()));
        }
        rep.row(
            &format!("engine (portable numerics), {threads} thread(s)"),
            &row,
        );
    }
    if let Some(t) = &torch {
        for threads in [1usize, 2] {
            let key = threads.to_string();
            rep.row(
                &format!(
                    "PyTorch {}, {threads} thread(s)",
                    t["torch"].as_str().unwrap_or("?")
                ),
                &[
                    ("ms/step", r3(torch_ms(threads).unwrap_or(f64::NAN)).into()),
                    (
                        "identical across runs",
                        t["identical_across_runs"][&key].clone(),
                    ),
                    (
                        "identical across 1 and 2 threads",
                        t["identical_across_threads"].clone(),
                    ),
                ],
            );
        }
    }
    rep.row(
        "engine scaling, 1 → 2 threads",
        &[("speed-up", r3(ours[0].1 / ours[1].1).into())],
    );
    rep.finish();
}
