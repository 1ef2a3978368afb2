//! Determinism of recorded runs, each property checked by comparing independent executions of
//! the real `trainer` binary in separate processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use run_store::testing::{assert_same_run, completion, is_staging, manifest, objects, records};
use snapshot_format::layout;
use snapshot_format::ledger::{Segment, StepRecord};
use trainer::config::BertConfig;
use trainer::fixtures::{self, FixtureOptions};

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("start trainer")
}

fn ok(args: &[&str]) {
    let out = trainer(args);
    assert!(
        out.status.success(),
        "trainer {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn train(config: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "run",
        s(config),
        "--out",
        s(out),
        "--quiet",
        "--run-id",
        "test-run",
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

fn tiny(dir: &Path, o: FixtureOptions) -> PathBuf {
    fixtures::write_tiny_bert(dir, &o).expect("fixture")
}

#[test]
fn two_runs_of_one_config_are_bit_identical() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = tiny(&t.path().join("in"), FixtureOptions::default());
    train(&cfg, &t.path().join("a"), &[]);
    train(&cfg, &t.path().join("b"), &[]);
    assert_same_run(&t.path().join("a"), &t.path().join("b"));
    // Same run id, same inputs: the checkpoint files themselves are identical too.
    assert_eq!(
        objects(&t.path().join("a/checkpoints")),
        objects(&t.path().join("b/checkpoints"))
    );
}

/// `data.padding = "longest"` on text rows (the BERT fixture at `max_len` 16, many rows shorter):
/// the same bits in two processes on other thread counts, not the bits of the run padded to
/// `max_len`, and step 1's loss the same to rounding (the attention masks the left-out
/// positions in both).
#[test]
fn text_batches_cut_to_their_longest_row_are_a_deterministic_run_of_their_own() {
    let t = tempfile::tempdir().expect("tmp");
    let full = tiny(
        &t.path().join("in"),
        FixtureOptions {
            max_len: 16,
            ..FixtureOptions::default()
        },
    );
    let longest = fixtures::padded_to_longest(&full).expect("config");
    let (a, b, f) = (t.path().join("a"), t.path().join("b"), t.path().join("f"));
    train(&longest, &a, &["--threads", "2"]);
    train(&longest, &b, &["--threads", "1"]);
    assert_same_run(&a, &b);
    train(&full, &f, &[]);
    assert_ne!(completion(&a).ledger_head, completion(&f).ledger_head);
    let (x, y) = (records(&a)[0].loss_bits, records(&f)[0].loss_bits);
    let (x, y) = (f64::from(f32::from_bits(x)), f64::from(f32::from_bits(y)));
    assert!(
        (x - y).abs() <= 1e-5 * y.abs(),
        "step 1's loss: {x} cut, {y} padded"
    );
}

#[test]
fn thread_count_does_not_change_bits() {
    // Large enough for the CPU backend's parallel paths (matrix multiplies of 1024 x 128 by
    // 128 x 512, an embedding of 262,144 elements).
    let t = tempfile::tempdir().expect("tmp");
    let bert = BertConfig {
        vocab_size: 2048,
        hidden_size: 128,
        num_layers: 2,
        num_heads: 4,
        intermediate_size: 512,
        max_position: 32,
        ..fixtures::tiny_bert()
    };
    let cfg = tiny(
        &t.path().join("in"),
        FixtureOptions {
            bert: Some(bert),
            max_len: 32,
            batch_size: 32,
            examples: 96,
            steps: 4,
            checkpoint_interval: 2,
            ..Default::default()
        },
    );
    train(&cfg, &t.path().join("one"), &["--threads", "1"]);
    train(&cfg, &t.path().join("two"), &["--threads", "2"]);
    assert_same_run(&t.path().join("one"), &t.path().join("two"));
    let m = manifest(&t.path().join("one"));
    assert_eq!(m.environment.threads, 1);
    assert_eq!(manifest(&t.path().join("two")).environment.threads, 2);
}

/// Copy of `run` truncated to its state at checkpoint `upto` (or before any checkpoint).
fn truncated_copy(run: &Path, to: &Path, upto: Option<u64>, interval: u64) {
    for sub in ["", "dataset", "base", "checkpoints", "ledger"] {
        std::fs::create_dir_all(to.join(sub)).expect("mkdir");
    }
    for f in [
        layout::MANIFEST,
        layout::DATASET_MANIFEST,
        layout::DATASET_DATA,
        layout::BASE_MODEL,
    ] {
        std::fs::copy(run.join(f), to.join(f)).expect("copy");
    }
    let Some(c) = upto else { return };
    for step in (0..=c).filter(|s| s % interval == 0) {
        let k = layout::checkpoint(step);
        std::fs::copy(run.join(&k), to.join(&k)).expect("copy checkpoint");
    }
    for i in 1..=c / interval {
        let k = layout::segment(i);
        std::fs::copy(run.join(&k), to.join(&k)).expect("copy segment");
    }
}

#[test]
fn resume_from_every_checkpoint_matches_the_uninterrupted_run() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = tiny(&t.path().join("in"), FixtureOptions::default()); // 12 steps, checkpoints every 4
    let full = t.path().join("full");
    train(&cfg, &full, &[]);
    for upto in [None, Some(0), Some(4), Some(8)] {
        let dir = t.path().join(format!("from-{upto:?}"));
        truncated_copy(&full, &dir, upto, 4);
        ok(&["resume", s(&dir), "--quiet"]);
        assert_same_run(&full, &dir);
        assert_eq!(
            objects(&full.join("checkpoints")),
            objects(&dir.join("checkpoints")),
            "resumed from {upto:?}: checkpoint bytes"
        );
    }
}

