//! An adversary who controls the run directory but not the trusted key, against every verdict
//! `replay` gives: one test per attack (numbered as in the issue that found them), through the
//! real `trainer` and `replay` commands, each asserting the exact verdict and exit status.

use std::path::{Path, PathBuf};

use e2e_tests::{
    forge_history, keygen, nudge, replace_checkpoint, replay_json, run, s, stored_state, train,
};
use replay::Verdict;
use replay::commands::audit::{AuditReport, SeedSource};
use replay::commands::check::CheckReport;
use replay::commands::collect::CollectReport;
use replay::commands::compare::CompareReport;
use replay::commands::counterfactual::CounterfactualReport;
use replay::commands::diff::DiffReport;
use replay::commands::rollback::RollbackReport;
use replay::commands::verify::VerifyReport;
use run_store::testing::{copy_dir, rewrite_ledger};
use run_trust::signature::{self, Statement, kind};
use snapshot_format::hash::file_hash;
use snapshot_format::ledger::Segment;
use snapshot_format::manifest::{RunManifest, spec_hash};
use snapshot_format::snapshot;
use snapshot_format::{layout, ledger};
use trainer::fixtures::{self, FixtureOptions};

/// A tiny BERT fixture run (12 steps, checkpoints 0, 4, 8, 12) recorded by `trainer`, signed
/// with `key` when given.
fn record(dir: &Path, key: Option<&Path>) -> PathBuf {
    let cfg =
        fixtures::write_tiny_bert(&dir.join("in"), &FixtureOptions::default()).expect("fixture");
    let out = dir.join("run");
    let mut extra = vec!["--run-id", "victim"];
    if let Some(k) = key {
        extra.extend(["--signing-key", s(k)]);
    }
    train(&cfg, &out, &extra);
    out
}

/// `replay ARGS…` with `--json`: the exit status must be `exit`.
fn replay<T: serde::de::DeserializeOwned>(args: &[&str], exit: i32) -> T {
    replay_json(args, exit)
}

