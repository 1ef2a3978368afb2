//! Artefacts that carry claims of their own, tried as an adversary would (someone who controls
//! the run directory, its store and where results are kept, in places the trainer's key, never
//! a verifier's): a verifier's statement is judged by what it says and by whose key signed it,
//! shard reports by the history they replayed, exports file by file as `model_signing` judges
//! them, and `investigate` signs only what it found in the one run it loaded. Each test goes
//! through the real commands and asserts the exact verdict and exit status.

use std::path::{Path, PathBuf};

use base64::Engine;
use e2e_tests::{
    forge_history, nudge, replace_checkpoint, replay_json, run, s, stored_state, train, workspace,
};
use replay::Verdict;
use replay::commands::check::CheckReport;
use replay::commands::collect::CollectReport;
use replay::commands::verify::VerifyReport;
use replay::signatures::Status;
use run_trust::attest;
use run_trust::signature::{self, Statement, kind};
use snapshot_format::{hash::file_hash, layout};
use trainer::fixtures::{self, FixtureOptions};

/// `trainer keygen --kind KIND` into `dir`.
fn keygen(dir: &Path, kind: &str) -> PathBuf {
    let out = run("trainer", &["keygen", "--out", s(dir), "--kind", kind]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_path_buf()
}

/// An ed25519 key pair: (private key file, public key file).
fn ed25519(dir: &Path) -> (PathBuf, PathBuf) {
    let d = keygen(dir, "ed25519");
    (d.join("signing-key.pem"), d.join("signing-key.pub"))
}

/// A tiny BERT fixture run (12 steps, checkpoints 0, 4, 8, 12), signed with `key` when given;
/// `extra` goes to `trainer run`.
fn record(dir: &Path, key: Option<&Path>, extra: &[&str]) -> PathBuf {
    let cfg =
        fixtures::write_tiny_bert(&dir.join("in"), &FixtureOptions::default()).expect("fixture");
    let out = dir.join("run");
    let mut args = vec!["--run-id", "victim"];
    if let Some(k) = key {
        args.extend(["--signing-key", s(k)]);
    }
    args.extend_from_slice(extra);
    train(&cfg, &out, &args);
    out
}

/// `replay check RUN ARGS…`, with its exit status.
fn check(r: &Path, args: &[&str], exit: i32) -> CheckReport {
    let mut full = vec!["check", s(r)];
    full.extend_from_slice(args);
    replay_json(&full, exit)
}

/// `replay verify RUN ARGS… --attest FILE --signing-key KEY`: the verifier's statement.
fn attest(r: &Path, args: &[&str], key: &Path, out: &Path, exit: i32) -> VerifyReport {
    let mut full = vec!["verify", s(r)];
    full.extend_from_slice(args);
    full.extend(["--attest", s(out), "--signing-key", s(key)]);
    replay_json(&full, exit)
}

#[track_caller]
fn assert_problem(c: &CheckReport, kind: Verdict, detail: &str) {
    assert!(
        c.header
            .problems
            .iter()
            .any(|p| p.kind == kind && p.detail.contains(detail)),
        "no {kind:?} problem mentioning {detail:?}: {:?}",
        c.header.problems
    );
}

/// The statement inside a DSSE envelope file.
fn statement_of(envelope: &Path) -> attest::Statement {
    let env: attest::Envelope =
        serde_json::from_slice(&std::fs::read(envelope).expect("read")).expect("envelope");
    let payload = base64::engine::general_purpose::STANDARD
        .decode(env.payload)
        .expect("base64");
    serde_json::from_slice(&payload).expect("statement")
}

/// Class 1: a genuine verifier's statement counts for what it states. The run's owner hands
/// over the auditor's statement of a verification that failed: `check` of a run whose hashes
/// all agree is `ok`, but the statement says the replay diverged, and so does `check` now
/// (exit 1), showing the statement's verdict and ranges.
#[test]
fn a_failed_verification_statement_is_a_failure() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), None, &[]);
    let (auditor, auditor_pub) = ed25519(&t.path().join("auditor"));
    // Checkpoint 8 swapped for a nudged state, the ledger rewritten to commit to it: every hash
    // agrees, only replay can tell.
    let mut swapped = run_store::testing::checkpoint(&r, 8);
    let (i, _) = swapped
        .header
        .tensors
        .iter()
        .enumerate()
        .find(|(_, t)| t.name == "classifier.weight")
        .expect("tensor");
    swapped.data[i][1] ^= 0x40;
    let (state, provenance) = (
        swapped.header.state.clone(),
        swapped.header.provenance.clone(),
    );
    replace_checkpoint(&r, 8, &state, &provenance, &swapped.views());
    assert_eq!(check(&r, &[], 0).header.verdict, Verdict::Ok);
    let failed = t.path().join("failed.intoto.json");
    let v = attest(&r, &["--all"], &auditor, &failed, 1);
    assert_eq!(v.header.verdict, Verdict::Diverged);

    let c = check(
        &r,
        &[
            "--attestation",
            s(&failed),
            "--verifier-key",
            s(&auditor_pub),
        ],
        1,
    );
    assert_eq!(
        c.header.verdict,
        Verdict::Diverged,
        "{:?}",
        c.header.problems
    );
    let a = &c.attestations[0];
    assert_eq!(a.signatures.status, Status::Trusted);
    assert_eq!(a.verdict, Verdict::Diverged);
    let stated = a.stated.as_ref().expect("stated");
    assert_eq!(
        (stated.by.as_str(), stated.verdict),
        ("verify", Some(Verdict::Diverged))
    );
    let verdicts: Vec<Verdict> = stated.ranges.iter().map(|r| r.verdict).collect();
    assert_eq!(
        verdicts,
        [Verdict::Verified, Verdict::Diverged, Verdict::Diverged]
    );
    assert_problem(&c, Verdict::Diverged, "ended diverged");
}

