//! The storage layer against a real S3-compatible server (moto) on 127.0.0.1.

use e2e_tests::Moto;
use snapshot_format::Store;
use snapshot_format::testing::{assert_one_winner_of_concurrent_creates, assert_store_contract};

fn open(moto: &Moto, url: &str) -> Store {
    let owned = moto.options();
    let options: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Store::open_with_options(url, &options, true).expect("open s3 store")
}

#[test]
fn s3_store_honours_the_storage_contract() {
    let moto = Moto::start();
    moto.create_bucket("runs");
    assert_store_contract(&open(&moto, "s3://runs/team/run-1"));
}

#[test]
fn s3_concurrent_creates_have_exactly_one_winner() {
    let moto = Moto::start();
    moto.create_bucket("race");
    let store = open(&moto, "s3://race/run");
    assert_one_winner_of_concurrent_creates(&store, "ledger/segment-000001.seg");
}

#[test]
fn s3_missing_bucket_is_a_clear_error() {
    let moto = Moto::start();
    let store = open(&moto, "s3://no-such-bucket/run");
    let e = store.get("manifest.json").expect_err("no bucket");
    assert!(e.to_string().contains("manifest.json"), "{e}");
}
