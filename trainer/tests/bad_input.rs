//! Bad input is refused before training starts, with an error that names the file, line, key
//! or object, and leaves no run behind.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use run_store::Store;
use run_store::testing::OverwritingStore;
use snapshot_format::layout;
use trainer::config::RunConfig;
use trainer::fixtures::{self, FixtureOptions};
use trainer::run::{self, RunOptions};

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("start trainer")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn fixture(dir: &Path) -> std::path::PathBuf {
    fixtures::write_tiny_bert(dir, &FixtureOptions::default()).expect("fixture")
}

fn assert_nothing_written(out: &Path) {
    assert!(
        !out.join(layout::MANIFEST).exists(),
        "no run may be recorded"
    );
    assert!(
        !out.exists() || std::fs::read_dir(out).expect("dir").next().is_none(),
        "output left with objects"
    );
}

/// `trainer run CONFIG --out OUT --quiet EXTRA…`, which must exit with `code` and leave nothing
/// in `out`; returns its standard error.
fn refused(cfg: &Path, out: &Path, extra: &[&str], code: i32) -> String {
    let mut args = vec!["run", s(cfg), "--out", s(out), "--quiet"];
    args.extend_from_slice(extra);
    let o = trainer(&args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert_nothing_written(out);
    err
}

#[test]
fn unknown_and_missing_config_keys_name_the_file_and_key() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixture(t.path());
    let text = std::fs::read_to_string(&cfg).expect("read");
    for (broken, needle) in [
        (
            text.replace("batch_size = 4", "batch_sise = 4"),
            "batch_sise",
        ),
        (text.replace("steps = 12\n", ""), "steps"),
        (text.replace("lr = 0.001", "lr = \"fast\""), "lr"),
        (text.replace("max_len = 12", "max_len = 99"), "data.max_len"),
    ] {
        std::fs::write(&cfg, &broken).expect("write");
        let err = refused(&cfg, &t.path().join("out"), &[], 3);
        assert!(err.contains("config.toml"), "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn base_model_that_does_not_match_its_pin_is_refused() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixture(t.path());
    let base = t.path().join("base.safetensors");
    let mut bytes = std::fs::read(&base).expect("base");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // one bit of one weight
    std::fs::write(&base, bytes).expect("write");
    let err = refused(&cfg, &t.path().join("out"), &[], 2);
    assert!(err.contains("base.safetensors"), "{err}");
    assert!(err.contains("does not match the pinned"), "{err}");
    // `trainer hash` prints the pin of the file as it now is; pinning that accepts it.
    let out = trainer(&["hash", s(&base)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let (pin, path) = printed.trim_end().split_once("  ").expect("pin  path");
    assert_eq!(path, s(&base));
    let config = std::fs::read_to_string(&cfg).expect("config");
    let old = config
        .lines()
        .find_map(|l| l.strip_prefix("blake3 = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the fixture pins its base");
    assert_ne!(pin, old);
    std::fs::write(&cfg, config.replace(old, pin)).expect("repin");
    let run = trainer(&["run", s(&cfg), "--out", s(&t.path().join("out")), "--quiet"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let missing = trainer(&["hash", s(&t.path().join("absent.safetensors"))]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(stderr(&missing).contains("absent.safetensors"));
}

#[test]
fn dataset_row_that_does_not_parse_names_its_line() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixture(t.path());
    let data = t.path().join("data.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(&data)
        .expect("data")
        .lines()
        .map(String::from)
        .collect();
    lines[2] = "{\"text\": \"no label\"}".into();
    std::fs::write(&data, lines.join("\n")).expect("write");
    let err = refused(&cfg, &t.path().join("out"), &[], 3);
    assert!(err.contains("data.jsonl:3:"), "{err}");
    assert!(err.contains("label"), "{err}");
}

#[test]
fn output_that_already_holds_a_run_is_refused_and_left_alone() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixture(t.path());
    let out = t.path().join("out");
    let first = trainer(&["run", s(&cfg), "--out", s(&out), "--quiet"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let manifest = std::fs::read(out.join(layout::MANIFEST)).expect("manifest");
    let o = trainer(&["run", s(&cfg), "--out", s(&out), "--quiet"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("already holds a run"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(out.join(layout::MANIFEST)).expect("manifest"),
        manifest
    );
}

#[test]
fn store_without_write_once_is_refused_before_training() {
    let t = tempfile::tempdir().expect("tmp");
    let config = RunConfig::from_file(&fixture(t.path())).expect("config");
    let store = Store::from_object_store(
        Arc::new(OverwritingStore::new()),
        "run",
        "overwriting://bucket",
    )
    .expect("store");
    let e = run::start_in(&config, store.clone(), &RunOptions::default()).expect_err("refused");
    assert!(e.to_string().contains("does not honour write-once"), "{e}");
    assert!(store.list("").expect("list").is_empty(), "nothing written");
}

#[test]
fn a_part_size_below_the_minimum_is_refused_before_anything_is_written() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixture(t.path());
    let out = t.path().join("run");
    for bad in ["100", "lots"] {
        let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(["run", s(&cfg), "--out", s(&out), "--quiet"])
            .env(run_store::storage::MAX_PUT_ENV, bad)
            .output()
            .expect("start trainer");
        let err = stderr(&o);
        assert!(!o.status.success(), "{bad}: {err}");
        assert!(
            err.contains(run_store::storage::MAX_PUT_ENV) && err.contains("4096"),
            "{bad}: {err}"
        );
        assert!(
            !out.exists(),
            "{bad}: the output directory is not even created"
        );
    }
}

#[test]
fn unknown_or_absent_devices_are_clear_errors() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixture(t.path());
    let out = t.path().join("out");
    let err = refused(&cfg, &out, &["--device", "tpu"], 3);
    assert!(err.contains("expected cpu, cuda or cuda:N"), "{err}");
    if !cfg!(feature = "cuda") {
        let err = refused(&cfg, &out, &["--device", "cuda:0"], 3);
        assert!(err.contains("--features cuda"), "{err}");
    }
    let o = trainer(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(3), "usage errors exit 3");
}
