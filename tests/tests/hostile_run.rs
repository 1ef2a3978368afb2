//! A run directory arranged against its reader: a checkpoint under another step's key, objects
//! far larger than their kind allows (sparse files, a part index that names one part a million
//! times), and links and FIFOs where objects should be. Through the real `replay`, each is a
//! finding naming the object, with its exact verdict and exit status: never a crash, a hang,
//! or memory beyond replay's bound (every command runs here under a 4 GB address-space limit).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{assert_problem, binary, s, train};
use replay::Verdict;
use replay::commands::check::CheckReport;
use replay::commands::rollback::RollbackReport;
use replay::commands::verify::VerifyReport;
use snapshot_format::layout;
use snapshot_format::parts::{MAX_PARTS, Part, PartIndex, part_hash, part_key};
use trainer::fixtures::{self, FixtureOptions};

/// A tiny BERT fixture run (12 steps, checkpoints 0, 4, 8, 12; each checkpoint after 0 a delta
/// of the one before).
fn record(dir: &Path) -> PathBuf {
    let cfg =
        fixtures::write_tiny_bert(&dir.join("in"), &FixtureOptions::default()).expect("fixture");
    let out = dir.join("run");
    train(&cfg, &out, &["--run-id", "victim"]);
    out
}

/// A copy of the run at `run` in `dir`, for one attack.
fn copy_of(run: &Path, dir: &Path) -> PathBuf {
    run_store::testing::copy_dir(run, dir).expect("copy");
    dir.to_path_buf()
}

/// `replay ARGS… --json --quiet` under a 4 GB address-space limit, killed if it runs for more
/// than a minute; its exit status (`None`: killed by a signal or by the minute) and its report.
fn replay<T: serde::de::DeserializeOwned>(args: &[&str]) -> (Option<i32>, Option<T>, String) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4000000 && exec \"$0\" \"$@\" --json --quiet")
        .arg(binary("replay"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("replay");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let mut err = String::new();
    child.stdout.take().map(|mut o| o.read_to_string(&mut out));
    child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    let code = status.and_then(|s| s.code());
    (
        code,
        serde_json::from_str(&out).ok(),
        format!("{out}\n{err}"),
    )
}

/// `replay check RUN`, which must exit with `exit`.
fn check(r: &Path, exit: i32) -> CheckReport {
    let (code, report, out) = replay::<CheckReport>(&["check", s(r)]);
    assert_eq!(code, Some(exit), "replay check: {out}");
    report.expect("report")
}

/// Class 5: checkpoint 12 (a delta of checkpoint 8) copied over checkpoint 8. Checkpoint 12
/// names 8 as its reference, and what is stored at 8's key names 8 again: a reader that
/// compared a reference with the object's own claim rather than the key it read it from would
/// follow the chain forever. Every command that reads checkpoints finds it `tampered` instead.
#[test]
fn a_checkpoint_under_another_steps_key_is_tampered() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path());
    let (eight, twelve) = (layout::checkpoint(8), layout::checkpoint(12));
    std::fs::copy(r.join(&twelve), r.join(&eight)).expect("copy");

    let c = check(&r, 2);
    assert_eq!(
        c.header.verdict,
        Verdict::Tampered,
        "{:?}",
        c.header.problems
    );
    assert_problem(
        &c.header.problems,
        &eight,
        Verdict::Tampered,
        "holds the checkpoint of step 12",
    );
    assert_problem(
        &c.header.problems,
        &twelve,
        Verdict::Tampered,
        "cannot be reconstructed",
    );

    let (code, v, out) = replay::<VerifyReport>(&["verify", s(&r), "--all"]);
    assert_eq!(code, Some(2), "{out}");
    let v = v.expect("report");
    assert_eq!(v.header.verdict, Verdict::Tampered);
    assert_eq!(v.ranges[0].verdict, Verdict::Verified, "segment 1 is whole");
    assert_eq!(
        v.ranges[2].verdict,
        Verdict::Tampered,
        "segment 3 starts at 8"
    );

    let out_dir = t.path().join("rb");
    let (code, rb, out) =
        replay::<RollbackReport>(&["rollback", s(&r), "--step", "12", "--out", s(&out_dir)]);
    assert_eq!(code, Some(2), "{out}");
    assert_eq!(rb.expect("report").header.verdict, Verdict::Tampered);
    assert!(!out_dir.exists(), "nothing is written");
}

/// A sparse file of `len` bytes at `key` (nothing is stored: reading it would produce zeros).
fn sparse(r: &Path, key: &str, len: u64) {
    std::fs::File::create(r.join(key))
        .and_then(|f| f.set_len(len))
        .expect("sparse file");
}