/// Class 2: who may sign a verification. Only a key named with `--verifier-key` makes a
/// verifier's statement trusted; not the run's own signer (with or without being named), not a
/// key that merely signed something inside the run directory, and a statement that leaves out
/// the ledger head it attests is not one replay wrote, whoever signed it.
#[test]
fn only_a_named_verifier_may_attest_and_only_to_the_ledger() {
    let t = tempfile::tempdir().expect("tmp");
    let (trainer_key, trainer_pub) = ed25519(&t.path().join("trainer"));
    let (auditor, auditor_pub) = ed25519(&t.path().join("auditor"));
    let (intruder, intruder_pub) = ed25519(&t.path().join("intruder"));
    let r = record(t.path(), Some(&trainer_key), &[]);

    // The trainer vouches for its own run.
    let own = t.path().join("own.intoto.json");
    attest(&r, &["--segment", "1"], &trainer_key, &own, 0);
    let c = check(&r, &["--attestation", s(&own)], 2);
    assert_eq!(
        c.header.verdict,
        Verdict::UntrustedSigner,
        "{:?}",
        c.header.problems
    );
    let c = check(
        &r,
        &["--attestation", s(&own), "--verifier-key", s(&trainer_pub)],
        2,
    );
    assert_eq!(
        c.header.verdict,
        Verdict::UntrustedSigner,
        "{:?}",
        c.header.problems
    );
    assert_problem(&c, Verdict::UntrustedSigner, "signed the run itself");
    // A key cannot be named both as the run's signer and as its verifier.
    let both = run(
        "replay",
        &[
            "check",
            s(&r),
            "--attestation",
            s(&own),
            "--trusted-key",
            s(&trainer_pub),
            "--verifier-key",
            s(&trainer_pub),
            "--quiet",
        ],
    );
    assert_eq!(both.status.code(), Some(3));

    // The genuine auditor's statement: trusted under the auditor's key, and what it states is
    // shown.
    let genuine = t.path().join("audit.intoto.json");
    attest(&r, &["--segment", "1"], &auditor, &genuine, 0);
    let c = check(
        &r,
        &[
            "--attestation",
            s(&genuine),
            "--verifier-key",
            s(&auditor_pub),
        ],
        0,
    );
    let stated = c.attestations[0].stated.as_ref().expect("stated");
    assert_eq!(stated.verdict, Some(Verdict::Verified));
    assert_eq!(stated.step, 12);
    assert!(stated.ranges[0].rederived_from_step0, "{stated:?}");
    // Without a verifier key named, no signature makes it trusted.
    let c = check(&r, &["--attestation", s(&genuine)], 2);
    assert_eq!(
        c.header.verdict,
        Verdict::UntrustedSigner,
        "{:?}",
        c.header.problems
    );

    // An intruder's key that signed an artefact inside the run directory.
    let intruder_key = signature::read_signing_key(&intruder).expect("key");
    let m = snapshot_format::manifest::RunManifest::from_json(
        &std::fs::read(r.join(layout::MANIFEST)).expect("manifest"),
        layout::MANIFEST,
    )
    .expect("manifest");
    let signed = signature::sign(
        Statement {
            kind: kind::MANIFEST.into(),
            run_id: m.run_id.clone(),
            genesis: m.genesis,
            step: 0,
            hash: file_hash(&std::fs::read(r.join(layout::MANIFEST)).expect("manifest")),
        },
        &intruder_key,
    );
    let sig = r.join(signature::key_for(&signed.public_key, layout::MANIFEST));
    std::fs::create_dir_all(sig.parent().expect("dir")).expect("dir");
    std::fs::write(&sig, signed.encode()).expect("countersign");
    let intruding = t.path().join("intruder.intoto.json");
    attest(&r, &["--segment", "1"], &intruder, &intruding, 0);
    let c = check(&r, &["--attestation", s(&intruding)], 2);
    assert_eq!(
        c.header.verdict,
        Verdict::UntrustedSigner,
        "{:?}",
        c.header.problems
    );
    assert!(!intruder_pub.as_os_str().is_empty());

    // The auditor's key over a statement without the ledger head it attests (or with one the
    // run's ledger does not have).
    let auditor_key = signature::read_signing_key(&auditor).expect("key");
    let resign = |name: &str, f: &dyn Fn(&mut serde_json::Value)| -> PathBuf {
        let st = statement_of(&genuine);
        let mut predicate = st.predicate.clone();
        f(&mut predicate);
        let forged = attest::Statement::new(st.subject.clone(), &st.predicate_type, predicate);
        let path = t.path().join(name);
        std::fs::write(&path, attest::sign_statement(&forged, &auditor_key)).expect("write");
        path
    };
    let headless = resign("headless.intoto.json", &|p| {
        p.as_object_mut().expect("object").remove("ledgerHead");
    });
    let c = check(
        &r,
        &[
            "--attestation",
            s(&headless),
            "--verifier-key",
            s(&auditor_pub),
        ],
        2,
    );
    assert_eq!(
        c.header.verdict,
        Verdict::Corrupt,
        "{:?}",
        c.header.problems
    );
    assert_problem(&c, Verdict::Corrupt, "ledgerHead");
    let elsewhere = resign("elsewhere.intoto.json", &|p| {
        p["ledgerStep"] = 7.into();
    });
    let c = check(
        &r,
        &[
            "--attestation",
            s(&elsewhere),
            "--verifier-key",
            s(&auditor_pub),
        ],
        2,
    );
    assert_eq!(
        c.header.verdict,
        Verdict::Tampered,
        "{:?}",
        c.header.problems
    );
    assert_problem(&c, Verdict::Tampered, "ledgerHead");
}