/// `replay ARGS…`: exit status and standard error, for commands that must never panic.
fn replay_status(args: &[&str]) -> (Option<i32>, String) {
    let out = run("replay", args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn signing_key(path: &Path) -> ed25519_dalek::SigningKey {
    signature::read_signing_key(path).expect("key")
}

/// Attack 1: Signatures stripped and the history rewritten: with a trusted key named, every artefact
/// must be signed by it.
#[test]
fn stripped_signatures_are_unsigned_under_a_trusted_key() {
    let t = tempfile::tempdir().expect("tmp");
    let (key, public) = keygen(&t.path().join("key"));
    let r = record(t.path(), Some(&key));
    let honest: CheckReport = replay(&["check", s(&r), "--trusted-key", &public], 0);
    assert_eq!(honest.header.verdict, Verdict::Ok);
    std::fs::remove_dir_all(r.join(layout::SIGNATURES)).expect("strip");
    rewrite_ledger(&r, |rec| {
        if rec.step == 5 {
            rec.loss_bits ^= 1;
        }
    })
    .expect("rewrite");
    let c: CheckReport = replay(&["check", s(&r), "--trusted-key", &public], 2);
    assert_eq!(c.header.verdict, Verdict::Unsigned);
    for artefact in [layout::MANIFEST, layout::COMPLETE, &layout::segment(2)] {
        assert!(
            c.header
                .problems
                .iter()
                .any(|p| p.artefact == artefact && p.kind == Verdict::Unsigned),
            "{artefact}: {:?}",
            c.header.problems
        );
    }
    let v: VerifyReport = replay(&["verify", s(&r), "--all", "--trusted-key", &public], 2);
    assert_eq!(v.header.verdict, Verdict::Unsigned);
    // The rewritten step is caught by replay too; the unsigned history is the worse finding.
    assert_eq!(v.ranges[1].verdict, Verdict::Diverged);
}

/// Attack 1: `trainer` prints the strict form of the commands that verify what it signed.
#[test]
fn trainer_prints_the_commands_that_require_its_signatures() {
    let t = tempfile::tempdir().expect("tmp");
    let (key, public) = keygen(&t.path().join("key"));
    let cfg = fixtures::write_tiny_bert(&t.path().join("in"), &FixtureOptions::default())
        .expect("fixture");
    let out = run(
        "trainer",
        &[
            "run",
            s(&cfg),
            "--out",
            s(&t.path().join("run")),
            "--quiet",
            "--signing-key",
            s(&key),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["replay check", "replay verify"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(command))
            .unwrap_or_else(|| panic!("{command} printed: {text}"));
        assert!(line.contains(&format!("--trusted-key {public}")), "{line}");
    }
}

/// Attack 2: A starting model other than the pinned base and seed produce, with an honest base pin
/// and dataset root, the whole history re-trained from it and signed by a dishonest signer.
#[test]
fn a_substituted_starting_model_is_caught_by_re_deriving_step_0() {
    let t = tempfile::tempdir().expect("tmp");
    let (key, public) = keygen(&t.path().join("insider"));
    let r = record(t.path(), Some(&key));
    let mut start = stored_state(&r, 0);
    nudge(&mut start, "classifier.weight", 3, 0.5);
    forge_history(&r, start, |_, _| false, Some(signing_key(&key)));
    // Every hash and signature agrees: integrity alone cannot tell.
    let c: CheckReport = replay(&["check", s(&r), "--trusted-key", &public], 0);
    assert_eq!(c.header.verdict, Verdict::Ok, "{:?}", c.header.problems);
    let v: VerifyReport = replay(&["verify", s(&r), "--all", "--trusted-key", &public], 1);
    assert_eq!(v.header.verdict, Verdict::Diverged);
    let seg1 = &v.ranges[0];
    let d = seg1.divergence.as_ref().expect("step 0 diverges");
    assert_eq!((d.step, d.field.as_str()), (0, "initial_state"));
    assert_eq!(
        d.tensors.first().map(|x| x.name.as_str()),
        Some("classifier.weight")
    );
    let initial = seg1.initial_state.as_ref().expect("re-derived");
    assert_ne!(initial.rederived_root, initial.recorded_root);
    // Verifying segment 1 alone does it too, and an audit re-derives step 0 whatever it samples.
    let one: VerifyReport = replay(&["verify", s(&r), "--segment", "1"], 1);
    assert_eq!(one.header.verdict, Verdict::Diverged);
    let a: AuditReport = replay(&["audit", s(&r), "--samples", "1", "--seed", "3"], 1);
    assert_eq!(a.header.verdict, Verdict::Diverged);
    assert_eq!(a.sampled.len(), 1);
    // A state rolled back from the substituted start is never verified.
    let rb: RollbackReport = replay(
        &[
            "rollback",
            s(&r),
            "--step",
            "2",
            "--out",
            s(&t.path().join("rb")),
        ],
        1,
    );
    assert_eq!(rb.header.verdict, Verdict::Diverged);
    assert!(rb.out.is_none());
}

/// Attack 3: Shard reports forged by whoever can write where results are kept: unsigned, signed by
/// another key, moved to another shard, or too few to cover the run.
#[test]
fn forged_shard_reports_are_not_collected() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), None);
    let (verifier, verifier_public) = keygen(&t.path().join("verifier"));
    let (attacker, attacker_public) = keygen(&t.path().join("attacker"));
    let results = t.path().join("results");
    let id = "3b9d0e51a7c24f68";
    let shard = |i: &str, key: &Path| -> VerifyReport {
        replay(
            &[
                "verify",
                s(&r),
                "--all",
                "--shard",
                i,
                "--results",
                s(&results),
                "--id",
                id,
                "--signing-key",
                s(key),
            ],
            0,
        )
    };
    let collect = |exit: i32| -> CollectReport {
        replay(
            &[
                "collect",
                s(&r),
                "--shards",
                "2",
                "--id",
                id,
                "--results",
                s(&results),
                "--verifier-key",
                &verifier_public,
            ],
            exit,
        )
    };
    let real = shard("0/2", &verifier);
    // Shard 1 has not reported: segment 2 is covered by nobody.
    let c = collect(2);
    assert_eq!(c.header.verdict, Verdict::Missing);
    assert!(
        c.header
            .problems
            .iter()
            .any(|p| p.detail.contains("segment 2")),
        "{:?}",
        c.header.problems
    );
    // A "verified" report for shard 1 written without the verifier's key.
    let key1 = format!("verifications/{id}/shard-1-of-2.json");
    let mut forged = real.clone();
    forged.shard.as_mut().expect("shard").shard.index = 1;
    forged.ranges.retain(|x| x.segment == 2);
    let bytes = serde_json::to_vec(&forged).expect("json");
    std::fs::create_dir_all(results.join(format!("verifications/{id}"))).expect("dir");
    std::fs::write(results.join(&key1), &bytes).expect("forge");
    let c = collect(2);
    assert_eq!(
        c.header.verdict,
        Verdict::Unsigned,
        "{:?}",
        c.header.problems
    );
    // Signed, but by the attacker's key.
    let manifest = e2e_tests_manifest(&r);
    let sign = |k: &ed25519_dalek::SigningKey, index: u64| {
        signature::sign(
            Statement {
                kind: kind::SHARD_REPORT.into(),
                run_id: manifest.run_id.clone(),
                genesis: manifest.genesis,
                step: index,
                hash: file_hash(&bytes),
            },
            k,
        )
        .encode()
    };
    std::fs::write(
        results.join(format!("{key1}.sig")),
        sign(&signing_key(&attacker), 1),
    )
    .expect("sign");
    let c = collect(2);
    assert_eq!(
        c.header.verdict,
        Verdict::UntrustedSigner,
        "{:?}",
        c.header.problems
    );
    assert!(!attacker_public.is_empty());
    // Shard 0's genuine report and signature copied into shard 1's place.
    let key0 = real.result_key.clone().expect("key");
    std::fs::copy(results.join(&key0), results.join(&key1)).expect("copy");
    std::fs::copy(
        results.join(format!("{key0}.sig")),
        results.join(format!("{key1}.sig")),
    )
    .expect("copy");
    let c = collect(2);
    assert_eq!(
        c.header.verdict,
        Verdict::BadSignature,
        "{:?}",
        c.header.problems
    );
    // Reports in the run's own store are never read, and results cannot be written there.
    let (code, err) = replay_status(&[
        "verify",
        s(&r),
        "--all",
        "--shard",
        "1/2",
        "--results",
        s(&r),
        "--id",
        id,
        "--signing-key",
        s(&verifier),
    ]);
    assert_eq!(code, Some(3), "{err}");
    // The genuine second shard then makes the collection whole.
    std::fs::remove_file(results.join(&key1)).expect("rm");
    std::fs::remove_file(results.join(format!("{key1}.sig"))).expect("rm");
    shard("1/2", &verifier);
    assert_eq!(collect(0).header.verdict, Verdict::Verified);
}

