//! The storage layer against a real S3-compatible server (moto) on 127.0.0.1.

use std::path::Path;

use e2e_tests::{Moto, replay_json_with, run_with, s, train};
use replay::Verdict;
use replay::commands::check::CheckReport;
use replay::commands::rollback::RollbackReport;
use replay::commands::verify::VerifyReport;
use run_store::Store;
use run_store::storage::MAX_PUT_ENV;
use run_store::testing::{
    assert_one_winner_of_concurrent_creates, assert_parts_contract, assert_store_contract,
};
use snapshot_format::layout;
use snapshot_format::parts::MIN_PART_BYTES;
use trainer::fixtures::{self, FixtureOptions};

fn open(moto: &Moto, url: &str) -> Store {
    let owned = moto.options();
    let options: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Store::open_with_options(url, &options, true).expect("open s3 store")
}

#[test]
fn s3_store_honours_the_storage_contract() {
    let moto = Moto::start();
    moto.create_bucket("runs");
    assert_store_contract(&open(&moto, "s3://runs/team/run-1"));
}

#[test]
fn s3_objects_over_the_single_put_limit_are_stored_in_parts() {
    let moto = Moto::start();
    moto.create_bucket("parts");
    let store = open(&moto, "s3://parts/run").with_max_put_bytes(MIN_PART_BYTES);
    assert_parts_contract(&store, MIN_PART_BYTES as usize, None);
    let stored = moto.raw_keys("parts", "run/");
    assert_eq!(
        stored
            .iter()
            .filter(|k| k.starts_with("run/.parts/checkpoints/big.snap/"))
            .count(),
        4,
        "four parts beside the index, none left by the refused writes: {stored:?}"
    );
}

#[test]
fn s3_concurrent_creates_have_exactly_one_winner() {
    let moto = Moto::start();
    moto.create_bucket("race");
    let store = open(&moto, "s3://race/run");
    assert_one_winner_of_concurrent_creates(&store, "ledger/segment-000001.seg");
}

#[test]
fn s3_missing_bucket_is_a_clear_error() {
    let moto = Moto::start();
    let store = open(&moto, "s3://no-such-bucket/run");
    let e = store.get("manifest.json").expect_err("no bucket");
    assert!(e.to_string().contains("manifest.json"), "{e}");
}

/// `trainer ARGS…` with `env`; must succeed.
fn trainer_ok(env: &[(String, String)], args: &[&str]) {
    let out = run_with("trainer", args, env);
    assert!(
        out.status.success(),
        "trainer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A whole run on S3, its checkpoints written in parts: trained into a bucket, killed by SIGKILL after its first checkpoints,
/// resumed from `s3://`, then checked, verified and rolled back (re-derived from genesis) from `s3://`; its completion
/// record (ledger head, final state root) is that of the same run written to a local
/// directory, and every checkpoint in the bucket decodes.
#[test]
fn a_run_on_s3_survives_sigkill_and_verifies_from_s3() {
    let t = tempfile::tempdir().expect("tmp");
    let o = FixtureOptions {
        steps: 24,
        checkpoint_interval: 4,
        ..Default::default()
    };
    let cfg = fixtures::write_tiny_bert(&t.path().join("in"), &o).expect("fixture");
    let local = t.path().join("local");
    train(&cfg, &local, &["--run-id", "s3-run"]);

    let moto = Moto::start();
    // Objects over 64 KiB (every checkpoint) go up in parts.
    let mut env = moto.env();
    env.push((MAX_PUT_ENV.to_string(), (64 << 10).to_string()));
    moto.create_bucket("runs");
    let url = "s3://runs/team/s3-run";
    let store = open(&moto, url);
    let mut child = std::process::Command::new(e2e_tests::binary("trainer"))
        .args([
            "run",
            s(&cfg),
            "--out",
            url,
            "--quiet",
            "--run-id",
            "s3-run",
        ])
        .envs(env.iter().cloned())
        .spawn()
        .expect("spawn trainer");
    // Kill once the second checkpoint is stored (training is then under way).
    let killed = loop {
        if store.exists(&layout::checkpoint(4)).expect("head") {
            let _ = child.kill();
            break true;
        }
        if child.try_wait().expect("wait").is_some() {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    child.wait().expect("wait");
    assert!(killed, "the run finished before it could be killed");
    assert!(
        store.get_opt(layout::COMPLETE).expect("get").is_none(),
        "killed before completion"
    );
    trainer_ok(&env, &["resume", url, "--quiet"]);

    let stored = store.get(layout::COMPLETE).expect("completion on s3");
    let expected = std::fs::read(local.join(layout::COMPLETE)).expect("local completion");
    assert_eq!(
        String::from_utf8_lossy(&stored),
        String::from_utf8_lossy(&expected),
        "the same ledger head and final state root as the local run"
    );
    let reader = run_store::CheckpointReader::new(store.clone(), Default::default());
    for step in (0..=24).step_by(4) {
        reader.read(step).expect("every checkpoint decodes");
    }

    let parted = moto.raw_keys("runs", "team/s3-run/.parts/checkpoints/");
    for step in (4..=24).step_by(4) {
        let key = format!("team/s3-run/.parts/{}/", layout::checkpoint(step));
        assert!(
            parted.iter().filter(|k| k.starts_with(&key)).count() > 1,
            "checkpoint {step} stored in parts: {parted:?}"
        );
    }
    let c: CheckReport = replay_json_with(&["check", url], 0, &env);
    assert_eq!(c.header.verdict, Verdict::Ok, "{:?}", c.header.problems);
    let v: VerifyReport = replay_json_with(&["verify", url, "--all"], 0, &env);
    assert_eq!(v.header.verdict, Verdict::Verified);
    let out = t.path().join("rolled-back");
    let r: RollbackReport = replay_json_with(
        &[
            "rollback",
            url,
            "--step",
            "10",
            "--from-genesis",
            "--out",
            s(&out),
        ],
        0,
        &env,
    );
    assert_eq!(
        r.header.verdict,
        Verdict::Verified,
        "{:?}",
        r.header.problems
    );
    assert_eq!(r.state_root, r.committed_root);
    assert!(out.join("model.safetensors").exists());
    assert_rollback_matches_local(&local, &out, t.path());
}

/// A rollback of the local copy of the run to the same step writes the same model bytes.
fn assert_rollback_matches_local(local: &Path, from_s3: &Path, t: &Path) {
    let out = t.join("rolled-back-local");
    let _: RollbackReport = replay_json_with(
        &["rollback", s(local), "--step", "10", "--out", s(&out)],
        0,
        &[],
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).expect("local model"),
        std::fs::read(from_s3.join("model.safetensors")).expect("s3 model"),
    );
}
