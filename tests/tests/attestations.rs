//! Standard attestations through the real commands and the ecosystem's own verifiers (no
//! mocks, no network): an exported model's `model.sig` checked by OpenSSF `model_signing`
//! (`model_signing verify key`), the provenance and verification statements by
//! securesystemslib's DSSE implementation (which in-toto uses), each with a changed model byte,
//! a changed statement and a wrong key failing with the tool's own error; and `replay check`
//! of the same artefacts, including a statement that is validly signed but about another run.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use e2e_tests::{replay_json, run, s, train, workspace};
use replay::Verdict;
use replay::commands::check::CheckReport;
use replay::signatures::Status;
use trainer::fixtures::{self, FixtureOptions};

/// The Python of the workspace's `.venv` (`scripts/setup-test-env.sh` installs model-signing
/// and securesystemslib there).
fn python() -> PathBuf {
    let p = workspace().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} not found: run scripts/setup-test-env.sh",
        p.display()
    );
    p
}

/// Run a Python snippet with arguments; returns (success, stdout + stderr).
fn py(code: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `model_signing verify key DIR --signature DIR/model.sig --public_key KEY`, the CLI of the
/// OpenSSF package.
fn model_signing_verify(dir: &Path, key: &Path) -> (bool, String) {
    let out = Command::new(workspace().join(".venv/bin/model_signing"))
        .args(["verify", "key", s(dir), "--signature"])
        .arg(dir.join("model.sig"))
        .arg("--public_key")
        .arg(key)
        .output()
        .expect("model_signing");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// securesystemslib's DSSE verification of an envelope with an ed25519 public key (PEM), the
/// key id computed by securesystemslib itself; prints the statement's predicate type.
const DSSE_VERIFY: &str = r#"
import json, sys
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
envelope = Envelope.from_dict(json.load(open(sys.argv[1])))
key = SSlibKey.from_crypto(load_pem_public_key(open(sys.argv[2], "rb").read()))
envelope.verify([key], 1)
statement = json.loads(envelope.payload)
assert statement["_type"] == "https://in-toto.io/Statement/v1", statement["_type"]
print(statement["predicateType"])
"#;

fn keygen(dir: &Path, kind: &str) {
    let out = run("trainer", &["keygen", "--out", s(dir), "--kind", kind]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A signed tiny run exported with both attestations.
fn exported_run(dir: &Path, keys: &Path, seed: u64) -> (PathBuf, PathBuf) {
    let o = FixtureOptions {
        seed,
        ..FixtureOptions::default()
    };
    let cfg = fixtures::write_tiny_bert(&dir.join("in"), &o).expect("fixture");
    let (r, export) = (dir.join("run"), dir.join("export"));
    train(
        &cfg,
        &r,
        &[
            "--signing-key",
            s(&keys.join("signing-key.pem")),
            "--model-signing-key",
            s(&keys.join("model-signing-key.pem")),
            "--export",
            s(&export),
        ],
    );
    (r, export)
}

/// Rewrite the statement inside an envelope (the signature left as it was).
fn rewrite_statement(envelope: &Path, out: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(envelope).expect("read")).expect("json");
    let payload = b64
        .decode(env["payload"].as_str().expect("payload"))
        .expect("base64");
    let mut statement: serde_json::Value = serde_json::from_slice(&payload).expect("statement");
    f(&mut statement);
    env["payload"] = b64
        .encode(serde_json::to_vec(&statement).expect("json"))
        .into();
    std::fs::write(out, serde_json::to_vec(&env).expect("json")).expect("write");
}

#[test]
fn exported_models_and_statements_verify_with_the_ecosystems_tools() {
    let t = tempfile::tempdir().expect("tmp");
    let keys = t.path().join("keys");
    keygen(&keys, "ed25519");
    keygen(&keys, "p256");
    let (r, export) = exported_run(&t.path().join("a"), &keys, 11);
    let model_pub = keys.join("model-signing-key.pub.pem");
    let run_pub = keys.join("signing-key.pub.pem");
    let trusted = keys.join("signing-key.pub");

    // OpenSSF model_signing accepts the bundle over the exported directory.
    let (ok, out) = model_signing_verify(&export, &model_pub);
    assert!(ok, "model_signing rejected our bundle: {out}");
    // securesystemslib accepts the provenance statement, signed by the run's key.
    let provenance = export.join("provenance.intoto.json");
    let (ok, out) = py(DSSE_VERIFY, &[s(&provenance), s(&run_pub)]);
    assert!(ok, "securesystemslib rejected the statement: {out}");
    assert_eq!(out.trim(), "urn:training-replay-verifier:training-run:v1");
    // replay check: the statement is the run's, signed by the trusted key, and its subjects
    // are the directory's files; the bundle verifies with the P-256 key.
    let check_export = |exit: i32| -> CheckReport {
        replay_json(
            &[
                "check",
                s(&r),
                "--export",
                s(&export),
                "--model-key",
                s(&model_pub),
                "--trusted-key",
                s(&trusted),
            ],
            exit,
        )
    };
    let c = check_export(0);
    assert_eq!(c.attestations.len(), 2, "{:?}", c.attestations);
    assert!(
        c.attestations
            .iter()
            .all(|a| a.verdict == Verdict::Ok && a.signatures.status == Status::Trusted),
        "{:?}",
        c.attestations
    );

    // A state that replay rolled back and exported carries the same attestations, signed by
    // whoever ran replay (a verifier, not the run's signer), and its stated root is checked
    // against the ledger's record of its step.
    let verifier = t.path().join("verifier");
    keygen(&verifier, "ed25519");
    let rolled = t.path().join("rollback-8");
    let _: replay::commands::rollback::RollbackReport = replay_json(
        &[
            "rollback",
            s(&r),
            "--step",
            "8",
            "--out",
            s(&rolled),
            "--signing-key",
            s(&verifier.join("signing-key.pem")),
            "--model-signing-key",
            s(&keys.join("model-signing-key.pem")),
        ],
        0,
    );
    let (ok, out) = model_signing_verify(&rolled, &model_pub);
    assert!(ok, "model_signing rejected the rollback's bundle: {out}");
    let check_rolled = |extra: &[&str], exit: i32| -> CheckReport {
        let mut args = vec![
            "check",
            s(&r),
            "--export",
            s(&rolled),
            "--model-key",
            s(&model_pub),
            "--trusted-key",
            s(&trusted),
        ];
        args.extend_from_slice(extra);
        replay_json(&args, exit)
    };
    let c = check_rolled(&["--verifier-key", s(&verifier.join("signing-key.pub"))], 0);
    assert_eq!(
        c.attestations[0].predicate_type,
        "urn:training-replay-verifier:replayed-state:v1"
    );
    assert_eq!(c.attestations[0].signatures.status, Status::Trusted);
    // A replayed state is a verifier's claim: without a verifier key named it is not trusted.
    let c = check_rolled(&[], 2);
    assert_eq!(
        c.header.verdict,
        Verdict::UntrustedSigner,
        "{:?}",
        c.header.problems
    );

    // A wrong key: each tool refuses with its own error.
    let other = t.path().join("other");
    keygen(&other, "ed25519");
    keygen(&other, "p256");
    let (ok, out) = model_signing_verify(&export, &other.join("model-signing-key.pub.pem"));
    assert!(!ok && out.contains("Key mismatch"), "{out}");
    let (ok, out) = py(
        DSSE_VERIFY,
        &[s(&provenance), s(&other.join("signing-key.pub.pem"))],
    );
    assert!(!ok && out.contains("VerificationError"), "{out}");

    // A changed statement under the old signature.
    let forged = t.path().join("forged.intoto.json");
    rewrite_statement(&provenance, &forged, |st| {
        st["predicate"]["finalStep"] = 13.into();
    });
    let (ok, out) = py(DSSE_VERIFY, &[s(&forged), s(&run_pub)]);
    assert!(!ok && out.contains("VerificationError"), "{out}");
    let c: CheckReport = replay_json(
        &[
            "check",
            s(&r),
            "--attestation",
            s(&forged),
            "--trusted-key",
            s(&trusted),
        ],
        2,
    );
    assert_eq!(
        c.header.verdict,
        Verdict::BadSignature,
        "{:?}",
        c.header.problems
    );

    // A statement validly signed by the same key, about another run, filed as this run's.
    let (_, export_b) = exported_run(&t.path().join("b"), &keys, 12);
    let c: CheckReport = replay_json(
        &[
            "check",
            s(&r),
            "--attestation",
            s(&export_b.join("provenance.intoto.json")),
            "--trusted-key",
            s(&trusted),
        ],
        2,
    );
    assert_eq!(
        c.header.verdict,
        Verdict::Tampered,
        "{:?}",
        c.header.problems
    );
    assert!(
        c.header
            .problems
            .iter()
            .any(|p| p.detail.contains("finalStateRoot"))
    );

    // One byte of a model file changed: model_signing and replay check both refuse.
    let weights = export.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).expect("weights");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).expect("write");
    let (ok, out) = model_signing_verify(&export, &model_pub);
    assert!(!ok && out.contains("Signature mismatch"), "{out}");
    let c = check_export(2);
    assert!(
        c.attestations.iter().all(|a| a.verdict != Verdict::Ok),
        "{:?}",
        c.attestations
    );
}

#[test]
fn an_auditors_verification_statement_verifies_and_cannot_be_altered() {
    let t = tempfile::tempdir().expect("tmp");
    let keys = t.path().join("keys");
    keygen(&keys, "ed25519");
    let auditor = t.path().join("auditor");
    keygen(&auditor, "ed25519");
    let cfg = fixtures::write_tiny_bert(&t.path().join("in"), &FixtureOptions::default())
        .expect("fixture");
    let r = t.path().join("run");
    train(
        &cfg,
        &r,
        &["--signing-key", s(&keys.join("signing-key.pem"))],
    );
    let statement = t.path().join("audit.intoto.json");
    let v: replay::commands::verify::VerifyReport = replay_json(
        &[
            "verify",
            s(&r),
            "--all",
            "--attest",
            s(&statement),
            "--signing-key",
            s(&auditor.join("signing-key.pem")),
            "--trusted-key",
            s(&keys.join("signing-key.pub")),
        ],
        0,
    );
    assert_eq!(v.header.verdict, Verdict::Verified);
    let (ok, out) = py(
        DSSE_VERIFY,
        &[s(&statement), s(&auditor.join("signing-key.pub.pem"))],
    );
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        "urn:training-replay-verifier:replay-verification:v1"
    );
    // Written once: a second verification does not replace it.
    let again = run(
        "replay",
        &[
            "verify",
            s(&r),
            "--segment",
            "1",
            "--attest",
            s(&statement),
            "--signing-key",
            s(&auditor.join("signing-key.pem")),
            "--quiet",
        ],
    );
    assert_eq!(again.status.code(), Some(3));
    let check = |file: &Path, extra: &[&str], exit: i32| -> CheckReport {
        let mut args = vec!["check", s(&r), "--attestation", s(file)];
        args.extend_from_slice(extra);
        replay_json(&args, exit)
    };
    let auditor_pub = auditor.join("signing-key.pub");
    let c = check(&statement, &["--verifier-key", s(&auditor_pub)], 0);
    assert_eq!(c.attestations[0].signatures.status, Status::Trusted);
    // Without the auditor's key named, the statement is not trusted.
    let c = check(&statement, &[], 2);
    assert_eq!(
        c.header.verdict,
        Verdict::UntrustedSigner,
        "{:?}",
        c.header.problems
    );
    // A failed verification rewritten as passed: the signature no longer verifies.
    let forged = t.path().join("forged.intoto.json");
    rewrite_statement(&statement, &forged, |st| {
        st["predicate"]["verdict"] = "verified".into();
        st["predicate"]["stepsReplayed"] = 1000.into();
    });
    let (ok, out) = py(
        DSSE_VERIFY,
        &[s(&forged), s(&auditor.join("signing-key.pub.pem"))],
    );
    assert!(!ok && out.contains("VerificationError"), "{out}");
    let c = check(&forged, &["--verifier-key", s(&auditor_pub)], 2);
    assert_eq!(
        c.header.verdict,
        Verdict::BadSignature,
        "{:?}",
        c.header.problems
    );
}
