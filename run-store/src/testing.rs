//! Test doubles for the storage layer and helpers over run directories, public so that every
//! crate's tests can use them (feature `testing`).

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// An in-memory store that treats every conditional create as an overwrite, as some
/// S3-compatible servers silently do. [`crate::Store::probe_write_once`] must refuse it.
#[derive(Debug, Default)]
pub struct OverwritingStore(InMemory);

impl OverwritingStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::fmt::Display for OverwritingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OverwritingStore")
    }
}

#[async_trait]
impl ObjectStore for OverwritingStore {
    async fn put_opts(
        &self,
        p: &Path,
        payload: PutPayload,
        mut o: PutOptions,
    ) -> object_store::Result<PutResult> {
        o.mode = PutMode::Overwrite;
        self.0.put_opts(p, payload, o).await
    }
    async fn put_multipart_opts(
        &self,
        p: &Path,
        o: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(p, o).await
    }
    async fn get_opts(&self, p: &Path, o: GetOptions) -> object_store::Result<GetResult> {
        self.0.get_opts(p, o).await
    }
    fn delete_stream(
        &self,
        l: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(l)
    }
    fn list(&self, p: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(p)
    }
    async fn list_with_delimiter(&self, p: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(p).await
    }
    async fn copy_opts(&self, a: &Path, b: &Path, o: CopyOptions) -> object_store::Result<()> {
        self.0.copy_opts(a, b, o).await
    }
}

/// Copy a local run (a directory tree) to `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()))?;
        } else {
            std::fs::copy(&p, to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Simulate an adversary who rewrites the history of a local run *consistently*: apply `f` to
/// every ledger record, recompute the hash chain from the manifest's genesis, re-encode the
/// segments in place, and rewrite the completion record's ledger head and final root. Only
/// replay can expose such a rewrite (or a signature over the original history).
pub fn rewrite_ledger(
    run: &std::path::Path,
    mut f: impl FnMut(&mut snapshot_format::ledger::StepRecord),
) -> snapshot_format::Result<()> {
    use snapshot_format::{layout, ledger::Segment, manifest};
    let io = |path: &std::path::Path, source| snapshot_format::Error::Io {
        artefact: path.display().to_string(),
        source,
    };
    let mpath = run.join(layout::MANIFEST);
    let m = manifest::RunManifest::from_json(
        &std::fs::read(&mpath).map_err(|e| io(&mpath, e))?,
        layout::MANIFEST,
    )?;
    let mut prev = m.genesis;
    let mut last = None;
    for i in 1.. {
        let p = run.join(layout::segment(i));
        let Ok(bytes) = std::fs::read(&p) else { break };
        let mut seg = Segment::decode(&bytes, &layout::segment(i))?;
        for r in &mut seg.records {
            f(r);
            r.prev_hash = prev;
            prev = r.hash();
            last = Some(r.clone());
        }
        std::fs::write(&p, seg.encode()).map_err(|e| io(&p, e))?;
    }
    let cpath = run.join(layout::COMPLETE);
    if let (Ok(bytes), Some(last)) = (std::fs::read(&cpath), last) {
        let mut c = manifest::Completion::from_json(&bytes, layout::COMPLETE)?;
        c.ledger_head = last.hash();
        if let Some(root) = last.state_root {
            c.final_state_root = root;
        }
        std::fs::write(&cpath, c.to_json()).map_err(|e| io(&cpath, e))?;
    }
    Ok(())
}

/// Whether `name` is a local store's staging file (`<key>#<digits>`): left by a write that was
/// interrupted, never listed or read as an object (`specs/snapshot-format.md`, write-once rules).
pub fn is_staging(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The objects (files that are not staging files) directly in `dir`, with their bytes, sorted by
/// name; none when `dir` does not exist. Panics on a read error (for tests).
pub fn objects(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, bytes)
        })
        .filter(|(name, _)| !is_staging(name))
        .collect();
    out.sort();
    out
}

