//! The storage layer against a real S3-compatible server (moto) on 127.0.0.1.

use std::sync::{Arc, Barrier};

use e2e_tests::Moto;
use snapshot_format::{Error, PutOutcome, Store};

fn open(moto: &Moto, url: &str) -> Store {
    let owned = moto.options();
    let options: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Store::open_with_options(url, &options, true).expect("open s3 store")
}

#[test]
fn s3_store_honours_write_once_and_reports_missing_objects() {
    let moto = Moto::start();
    moto.create_bucket("runs");
    let store = open(&moto, "s3://runs/team/run-1");
    store
        .probe_write_once()
        .expect("moto honours conditional puts");

    store
        .put_new("manifest.json", b"{}".to_vec())
        .expect("create");
    let e = store
        .put_new("manifest.json", b"{\"x\":1}".to_vec())
        .expect_err("second create");
    assert!(matches!(e, Error::ObjectExists { .. }), "{e}");
    assert_eq!(
        store
            .put_once("manifest.json", b"{}".to_vec())
            .expect("identical"),
        PutOutcome::AlreadyPresent
    );
    assert!(matches!(
        store.put_once("manifest.json", b"[]".to_vec()),
        Err(Error::ObjectConflict { .. })
    ));
    assert_eq!(store.get("manifest.json").expect("get"), b"{}");

    let e = store
        .get("checkpoints/step-000000000050.snap")
        .expect_err("missing");
    assert!(
        matches!(&e, Error::ObjectMissing { key, .. } if key == "checkpoints/step-000000000050.snap"),
        "{e}"
    );

    let listed: Vec<String> = store
        .list("")
        .expect("list")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        listed,
        ["manifest.json"],
        "keys are relative to the run root; the probe is gone"
    );
}

#[test]
fn s3_concurrent_creates_have_exactly_one_winner() {
    let moto = Moto::start();
    moto.create_bucket("race");
    let store = open(&moto, "s3://race/run");
    let barrier = Arc::new(Barrier::new(16));
    let results: Vec<Result<(), Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16u8)
            .map(|i| {
                let store = store.clone();
                let barrier = barrier.clone();
                s.spawn(move || {
                    barrier.wait();
                    store.put_new("ledger/segment-000001.seg", vec![i; 4096])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one create may succeed: {results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(Error::ObjectExists { .. }))),
        "{results:?}"
    );
    assert_eq!(
        store.get("ledger/segment-000001.seg").expect("get"),
        vec![winners[0] as u8; 4096]
    );
}

#[test]
fn s3_missing_bucket_is_a_clear_error() {
    let moto = Moto::start();
    let store = open(&moto, "s3://no-such-bucket/run");
    let e = store.get("manifest.json").expect_err("no bucket");
    assert!(e.to_string().contains("manifest.json"), "{e}");
}