#[test]
fn stopped_run_resumes_to_the_same_bits_and_complete_runs_refuse_to_resume() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = tiny(&t.path().join("in"), FixtureOptions::default());
    let full = t.path().join("full");
    train(&cfg, &full, &[]);
    let part = t.path().join("part");
    train(&cfg, &part, &["--max-steps", "6"]); // steps 5 and 6 are lost: checkpoint 4 is last
    assert!(!part.join(layout::COMPLETE).exists());
    ok(&["resume", s(&part), "--quiet", "--max-steps", "3"]); // to step 7
    ok(&["resume", s(&part), "--quiet"]);
    assert_same_run(&full, &part);
    let out = trainer(&["resume", s(&part), "--quiet"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("complete"));
}

/// Every object under `run` is whole: checkpoints and segments decode.
fn assert_no_partial_objects(run: &Path) {
    for (name, _) in objects(&run.join("checkpoints")) {
        if let Some(step) = layout::parse_checkpoint(&format!("checkpoints/{name}")) {
            run_store::testing::checkpoint(run, step);
        }
    }
    for (name, bytes) in objects(&run.join("ledger")) {
        if name.ends_with(".seg") {
            Segment::decode(&bytes, &name).expect("whole segment");
        }
    }
}

/// Staging files an interrupted write may leave are invisible to the store.
fn assert_staging_files_are_not_objects(run: &Path) {
    let mut staging = Vec::new();
    for sub in ["", "dataset", "base", "checkpoints", "ledger"] {
        for e in std::fs::read_dir(run.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            if is_staging(&name) {
                staging.push(format!("{sub}/{name}"));
            }
        }
    }
    if staging.is_empty() {
        return;
    }
    println!("  staging files left by the kill: {staging:?}");
    let store = run_store::Store::open(s(run)).expect("open store");
    let listed = store.list("").expect("list");
    assert!(
        listed.iter().all(|k| !is_staging(k)),
        "the store lists a staging file: {listed:?}"
    );
}

#[test]
fn sigkill_at_random_moments_then_resume_matches_the_uninterrupted_run() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = tiny(&t.path().join("in"), kill_options());
    kill_and_resume(&cfg, t.path());
}

#[test]
fn a_lora_run_killed_at_random_moments_resumes_to_the_uninterrupted_run() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixtures::write_tiny_llama(&t.path().join("in"), &kill_options()).expect("fixture");
    kill_and_resume(&cfg, t.path());
}

