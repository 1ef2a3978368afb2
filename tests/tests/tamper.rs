//! Tampering with a recorded run, end to end: each attack of the threat model is applied to a
//! run written by the real `trainer`, and the real `replay` must give the right verdict and exit
//! code. Attacks that keep every hash consistent can only be caught by re-execution.

use std::path::{Path, PathBuf};

use e2e_tests::{
    assert_problem, forge_history, nudge, replace_checkpoint, replay_json as replay, s,
    stored_state, train,
};
use replay::Verdict;
use replay::commands::check::CheckReport;
use replay::commands::verify::VerifyReport;
use run_store::testing::copy_dir;
use snapshot_format::ledger::{Segment, StepRecord};
use snapshot_format::limits::ReadLimits;
use snapshot_format::manifest::{RunManifest, spec_hash};
use snapshot_format::snapshot;
use snapshot_format::{layout, ledger};
use trainer::fixtures::{self, FixtureOptions};

/// Record a run of the tiny BERT fixture (12 steps, checkpoints 0, 4, 8, 12) with `trainer`.
fn record(dir: &Path, o: FixtureOptions) -> PathBuf {
    let cfg = fixtures::write_tiny_bert(&dir.join("in"), &o).expect("fixture");
    let out = dir.join("run");
    train(&cfg, &out, &["--run-id", "victim"]);
    out
}

fn check(r: &Path, exit: i32) -> CheckReport {
    replay(&["check", s(r)], exit)
}

fn verify(r: &Path, exit: i32) -> VerifyReport {
    replay(&["verify", s(r), "--all"], exit)
}

/// An honest run, and another run of the same fixture with another seed (the adversary's
/// source of well-formed states).
fn victim_and_other(t: &Path) -> (PathBuf, PathBuf) {
    let victim = honest(&t.join("victim"));
    let other = record(
        &t.join("other"),
        FixtureOptions {
            seed: 12,
            ..Default::default()
        },
    );
    (victim, other)
}

fn honest(t: &Path) -> PathBuf {
    let r = record(t, FixtureOptions::default());
    assert_eq!(check(&r, 0).header.verdict, Verdict::Ok);
    r
}

#[test]
fn flipped_bit_in_a_checkpoint_tensor_is_corrupt() {
    let t = tempfile::tempdir().expect("tmp");
    let r = honest(t.path());
    let key = layout::checkpoint(8);
    let mut bytes = std::fs::read(r.join(&key)).expect("checkpoint");
    let at = bytes.len() - 9 - 100; // inside the data section
    bytes[at] ^= 0x04;
    std::fs::write(r.join(&key), bytes).expect("write");
    let c = check(&r, 2);
    assert_eq!(c.header.verdict, Verdict::Corrupt);
    assert_problem(&c.header.problems, &key, Verdict::Corrupt, "");
    let v = verify(&r, 2);
    assert_eq!(v.header.verdict, Verdict::Corrupt);
    // Segment 1 does not touch checkpoint 8 and still verifies.
    assert_eq!(v.ranges[0].verdict, Verdict::Verified);
}

