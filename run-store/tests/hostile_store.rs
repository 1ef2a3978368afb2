//! A store whose directory someone else controls: objects larger than their class allows,
//! links and special files where objects should be. Each read must fail at once, naming the
//! object, before it opens a special file or reads a byte beyond the object's bound.

use std::path::Path;
use std::time::Duration;

use run_store::Store;
use snapshot_format::limits::{self, ReadLimits};
use snapshot_format::{Error, layout};

fn store(dir: &Path) -> Store {
    Store::open(dir.to_str().expect("utf-8")).expect("store")
}

/// `f` on another thread, which must finish within a minute (a read that blocks fails here
/// rather than hanging the suite).
fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the read blocked for a minute")
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(status.success());
}

#[test]
fn objects_above_their_class_bound_are_refused_from_their_size() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store(dir.path());
    // Sparse files: a 1 TiB manifest and segment, and a dataset one byte over the bound.
    let sparse = |key: &str, len: u64| {
        let path = dir.path().join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(len))
            .expect("sparse file");
    };
    sparse(layout::MANIFEST, 1 << 40);
    sparse(&layout::segment(1), 1 << 40);
    sparse(layout::DATASET_DATA, (1 << 20) + 1);
    let bounded = s.clone().with_limits(ReadLimits::up_to(1 << 20));
    for (key, size, max) in [
        (
            layout::MANIFEST.to_string(),
            1u64 << 40,
            limits::MAX_JSON_BYTES,
        ),
        (layout::segment(1), 1 << 40, layout::MAX_ENVELOPE_BYTES),
        (layout::DATASET_DATA.to_string(), (1 << 20) + 1, 1 << 20),
    ] {
        for e in [
            bounded.get(&key).expect_err("too large"),
            bounded.reader(&key).expect_err("too large, streamed"),
        ] {
            assert!(
                matches!(&e, Error::ObjectTooLarge { key: k, size: n, max: m, .. }
                    if *k == key && *n == size && *m == max),
                "{key}: {e}"
            );
            assert!(e.is_integrity_violation(), "{e}");
        }
    }
    // Under the default limits the dataset is within its bound.
    assert_eq!(
        s.get(layout::DATASET_DATA).expect("read").len(),
        (1 << 20) + 1
    );
}

#[test]
fn links_and_special_files_are_never_opened() {
    let dir = tempfile::tempdir().expect("tmp");
    let outside = tempfile::tempdir().expect("tmp");
    std::fs::write(outside.path().join("secret"), b"outside the run").expect("write");
    std::fs::create_dir_all(dir.path().join("checkpoints")).expect("dir");
    std::fs::create_dir_all(dir.path().join("dataset")).expect("dir");
    mkfifo(&dir.path().join(layout::MANIFEST));
    mkfifo(&dir.path().join(layout::checkpoint(4)));
    std::os::unix::fs::symlink("/dev/zero", dir.path().join(layout::DATASET_DATA)).expect("ln");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("ledger")).expect("ln");
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        dir.path().join(layout::COMPLETE),
    )
    .expect("ln");
    std::fs::write(outside.path().join("segment-000001.seg"), b"x").expect("write");
    let s = store(dir.path());
    let cases = [
        (layout::MANIFEST.to_string(), "a FIFO"),
        (layout::checkpoint(4), "a FIFO"),
        (layout::DATASET_DATA.to_string(), "a symbolic link"),
        (layout::COMPLETE.to_string(), "a symbolic link"),
        (layout::segment(1), "reached through a symbolic link"),
    ];
    for (key, what) in cases {
        let (s, k) = (s.clone(), key.clone());
        let (whole, streamed) =
            within_a_minute(move || (s.get(&k).map(|_| ()), s.reader(&k).map(|_| ())));
        for e in [whole.expect_err("refused"), streamed.expect_err("refused")] {
            assert!(
                matches!(&e, Error::NotRegularFile { key: k, what: w, .. }
                    if *k == key && w.starts_with(what)),
                "{key}: {e}"
            );
            assert!(e.is_integrity_violation(), "{e}");
        }
    }
    // Listing does not follow links: the linked directory's file is not the run's segment,
    // and the links and special files are listed so that reading them names them.
    let listed = s.list("").expect("list");
    assert!(listed.contains(&"ledger".to_string()), "{listed:?}");
    assert!(listed.contains(&layout::checkpoint(4)), "{listed:?}");
    assert!(s.list(layout::LEDGER).expect("list").is_empty());
    // A FIFO given by path is refused without being opened, a file over the bound unread.
    let fifo = dir.path().join(layout::MANIFEST);
    let e = within_a_minute(move || snapshot_format::file::read_file(&fifo, 1 << 20))
        .expect_err("a FIFO");
    assert!(matches!(&e, Error::NotRegularFile { .. }), "{e}");
    let big = outside.path().join("statement.json");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(1 << 40))
        .expect("sparse file");
    let e = snapshot_format::file::read_file(&big, 1 << 20).expect_err("too large");
    assert!(
        matches!(&e, Error::ObjectTooLarge { size, max, .. } if *size == 1 << 40 && *max == 1 << 20),
        "{e}"
    );
}

#[test]
fn staging_files_and_parts_are_not_objects() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store(dir.path());
    s.put_new("ledger/segment-000001.seg", b"one".to_vec())
        .expect("put");
    // What object_store leaves behind when a write is stopped before its rename.
    std::fs::write(dir.path().join("ledger/segment-000002.seg#3"), b"half").expect("write");
    std::fs::write(dir.path().join("ledger/notes#draft"), b"kept").expect("write");
    assert_eq!(
        s.list("ledger").expect("list"),
        ["ledger/notes#draft", "ledger/segment-000001.seg"]
    );
}