fn e2e_tests_manifest(r: &Path) -> RunManifest {
    RunManifest::from_json(
        &std::fs::read(r.join(layout::MANIFEST)).expect("manifest"),
        layout::MANIFEST,
    )
    .expect("manifest")
}

/// Attack 4: Problems outside the replayed range count: the last segment and the completion record
/// deleted, then segment 1 verified.
#[test]
fn problems_outside_the_replayed_range_count_toward_the_verdict() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), None);
    for k in [layout::segment(3), layout::COMPLETE.to_string()] {
        std::fs::remove_file(r.join(k)).expect("delete");
    }
    let v: VerifyReport = replay(&["verify", s(&r), "--segment", "1"], 2);
    assert_eq!(v.header.verdict, Verdict::Incomplete);
    assert_eq!(
        v.ranges[0].verdict,
        Verdict::Verified,
        "segment 1 itself is intact"
    );
    let a: AuditReport = replay(&["audit", s(&r), "--samples", "1", "--seed", "1"], 2);
    assert_eq!(a.header.verdict, Verdict::Incomplete);
    // A missing base model counts as well, wherever replay happens.
    let r2 = record(&t.path().join("b"), None);
    std::fs::remove_file(r2.join(layout::BASE_MODEL)).expect("delete");
    let v: VerifyReport = replay(&["verify", s(&r2), "--segment", "3"], 2);
    assert_eq!(v.header.verdict, Verdict::Missing);
}

