//! Bad input is refused before training starts, with an error that names the file, line, key
//! or object, and leaves no run behind.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use snapshot_format::testing::OverwritingStore;
use snapshot_format::{Store, layout};
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
        let out = t.path().join("out");
        let o = trainer(&["run", s(&cfg), "--out", s(&out), "--quiet"]);
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        assert!(stderr(&o).contains("config.toml"), "{}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
        assert_nothing_written(&out);
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
    let out = t.path().join("out");
    let o = trainer(&["run", s(&cfg), "--out", s(&out), "--quiet"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("base.safetensors"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not match the pinned"),
        "{}",
        stderr(&o)
    );
    assert_nothing_written(&out);
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
    let out = t.path().join("out");
    let o = trainer(&["run", s(&cfg), "--out", s(&out), "--quiet"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("data.jsonl:3:"), "{}", stderr(&o));
    assert!(stderr(&o).contains("label"), "{}", stderr(&o));
    assert_nothing_written(&out);
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
fn unknown_or_absent_devices_are_clear_errors() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixture(t.path());
    let out = t.path().join("out");
    let o = trainer(&[
        "run",
        s(&cfg),
        "--out",
        s(&out),
        "--device",
        "tpu",
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("expected cpu, cuda or cuda:N"),
        "{}",
        stderr(&o)
    );
    if !cfg!(feature = "cuda") {
        let o = trainer(&[
            "run",
            s(&cfg),
            "--out",
            s(&out),
            "--device",
            "cuda:0",
            "--quiet",
        ]);
        assert_eq!(o.status.code(), Some(3));
        assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
    }
    assert_nothing_written(&out);
    let o = trainer(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(3), "usage errors exit 3");
}