/// Runs recorded with each checkpoint codec (raw and zstd as older runs have them, planes as
/// runs are written now) check and verify, and a flipped bit in a checkpoint's data section is
/// corrupt whichever codec holds it.
#[test]
fn every_codec_verifies_and_a_flipped_bit_is_corrupt_in_each() {
    // Compression is an encoding, never an identity: the runs of one spec with each codec end
    // at the same ledger head and have the same state at every checkpoint.
    let mut identities = Vec::new();
    for (name, codec) in [
        ("raw", snapshot_format::Codec::Raw),
        ("zstd", snapshot_format::Codec::Zstd),
        ("planes", snapshot_format::Codec::Planes),
        ("delta", snapshot_format::Codec::Delta),
    ] {
        let t = tempfile::tempdir().expect("tmp");
        let r = record(
            t.path(),
            FixtureOptions {
                extra: format!("codec = {name:?}\n"),
                ..FixtureOptions::default()
            },
        );
        let key = layout::checkpoint(8);
        let mut bytes = std::fs::read(r.join(&key)).expect("checkpoint");
        let header = snapshot::read_header(&bytes, &key, &ReadLimits::default()).expect("header");
        assert!(
            header.tensors.iter().any(|t| t.codec == codec),
            "{name}: some tensor is stored with the run's codec"
        );
        assert_eq!(check(&r, 0).header.verdict, Verdict::Ok, "{name}");
        assert_eq!(verify(&r, 0).header.verdict, Verdict::Verified, "{name}");
        let done = snapshot_format::manifest::Completion::from_json(
            &std::fs::read(r.join(layout::COMPLETE)).expect("completion"),
            layout::COMPLETE,
        )
        .expect("completion");
        let roots = run_store::testing::checkpoint_roots(&r);
        identities.push((name, done.ledger_head, roots));
        // A byte of the largest tensor's encoding, so that it is one of the codec's own bytes.
        let big = header
            .tensors
            .iter()
            .filter(|t| t.codec == codec)
            .max_by_key(|t| t.encoded_len)
            .expect("a tensor of the codec");
        let data_start = bytes.len() - 8 - header.data_len() as usize;
        bytes[data_start + big.offset as usize + big.encoded_len as usize / 2] ^= 0x10;
        std::fs::write(r.join(&key), bytes).expect("write");
        let c = check(&r, 2);
        assert_problem(&c.header.problems, &key, Verdict::Corrupt, "");
    }
    let (first, head, roots) = &identities[0];
    assert_eq!(roots.len(), 4, "checkpoints 0, 4, 8, 12");
    for (name, h, r) in &identities[1..] {
        assert_eq!((h, r), (head, roots), "{name} against {first}");
    }
}

/// In a run stored as deltas (the default: checkpoint 0 whole, 4, 8 and 12 each a delta of the
/// one before), a lost checkpoint takes every later one of its chain along: `check` names each
/// of them and the reference it lost, and `verify` cannot start a segment from them.
#[test]
fn a_lost_delta_reference_makes_each_later_checkpoint_of_its_chain_unrecoverable() {
    let t = tempfile::tempdir().expect("tmp");
    let r = honest(t.path());
    for step in [4u64, 8, 12] {
        let key = layout::checkpoint(step);
        let bytes = std::fs::read(r.join(&key)).expect("checkpoint");
        let header = snapshot::read_header(&bytes, &key, &ReadLimits::default()).expect("header");
        assert!(
            header
                .tensors
                .iter()
                .all(|t| t.delta.is_some_and(|d| d.step == step - 4)),
            "{key}: every tensor a delta of the checkpoint before"
        );
    }
    let lost = layout::checkpoint(4);
    std::fs::remove_file(r.join(&lost)).expect("remove");
    let c = check(&r, 2);
    assert_eq!(c.header.verdict, Verdict::Missing);
    for step in [8u64, 12] {
        let key = layout::checkpoint(step);
        assert_problem(
            &c.header.problems,
            &key,
            Verdict::Missing,
            "cannot be reconstructed",
        );
        assert_problem(&c.header.problems, &key, Verdict::Missing, &lost);
    }
    // Segment 1 (steps 1-4) starts from checkpoint 0, a keyframe: it still verifies; the
    // segments that start at the lost checkpoint or at one it took along are `missing`.
    let v = verify(&r, 2);
    assert_eq!(v.header.verdict, Verdict::Missing);
    let verdicts: Vec<Verdict> = v.ranges.iter().map(|x| x.verdict).collect();
    assert_eq!(
        verdicts,
        [Verdict::Verified, Verdict::Missing, Verdict::Missing]
    );
}