/// Attack 5: A ledger that runs past the final step: an extra segment and checkpoint after step 12.
#[test]
fn a_ledger_past_the_final_step_is_tampered() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), None);
    let seg3 = Segment::decode(
        &std::fs::read(r.join(layout::segment(3))).expect("segment 3"),
        "s",
    )
    .expect("decode");
    let mut prev = seg3.head();
    let mut extra = Segment {
        index: 4,
        records: seg3.records.clone(),
    };
    for rec in &mut extra.records {
        rec.step += 4;
        rec.prev_hash = prev;
        prev = rec.hash();
    }
    std::fs::write(r.join(layout::segment(4)), extra.encode()).expect("segment 4");
    std::fs::copy(
        r.join(layout::checkpoint(12)),
        r.join(layout::checkpoint(16)),
    )
    .expect("checkpoint 16");
    let c: CheckReport = replay(&["check", s(&r)], 2);
    assert_eq!(c.header.verdict, Verdict::Tampered);
    for artefact in [layout::segment(4), layout::checkpoint(16)] {
        assert!(
            c.header
                .problems
                .iter()
                .any(|p| p.artefact == artefact && p.kind == Verdict::Tampered),
            "{artefact}: {:?}",
            c.header.problems
        );
    }
    let v: VerifyReport = replay(&["verify", s(&r), "--all"], 2);
    assert_eq!(v.header.verdict, Verdict::Tampered);
}

/// Attack 6: `rollback`, `diff` and `counterfactual` name what they establish (`recorded` from a
/// stored checkpoint, `verified` only re-derived from step 0) and take the trust options.
#[test]
fn states_are_recorded_or_verified_and_trust_applies_to_them() {
    let t = tempfile::tempdir().expect("tmp");
    let (key, public) = keygen(&t.path().join("key"));
    let r = record(t.path(), Some(&key));
    let out = |name: &str| t.path().join(name);
    let rb: RollbackReport = replay(
        &[
            "rollback",
            s(&r),
            "--step",
            "8",
            "--out",
            s(&out("rb8")),
            "--trusted-key",
            &public,
        ],
        0,
    );
    assert_eq!(rb.header.verdict, Verdict::Recorded, "a stored checkpoint");
    let full: RollbackReport = replay(
        &[
            "rollback",
            s(&r),
            "--step",
            "8",
            "--from-genesis",
            "--out",
            s(&out("rb8-full")),
            "--trusted-key",
            &public,
        ],
        0,
    );
    assert_eq!(full.header.verdict, Verdict::Verified);
    assert_eq!(full.state_root, rb.state_root);
    let d: DiffReport = replay(&["diff", s(&r), "--from", "2", "--to", "6"], 0);
    assert_eq!(d.header.verdict, Verdict::Recorded);
    let d: DiffReport = replay(
        &["diff", s(&r), "--from", "2", "--to", "6", "--from-genesis"],
        0,
    );
    assert_eq!(d.header.verdict, Verdict::Verified);
    // With the signatures stripped, a trusted key makes every one of them fail, writing nothing.
    std::fs::remove_dir_all(r.join(layout::SIGNATURES)).expect("strip");
    let rb: RollbackReport = replay(
        &[
            "rollback",
            s(&r),
            "--step",
            "8",
            "--out",
            s(&out("rb-stripped")),
            "--trusted-key",
            &public,
        ],
        2,
    );
    assert_eq!(rb.header.verdict, Verdict::Unsigned);
    assert!(!out("rb-stripped").exists());
    let d: DiffReport = replay(
        &[
            "diff",
            s(&r),
            "--from",
            "2",
            "--to",
            "6",
            "--trusted-key",
            &public,
        ],
        2,
    );
    assert_eq!(d.header.verdict, Verdict::Unsigned);
    let c: CounterfactualReport = replay(
        &[
            "counterfactual",
            s(&r),
            "--without",
            "3",
            "--out",
            s(&out("cf-stripped")),
            "--trusted-key",
            &public,
        ],
        2,
    );
    assert_eq!(c.header.verdict, Verdict::Unsigned);
    assert!(!out("cf-stripped").exists());
}