/// Class 3: shard reports are bound to the history they replayed. After the shards ran, the
/// insider (with the trainer's key) re-trains the run from checkpoint 4 with a poisoned
/// update and signs the new history: every hash and signature of the run agrees, but the
/// shards verified another history, and `collect` names it instead of merging them.
#[test]
fn shard_reports_of_a_rewritten_history_are_not_collected() {
    let t = tempfile::tempdir().expect("tmp");
    let (trainer_key, trainer_pub) = ed25519(&t.path().join("trainer"));
    let (verifier, verifier_pub) = ed25519(&t.path().join("verifier"));
    let r = record(t.path(), Some(&trainer_key), &[]);
    let results = t.path().join("results");
    let id = "5e1f0c2a9b7d4e83";
    let mut reports = Vec::new();
    for shard in ["0/2", "1/2"] {
        let v: VerifyReport = replay_json(
            &[
                "verify",
                s(&r),
                "--all",
                "--shard",
                shard,
                "--results",
                s(&results),
                "--id",
                id,
                "--signing-key",
                s(&verifier),
            ],
            0,
        );
        reports.push(v);
    }
    let collect = |exit: i32| -> CollectReport {
        replay_json(
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
                s(&verifier_pub),
                "--trusted-key",
                s(&trainer_pub),
            ],
            exit,
        )
    };
    assert_eq!(collect(0).header.verdict, Verdict::Verified);

    let key = signature::read_signing_key(&trainer_key).expect("key");
    forge_history(
        &r,
        stored_state(&r, 4),
        |step, state| {
            if step == 6 {
                nudge(state, "classifier.weight", 0, 0.01);
            }
            step == 6
        },
        Some(key),
    );
    assert_eq!(
        check(&r, &["--trusted-key", s(&trainer_pub)], 0)
            .header
            .verdict,
        Verdict::Ok
    );
    let c = collect(2);
    assert_eq!(
        c.header.verdict,
        Verdict::Tampered,
        "{:?}",
        c.header.problems
    );
    assert!(
        c.header.problems.iter().any(|p| p.kind == Verdict::Tampered
            && p.artefact.ends_with("shard-1-of-2.json")
            && p.detail.contains("segment 2")
            && p.detail.contains("rewritten")),
        "{:?}",
        c.header.problems
    );
    // What binds them: each report names the ledger it verified and each range's head.
    for v in &reports {
        assert_eq!(v.ledger_step, 12);
        assert!(v.ranges.iter().all(|x| x.head.is_some()), "{:?}", v.ranges);
    }
}