/// Class 6: objects far larger than their kind allows are refused from their size, before a
/// byte of them is read: a 1 TiB manifest, segment and dataset, and a segment stored as a part
/// index that names one 64 KiB part a million times (64 GiB).
#[test]
fn oversized_and_amplified_objects_are_refused_before_they_are_read() {
    let t = tempfile::tempdir().expect("tmp");
    let honest = record(t.path());
    let copy = |name: &str| copy_of(&honest, &t.path().join(name));

    let r = copy("manifest");
    sparse(&r, layout::MANIFEST, 1 << 40);
    let c = check(&r, 2);
    assert_eq!(
        c.header.verdict,
        Verdict::Corrupt,
        "{:?}",
        c.header.problems
    );
    assert_problem(
        &c.header.problems,
        layout::MANIFEST,
        Verdict::Corrupt,
        "1099511627776 bytes",
    );

    let r = copy("segment");
    sparse(&r, &layout::segment(2), 1 << 40);
    let c = check(&r, 2);
    assert_problem(
        &c.header.problems,
        &layout::segment(2),
        Verdict::Corrupt,
        "above the",
    );

    let r = copy("dataset");
    sparse(&r, layout::DATASET_DATA, 1 << 40);
    let c = check(&r, 2);
    assert_problem(
        &c.header.problems,
        layout::DATASET_DATA,
        Verdict::Corrupt,
        "1099511627776 bytes",
    );

    let r = copy("amplified");
    let key = layout::segment(2);
    let part = vec![0x5au8; 64 << 10];
    let hash = part_hash([part.as_slice()]);
    let path = r.join(part_key(&key, &hash));
    std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
    std::fs::write(&path, &part).expect("part");
    let index = PartIndex {
        len: part.len() as u64 * MAX_PARTS as u64,
        parts: vec![
            Part {
                len: part.len() as u64,
                hash,
            };
            MAX_PARTS
        ],
    };
    std::fs::write(r.join(&key), index.encode()).expect("index");
    let c = check(&r, 2);
    assert_problem(
        &c.header.problems,
        &key,
        Verdict::Corrupt,
        "68719476736 bytes",
    );
    let (code, v, out) = replay::<VerifyReport>(&["verify", s(&r), "--segment", "1"]);
    assert_eq!(code, Some(2), "{out}");
    assert_eq!(v.expect("report").header.verdict, Verdict::Corrupt);
}

/// Class 7: a FIFO where a checkpoint or the manifest should be never blocks a reader, and a
/// link (to a device, or out of the run) is never followed: each is `corrupt`, named.
#[test]
fn links_and_fifos_in_the_run_are_refused_by_name() {
    let t = tempfile::tempdir().expect("tmp");
    let honest = record(t.path());
    let copy = |name: &str| copy_of(&honest, &t.path().join(name));
    let mkfifo = |p: &Path| {
        std::fs::remove_file(p).expect("rm");
        let ok = Command::new("mkfifo").arg(p).status().expect("mkfifo");
        assert!(ok.success());
    };

    let r = copy("fifo-checkpoint");
    mkfifo(&r.join(layout::checkpoint(4)));
    let c = check(&r, 2);
    assert_eq!(
        c.header.verdict,
        Verdict::Corrupt,
        "{:?}",
        c.header.problems
    );
    assert_problem(
        &c.header.problems,
        &layout::checkpoint(4),
        Verdict::Corrupt,
        "a FIFO",
    );

    let r = copy("fifo-manifest");
    mkfifo(&r.join(layout::MANIFEST));
    let c = check(&r, 2);
    assert_eq!(
        c.header.verdict,
        Verdict::Corrupt,
        "{:?}",
        c.header.problems
    );
    assert_problem(
        &c.header.problems,
        layout::MANIFEST,
        Verdict::Corrupt,
        "a FIFO",
    );

    let r = copy("links");
    std::fs::remove_file(r.join(layout::DATASET_DATA)).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", r.join(layout::DATASET_DATA)).expect("ln");
    let outside = t.path().join("outside.json");
    std::fs::copy(r.join(layout::COMPLETE), &outside).expect("copy");
    std::fs::remove_file(r.join(layout::COMPLETE)).expect("rm");
    std::os::unix::fs::symlink(&outside, r.join(layout::COMPLETE)).expect("ln");
    let c = check(&r, 2);
    assert_problem(
        &c.header.problems,
        layout::DATASET_DATA,
        Verdict::Corrupt,
        "a symbolic link",
    );
    assert_problem(
        &c.header.problems,
        layout::COMPLETE,
        Verdict::Corrupt,
        "a symbolic link",
    );
}