/// The adversary swaps checkpoint 4 for another run's state (relabelled, the ledger rewritten to
/// commit to it) but leaves checkpoints 8 and 12 as they are: deltas encoded against the
/// original checkpoint 4. Checkpoint 4 passes every integrity check; each dependent names the
/// state root it was encoded against, so `check` reports both as `tampered`, naming the
/// reference, and replay still finds the swap.
#[test]
fn a_swapped_delta_reference_makes_its_dependents_tampered() {
    let t = tempfile::tempdir().expect("tmp");
    let (victim, other) = victim_and_other(t.path());
    let key = layout::checkpoint(4);
    let mine = run_store::testing::checkpoint(&victim, 4);
    let theirs = run_store::testing::checkpoint(&other, 4);
    let mut meta = theirs.header.state.clone();
    meta.rng.master_seed = mine.header.state.rng.master_seed;
    let forged = snapshot::encode(
        &meta,
        &mine.header.provenance,
        &theirs.views(),
        None,
        Default::default(),
    )
    .expect("encode");
    std::fs::write(victim.join(&key), forged.to_vec()).expect("swap checkpoint 4");
    run_store::testing::rewrite_ledger(&victim, |rec| {
        if rec.step == 4 {
            rec.state_root = Some(forged.state_root);
        }
    })
    .expect("rewrite ledger");

    let c = check(&victim, 2);
    assert_eq!(
        c.header.verdict,
        Verdict::Tampered,
        "{:?}",
        c.header.problems
    );
    assert!(
        !c.header.problems.iter().any(|p| p.artefact == key),
        "checkpoint 4 itself is consistent: {:?}",
        c.header.problems
    );
    for step in [8u64, 12] {
        let dependent = layout::checkpoint(step);
        assert_problem(&c.header.problems, &dependent, Verdict::Tampered, &key);
    }
    // Re-executing steps 1-4 from checkpoint 0 does not reach the swapped state; segment 3
    // cannot start from checkpoint 8.
    let v = verify(&victim, 2);
    assert_eq!(v.ranges[2].verdict, Verdict::Tampered);
    let d = v.ranges[0].divergence.as_ref().expect("segment 1 diverges");
    assert_eq!((d.step, d.field.as_str()), (4, "state_root"));
}

/// A run whose checkpoints the trainer stored in parts (a store with a 16 KiB write limit)
/// checks and verifies; a deleted part makes its checkpoint `missing` and a part with a flipped
/// bit makes it `corrupt`, each naming the checkpoint and the part, and the deltas that depend
/// on it unrecoverable.
#[test]
fn a_checkpoint_stored_in_parts_loses_or_damages_a_part_visibly() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixtures::write_tiny_bert(&t.path().join("in"), &FixtureOptions::default())
        .expect("fixture");
    let r = t.path().join("run");
    let env = [(
        run_store::storage::MAX_PUT_ENV.to_string(),
        "16384".to_string(),
    )];
    let out = e2e_tests::run_with(
        "trainer",
        &[
            "run",
            s(&cfg),
            "--out",
            s(&r),
            "--quiet",
            "--run-id",
            "victim",
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = layout::checkpoint(8);
    let parts_dir = r.join(".parts").join(&key);
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&parts_dir)
        .expect("checkpoint 8 is stored in parts")
        .map(|e| e.expect("entry").path())
        .collect();
    parts.sort();
    assert!(parts.len() > 1, "{parts:?}");
    assert_eq!(check(&r, 0).header.verdict, Verdict::Ok);
    assert_eq!(verify(&r, 0).header.verdict, Verdict::Verified);

    let part = &parts[parts.len() / 2];
    let name = part
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let bytes = std::fs::read(part).expect("part");
    std::fs::remove_file(part).expect("remove");
    let c = check(&r, 2);
    assert_eq!(
        c.header.verdict,
        Verdict::Missing,
        "{:?}",
        c.header.problems
    );
    assert_problem(&c.header.problems, &key, Verdict::Missing, &name);
    assert_problem(
        &c.header.problems,
        &layout::checkpoint(12),
        Verdict::Missing,
        &key,
    );

    let mut flipped = bytes;
    flipped[100] ^= 0x08;
    std::fs::write(part, flipped).expect("write");
    let c = check(&r, 2);
    assert_eq!(
        c.header.verdict,
        Verdict::Corrupt,
        "{:?}",
        c.header.problems
    );
    assert_problem(&c.header.problems, &key, Verdict::Corrupt, &name);
    assert!(
        c.warnings.is_empty(),
        "parts are not unexpected objects: {:?}",
        c.warnings
    );
}

