//! The GPU suite: determinism of training and replay on CUDA. Ignored unless asked for, and
//! compiled only with the `cuda` feature:
//!
//! ```text
//! cargo build -p trainer -p replay --features trainer/cuda,replay/cuda
//! cargo test -p e2e-tests --features cuda --test cuda -- --ignored --test-threads 1
//! ```
//!
//! `scripts/gpu-check.sh` builds everything here and runs it on a GPU machine.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};

use e2e_tests::{replay_json, run, s};
use replay::Verdict;
use replay::commands::verify::VerifyReport;
use run_store::testing::{assert_same_run, manifest};
use trainer::fixtures::{self, FixtureOptions};

fn train(cfg: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["--device", "cuda", "--run-id", "gpu"];
    args.extend_from_slice(extra);
    e2e_tests::train(cfg, out, &args);
}

fn fixture(dir: &Path) -> PathBuf {
    fixtures::write_tiny_bert(
        dir,
        &FixtureOptions {
            steps: 16,
            ..Default::default()
        },
    )
    .expect("fixture")
}

fn verify(r: &Path, extra: &[&str], exit: i32) -> VerifyReport {
    let mut args = vec!["verify", s(r), "--all"];
    args.extend_from_slice(extra);
    replay_json(&args, exit)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn two_cuda_runs_of_the_demo_config_give_identical_ledgers() {
    let t = tempfile::tempdir().expect("tmp");
    let assets = t.path().join("assets");
    for out in ["a", "b"] {
        let out = t.path().join(out);
        let args = ["demo", "--steps", "100", "--device", "cuda", "--quiet"];
        let r = run(
            "trainer",
            &[&args[..], &["--assets", s(&assets), "--out", s(&out)]].concat(),
        );
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    assert_same_run(&t.path().join("a"), &t.path().join("b"));
    let gpu = manifest(&t.path().join("a"))
        .environment
        .gpu
        .expect("the manifest records the GPU");
    println!(
        "GPU: {} (sm {}, {} SMs), driver {}, {}",
        gpu.name, gpu.compute_capability, gpu.sm_count, gpu.driver_version, gpu.cuda_version
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn resume_on_cuda_equals_the_uninterrupted_run() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixture(&t.path().join("in"));
    train(&cfg, &t.path().join("full"), &[]);
    let part = t.path().join("part");
    train(&cfg, &part, &["--max-steps", "6"]);
    let r = run(
        "trainer",
        &["resume", s(&part), "--quiet", "--device", "cuda"],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_same_run(&t.path().join("full"), &part);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_run_verifies_on_the_same_gpu() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixture(&t.path().join("in"));
    let r = t.path().join("run");
    train(&cfg, &r, &[]);
    let v = verify(&r, &["--device", "cuda"], 0);
    assert_eq!(v.header.verdict, Verdict::Verified);
    assert_eq!(v.steps_replayed, 16);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_run_replayed_on_the_cpu_reports_environment_mismatch_and_the_differences() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixture(&t.path().join("in"));
    let r = t.path().join("run");
    train(&cfg, &r, &[]);
    // Replayed across classes: every step compared, the differences judged against rounding.
    let v = verify(&r, &[], 1);
    assert_eq!(
        v.header.verdict,
        Verdict::EnvironmentMismatch,
        "{:?}",
        v.ranges
    );
    assert!(
        v.environment
            .as_ref()
            .is_some_and(|e| e.differences.iter().any(|d| d.0 == "backend"))
    );
    let deltas: Vec<_> = v.ranges.iter().flat_map(|r| &r.deltas).collect();
    assert_eq!(deltas.len(), 16, "every step is compared and reported");
    let max_loss = deltas.iter().map(|d| d.loss_abs_diff).fold(0.0, f64::max);
    let max_gn = deltas
        .iter()
        .map(|d| d.grad_norm_abs_diff)
        .fold(0.0, f64::max);
    println!(
        "CUDA vs CPU: max |loss difference| {max_loss:.3e}, max |grad-norm difference| {max_gn:.3e}"
    );
    for r in &v.ranges {
        for t in r.final_tensors.iter().take(3) {
            println!(
                "  after step {}: {} max |d| {:.3e}",
                r.to_step, t.name, t.max_abs_diff
            );
        }
    }
    assert!(
        max_loss < 1e-2,
        "CPU and CUDA agree to floating-point noise"
    );
}