/// Kill the trainer while the background writer is in the middle of storing a checkpoint (its
/// staging file exists), then resume: the checkpoint being written never becomes visible
/// half-written, the ledger never names it, and the resumed run is the uninterrupted one.
#[test]
fn sigkill_during_a_background_checkpoint_write_then_resume_matches_the_uninterrupted_run() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = tiny(&t.path().join("in"), kill_options());
    let full = t.path().join("full");
    train(&cfg, &full, &[]);
    let mut hits = 0;
    for attempt in 0..10 {
        let dir = t.path().join(format!("killed-{attempt}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(["run", s(&cfg), "--out", s(&dir), "--quiet"])
            .args(["--run-id", "test-run"])
            .spawn()
            .expect("spawn");
        // Checkpoint 0 is written before training starts, later ones in the background: aim
        // at a different one each attempt.
        let target = layout::checkpoint(5 * (attempt % 11 + 1));
        let target = target.strip_prefix(layout::CHECKPOINTS).expect("prefix");
        let writing = |dir: &Path| {
            std::fs::read_dir(dir.join("checkpoints"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .find(|n| is_staging(n) && n.starts_with(target))
        };
        let caught = loop {
            if let Some(name) = writing(&dir) {
                let _ = child.kill();
                break Some(name);
            }
            if child.try_wait().expect("wait").is_some() {
                break None;
            }
        };
        child.wait().expect("wait");
        let Some(name) = caught else {
            println!("attempt {attempt}: the run finished before a write was caught");
            continue;
        };
        println!("attempt {attempt}: killed while writing {name}");
        hits += 1;
        assert_no_partial_objects(&dir);
        assert_staging_files_are_not_objects(&dir);
        ok(&["resume", s(&dir), "--quiet"]);
        assert_same_run(&full, &dir);
        if hits == 3 {
            break;
        }
    }
    assert!(hits > 0, "no kill landed during a checkpoint write");
}

fn kill_options() -> FixtureOptions {
    FixtureOptions {
        steps: 60,
        checkpoint_interval: 5,
        ..Default::default()
    }
}

/// Train `cfg` into `t/full`; then five times start it, SIGKILL it after a random part of that
/// duration, check that nothing partial is visible, resume, and compare with the full run.
fn kill_and_resume(cfg: &Path, t: &Path) {
    let full = t.join("full");
    let started = std::time::Instant::now();
    train(cfg, &full, &[]);
    let duration = started.elapsed();
    let seed: u64 = std::env::var("KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("KILL_SEED={seed} (reference run took {duration:?})");
    let mut r = trainer::rng::stream(seed, "kill", 0);
    for trial in 0..5 {
        let dir = t.join(format!("killed-{trial}"));
        let delay = duration.mul_f32(trainer::rng::uniform(&mut r));
        let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args([
                "run",
                s(cfg),
                "--out",
                s(&dir),
                "--quiet",
                "--run-id",
                "test-run",
            ])
            .spawn()
            .expect("spawn");
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL on Unix
        let status = child.wait().expect("wait");
        println!("trial {trial}: killed after {delay:?} ({status})");
        assert_no_partial_objects(&dir);
        assert_staging_files_are_not_objects(&dir);
        if !dir.join(layout::COMPLETE).exists() {
            if dir.join(layout::MANIFEST).exists() {
                ok(&["resume", s(&dir), "--quiet"]);
            } else {
                // Killed before the manifest existed: starting again is the recovery.
                train(cfg, &dir, &[]);
            }
        }
        assert_same_run(&full, &dir);
    }
}

fn first_difference(
    a: &[StepRecord],
    b: &[StepRecord],
    field: fn(&StepRecord) -> Vec<u8>,
) -> Option<u64> {
    a.iter()
        .zip(b)
        .find(|(x, y)| field(x) != field(y))
        .map(|(x, _)| x.step)
}

fn root_of(r: &StepRecord) -> Vec<u8> {
    r.state_root.map(|h| h.0.to_vec()).unwrap_or_default()
}

#[test]
fn a_changed_input_shows_from_the_step_it_first_matters() {
    let t = tempfile::tempdir().expect("tmp");
    let constant_lr = FixtureOptions {
        steps: 16,
        extra: "[schedule]\ndecay = \"constant\"\n".into(),
        ..Default::default()
    };
    let base_cfg = tiny(&t.path().join("base-in"), constant_lr.clone());
    let reference = t.path().join("reference");
    train(&base_cfg, &reference, &[]);
    let ref_records = records(&reference);
    let ref_manifest = manifest(&reference);

    // Seed: the new classifier head is drawn from it, so the state differs from step 0.
    let cfg = tiny(
        &t.path().join("seed-in"),
        FixtureOptions {
            seed: 12,
            ..constant_lr.clone()
        },
    );
    let run = t.path().join("seed");
    train(&cfg, &run, &[]);
    assert_ne!(
        manifest(&run).initial_state_root,
        ref_manifest.initial_state_root
    );
    assert_eq!(
        first_difference(&ref_records, &records(&run), root_of),
        Some(1)
    );

    // Learning rate: step 0 and step 1's loss are unchanged; the update of step 1 differs.
    let cfg = tiny(
        &t.path().join("lr-in"),
        FixtureOptions {
            lr: 0.002,
            ..constant_lr.clone()
        },
    );
    let run = t.path().join("lr");
    train(&cfg, &run, &[]);
    let recs = records(&run);
    assert_eq!(
        manifest(&run).initial_state_root,
        ref_manifest.initial_state_root
    );
    assert_eq!(recs[0].loss_bits, ref_records[0].loss_bits);
    assert_ne!(recs[0].lr_bits, ref_records[0].lr_bits);
    assert_eq!(first_difference(&ref_records, &recs, root_of), Some(1));
    assert!(
        recs.iter()
            .zip(&ref_records)
            .all(|(a, b)| a.state_root != b.state_root)
    );

    // One example: nothing changes until the first step whose batch contains it.
    let first_use = |id: u64| {
        ref_records
            .iter()
            .find(|r| r.example_ids.contains(&id))
            .map(|r| r.step)
    };
    let k = (0..40u64)
        .find(|&id| first_use(id).is_some_and(|s| s >= 3))
        .expect("an example first used at step 3 or later");
    let s_star = first_use(k).expect("used");
    let cfg = tiny(
        &t.path().join("example-in"),
        FixtureOptions {
            modify_example: Some(k as usize),
            ..constant_lr
        },
    );
    let run = t.path().join("example");
    train(&cfg, &run, &[]);
    let recs = records(&run);
    assert_eq!(
        manifest(&run).initial_state_root,
        ref_manifest.initial_state_root
    );
    assert_eq!(
        first_difference(&ref_records, &recs, |r| r.batch_hash.0.to_vec()),
        Some(s_star)
    );
    assert_eq!(first_difference(&ref_records, &recs, root_of), Some(s_star));
    assert_eq!(
        first_difference(&ref_records, &recs, |r| r.loss_bits.to_le_bytes().to_vec()),
        Some(s_star)
    );
    assert!(
        recs.iter()
            .zip(&ref_records)
            .skip(s_star as usize - 1)
            .all(|(a, b)| a.state_root != b.state_root),
        "once the changed example is used, every later state differs"
    );
}

/// Ledger heads and environment class of the golden fixtures (the tiny BERT, the MLP and the
/// tiny Llama with LoRA on a GGUF base),
/// trained by the `trainer` binary run through `prefix` (empty: natively; an emulator and its
/// options otherwise), in `dir`.
fn golden_heads(
    dir: &Path,
    prefix: &[&str],
) -> (String, serde_json::Map<String, serde_json::Value>) {
    let mut heads = serde_json::Map::new();
    let mut class = String::new();
    for (name, cfg) in [
        (
            "tiny-bert",
            fixtures::write_tiny_bert(&dir.join("bert-in"), &FixtureOptions::default()),
        ),
        (
            "mlp",
            fixtures::write_mlp(
                &dir.join("mlp-in"),
                &FixtureOptions {
                    steps: 20,
                    ..Default::default()
                },
            ),
        ),
        (
            "tiny-llama",
            fixtures::write_tiny_llama(&dir.join("llama-in"), &FixtureOptions::default()),
        ),
    ] {
        let cfg = cfg.expect("fixture");
        let out = dir.join(name);
        let (program, rest) = match prefix.split_first() {
            Some((p, rest)) => (PathBuf::from(p), rest.to_vec()),
            None => (PathBuf::from(env!("CARGO_BIN_EXE_trainer")), vec![]),
        };
        let mut args: Vec<&str> = rest;
        if !prefix.is_empty() {
            args.push(env!("CARGO_BIN_EXE_trainer"));
        }
        args.extend([
            "run",
            s(&cfg),
            "--out",
            s(&out),
            "--quiet",
            "--run-id",
            "golden",
        ]);
        let o = Command::new(&program)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        assert!(
            o.status.success(),
            "{} {args:?}: {}",
            program.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        heads.insert(name.into(), completion(&out).ledger_head.to_hex().into());
        class = manifest(&out).environment.class().to_hex();
    }
    (class, heads)
}

/// Ledger heads of fixed fixtures, recorded per environment class in `tests/golden.json`:
/// any change of numerics anywhere in the engine changes them. A class without recorded heads
/// fails the test; `UPDATE_GOLDEN=1` records the current class's heads.
#[test]
fn golden_runs_match_their_recorded_ledger_heads() {
    let t = tempfile::tempdir().expect("tmp");
    let golden_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden.json");
    let (class, heads) = golden_heads(t.path(), &[]);
    let mut golden: serde_json::Value = std::fs::read(&golden_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        golden[&class] = serde_json::Value::Object(heads);
        std::fs::write(
            &golden_path,
            serde_json::to_vec_pretty(&golden).expect("json"),
        )
        .expect("write");
        return;
    }
    let expected = golden.get(&class).unwrap_or_else(|| {
        panic!(
            "no golden heads recorded for environment class {class} (this run's: {heads:?}); \
             a new class needs its heads recorded, with UPDATE_GOLDEN=1, on a machine of it"
        )
    });
    assert_eq!(
        expected,
        &serde_json::Value::Object(heads),
        "ledger heads changed for environment class {class}: the engine's numerics changed"
    );
}

/// Portable numerics: the golden fixtures give the same ledger heads, in the same environment
/// class, on this CPU and on another CPU model (QEMU's `max`: AVX2 and FMA, no AVX-512, other
/// CPUID), each in its own process. On a machine with AVX-512 the native run also exercises
/// the AVX-512 CPU the patches keep at 8 lanes.
#[cfg(target_arch = "x86_64")]
#[test]
fn golden_runs_give_the_same_heads_natively_and_under_emulation() {
    let t = tempfile::tempdir().expect("tmp");
    let qemu = fixtures::qemu_x86_64();
    let native = golden_heads(&t.path().join("native"), &[]);
    let emulated = golden_heads(&t.path().join("emulated"), &[s(&qemu), "-cpu", "max"]);
    assert_eq!(
        native, emulated,
        "(class, heads) natively vs under qemu -cpu max"
    );
}

#[test]
fn a_run_that_lost_its_completion_record_resumes_to_the_same_completion() {
    // A kill between the final checkpoint and `complete.json` leaves every step done: resuming
    // trains nothing and must write the completion record the uninterrupted run wrote.
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixtures::write_tiny_llama(&t.path().join("in"), &FixtureOptions::default())
        .expect("fixture");
    let full = t.path().join("full");
    train(&cfg, &full, &[]);
    let cut = t.path().join("cut");
    run_store::testing::copy_dir(&full, &cut).expect("copy");
    std::fs::remove_file(cut.join(layout::COMPLETE)).expect("remove");
    ok(&["resume", s(&cut), "--quiet"]);
    assert_same_run(&full, &cut);
}

/// A fixture run whose batches of 8 are cut into `parts` micro-batches.
fn micro_batched(dir: &Path, parts: u64) -> PathBuf {
    tiny(
        dir,
        FixtureOptions {
            batch_size: 8,
            micro_batches: parts,
            ..Default::default()
        },
    )
}

/// Micro-batches are the unit of data-parallel work: however many workers compute a step's
/// parts (here the CPU backend's threads, 1 or 2, each part's gradient taken by one worker), the
/// parts' gradients meet in the same tree, so the run is the same bits; an interrupted run resumes
/// with another worker count to the same bits. And the option is real: 4 parts are not 1.
#[test]
fn micro_batches_make_the_bits_independent_of_the_number_of_workers() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = micro_batched(&t.path().join("in"), 4);
    let (one, two) = (t.path().join("one"), t.path().join("two"));
    train(&cfg, &one, &["--threads", "1"]);
    train(&cfg, &two, &["--threads", "2"]);
    assert_same_run(&one, &two);

    let part = t.path().join("part");
    train(&cfg, &part, &["--threads", "2", "--max-steps", "6"]);
    ok(&["resume", s(&part), "--quiet", "--threads", "1"]);
    assert_same_run(&one, &part);

    let whole = micro_batched(&t.path().join("whole-in"), 1);
    let single = t.path().join("single");
    train(&whole, &single, &["--threads", "2"]);
    assert_ne!(
        completion(&one).ledger_head,
        completion(&single).ledger_head,
        "4 parts summed in a tree are not one backward pass over the batch"
    );
    assert_eq!(manifest(&one).spec["run"]["micro_batches"], 4);
    assert!(manifest(&single).spec["run"].get("micro_batches").is_none());
}