/// Attack 7: A forged environment fingerprint over a poisoned history: replayed anyway, and the
/// poisoned update is `diverged`, not waved through as another class's rounding.
#[test]
fn a_forged_fingerprint_cannot_turn_a_divergence_into_an_environment_mismatch() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), None);
    forge_history(
        &r,
        stored_state(&r, 4),
        |step, state| {
            if step == 6 {
                nudge(state, "classifier.weight", 0, 1e-3);
            }
            step == 6
        },
        None,
    );
    let path = r.join(layout::MANIFEST);
    let mut m = e2e_tests_manifest(&r);
    m.environment.isa_level = "x86-64-v2".into();
    std::fs::write(&path, m.to_json()).expect("write");
    let v: VerifyReport = replay(&["verify", s(&r), "--all"], 1);
    assert_eq!(v.header.verdict, Verdict::Diverged);
    assert!(v.environment.as_ref().is_some_and(|e| e.cross_class()));
    let seg2 = &v.ranges[1];
    assert_eq!(seg2.verdict, Verdict::Diverged);
    let noise = seg2.noise.as_ref().expect("judged against noise");
    assert!(!noise.consistent_with_noise, "{}", noise.reason);
    assert_eq!(seg2.divergence.as_ref().map(|d| d.step), Some(6));
    // The untouched segments reproduce bit for bit despite the claimed class.
    assert_eq!(v.ranges[0].verdict, Verdict::Verified);
}

/// The manifest of `r` rewritten by `f`, with its spec hash and genesis recomputed so that the
/// manifest itself is consistent (only the spec's validation can refuse it).
fn rewrite_manifest(r: &Path, f: impl FnOnce(&mut RunManifest)) {
    let mut m = e2e_tests_manifest(r);
    f(&mut m);
    m.spec_hash = spec_hash(&m.spec);
    m.genesis = ledger::genesis(&m.spec_hash, &m.initial_state_root);
    std::fs::write(r.join(layout::MANIFEST), m.to_json()).expect("write");
}