/// Class 4: exports are checked as `model_signing` checks them. Three changes to a signed
/// export that leave every top-level file as signed: a file in a subdirectory, a symbolic
/// link, and the model file renamed. `model_signing verify` refuses each; so does `check`.
#[test]
fn exports_are_judged_file_by_file() {
    let t = tempfile::tempdir().expect("tmp");
    let keys = keygen(&t.path().join("keys"), "ed25519");
    keygen(&keys, "p256");
    let model_pub = keys.join("model-signing-key.pub.pem");
    let export = t.path().join("export");
    let r = record(
        t.path(),
        Some(&keys.join("signing-key.pem")),
        &[
            "--model-signing-key",
            s(&keys.join("model-signing-key.pem")),
            "--export",
            s(&export),
        ],
    );
    let trusted = keys.join("signing-key.pub");
    let check_export = |dir: &Path, exit: i32| -> CheckReport {
        check(
            &r,
            &[
                "--export",
                s(dir),
                "--model-key",
                s(&model_pub),
                "--trusted-key",
                s(&trusted),
            ],
            exit,
        )
    };
    let model_signing = |dir: &Path| -> bool {
        std::process::Command::new(workspace().join(".venv/bin/model_signing"))
            .args(["verify", "key", s(dir), "--signature"])
            .arg(dir.join("model.sig"))
            .arg("--public_key")
            .arg(&model_pub)
            .output()
            .expect("model_signing")
            .status
            .success()
    };
    assert!(model_signing(&export));
    assert_eq!(check_export(&export, 0).header.verdict, Verdict::Ok);
    let variant = |name: &str, change: &dyn Fn(&Path)| -> PathBuf {
        let dir = t.path().join(name);
        run_store::testing::copy_dir(&export, &dir).expect("copy");
        change(&dir);
        dir
    };
    let bundle_verdict = |c: &CheckReport| {
        c.attestations
            .iter()
            .find(|a| a.artefact.ends_with("model.sig"))
            .map(|a| a.verdict)
    };

    let nested = variant("nested", &|d| {
        std::fs::create_dir_all(d.join("extra")).expect("dir");
        std::fs::write(d.join("extra/notes.bin"), b"unsigned").expect("write");
    });
    assert!(!model_signing(&nested));
    let c = check_export(&nested, 2);
    assert_eq!(
        c.header.verdict,
        Verdict::Tampered,
        "{:?}",
        c.header.problems
    );
    assert_problem(&c, Verdict::Tampered, "extra/notes.bin is not stated");
    assert_eq!(bundle_verdict(&c), Some(Verdict::BadSignature));
    assert_problem(&c, Verdict::BadSignature, "extra/notes.bin is not signed");

    let linked = variant("linked", &|d| {
        std::os::unix::fs::symlink("model.safetensors", d.join("weights.safetensors")).expect("ln");
    });
    assert!(!model_signing(&linked));
    let c = check_export(&linked, 2);
    assert_eq!(
        c.header.verdict,
        Verdict::Corrupt,
        "{:?}",
        c.header.problems
    );
    assert!(
        c.header.problems.iter().any(|p| p.kind == Verdict::Corrupt
            && p.artefact.ends_with("weights.safetensors")
            && p.detail.contains("symbolic link")),
        "{:?}",
        c.header.problems
    );

    let renamed = variant("renamed", &|d| {
        std::fs::rename(d.join("model.safetensors"), d.join("model.bin")).expect("rename");
    });
    assert!(!model_signing(&renamed));
    let c = check_export(&renamed, 2);
    assert_eq!(
        bundle_verdict(&c),
        Some(Verdict::BadSignature),
        "{:?}",
        c.attestations
    );
    assert_problem(&c, Verdict::BadSignature, "model.safetensors is missing");
}