#[test]
fn checkpoint_from_another_run_with_a_consistently_rewritten_ledger_diverges() {
    let t = tempfile::tempdir().expect("tmp");
    let (victim, other) = victim_and_other(t.path());
    // The adversary re-labels the other run's checkpoint 8 as the victim's (run id, seed,
    // parent) and rewrites the ledger so that every hash is consistent again.
    let key = layout::checkpoint(8);
    let theirs = run_store::testing::checkpoint(&other, 8);
    let mine = snapshot::read_header(
        &std::fs::read(victim.join(&key)).expect("read"),
        &key,
        &ReadLimits::default(),
    )
    .expect("header");
    let mut meta = theirs.header.state.clone();
    meta.rng.master_seed = mine.state.rng.master_seed;
    replace_checkpoint(&victim, 8, &meta, &mine.provenance, &theirs.views());
    // Every hash is consistent: the integrity check cannot see it.
    let c = check(&victim, 0);
    assert_eq!(c.header.verdict, Verdict::Ok, "{:?}", c.header.problems);
    // Replay can.
    let v = verify(&victim, 1);
    assert_eq!(v.header.verdict, Verdict::Diverged);
    let seg2 = &v.ranges[1];
    let d = seg2.divergence.as_ref().expect("segment 2 diverges");
    assert_eq!((d.step, d.field.as_str()), (8, "state_root"));
    assert_eq!(seg2.verdict, Verdict::Diverged);
    // The tensors that differ from the swapped-in state are listed, largest first.
    assert!(
        d.tensors.first().is_some_and(|x| x.differing > 0),
        "{:?}",
        d.tensors
    );
    let seg3 = &v.ranges[2];
    assert_eq!(
        seg3.divergence.as_ref().map(|d| d.step),
        Some(9),
        "training from the forged state diverges at once"
    );
}

#[test]
fn edited_example_is_an_input_mismatch_at_its_first_use() {
    let t = tempfile::tempdir().expect("tmp");
    let r = honest(t.path());
    let k = 3usize;
    let data = r.join(layout::DATASET_DATA);
    let mut lines: Vec<String> = std::fs::read_to_string(&data)
        .expect("data")
        .lines()
        .map(String::from)
        .collect();
    lines[k] = lines[k].replacen("{\"text\": \"", "{\"text\": \"Frankly, ", 1);
    std::fs::write(&data, lines.join("\n") + "\n").expect("write");
    let first_use = all_records(&r)
        .iter()
        .find(|rec| rec.example_ids.contains(&(k as u64)))
        .map(|rec| rec.step);
    let c = check(&r, 1);
    assert_eq!(c.header.verdict, Verdict::InputMismatch);
    assert!(
        c.header
            .problems
            .iter()
            .any(|p| p.detail.starts_with(&format!("example {k} "))),
        "{:?}",
        c.header.problems
    );
    let v = verify(&r, 1);
    assert_eq!(v.header.verdict, Verdict::InputMismatch);
    let m = v
        .ranges
        .iter()
        .find_map(|x| x.input_mismatch.clone())
        .expect("an input mismatch");
    assert_eq!((Some(m.step), m.example_id), (first_use, k as u64));
}

fn all_records(r: &Path) -> Vec<StepRecord> {
    (1..)
        .map_while(|i| std::fs::read(r.join(layout::segment(i))).ok())
        .flat_map(|b| Segment::decode(&b, "s").expect("segment").records)
        .collect()
}