/// Attack 8: Hostile manifests and checkpoints never reach a panic: every command answers with a
/// finding or a usage error.
#[test]
fn hostile_manifests_and_checkpoints_never_panic() {
    let t = tempfile::tempdir().expect("tmp");
    let honest = record(t.path(), None);
    type Mutation = Box<dyn Fn(&Path)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "checkpoint_interval 0",
            Box::new(|r| rewrite_manifest(r, |m| m.recording.checkpoint_interval = 0)),
        ),
        (
            "state_root_interval 0",
            Box::new(|r| rewrite_manifest(r, |m| m.recording.state_root_interval = 0)),
        ),
        (
            "batch larger than the dataset",
            Box::new(|r| rewrite_manifest(r, |m| m.spec["run"]["batch_size"] = 1000.into())),
        ),
        (
            "BERT on feature data",
            Box::new(|r| rewrite_manifest(r, |m| m.spec["data"]["format"] = "features".into())),
        ),
        (
            "seed beyond 2^53",
            Box::new(|r| rewrite_manifest(r, |m| m.spec["run"]["seed"] = (u64::MAX - 1).into())),
        ),
        (
            "absurd data cursor in a checkpoint",
            Box::new(|r| {
                let snap = run_store::testing::checkpoint(r, 4);
                let mut meta = snap.header.state.clone();
                meta.data_cursor.position = u64::MAX - 2;
                replace_checkpoint(r, 4, &meta, &snap.header.provenance, &snap.views());
            }),
        ),
    ];
    for (i, (what, mutate)) in mutations.iter().enumerate() {
        let r = t.path().join(format!("hostile-{i}"));
        copy_dir(&honest, &r).expect("copy");
        mutate(&r);
        let out = t.path().join(format!("out-{i}"));
        for args in [
            vec!["check", s(&r)],
            vec!["verify", s(&r), "--all"],
            vec!["audit", s(&r), "--samples", "2"],
            vec!["rollback", s(&r), "--step", "6", "--out", s(&out)],
            vec!["diff", s(&r), "--from", "1", "--to", "6"],
            vec!["counterfactual", s(&r), "--without", "1"],
            vec!["provenance", s(&r), "--example", "1"],
            vec!["inspect", s(&r)],
            vec!["compare", s(&r), s(&honest)],
        ] {
            let (code, err) = replay_status(&args);
            // Every command answers; those that read what was mutated find it.
            let reads_it = matches!(args[0], "check" | "verify" | "audit" | "rollback");
            let expected = if reads_it { 1..=3 } else { 0..=3 };
            assert!(
                code.is_some_and(|c| expected.contains(&c)) && !err.contains("panicked"),
                "{what}: replay {args:?} exited {code:?}: {err}"
            );
        }
    }
}

/// Attack 9: The audit's sample cannot be known in advance: its seed comes from the operating system,
/// and is printed so that the same sample can be drawn again.
#[test]
fn the_audit_seed_is_unpredictable_and_reported() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), None);
    let a: AuditReport = replay(&["audit", s(&r), "--samples", "1"], 0);
    let b: AuditReport = replay(&["audit", s(&r), "--samples", "1"], 0);
    assert_eq!(
        (a.seed_source, b.seed_source),
        (SeedSource::Os, SeedSource::Os)
    );
    assert_ne!(a.seed, b.seed);
    let again: AuditReport = replay(
        &[
            "audit",
            s(&r),
            "--samples",
            "1",
            "--seed",
            &a.seed.to_string(),
        ],
        0,
    );
    assert_eq!(
        (again.sampled, again.seed_source),
        (a.sampled, SeedSource::Given)
    );
    let (code, err) = replay_status(&["audit", s(&r), "--samples", "1", "--seed", "7"]);
    assert_eq!(code, Some(0));
    assert!(err.contains("warning: --seed fixes the sample"), "{err}");
}

/// Attack 10: A signed run that is interrupted stays signed: `resume` refuses to continue it without
/// its key, and completes the signatures an interruption left out.
#[test]
fn an_interrupted_signed_run_ends_signed() {
    let t = tempfile::tempdir().expect("tmp");
    let (key, public) = keygen(&t.path().join("key"));
    let o = FixtureOptions {
        extra: format!("[signing]\nkey = {:?}\n", s(&key)),
        ..Default::default()
    };
    let cfg = fixtures::write_tiny_bert(&t.path().join("in"), &o).expect("fixture");
    let r = t.path().join("run");
    train(&cfg, &r, &["--max-steps", "5"]);
    let refused = run("trainer", &["resume", s(&r), "--quiet"]);
    assert_eq!(refused.status.code(), Some(3));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("the run is signed by ed25519:"), "{err}");
    let resume = |key: &Path| {
        run(
            "trainer",
            &["resume", s(&r), "--quiet", "--signing-key", s(key)],
        )
    };
    let (other, _) = keygen(&t.path().join("other"));
    assert_eq!(resume(&other).status.code(), Some(3));
    let resumed = resume(&key);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let c: CheckReport = replay(&["check", s(&r), "--trusted-key", &public], 0);
    assert_eq!(c.header.verdict, Verdict::Ok, "{:?}", c.header.problems);
    // Killed between `complete.json` and its signature.
    let k = hex::decode(&public).expect("hex");
    let sig = signature::key_for(&k.try_into().expect("32 bytes"), layout::COMPLETE);
    std::fs::remove_file(r.join(&sig)).expect("remove the completion's signature");
    let c: CheckReport = replay(&["check", s(&r), "--trusted-key", &public], 2);
    assert_eq!(c.header.verdict, Verdict::Unsigned);
    let again = resume(&key);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let c: CheckReport = replay(&["check", s(&r), "--trusted-key", &public], 0);
    assert_eq!(c.header.verdict, Verdict::Ok, "{:?}", c.header.problems);
}

