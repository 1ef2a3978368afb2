//! The storage contract on the local file system, in memory, and behind a store that silently
//! overwrites (which the start-up probe must refuse). S3 is exercised against a real server in
//! the workspace's end-to-end tests (`tests/tests/s3.rs`).

use std::sync::{Arc, Barrier};

use snapshot_format::testing::OverwritingStore;
use snapshot_format::{Error, PutOutcome, Store};

fn local() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::create(dir.path().to_str().expect("utf-8 path")).expect("open");
    (dir, store)
}

/// Runs the contract every writable store must satisfy.
fn contract(store: &Store) {
    store.probe_write_once().expect("honours write-once");
    assert!(
        store.list(".write-once-probe").expect("list").is_empty(),
        "probe cleans up"
    );

    store.put_new("a/b.bin", b"one".to_vec()).expect("create");
    let e = store
        .put_new("a/b.bin", b"two".to_vec())
        .expect_err("second create");
    assert!(
        matches!(&e, Error::ObjectExists { key, .. } if key == "a/b.bin"),
        "{e}"
    );
    assert_eq!(store.get("a/b.bin").expect("get"), b"one");

    assert_eq!(
        store.put_once("a/b.bin", b"one".to_vec()).expect("same"),
        PutOutcome::AlreadyPresent
    );
    let e = store
        .put_once("a/b.bin", b"other".to_vec())
        .expect_err("conflict");
    assert!(
        matches!(&e, Error::ObjectConflict { key, .. } if key == "a/b.bin"),
        "{e}"
    );
    assert_eq!(
        store.get("a/b.bin").expect("get"),
        b"one",
        "conflict leaves the object alone"
    );
    assert_eq!(
        store.put_once("a/c.bin", b"new".to_vec()).expect("new"),
        PutOutcome::Created
    );

    let e = store.get("missing/x.snap").expect_err("missing");
    assert!(
        matches!(&e, Error::ObjectMissing { key, .. } if key == "missing/x.snap"),
        "{e}"
    );
    assert!(e.to_string().contains("missing/x.snap"));
    assert_eq!(store.get_opt("missing/x.snap").expect("opt"), None);
    assert!(store.exists("a/b.bin").expect("head"));
    assert!(!store.exists("a/zzz").expect("head"));

    let listed: Vec<String> = store
        .list("a")
        .expect("list")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(listed, ["a/b.bin", "a/c.bin"]);
}

#[test]
fn local_store_honours_the_contract() {
    let (_dir, store) = local();
    contract(&store);
}

#[test]
fn memory_store_honours_the_contract_and_is_shared_by_name() {
    let store = Store::create("memory://contract/run-1").expect("open");
    contract(&store);
    let again = Store::open("memory://contract/run-1").expect("reopen");
    assert_eq!(again.get("a/b.bin").expect("shared"), b"one");
    let other = Store::open("memory://contract/run-2").expect("other prefix");
    assert!(other.get("a/b.bin").is_err());
}

#[test]
fn concurrent_local_creates_have_exactly_one_winner() {
    let (_dir, store) = local();
    let barrier = Arc::new(Barrier::new(16));
    let results: Vec<Result<(), Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16u8)
            .map(|i| {
                let store = store.clone();
                let barrier = barrier.clone();
                s.spawn(move || {
                    barrier.wait();
                    store.put_new("race.bin", vec![i; 1024])
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
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        assert!(
            matches!(r, Ok(()) | Err(Error::ObjectExists { .. })),
            "{r:?}"
        );
    }
    assert_eq!(
        store.get("race.bin").expect("get"),
        vec![winners[0] as u8; 1024]
    );
}

#[test]
fn rejects_unknown_scheme_and_missing_directory() {
    assert!(matches!(
        Store::open("ftp://host/run"),
        Err(Error::InvalidLocation { .. })
    ));
    assert!(matches!(
        Store::open("/definitely/not/a/run/dir"),
        Err(Error::InvalidLocation { .. })
    ));
    assert!(matches!(
        Store::open("memory://x/../y"),
        Err(Error::InvalidLocation { .. })
    ));
}

#[test]
fn probe_refuses_a_store_that_overwrites() {
    let store = Store::from_object_store(
        Arc::new(OverwritingStore::new()),
        "runs/r1",
        "overwriting://",
    )
    .expect("wrap");
    let e = store.probe_write_once().expect_err("must refuse");
    assert!(matches!(e, Error::WriteOnceNotHonoured { .. }), "{e}");
    assert!(e.to_string().contains("refusing"));
}