/// Every ledger record of the local run at `run`, in order. Panics on a bad segment (for tests).
pub fn records(run: &std::path::Path) -> Vec<snapshot_format::ledger::StepRecord> {
    objects(&run.join(snapshot_format::layout::LEDGER))
        .iter()
        .flat_map(|(name, bytes)| {
            snapshot_format::ledger::Segment::decode(bytes, name)
                .unwrap_or_else(|e| panic!("{e}"))
                .records
        })
        .collect()
}

/// The manifest of the local run at `run`. Panics if it is unreadable (for tests).
pub fn manifest(run: &std::path::Path) -> snapshot_format::manifest::RunManifest {
    let path = run.join(snapshot_format::layout::MANIFEST);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    snapshot_format::manifest::RunManifest::from_json(&bytes, snapshot_format::layout::MANIFEST)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The completion record of the local run at `run`. Panics if it is unreadable (for tests).
pub fn completion(run: &std::path::Path) -> snapshot_format::manifest::Completion {
    let path = run.join(snapshot_format::layout::COMPLETE);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    snapshot_format::manifest::Completion::from_json(&bytes, snapshot_format::layout::COMPLETE)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Checkpoint `step` of the local run at `run`, decoded through its delta chain. Panics if it
/// does not decode (for tests).
pub fn checkpoint(run: &std::path::Path, step: u64) -> snapshot_format::snapshot::Snapshot {
    let store = crate::Store::open(&run.to_string_lossy()).unwrap_or_else(|e| panic!("{e}"));
    crate::CheckpointReader::new(store, Default::default())
        .take(step)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Each checkpoint of the local run at `run` with the state root in its header, by name.
pub fn checkpoint_roots(run: &std::path::Path) -> Vec<(String, snapshot_format::Hash32)> {
    objects(&run.join(snapshot_format::layout::CHECKPOINTS))
        .iter()
        .map(|(name, bytes)| {
            let limits = snapshot_format::limits::ReadLimits::default();
            let h = snapshot_format::snapshot::read_header(bytes, name, &limits)
                .unwrap_or_else(|e| panic!("{e}"));
            (name.clone(), h.state_root)
        })
        .collect()
}

/// Panics, naming the first difference, unless the local runs at `a` and `b` have the same
/// genesis, equal ledger records and byte-identical segments, the same checkpoint state roots,
/// and the same completion record (ledger head and final state root).
pub fn assert_same_run(a: &std::path::Path, b: &std::path::Path) {
    let (ra, rb) = (records(a), records(b));
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(x, y, "first difference at step {}", x.step);
    }
    assert_eq!(ra.len(), rb.len(), "number of ledger records");
    let ledger = snapshot_format::layout::LEDGER;
    assert!(
        objects(&a.join(ledger)) == objects(&b.join(ledger)),
        "ledger segment bytes differ"
    );
    assert_eq!(checkpoint_roots(a), checkpoint_roots(b));
    let (ca, cb) = (completion(a), completion(b));
    assert_eq!(
        (ca.ledger_head, ca.final_state_root),
        (cb.ledger_head, cb.final_state_root)
    );
    assert_eq!(manifest(a).genesis, manifest(b).genesis);
}

/// Panics unless `store` (empty, writable) honours the storage contract of
/// `specs/snapshot-format.md`: the write-once probe passes and cleans up; a second create of a
/// key fails with `ObjectExists`; `put_once` accepts identical bytes and refuses others with
/// `ObjectConflict`, leaving the object alone; a missing key is `ObjectMissing` naming it;
/// listing is by prefix, sorted, relative to the run root.
pub fn assert_store_contract(store: &crate::Store) {
    use crate::PutOutcome;
    use snapshot_format::Error;
    store.probe_write_once().expect("honours write-once");
    assert_eq!(
        store.list("").expect("list"),
        Vec::<String>::new(),
        "the probe cleans up"
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

    let same = store
        .put_once("a/b.bin", b"one".to_vec())
        .expect("same bytes");
    assert_eq!(same, PutOutcome::AlreadyPresent);
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
        "a conflict leaves the object"
    );
    let new = store.put_once("a/c.bin", b"new".to_vec()).expect("new");
    assert_eq!(new, PutOutcome::Created);

    let e = store.get("missing/x.snap").expect_err("missing");
    assert!(
        matches!(&e, Error::ObjectMissing { key, .. } if key == "missing/x.snap"),
        "{e}"
    );
    assert!(e.to_string().contains("missing/x.snap"), "{e}");
    assert_eq!(store.get_opt("missing/x.snap").expect("get_opt"), None);
    assert!(store.exists("a/b.bin").expect("exists"));
    assert!(!store.exists("a/zzz").expect("exists"));

    // Streaming reads: a missing object is the same error; an object of several of the
    // reader's buffers comes back whole.
    let e = store.reader("missing/x.snap").expect_err("missing");
    assert!(matches!(&e, Error::ObjectMissing { .. }), "{e}");
    let big: Vec<u8> = (0..9_000_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    store.put_new("a/big.bin", big.clone()).expect("create");
    assert_eq!(read_streaming(store, "a/big.bin"), big);

    let keys = |prefix: &str| -> Vec<String> { store.list(prefix).expect("list") };
    assert_eq!(keys("a"), ["a/b.bin", "a/big.bin", "a/c.bin"]);
    assert_eq!(
        keys(""),
        ["a/b.bin", "a/big.bin", "a/c.bin"],
        "keys are relative to the run root"
    );
}

/// Panics unless exactly one of 16 threads creating `key` at once (each with its own bytes)
/// succeeds, the others fail with `ObjectExists`, and the object holds the winner's bytes.
pub fn assert_one_winner_of_concurrent_creates(store: &crate::Store, key: &str) {
    use snapshot_format::Error;
    const THREADS: u8 = 16;
    let barrier = std::sync::Barrier::new(usize::from(THREADS));
    let results: Vec<Result<(), Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    store.put_new(key, vec![i; 4096])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let winners: Vec<usize> = (0..results.len()).filter(|&i| results[i].is_ok()).collect();
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
    assert_eq!(store.get(key).expect("get"), vec![winners[0] as u8; 4096]);
}

/// Raw access to a store's bytes behind its API, to play the adversary or the crash: write the
/// bytes at a key as they are (`Some`), or delete the key (`None`).
pub type Tamper<'a> = &'a dyn Fn(&str, Option<&[u8]>);

/// The object at `key`, read through [`crate::Store::reader`].
fn read_streaming(store: &crate::Store, key: &str) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    store
        .reader(key)
        .expect("reader")
        .read_to_end(&mut out)
        .expect("streamed read");
    out
}

/// Panics unless `store`, which writes objects of more than `max_put` bytes in parts, keeps the
/// storage contract for them: such an object round-trips, is listed once (its parts never),
/// is write-once (a second create fails, an identical one is accepted, a different one is a
/// conflict that leaves it whole), a write interrupted before its index leaves no object and
/// can be completed; an object that begins as an index does round-trips. With `tamper`, a
/// missing part, a part with other bytes and a hostile index are each a specific error naming
/// the object, and a streaming read gives out the parts before a missing one.
pub fn assert_parts_contract(store: &crate::Store, max_put: usize, tamper: Option<Tamper<'_>>) {
    use crate::PutOutcome;
    use snapshot_format::Error;
    use snapshot_format::parts::{PART_INDEX, Part, PartIndex, part_hash, part_key};
    use std::io::Read;
    let object = |seed: &[u8], len: usize| {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(seed)
            .finalize_xof()
            .fill(&mut out);
        out
    };
    let key = "checkpoints/big.snap";
    let big = object(b"big", 3 * max_put + 123);
    store
        .put_new_parts(key, vec![big[..1000].to_vec(), big[1000..].to_vec()])
        .expect("create in parts");
    assert_eq!(store.get(key).expect("get"), big, "round trip");
    assert_eq!(read_streaming(store, key), big, "streamed round trip");
    assert_eq!(store.list("").expect("list"), [key], "parts are not listed");
    let e = store.put_new(key, big.clone()).expect_err("second create");
    assert!(matches!(&e, Error::ObjectExists { .. }), "{e}");
    let same = store.put_once(key, big.clone()).expect("identical");
    assert_eq!(same, PutOutcome::AlreadyPresent);
    let mut other = big.clone();
    other[2 * max_put + 5] ^= 1;
    let e = store.put_once(key, other).expect_err("conflict");
    assert!(matches!(&e, Error::ObjectConflict { .. }), "{e}");
    assert_eq!(
        store.get(key).expect("get"),
        big,
        "a conflict leaves it whole"
    );

    let mut lookalike = PART_INDEX.magic.to_vec();
    lookalike.extend_from_slice(b"not an index");
    store
        .put_new("dataset/lookalike.bin", lookalike.clone())
        .expect("create");
    assert_eq!(store.get("dataset/lookalike.bin").expect("get"), lookalike);
    assert_eq!(read_streaming(store, "dataset/lookalike.bin"), lookalike);

    let Some(tamper) = tamper else { return };
    // The index as specified, computed here: consecutive parts of `max_put` bytes.
    let index = PartIndex {
        len: big.len() as u64,
        parts: big
            .chunks(max_put)
            .map(|c| Part {
                len: c.len() as u64,
                hash: part_hash([c]),
            })
            .collect(),
    };
    let parts: Vec<String> = index.parts.iter().map(|p| part_key(key, &p.hash)).collect();
    assert_eq!(parts.len(), 4);
    // A write interrupted after its parts: no object, nothing listed; writing again completes.
    tamper(key, None);
    assert!(matches!(store.get(key), Err(Error::ObjectMissing { .. })));
    assert!(store.list("").expect("list").iter().all(|k| k != key));
    store.put_new(key, big.clone()).expect("complete the write");
    assert_eq!(store.get(key).expect("get"), big);
    // The stored index is the one computed here.
    tamper(key, Some(&index.encode()));
    assert_eq!(store.get(key).expect("get"), big);

    tamper(&parts[1], None);
    let e = store.get(key).expect_err("missing part");
    assert!(
        matches!(&e, Error::PartMissing { key: k, part, .. } if k == key && *part == parts[1]),
        "{e}"
    );
    // A streaming read gives out the first part before it reaches the missing one, whose
    // error then comes through `Read` as the store's own.
    let mut reader = store.reader(key).expect("reader");
    let mut first = vec![0u8; max_put];
    reader
        .read_exact(&mut first)
        .expect("the first part arrives");
    assert_eq!(first, big[..max_put]);
    let e = reader
        .read_to_end(&mut Vec::new())
        .expect_err("missing part");
    let e = e
        .into_inner()
        .and_then(|e| e.downcast::<Error>().ok())
        .expect("carries the store's error");
    assert!(
        matches!(&*e, Error::PartMissing { part, .. } if *part == parts[1]),
        "{e}"
    );
    tamper(&parts[1], Some(&big[..max_put]));
    let e = store.get(key).expect_err("other bytes");
    assert!(
        matches!(&e, Error::PartMismatch { key: k, .. } if k == key),
        "{e}"
    );
    let hostile = PartIndex {
        len: 1 << 50,
        parts: vec![Part {
            len: 1 << 50,
            hash: part_hash([b"nowhere".as_slice()]),
        }],
    };
    tamper(key, Some(&hostile.encode()));
    let e = store.get(key).expect_err("hostile index");
    assert!(
        matches!(&e, Error::ObjectTooLarge { key: k, size, .. } if k == key && *size == 1 << 50),
        "{e}"
    );
    // An index that names one genuine part a million times: refused from its declared size
    // before a part is fetched, whole or streamed, by a store bounded as a verifier bounds it.
    let amplified = PartIndex {
        len: max_put as u64 * snapshot_format::parts::MAX_PARTS as u64,
        parts: vec![index.parts[0]; snapshot_format::parts::MAX_PARTS],
    };
    tamper(key, Some(&amplified.encode()));
    let bounded = store
        .clone()
        .with_limits(snapshot_format::limits::ReadLimits::up_to(
            4 * max_put as u64,
        ));
    let e = bounded.get(key).expect_err("amplified index");
    assert!(
        matches!(&e, Error::ObjectTooLarge { key: k, .. } if k == key),
        "{e}"
    );
    let e = bounded.reader(key).expect_err("amplified index, streamed");
    assert!(matches!(&e, Error::ObjectTooLarge { .. }), "{e}");
    let mut damaged = index.encode();
    damaged[20] ^= 1;
    tamper(key, Some(&damaged));
    let e = store.get(key).expect_err("damaged index");
    assert!(
        matches!(&e, Error::HeaderDigestMismatch { artefact, .. } if artefact == key),
        "{e}"
    );
}

/// Read `data` the ways a verifier reads a run's objects from its store (for the fuzz target
/// and the no-panic test), every read under limits of 16 MiB: as checkpoint 2 of a run whose
/// checkpoint 1 is the planes vector; as two copies of itself at checkpoints 1 and 2 (a delta
/// then names its own object: a reference cycle); and as the object at a key whose parts are
/// those of the part-index vector, so that an index among the inputs may name them in any
/// order and any number of times. Errors are expected; a panic, a hang or a read beyond the
/// limits is not.
pub fn read_through_store(data: &[u8]) {
    use object_store::ObjectStoreExt;
    use snapshot_format::limits::ReadLimits;
    use std::io::Read;
    let limits = ReadLimits::up_to(1 << 24);
    let store = |objects: Vec<(String, Vec<u8>)>| -> Option<crate::Store> {
        let memory = std::sync::Arc::new(InMemory::new());
        for (key, bytes) in objects {
            let path = Path::from(key);
            futures::executor::block_on(memory.put(&path, PutPayload::from(bytes))).ok()?;
        }
        crate::Store::from_object_store(memory, "", "memory://read-through")
            .ok()
            .map(|s| s.with_limits(limits))
    };
    let checkpoint = snapshot_format::layout::checkpoint;
    static PLANES: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let planes = PLANES.get_or_init(|| {
        snapshot_format::vectors::generate()
            .ok()?
            .into_iter()
            .find(|f| f.name == "snapshot-planes-v1.snap")
            .map(|f| f.bytes)
    });
    let mut runs = vec![vec![
        (checkpoint(1), data.to_vec()),
        (checkpoint(2), data.to_vec()),
    ]];
    if let Some(planes) = planes {
        runs.push(vec![
            (checkpoint(1), planes.clone()),
            (checkpoint(2), data.to_vec()),
        ]);
    }
    for objects in runs {
        let Some(s) = store(objects) else { continue };
        let reader = crate::CheckpointReader::new(s, limits);
        let _ = reader.header(2);
        let _ = reader.check(2, false);
        let _ = reader.read(2);
        let _ = reader.read(1);
    }
    let key = snapshot_format::layout::DATASET_DATA;
    let object: Vec<u8> = (0..snapshot_format::vectors::PARTED_LEN)
        .map(snapshot_format::vectors::parted_byte)
        .collect();
    let mut objects: Vec<(String, Vec<u8>)> = object
        .chunks(snapshot_format::vectors::PART_BYTES as usize)
        .map(|c| {
            let hash = snapshot_format::parts::part_hash([c]);
            (snapshot_format::parts::part_key(key, &hash), c.to_vec())
        })
        .collect();
    objects.push((key.to_string(), data.to_vec()));
    if let Some(s) = store(objects) {
        let _ = s.get(key);
        if let Ok(mut r) = s.reader(key) {
            let _ = std::io::copy(&mut (&mut r).take(1 << 25), &mut std::io::sink());
        }
    }
}