/// Attack 11: `compare` does not take a run's word for its history: a completion record that claims
/// the other run's head does not make a damaged ledger identical.
#[test]
fn compare_reads_the_ledgers_not_the_completion_records() {
    let t = tempfile::tempdir().expect("tmp");
    let a = record(&t.path().join("a"), None);
    let b = t.path().join("b");
    copy_dir(&a, &b).expect("copy");
    // One record of b changed, its segment re-encoded, nothing re-chained; complete.json
    // untouched, still claiming a's ledger head.
    let key = layout::segment(2);
    let mut seg = Segment::decode(&std::fs::read(b.join(&key)).expect("seg"), &key).expect("d");
    seg.records[1].loss_bits ^= 1;
    std::fs::write(b.join(&key), seg.encode()).expect("write");
    let c: CompareReport = replay(&["compare", s(&a), s(&b)], 2);
    assert!(!c.identical);
    assert_eq!(c.header.verdict, Verdict::Tampered);
    // b's segment 2 no longer decodes (its records do not chain): its history is lost from
    // step 5 on.
    assert!(
        c.header
            .problems
            .iter()
            .any(|p| p.artefact.ends_with(&key) && p.kind == Verdict::Tampered),
        "{:?}",
        c.header.problems
    );
    assert_eq!(c.first_difference.map(|d| d.step), Some(5));
}

/// Attack 11: A checkpoint that declares more data than the spec's model has is refused before it is
/// decoded (the bound comes from the spec, not from the checkpoint's own declaration).
#[test]
fn a_checkpoint_larger_than_the_model_is_refused() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), None);
    let key = layout::checkpoint(4);
    let snap = run_store::testing::checkpoint(&r, 4);
    let extra = vec![0u8; 4096];
    let shape = [1024u64];
    let mut views = snap.views();
    views.push(snapshot::TensorView {
        name: "zz.smuggled",
        dtype: snapshot_format::DType::F32,
        shape: &shape,
        data: &extra,
    });
    replace_checkpoint(&r, 4, &snap.header.state, &snap.header.provenance, &views);
    let c: CheckReport = replay(&["check", s(&r)], 2);
    assert!(
        c.header
            .problems
            .iter()
            .any(|p| p.artefact == key && p.detail.contains("exceeds")),
        "{:?}",
        c.header.problems
    );
    let v: VerifyReport = replay(&["verify", s(&r), "--segment", "2"], 2);
    assert_eq!(v.header.verdict, Verdict::Corrupt);
}

/// Attack 11: `verify --from A --to B` checks every step it replays, those between its starting
/// checkpoint and `A` included.
#[test]
fn verify_from_to_checks_the_steps_before_from() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), None);
    rewrite_ledger(&r, |rec| {
        if rec.step == 5 {
            rec.loss_bits ^= 1;
        }
    })
    .expect("rewrite");
    let v: VerifyReport = replay(&["verify", s(&r), "--from", "6", "--to", "7"], 1);
    assert_eq!(v.header.verdict, Verdict::Diverged);
    let d = v.ranges[0].divergence.as_ref().expect("divergence");
    assert_eq!((d.step, d.field.as_str()), (5, "loss"));
}
