//! Replay on another instruction-set level, through the real commands: a run recorded on this
//! machine (x86-64-v3) replayed by `replay` running under `qemu-x86_64 -cpu Nehalem`
//! (x86-64-v2: SSE4.2, no AVX2, no FMA), where the matrix kernels and reductions round
//! differently. An honest history differs there only by floating-point noise
//! (`environment_mismatch`); a poisoned one is `diverged`. Neither is a pass.
#![cfg(target_arch = "x86_64")]

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_tests::{binary, forge_history, nudge, s, stored_state, train};
use replay::Verdict;
use replay::commands::verify::VerifyReport;
use trainer::fixtures::{self, FixtureOptions};

/// `replay verify RUN --all --json` run as an x86-64-v2 CPU: its report and exit status.
fn verify_on_nehalem(run: &Path) -> (VerifyReport, Option<i32>) {
    let out = Command::new(fixtures::qemu_x86_64())
        .args(["-cpu", "Nehalem"])
        .arg(binary("replay"))
        .args(["verify", s(run), "--all", "--json", "--quiet"])
        .output()
        .expect("run replay under qemu");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.code())
}

fn record(dir: &Path) -> PathBuf {
    let cfg =
        fixtures::write_tiny_bert(&dir.join("in"), &FixtureOptions::default()).expect("fixture");
    let out = dir.join("run");
    train(&cfg, &out, &[]);
    out
}

#[test]
fn an_honest_run_replayed_on_another_isa_level_differs_by_noise_only() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path());
    let (v, code) = verify_on_nehalem(&r);
    let env = v.environment.as_ref().expect("environment");
    assert!(
        env.differences
            .iter()
            .any(|(f, run, here)| f == "isa_level" && run == "x86-64-v3" && here == "x86-64-v2"),
        "{:?}",
        env.differences
    );
    let reasons: Vec<String> = v
        .ranges
        .iter()
        .map(|r| {
            format!(
                "segment {}: {} {:?} {:?}",
                r.segment,
                r.verdict,
                r.noise.as_ref().map(|n| n.reason.clone()),
                r.divergence.as_ref().map(|d| (d.step, d.field.clone()))
            )
        })
        .collect();
    assert_eq!(
        (v.header.verdict, code),
        (Verdict::EnvironmentMismatch, Some(1)),
        "{reasons:#?}"
    );
    assert_eq!(v.steps_replayed, 12, "every step replayed and compared");
    for range in &v.ranges {
        // Step 0 is host arithmetic: the same bits on every CPU.
        if let Some(i) = &range.initial_state {
            assert_eq!(i.rederived_root, i.recorded_root);
        }
        let noise = range
            .noise
            .as_ref()
            .expect("the bits differ and are judged");
        assert!(noise.consistent_with_noise, "{}", noise.reason);
        assert!(noise.largest_step_deviation > 0.0);
        assert_eq!(range.verdict, Verdict::EnvironmentMismatch);
    }
}

#[test]
fn a_poisoned_run_replayed_on_another_isa_level_is_diverged() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path());
    // A poisoned update: one weight of the classifier moved by 0.05, fifty learning rates, at
    // step 6. (Across classes, a change within what rounding can explain, about two learning
    // rates per step here, would be `environment_mismatch`: still not a pass.)
    forge_history(
        &r,
        stored_state(&r, 4),
        |step, state| {
            if step == 6 {
                nudge(state, "classifier.weight", 0, 0.05);
            }
            step == 6
        },
        None,
    );
    let (v, code) = verify_on_nehalem(&r);
    assert_eq!((v.header.verdict, code), (Verdict::Diverged, Some(1)));
    let poisoned = &v.ranges[1];
    assert_eq!(poisoned.verdict, Verdict::Diverged);
    let noise = poisoned.noise.as_ref().expect("judged");
    assert!(!noise.consistent_with_noise, "{}", noise.reason);
    // The honest segments around it are within noise.
    assert_eq!(v.ranges[0].verdict, Verdict::EnvironmentMismatch);
    assert_eq!(v.ranges[2].verdict, Verdict::EnvironmentMismatch);
}
