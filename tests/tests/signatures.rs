//! Signed runs, end to end: keys from `trainer keygen`, runs signed by `trainer run
//! --signing-key`, trust decided by `replay check --trusted-key`.

use std::path::{Path, PathBuf};

use e2e_tests::{replay_json, run, s, train};
use replay::Verdict;
use replay::commands::check::CheckReport;
use replay::commands::verify::VerifyReport;
use replay::signatures::Status;
use run_store::Store;
use run_store::testing::rewrite_ledger;
use run_trust::signature::{self, kind};
use snapshot_format::hash::file_hash;
use snapshot_format::layout;
use snapshot_format::ledger::Segment;
use trainer::fixtures::{self, FixtureOptions};
use trainer::record::RunSigner;

fn keygen(dir: &Path) -> (PathBuf, PathBuf, String) {
    let out = run("trainer", &["keygen", "--out", s(dir)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let hex = stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key   "))
        .expect("public key printed")
        .to_string();
    (
        dir.join("signing-key.pem"),
        dir.join("signing-key.pub"),
        hex,
    )
}

fn signed_run(dir: &Path, key: &Path) -> PathBuf {
    let cfg =
        fixtures::write_tiny_bert(&dir.join("in"), &FixtureOptions::default()).expect("fixture");
    let out = dir.join("run");
    train(&cfg, &out, &["--signing-key", s(key), "--run-id", "signed"]);
    out
}

/// A new key in `dir/a` and a run in `dir/run` signed with it: the run, the public key's
/// file and its bytes.
fn signed_by_a_new_key(dir: &Path) -> (PathBuf, PathBuf, [u8; 32]) {
    let (private, public, _) = keygen(&dir.join("a"));
    let r = signed_run(dir, &private);
    let bytes = signature::read_public_key(s(&public))
        .expect("public key")
        .to_bytes();
    (r, public, bytes)
}

fn check(r: &Path, extra: &[&str], exit: i32) -> CheckReport {
    let mut args = vec!["check", s(r)];
    args.extend_from_slice(extra);
    replay_json(&args, exit)
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_can_read_and_never_overwrites() {
    let t = tempfile::tempdir().expect("tmp");
    let (private, public, hex) = keygen(t.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(
        std::fs::read_to_string(&private)
            .expect("pem")
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert_eq!(std::fs::read_to_string(&public).expect("pub").trim(), hex);
    assert_eq!(hex.len(), 64);
    let before = std::fs::read(&private).expect("pem");
    let again = run("trainer", &["keygen", "--out", s(t.path())]);
    assert_eq!(again.status.code(), Some(3), "refuses to overwrite a key");
    assert_eq!(std::fs::read(&private).expect("pem"), before);
}

#[test]
fn signed_run_verifies_with_its_key_and_not_with_another() {
    let t = tempfile::tempdir().expect("tmp");
    let (key_a, pub_a, hex_a) = keygen(&t.path().join("a"));
    let (_, pub_b, _) = keygen(&t.path().join("b"));
    let r = signed_run(t.path(), &key_a);

    let c = check(&r, &["--trusted-key", s(&pub_a), "--require-signatures"], 0);
    let sigs = c.signatures.expect("signatures");
    // manifest, 3 segments, 4 checkpoints, completion
    assert_eq!(sigs.artefacts.len(), 9);
    assert!(
        sigs.artefacts.iter().all(|a| a.status == Status::Trusted),
        "{:?}",
        sigs.artefacts
    );
    // The key can be given as hex too.
    check(&r, &["--trusted-key", &hex_a], 0);

    let c = check(&r, &["--trusted-key", s(&pub_b)], 2);
    assert_eq!(c.header.verdict, Verdict::UntrustedSigner);
    // Without a trust list, signatures are still checked and the signer shown.
    let c = check(&r, &[], 0);
    let sigs = c.signatures.expect("signatures");
    assert!(sigs.artefacts.iter().all(|a| a.status == Status::Valid));
    assert_eq!(sigs.signers.len(), 1);
    assert_eq!(sigs.signers[0].public_key, hex_a);
}

#[test]
fn history_rewritten_and_resigned_by_another_key_is_untrusted() {
    let t = tempfile::tempdir().expect("tmp");
    let (key_a, pub_a, _) = keygen(&t.path().join("a"));
    let (key_b, _, _) = keygen(&t.path().join("b"));
    let r = signed_run(t.path(), &key_a);
    // The insider rewrites a loss value, re-chains the ledger, drops A's signatures and signs
    // everything again with B.
    rewrite_ledger(&r, |rec| {
        if rec.step == 7 {
            rec.loss_bits ^= 1;
        }
    })
    .expect("rewrite");
    std::fs::remove_dir_all(r.join(layout::SIGNATURES)).expect("drop signatures");
    let store = Store::open(s(&r)).expect("store");
    let m = snapshot_format::manifest::RunManifest::from_json(
        &store.get(layout::MANIFEST).expect("m"),
        "m",
    )
    .expect("m");
    let signer = RunSigner::new(
        signature::read_signing_key(&key_b).expect("key b"),
        &m.run_id,
        m.genesis,
    );
    let sign = |key: &str, kind: &str, step: u64, hash| {
        signer.sign(&store, key, kind, step, hash).expect("sign")
    };
    sign(
        layout::MANIFEST,
        kind::MANIFEST,
        0,
        file_hash(&store.get(layout::MANIFEST).expect("m")),
    );
    for i in 1..=3 {
        let seg = Segment::decode(&store.get(&layout::segment(i)).expect("seg"), "s").expect("seg");
        sign(
            &layout::segment(i),
            kind::SEGMENT,
            seg.last_step(),
            seg.head(),
        );
        for rec in seg.records.iter().filter(|r| r.step % 4 == 0) {
            sign(
                &layout::checkpoint(rec.step),
                kind::CHECKPOINT,
                rec.step,
                rec.state_root.expect("root"),
            );
        }
    }
    let ck0 = m.initial_state_root;
    sign(&layout::checkpoint(0), kind::CHECKPOINT, 0, ck0);
    sign(
        layout::COMPLETE,
        kind::COMPLETION,
        12,
        file_hash(&store.get(layout::COMPLETE).expect("c")),
    );
    let c = check(&r, &["--trusted-key", s(&pub_a)], 2);
    assert_eq!(
        c.header.verdict,
        Verdict::UntrustedSigner,
        "{:?}",
        c.header.problems
    );
    let sigs = c.signatures.expect("signatures");
    assert!(
        sigs.artefacts
            .iter()
            .all(|a| a.status == Status::UnknownSigner)
    );
    let v: VerifyReport = replay_json(&["verify", s(&r), "--all", "--trusted-key", s(&pub_a)], 2);
    assert_eq!(v.header.verdict, Verdict::UntrustedSigner);
}

#[test]
fn signature_moved_to_another_checkpoint_is_bad() {
    let t = tempfile::tempdir().expect("tmp");
    let (r, pub_a, public) = signed_by_a_new_key(t.path());
    let from = r.join(signature::key_for(&public, &layout::checkpoint(4)));
    let to = r.join(signature::key_for(&public, &layout::checkpoint(8)));
    std::fs::copy(&from, &to).expect("move signature");
    let c = check(&r, &["--trusted-key", s(&pub_a)], 2);
    assert_eq!(c.header.verdict, Verdict::BadSignature);
    let p = c
        .header
        .problems
        .iter()
        .find(|p| p.kind == Verdict::BadSignature)
        .expect("a bad signature");
    assert!(p.artefact.ends_with("step-000000000008.snap.sig"), "{p:?}");
    assert!(p.detail.contains("step 4"), "{p:?}");
    let v: VerifyReport = replay_json(&["verify", s(&r), "--all", "--trusted-key", s(&pub_a)], 2);
    assert_eq!(v.header.verdict, Verdict::BadSignature);
}

#[test]
fn truncated_or_garbled_signature_files_are_specific_errors() {
    let t = tempfile::tempdir().expect("tmp");
    let (r, pub_a, public) = signed_by_a_new_key(t.path());
    let seg_sig = r.join(signature::key_for(&public, &layout::segment(2)));
    let bytes = std::fs::read(&seg_sig).expect("sig");
    std::fs::write(&seg_sig, &bytes[..bytes.len() - 20]).expect("truncate");
    let c = check(&r, &["--trusted-key", s(&pub_a)], 2);
    assert!(
        c.header
            .problems
            .iter()
            .any(|p| p.kind == Verdict::Corrupt && p.detail.contains("truncated")),
        "{:?}",
        c.header.problems
    );
    let mut garbled = bytes.clone();
    let n = garbled.len();
    garbled[n - 30] ^= 0x40; // inside the signature bytes
    std::fs::write(&seg_sig, &garbled).expect("garble");
    let c = check(&r, &["--trusted-key", s(&pub_a)], 2);
    assert!(
        c.header
            .problems
            .iter()
            .any(|p| p.kind == Verdict::Corrupt && p.detail.contains("digest")),
        "{:?}",
        c.header.problems
    );
}

#[test]
fn unsigned_run_is_reported_and_fails_when_signatures_are_required() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixtures::write_tiny_bert(&t.path().join("in"), &FixtureOptions::default())
        .expect("fixture");
    let r = t.path().join("run");
    train(&cfg, &r, &[]);
    let c = check(&r, &[], 0);
    let sigs = c.signatures.expect("signatures");
    assert!(sigs.artefacts.iter().all(|a| a.status == Status::Unsigned));
    let c = check(&r, &["--require-signatures"], 2);
    assert_eq!(c.header.verdict, Verdict::Unsigned);
    assert_eq!(c.header.problems.len(), 9);
}