#[test]
fn reordered_ledger_records_are_tampering() {
    let t = tempfile::tempdir().expect("tmp");
    let r = honest(t.path());
    let key = layout::segment(2);
    let mut seg =
        Segment::decode(&std::fs::read(r.join(&key)).expect("seg"), &key).expect("decode");
    seg.records.swap(1, 2);
    std::fs::write(r.join(&key), seg.encode()).expect("write");
    let c = check(&r, 2);
    assert_eq!(c.header.verdict, Verdict::Tampered);
    assert!(
        c.header.problems.iter().any(|p| p.artefact == key),
        "{:?}",
        c.header.problems
    );
    assert_eq!(verify(&r, 2).header.verdict, Verdict::Tampered);
}

#[test]
fn deleted_ledger_segment_is_missing() {
    let t = tempfile::tempdir().expect("tmp");
    let r = honest(t.path());
    std::fs::remove_file(r.join(layout::segment(2))).expect("delete");
    let c = check(&r, 2);
    assert_eq!(c.header.verdict, Verdict::Missing);
    assert!(
        c.header
            .problems
            .iter()
            .any(|p| p.artefact == layout::segment(2) && p.kind == Verdict::Missing)
    );
    let v = verify(&r, 2);
    assert_eq!(v.header.verdict, Verdict::Missing);
    assert_eq!(
        v.ranges[0].verdict,
        Verdict::Verified,
        "segment 1 is intact"
    );
}

#[test]
fn deleted_tail_of_a_completed_run_is_reported() {
    let t = tempfile::tempdir().expect("tmp");
    let r = honest(t.path());
    // An insider removes the last segment, the last checkpoint and the completion record.
    for k in [
        layout::segment(3),
        layout::checkpoint(12),
        layout::COMPLETE.to_string(),
    ] {
        std::fs::remove_file(r.join(k)).expect("delete");
    }
    let c = check(&r, 2);
    assert_eq!(
        c.header.verdict,
        Verdict::Incomplete,
        "{:?}",
        c.header.problems
    );
    // Verifying only the intact first segment does not make the run whole.
    let v: VerifyReport = replay(&["verify", s(&r), "--segment", "1"], 2);
    assert_eq!(v.header.verdict, Verdict::Incomplete);
    assert_eq!(v.ranges[0].verdict, Verdict::Verified);
}

#[test]
fn truncated_checkpoint_is_corrupt() {
    let t = tempfile::tempdir().expect("tmp");
    let r = honest(t.path());
    let key = layout::checkpoint(4);
    let bytes = std::fs::read(r.join(&key)).expect("read");
    std::fs::write(r.join(&key), &bytes[..bytes.len() / 2]).expect("truncate");
    let c = check(&r, 2);
    assert_eq!(
        c.header.verdict,
        Verdict::Corrupt,
        "{:?}",
        c.header.problems
    );
    assert_problem(&c.header.problems, &key, Verdict::Corrupt, "truncated");
    assert_eq!(verify(&r, 2).header.verdict, Verdict::Corrupt);
}

#[test]
fn altered_learning_rate_in_the_manifest_is_tampering() {
    let t = tempfile::tempdir().expect("tmp");
    let r = honest(t.path());
    let path = r.join(layout::MANIFEST);
    let original = std::fs::read(&path).expect("manifest");
    let mut m: serde_json::Value = serde_json::from_slice(&original).expect("json");
    m["spec"]["optimizer"]["lr"] = serde_json::json!(0.002);
    // Naive edit: the spec no longer matches its hash.
    std::fs::write(&path, serde_json::to_vec_pretty(&m).expect("json")).expect("write");
    let c = check(&r, 2);
    assert_eq!(c.header.verdict, Verdict::Tampered);
    assert!(
        c.header.problems[0].detail.contains("spec hash"),
        "{:?}",
        c.header.problems
    );
    assert_eq!(verify(&r, 2).header.verdict, Verdict::Tampered);
    // Thorough edit: spec hash and genesis recomputed; the ledger's chain no longer starts there.
    let mut typed: RunManifest = serde_json::from_value(m).expect("typed");
    typed.spec_hash = spec_hash(&typed.spec);
    typed.genesis = ledger::genesis(&typed.spec_hash, &typed.initial_state_root);
    std::fs::write(&path, typed.to_json()).expect("write");
    let c = check(&r, 2);
    assert_eq!(c.header.verdict, Verdict::Tampered);
    assert!(
        c.header.problems.iter().any(
            |p| p.artefact == layout::segment(1) && p.detail.contains("chain broken at step 1")
        ),
        "{:?}",
        c.header.problems
    );
    assert_eq!(verify(&r, 2).header.verdict, Verdict::Tampered);
}

