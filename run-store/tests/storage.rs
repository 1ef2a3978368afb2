//! The storage contract on the local file system, in memory, and behind a store that silently
//! overwrites (which the start-up probe must refuse). S3 is exercised against a real server in
//! the workspace's end-to-end tests (`tests/tests/s3.rs`).

use std::sync::Arc;

use run_store::Store;
use run_store::testing::{
    OverwritingStore, assert_one_winner_of_concurrent_creates, assert_parts_contract,
    assert_store_contract,
};
use snapshot_format::Error;
use snapshot_format::parts::MIN_PART_BYTES;

fn local() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::create(dir.path().to_str().expect("utf-8 path")).expect("open");
    (dir, store)
}

#[test]
fn local_store_honours_the_contract() {
    let (_dir, store) = local();
    assert_store_contract(&store);
}

#[test]
fn memory_store_honours_the_contract_and_is_shared_by_name() {
    let store = Store::create("memory://contract/run-1").expect("open");
    assert_store_contract(&store);
    let again = Store::open("memory://contract/run-1").expect("reopen");
    assert_eq!(again.get("a/b.bin").expect("shared"), b"one");
    let other = Store::open("memory://contract/run-2").expect("other prefix");
    assert!(other.get("a/b.bin").is_err());
}

#[test]
fn objects_over_the_single_write_limit_are_stored_in_parts() {
    let max = MIN_PART_BYTES;
    let (_dir, store) = local();
    assert_store_contract(&store.with_max_put_bytes(max));
    let (dir, store) = local();
    let root = dir.path().to_path_buf();
    let tamper = move |key: &str, bytes: Option<&[u8]>| {
        let path = root.join(key);
        match bytes {
            Some(b) => std::fs::write(&path, b).expect("write"),
            None => std::fs::remove_file(&path).expect("remove"),
        }
    };
    assert_parts_contract(&store.with_max_put_bytes(max), max as usize, Some(&tamper));
}

#[test]
fn concurrent_creates_have_exactly_one_winner() {
    let (_dir, store) = local();
    assert_one_winner_of_concurrent_creates(&store, "race.bin");
    let store = Store::create("memory://race/run").expect("open");
    assert_one_winner_of_concurrent_creates(&store, "race.bin");
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