/// Class 8: `investigate` loads the run once, and everything it signs comes from that load:
/// the manifest and the dataset are read one time each (counted by `strace`), and the signed
/// findings name the ledger head of the report beside them.
#[test]
fn investigate_reads_the_run_once() {
    let t = tempfile::tempdir().expect("tmp");
    let (key, _) = ed25519(&t.path().join("investigator"));
    let r = record(t.path(), None, &[]);
    // A word of the first training row, and the rows themselves as the probe.
    let data = std::fs::read_to_string(r.join(layout::DATASET_DATA)).expect("data");
    let first: serde_json::Value =
        serde_json::from_str(data.lines().next().expect("a row")).expect("row");
    let word = first["text"]
        .as_str()
        .and_then(|t| t.split_whitespace().max_by_key(|w| w.len()))
        .expect("a word")
        .to_string();
    let probe = t.path().join("probe.jsonl");
    std::fs::write(&probe, data.lines().take(8).collect::<Vec<_>>().join("\n")).expect("probe");
    let out = t.path().join("investigation");
    let trace = t.path().join("trace");
    let traced = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=open,openat", "-o", s(&trace)])
        .arg(e2e_tests::binary("replay"))
        .args([
            "investigate",
            s(&r),
            "--trigger",
            &word,
            "--target",
            "1",
            "--probe",
            s(&probe),
            "--out",
            s(&out),
            "--signing-key",
            s(&key),
            "--json",
            "--quiet",
        ])
        .output()
        .expect("strace (scripts/setup-test-env.sh installs it)");
    assert!(
        matches!(traced.status.code(), Some(0 | 4)),
        "{}",
        String::from_utf8_lossy(&traced.stderr)
    );
    let report: replay::commands::investigate::InvestigateReport =
        serde_json::from_slice(&traced.stdout).expect("report");
    assert!(!report.suspects.is_empty(), "{word:?} is in a training row");
    let trace = std::fs::read_to_string(&trace).expect("trace");
    for object in [
        layout::MANIFEST,
        layout::DATASET_DATA,
        layout::DATASET_MANIFEST,
    ] {
        let path = r.join(object);
        let opened = trace
            .lines()
            .filter(|l| l.contains(&format!("\"{}\"", path.display())) && !l.contains("ENOENT"))
            .count();
        assert_eq!(opened, 1, "{object} opened {opened} times");
    }
    let statement = out.join("investigation.intoto.json");
    let findings = statement_of(&statement);
    assert_eq!(
        findings.predicate["ledgerHead"],
        serde_json::json!(report.ledger_head)
    );

    // The findings bind the report's files: `check` re-hashes them beside the statement.
    let key_pub = t.path().join("investigator/signing-key.pub");
    let judge = |exit: i32| -> CheckReport {
        check(
            &r,
            &[
                "--attestation",
                s(&statement),
                "--verifier-key",
                s(&key_pub),
            ],
            exit,
        )
    };
    let c = judge(0);
    let stated = c.attestations[0].stated.as_ref().expect("stated");
    assert_eq!(
        (stated.by.as_str(), stated.explained),
        ("investigate", report.explained)
    );
    let page = out.join("report.md");
    let text = std::fs::read_to_string(&page).expect("report");
    std::fs::write(&page, text.replace("Finding", "No finding")).expect("edit");
    let c = judge(2);
    assert_eq!(
        c.header.verdict,
        Verdict::Tampered,
        "{:?}",
        c.header.problems
    );
    assert_problem(&c, Verdict::Tampered, "report.md");
    std::fs::write(&page, text).expect("restore");
    std::fs::remove_file(out.join("timeline.svg")).expect("rm");
    let c = judge(2);
    assert_eq!(
        c.header.verdict,
        Verdict::Missing,
        "{:?}",
        c.header.problems
    );
    assert_problem(&c, Verdict::Missing, "timeline.svg");
}