#[test]
fn a_forged_environment_fingerprint_decides_nothing() {
    let t = tempfile::tempdir().expect("tmp");
    let r = honest(t.path());
    let path = r.join(layout::MANIFEST);
    let mut m: RunManifest =
        RunManifest::from_json(&std::fs::read(&path).expect("read"), "m").expect("manifest");
    m.environment.isa_level = "x86-64-v2".into();
    m.environment.burn_version = "0.99.0".into();
    std::fs::write(&path, m.to_json()).expect("write");
    // The run claims another class; this machine measures its own, replays anyway, and every
    // bit matches: the claim was false, the history is verified.
    let v = verify(&r, 0);
    assert_eq!(v.header.verdict, Verdict::Verified);
    let env = v.environment.expect("environment");
    let fields: Vec<&str> = env.differences.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(fields, ["burn_version", "isa_level"]);
    assert_eq!(v.steps_replayed, 12);
    // Across classes every step is compared and reported.
    assert_eq!(v.ranges.iter().map(|x| x.deltas.len()).sum::<usize>(), 12);
    assert!(
        v.ranges
            .iter()
            .flat_map(|x| &x.deltas)
            .all(|d| d.loss_abs_diff == 0.0 && d.state_root_equal == Some(true))
    );
}

/// An intruder in the training infrastructure perturbs one parameter right after the update of
/// step `bad`, then lets training carry on honestly, recording every hash consistently.
fn poisoned_continuation(run: &Path, bad: u64) {
    forge_history(
        run,
        stored_state(run, 4),
        |step, state| {
            if step == bad {
                nudge(state, "classifier.weight", 0, 1e-3);
            }
            step == bad
        },
        None,
    );
}

#[test]
fn poisoned_update_carried_on_honestly_diverges_at_exactly_that_step() {
    let t = tempfile::tempdir().expect("tmp");
    let r = honest(t.path());
    let poisoned = t.path().join("poisoned");
    copy_dir(&r, &poisoned).expect("copy");
    poisoned_continuation(&poisoned, 6);
    let c = check(&poisoned, 0);
    assert_eq!(
        c.header.verdict,
        Verdict::Ok,
        "the poisoned history is self-consistent: {:?}",
        c.header.problems
    );
    let v = verify(&poisoned, 1);
    assert_eq!(v.header.verdict, Verdict::Diverged);
    assert_eq!(v.ranges[0].verdict, Verdict::Verified);
    let d = v.ranges[1].divergence.as_ref().expect("segment 2 diverges");
    assert_eq!((d.step, d.field.as_str()), (6, "state_root"));
    assert_eq!(d.tensors_at_step, Some(8));
    assert!(
        d.tensors.iter().any(|t| t.name == "classifier.weight"),
        "{:?}",
        d.tensors
    );
    // From the poisoned checkpoint on, the honest continuation replays: segment 3 verifies.
    assert_eq!(v.ranges[2].verdict, Verdict::Verified);
    // compare locates the step too.
    let cmp: replay::commands::compare::CompareReport =
        replay(&["compare", s(&r), s(&poisoned)], 1);
    assert_eq!(cmp.first_difference.map(|f| f.step), Some(6));
}
