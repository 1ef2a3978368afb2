//! The storage layer: a run's objects in any `object_store` backend, written once and never
//! replaced.
//!
//! # Contract
//! - Every object is created with a conditional put (`PutMode::Create`). A create over an
//!   existing object fails; [`Store::put_once`] then accepts the existing object only when it is
//!   byte-identical (a resumed run re-deriving an object it had already written) and otherwise
//!   reports [`Error::ObjectConflict`], leaving the stored object untouched.
//! - [`Store::probe_write_once`] checks that the store really refuses a second create, and is
//!   run before any training writes: some S3-compatible servers silently overwrite.
//! - Reads of absent objects give [`Error::ObjectMissing`] naming the key.
//! - Reads are bounded: an object larger than its class allows ([`layout::max_bytes`] under
//!   the store's [`ReadLimits`]) is [`Error::ObjectTooLarge`], refused from its size (the file
//!   system's, the server's, or its part index's) before any of it is read.
//! - A local store reads regular files of its own directory only: a symbolic link, a FIFO, a
//!   device or a socket at a key (or on the way to it) is [`Error::NotRegularFile`] and is
//!   never opened, so no object can block a read or lead outside the run. Listing does not
//!   follow links either.
//! - An object larger than the store accepts in one write (S3: 5 GiB) is written in parts and
//!   published by a part index created last (`snapshot_format::parts`); reads reassemble it and check
//!   every part. Parts are never listed.
//!
//! The API is synchronous; an internal tokio runtime drives `object_store`.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::{Arc, Mutex, OnceLock};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetResultPayload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use rayon::prelude::*;

use snapshot_format::hash::{DomainHasher, context};
use snapshot_format::layout;
use snapshot_format::limits::ReadLimits;
use snapshot_format::parts::{self, Part, PartIndex};
use snapshot_format::{Error, Result};

/// The largest object S3 accepts in one PUT.
pub const S3_MAX_PUT_BYTES: u64 = 5 << 30;
/// The largest block blob Azure accepts in one Put Blob.
pub const AZURE_MAX_PUT_BYTES: u64 = 5000 << 20;
/// Environment variable that lowers the size above which objects are written in parts (at
/// least [`parts::MIN_PART_BYTES`]); for tests and for stores with a lower limit.
pub const MAX_PUT_ENV: &str = "RV_MAX_PUT_BYTES";
/// Parts of one object uploaded at once.
const PARALLEL_UPLOADS: usize = 4;
/// The largest part a writer makes (smaller when the store's single-write limit is): a
/// streaming read holds a part while it checks it, and one more it fetches ahead.
pub const MAX_WRITTEN_PART_BYTES: u64 = 64 << 20;
/// Objects expected to be larger than this (or than the store's single-write size) are
/// written as they are produced, never held whole ([`Store::streams_above`]).
pub const STREAM_WRITES_ABOVE: u64 = 1 << 30;
/// Parts a streaming read fetches ahead of the one being read.
const PARTS_AHEAD: usize = 1;
/// A streaming read of a remote object gathers its bytes into buffers of this size, and
/// fetches up to `BUFFERS_AHEAD` of them ahead of the reader.
const BUFFER_BYTES: usize = 4 << 20;
const BUFFERS_AHEAD: usize = 4;

/// What [`Store::put_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was created.
    Created,
    /// An identical object was already there; nothing was written.
    AlreadyPresent,
}

/// A run's root in some object store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    location: String,
    runtime: Arc<tokio::runtime::Runtime>,
    /// Objects larger than this are written in parts.
    max_put: u64,
    /// Bounds of the objects read ([`layout::max_bytes`]).
    limits: ReadLimits,
    /// The directory of a local store: its objects are read as regular files only.
    local: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish()
    }
}

fn runtime() -> Result<Arc<tokio::runtime::Runtime>> {
    static RUNTIME: OnceLock<Arc<tokio::runtime::Runtime>> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt.clone());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("object-store")
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            artefact: "object store runtime".into(),
            source,
        })?;
    Ok(RUNTIME.get_or_init(|| Arc::new(rt)).clone())
}

/// `memory://NAME` stores are process-wide, so that a writer and a reader in one process
/// (tests, benchmarks) see the same objects.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<object_store::memory::InMemory>>>> =
        OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(object_store::memory::InMemory::new()))
        .clone()
}

impl Store {
    /// Open a run root for reading: a plain path, `file://`, `memory://`, `s3://`, `gs://` or
    /// `az://` (cloud credentials and endpoints come from the usual environment variables,
    /// e.g. `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_ALLOW_HTTP`).
    pub fn open(location: &str) -> Result<Store> {
        Self::open_with_options(location, &[], false)
    }

    /// Open a run root for writing; a local directory is created if missing.
    pub fn create(location: &str) -> Result<Store> {
        Self::open_with_options(location, &[], true)
    }

    /// Open with explicit cloud configuration keys (`object_store`'s names, e.g. `aws_endpoint`,
    /// `aws_allow_http`) on top of those read from the environment. `create` makes a missing
    /// local directory.
    pub fn open_with_options(
        location: &str,
        options: &[(&str, &str)],
        create: bool,
    ) -> Result<Store> {
        let invalid = |detail: String| Error::InvalidLocation {
            location: location.to_string(),
            detail,
        };
        let (scheme, rest) = match location.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("file".to_string(), location),
        };
        let limit = match scheme.as_str() {
            "s3" | "s3a" => S3_MAX_PUT_BYTES,
            "az" | "abfs" | "abfss" => AZURE_MAX_PUT_BYTES,
            _ => u64::MAX,
        };
        let max_put = match std::env::var(MAX_PUT_ENV) {
            Err(_) => limit,
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(n) if n >= parts::MIN_PART_BYTES => n.min(limit),
                _ => {
                    return Err(invalid(format!(
                        "{MAX_PUT_ENV}={v:?}: expected a number of bytes of at least {}",
                        parts::MIN_PART_BYTES
                    )));
                }
            },
        };
        let runtime = runtime()?;
        let mut local = None;
        let (inner, prefix): (Arc<dyn ObjectStore>, Path) = match scheme.as_str() {
            "file" => {
                if rest.is_empty() {
                    return Err(invalid("empty path".into()));
                }
                let dir = std::path::Path::new(rest);
                let dir = if dir.is_absolute() {
                    dir.to_path_buf()
                } else {
                    std::env::current_dir()
                        .map_err(|e| invalid(e.to_string()))?
                        .join(dir)
                };
                if create {
                    std::fs::create_dir_all(&dir).map_err(|e| invalid(e.to_string()))?;
                } else if !dir.is_dir() {
                    return Err(invalid("no such directory".into()));
                }
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| invalid(e.to_string()))?
                    .with_fsync(true);
                local = Some(dir);
                (Arc::new(fs), Path::default())
            }
            "memory" => {
                let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
                (memory_store(name), parse_path(path).map_err(invalid)?)
            }
            "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" => {
                let url = url::Url::parse(location).map_err(|e| invalid(e.to_string()))?;
                let bad_key =
                    |k: &str, e: object_store::Error| invalid(format!("option {k:?}: {e}"));
                let store: Arc<dyn ObjectStore> = match scheme.as_str() {
                    "s3" | "s3a" => {
                        let mut b =
                            object_store::aws::AmazonS3Builder::from_env().with_url(location);
                        for (k, v) in options {
                            b = b.with_config(k.parse().map_err(|e| bad_key(k, e))?, *v);
                        }
                        Arc::new(b.build().map_err(|e| invalid(e.to_string()))?)
                    }
                    "gs" => {
                        let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                            .with_url(location);
                        for (k, v) in options {
                            b = b.with_config(k.parse().map_err(|e| bad_key(k, e))?, *v);
                        }
                        Arc::new(b.build().map_err(|e| invalid(e.to_string()))?)
                    }
                    _ => {
                        let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                            .with_url(location);
                        for (k, v) in options {
                            b = b.with_config(k.parse().map_err(|e| bad_key(k, e))?, *v);
                        }
                        Arc::new(b.build().map_err(|e| invalid(e.to_string()))?)
                    }
                };
                let path = url.path().trim_start_matches('/');
                (store, parse_path(path).map_err(invalid)?)
            }
            other => return Err(invalid(format!("unsupported scheme {other:?}"))),
        };
        Ok(Store {
            inner,
            prefix,
            location: location.to_string(),
            runtime,
            max_put,
            limits: ReadLimits::default(),
            local,
        })
    }

    /// The size above which a writer should produce an object into
    /// [`Store::put_once_streamed`] rather than hold it whole: [`STREAM_WRITES_ABOVE`], or the
    /// store's single-write size when that is smaller (such an object goes in parts anyway).
    pub fn streams_above(&self) -> u64 {
        self.max_put.min(STREAM_WRITES_ABOVE)
    }

    /// Write objects larger than `bytes` in parts (at least [`parts::MIN_PART_BYTES`]).
    pub fn with_max_put_bytes(mut self, bytes: u64) -> Store {
        self.max_put = bytes.max(parts::MIN_PART_BYTES);
        self
    }

    /// Read objects under `limits` ([`layout::max_bytes`] bounds each by its key).
    pub fn with_limits(mut self, limits: ReadLimits) -> Store {
        self.limits = limits;
        self
    }

    /// The most bytes the object at `key` may hold here.
    pub fn max_bytes(&self, key: &str) -> u64 {
        layout::max_bytes(key, &self.limits)
    }

    /// Wrap an existing object store (a decorator, a test double) at `prefix`.
    pub fn from_object_store(
        inner: Arc<dyn ObjectStore>,
        prefix: &str,
        location: &str,
    ) -> Result<Store> {
        Ok(Store {
            inner,
            prefix: parse_path(prefix).map_err(|detail| Error::InvalidLocation {
                location: location.to_string(),
                detail,
            })?,
            location: location.to_string(),
            runtime: runtime()?,
            max_put: u64::MAX,
            limits: ReadLimits::default(),
            local: None,
        })
    }

    /// The location this store was opened at.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// A store rooted at `sub` below this one (e.g. a shard-results folder).
    pub fn child(&self, sub: &str) -> Result<Store> {
        let mut s = self.clone();
        s.prefix = self.path(sub)?;
        s.location = format!("{}/{}", self.location.trim_end_matches('/'), sub);
        Ok(s)
    }

    fn path(&self, key: &str) -> Result<Path> {
        let rel = parse_path(key).map_err(|detail| Error::InvalidLocation {
            location: format!("{}/{key}", self.location),
            detail,
        })?;
        Ok(Path::from_iter(self.prefix.parts().chain(rel.parts())))
    }

    fn map_err(&self, key: &str, op: &'static str, e: object_store::Error) -> Error {
        let store = self.location.clone();
        let key = key.to_string();
        match e {
            object_store::Error::NotFound { .. } => Error::ObjectMissing { store, key },
            object_store::Error::AlreadyExists { .. } => Error::ObjectExists { store, key },
            object_store::Error::PermissionDenied { source, .. }
            | object_store::Error::Unauthenticated { source, .. } => Error::PermissionDenied {
                store,
                key,
                op,
                detail: source.to_string(),
            },
            other => {
                let detail = other.to_string();
                if detail.contains("ermission denied") {
                    Error::PermissionDenied {
                        store,
                        key,
                        op,
                        detail,
                    }
                } else {
                    Error::Store {
                        store,
                        key,
                        op,
                        detail,
                    }
                }
            }
        }
    }

    /// Read a whole object (reassembled from its parts when it was written in parts, each
    /// part checked against the index).
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let max = self.max_bytes(key);
        let stored = self.runtime.block_on(self.fetch(key, max))?;
        if !parts::looks_like_index(&stored) {
            return Ok(Vec::from(stored));
        }
        let index = self.bounded_index(&stored, key, max)?;
        let mut out = Vec::new();
        let mut reader = self.parts_reader(key, index);
        read_all(&mut reader, &mut out, key)?;
        Ok(out)
    }

    /// Read an object as a stream, without holding it whole. An object stored in parts is
    /// read part by part, each part checked against its index before any of its bytes are
    /// given out, the next part fetched meanwhile; a remote object is fetched a few buffers
    /// ahead of the reader; a local file is read directly. Errors of this crate (a missing or
    /// damaged part, a failed fetch) come through `Read` as I/O errors that carry them, which
    /// the snapshot readers give back unchanged.
    pub fn reader(&self, key: &str) -> Result<ObjectReader> {
        let max = self.max_bytes(key);
        let got = self.runtime.block_on(self.open_object(key, max))?;
        let range = got.range.clone();
        let len = range.end - range.start;
        let mut rest: Box<dyn Read + Send> = match got.payload {
            GetResultPayload::File(mut file, _) => {
                file.seek(std::io::SeekFrom::Start(range.start))
                    .map_err(|source| Error::from_io(key, source))?;
                Box::new(file.take(len))
            }
            GetResultPayload::Stream(stream) => Box::new(self.forward(key, stream, len)),
        };
        // As many bytes as it takes to tell a part index from an object.
        let magic = parts::PART_INDEX.magic.len();
        let mut head = Vec::with_capacity(magic);
        read_all(&mut (&mut rest).take(magic as u64), &mut head, key)?;
        let inner: Box<dyn Read + Send> = if parts::looks_like_index(&head) {
            read_all(&mut rest, &mut head, key)?;
            Box::new(self.parts_reader(key, self.bounded_index(&head, key, max)?))
        } else {
            Box::new(std::io::Cursor::new(head).chain(rest))
        };
        Ok(ObjectReader { inner, read: 0 })
    }

    /// The bytes of a remote object's `stream` (of `len` bytes), gathered into buffers by a
    /// task on the store's runtime, a few buffers ahead of the reader.
    fn forward(
        &self,
        key: &str,
        mut stream: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
        len: u64,
    ) -> Arriving {
        let (tx, rx) = tokio::sync::mpsc::channel(BUFFERS_AHEAD);
        let (store, owned_key) = (self.clone(), key.to_string());
        self.runtime.spawn(async move {
            let mut gathered = bytes::BytesMut::new();
            while let Some(item) = stream.next().await {
                let chunk = match item {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        let _ = tx.send(Err(store.map_err(&owned_key, "get", e))).await;
                        return;
                    }
                };
                gathered.extend_from_slice(&chunk);
                if gathered.len() >= BUFFER_BYTES
                    && tx.send(Ok(gathered.split().freeze())).await.is_err()
                {
                    return;
                }
            }
            if !gathered.is_empty() {
                let _ = tx.send(Ok(gathered.freeze())).await;
            }
        });
        self.arriving(key, rx, len)
    }

    /// The object at `key` from its part `index`: a task on the store's runtime fetches the
    /// parts in order, checks each against the index and sends it on, one part ahead.
    fn parts_reader(&self, key: &str, index: PartIndex) -> Arriving {
        let (tx, rx) = tokio::sync::mpsc::channel(PARTS_AHEAD);
        let (store, owned_key, len) = (self.clone(), key.to_string(), index.len);
        self.runtime.spawn(async move {
            for p in index.parts {
                let result = store.fetch_part(&owned_key, p).await;
                let failed = result.is_err();
                if tx.send(result).await.is_err() || failed {
                    return;
                }
            }
        });
        self.arriving(key, rx, len)
    }

    fn arriving(
        &self,
        key: &str,
        rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes>>,
        len: u64,
    ) -> Arriving {
        Arriving {
            rx,
            current: bytes::Bytes::new(),
            remaining: len,
            store: self.location.clone(),
            key: key.to_string(),
        }
    }

    /// The part index stored at `key`, for an object of at most `max` bytes.
    fn bounded_index(&self, stored: &[u8], key: &str, max: u64) -> Result<PartIndex> {
        let index = PartIndex::decode(stored, key)?;
        if index.len > max {
            return Err(self.too_large(key, index.len, max));
        }
        Ok(index)
    }

    fn too_large(&self, key: &str, size: u64, max: u64) -> Error {
        Error::ObjectTooLarge {
            store: self.location.clone(),
            key: key.to_string(),
            size,
            max,
        }
    }

    /// Part `p` of the object at `key`, checked against what the object's index says of it.
    async fn fetch_part(&self, key: &str, p: Part) -> Result<bytes::Bytes> {
        let part = parts::part_key(key, &p.hash);
        let mismatch = |detail: String| Error::PartMismatch {
            store: self.location.clone(),
            key: key.to_string(),
            part: part.clone(),
            detail,
        };
        let bytes = match self.fetch(&part, p.len).await {
            Ok(b) => b,
            Err(Error::ObjectMissing { .. }) => {
                return Err(Error::PartMissing {
                    store: self.location.clone(),
                    key: key.to_string(),
                    part,
                });
            }
            Err(Error::ObjectTooLarge { size, .. }) => {
                return Err(mismatch(format!(
                    "holds {size} bytes, the index declares {}",
                    p.len
                )));
            }
            Err(e) => return Err(e),
        };
        if bytes.len() as u64 != p.len {
            return Err(mismatch(format!(
                "holds {} bytes, the index declares {}",
                bytes.len(),
                p.len
            )));
        }
        if parts::part_hash([bytes.as_ref()]) != p.hash {
            return Err(mismatch(
                "does not hash to the name the index gives it".into(),
            ));
        }
        Ok(bytes)
    }

    /// The bytes stored at `key` as they are, at most `max` of them.
    async fn fetch(&self, key: &str, max: u64) -> Result<bytes::Bytes> {
        self.open_object(key, max)
            .await?
            .bytes()
            .await
            .map_err(|e| self.map_err(key, "get", e))
    }

    /// Start reading the object stored at `key`: a local one only when it is a regular file of
    /// the store's directory, and any only when it holds at most `max` bytes (known before a
    /// byte is read).
    async fn open_object(&self, key: &str, max: u64) -> Result<object_store::GetResult> {
        let path = self.path(key)?;
        self.regular_file(key, &path)?;
        let got = self
            .inner
            .get(&path)
            .await
            .map_err(|e| self.map_err(key, "get", e))?;
        let len = got.range.end - got.range.start;
        if len > max {
            return Err(self.too_large(key, len, max));
        }
        Ok(got)
    }

    /// For a local store, that the object at `path` is a regular file reached through
    /// directories only (an absent one is left to the store to report). The file system is
    /// asked without following links.
    fn regular_file(&self, key: &str, path: &Path) -> Result<()> {
        let Some(root) = &self.local else {
            return Ok(());
        };
        let parts: Vec<_> = path.parts().collect();
        let mut fs_path = root.clone();
        for (i, part) in parts.iter().enumerate() {
            fs_path.push(part.as_ref());
            let kind = match std::fs::symlink_metadata(&fs_path) {
                Ok(m) => m.file_type(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) => return Err(Error::from_io(key, source)),
            };
            let last = i + 1 == parts.len();
            if (last && kind.is_file()) || (!last && kind.is_dir()) {
                continue;
            }
            let what = snapshot_format::file::describe(kind);
            return Err(Error::NotRegularFile {
                store: self.location.clone(),
                key: key.to_string(),
                what: if last {
                    what.to_string()
                } else {
                    format!("reached through {what} ({})", fs_path.display())
                },
            });
        }
        Ok(())
    }

    /// Read a whole object, or `None` if it does not exist.
    pub fn get_opt(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.get(key) {
            Ok(b) => Ok(Some(b)),
            Err(Error::ObjectMissing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether an object exists.
    pub fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        match self.runtime.block_on(self.inner.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.map_err(key, "head", e)),
        }
    }

    /// Create an object; fails with [`Error::ObjectExists`] if it exists.
    pub fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.put_new_parts(key, vec![bytes])
    }

    /// Create an object from pieces written back to back (no concatenation in memory). An
    /// object larger than the store accepts in one write, or one that begins as a part index
    /// does, is written in parts and published by its index.
    pub fn put_new_parts(&self, key: &str, pieces: Vec<Vec<u8>>) -> Result<()> {
        let pieces: Vec<bytes::Bytes> = pieces.into_iter().map(bytes::Bytes::from).collect();
        let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        let first = pieces.iter().find(|p| !p.is_empty());
        if len <= self.max_put && !first.is_some_and(|p| parts::looks_like_index(p)) {
            return self.put_conditional(key, pieces);
        }
        // An existing object makes the create fail anyway: do not upload its parts first (a
        // resumed run re-deriving a large checkpoint). The index's conditional create still
        // decides a race.
        if self.exists(key)? {
            return Err(Error::ObjectExists {
                store: self.location.clone(),
                key: key.to_string(),
            });
        }
        let split = split(pieces, self.max_put.min(MAX_WRITTEN_PART_BYTES));
        if split.len() > parts::MAX_PARTS {
            return Err(self.too_many_parts(key, len, split.len()));
        }
        // Parts are hashed in parallel, then uploaded a few at a time; the index lists them in
        // order.
        let hashes: Vec<snapshot_format::Hash32> = split
            .par_iter()
            .map(|slices| parts::part_hash(slices.iter().map(|b| b.as_ref())))
            .collect();
        let parts: Vec<Result<Part>> = self.runtime.block_on(
            futures::stream::iter(split.into_iter().zip(hashes))
                .map(|(slices, hash)| async move {
                    let len = slices.iter().map(|b| b.len() as u64).sum();
                    self.create_part(&parts::part_key(key, &hash), slices, &hash)
                        .await?;
                    Ok(Part { len, hash })
                })
                .buffered(PARALLEL_UPLOADS)
                .collect(),
        );
        let index = PartIndex {
            len,
            parts: parts.into_iter().collect::<Result<_>>()?,
        };
        self.put_conditional(key, vec![bytes::Bytes::from(index.encode())])
    }

    /// Conditionally create the object at `key` from `pieces`, as they are.
    fn put_conditional(&self, key: &str, pieces: Vec<bytes::Bytes>) -> Result<()> {
        self.runtime.block_on(self.create_object(key, pieces))
    }

    async fn create_object(&self, key: &str, pieces: Vec<bytes::Bytes>) -> Result<()> {
        let path = self.path(key)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let payload: PutPayload = pieces.into_iter().collect();
        self.inner
            .put_opts(&path, payload, opts)
            .await
            .map(|_| ())
            .map_err(|e| self.map_err(key, "create", e))
    }

    /// Create a part named by its hash; an existing part (left by an interrupted write of the
    /// same object) is accepted only when its bytes have that hash.
    async fn create_part(
        &self,
        key: &str,
        slices: Vec<bytes::Bytes>,
        hash: &snapshot_format::Hash32,
    ) -> Result<()> {
        let len = slices.iter().map(|b| b.len() as u64).sum();
        match self.create_object(key, slices).await {
            Err(Error::ObjectExists { .. }) => {
                if parts::part_hash([self.fetch(key, len).await?.as_ref()]) == *hash {
                    Ok(())
                } else {
                    Err(Error::ObjectConflict {
                        store: self.location.clone(),
                        key: key.to_string(),
                    })
                }
            }
            other => other,
        }
    }

    /// Create an object, or accept an identical existing one. A different existing object is
    /// an [`Error::ObjectConflict`] and is left as it is.
    pub fn put_once(&self, key: &str, bytes: Vec<u8>) -> Result<PutOutcome> {
        self.put_once_parts(key, vec![bytes])
    }

    /// [`Store::put_once`] for an object given as parts.
    pub fn put_once_parts(&self, key: &str, parts: Vec<Vec<u8>>) -> Result<PutOutcome> {
        // Remember only a hash for comparing with an existing object.
        let whole = Part {
            len: parts.iter().map(|p| p.len() as u64).sum(),
            hash: parts::part_hash(parts.iter().map(Vec::as_slice)),
        };
        match self.put_new_parts(key, parts) {
            Ok(()) => Ok(PutOutcome::Created),
            Err(Error::ObjectExists { .. }) => self.compare_existing(key, &[whole]),
            Err(e) => Err(e),
        }
    }

    /// [`Store::put_once`] for an object produced as it is written: `write` hands the object's
    /// bytes after its first ones to the sink it is given, in order, then returns the first
    /// ones (`head`, known last) with a value of its own. The bytes go up in parts of at most
    /// 64 MiB (or the store's single-write size) as they arrive, a few uploads at a time, and
    /// the object is published by its part index, the head its first part (specs/snapshot-
    /// format.md §7.1): the whole object is never held. An existing object is not uploaded
    /// again: its parts are only hashed and compared with it.
    pub fn put_once_streamed<T>(
        &self,
        key: &str,
        write: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<()>) -> Result<(Vec<u8>, T)>,
    ) -> Result<(PutOutcome, T)> {
        let mut parts = PartWriter {
            store: self,
            key: key.to_string(),
            part_bytes: usize::try_from(self.max_put.min(MAX_WRITTEN_PART_BYTES))
                .unwrap_or(usize::MAX),
            buffer: Vec::new(),
            parts: Vec::new(),
            uploads: std::collections::VecDeque::new(),
            upload: !self.exists(key)?,
            len: 0,
        };
        let (head, value) = write(&mut |bytes| parts.write(bytes))?;
        let data = parts.finish()?;
        let head_part = Part {
            len: head.len() as u64,
            hash: parts::part_hash([head.as_slice()]),
        };
        let index = PartIndex {
            len: head_part.len + data.iter().map(|p| p.len).sum::<u64>(),
            parts: std::iter::once(head_part).chain(data).collect(),
        };
        if !parts.upload {
            return Ok((self.compare_existing(key, &index.parts)?, value));
        }
        if index.parts.len() > parts::MAX_PARTS {
            return Err(self.too_many_parts(key, index.len, index.parts.len()));
        }
        self.runtime.block_on(self.create_part(
            &parts::part_key(key, &head_part.hash),
            vec![bytes::Bytes::from(head)],
            &head_part.hash,
        ))?;
        // Another writer may have published the object meanwhile: compared as any existing one.
        let outcome = match self.put_conditional(key, vec![bytes::Bytes::from(index.encode())]) {
            Ok(()) => PutOutcome::Created,
            Err(Error::ObjectExists { .. }) => self.compare_existing(key, &index.parts)?,
            Err(e) => return Err(e),
        };
        Ok((outcome, value))
    }

    /// Whether the object at `key` is, piece after piece, bytes of the lengths and part hashes
    /// in `expected`, and nothing more: it is read as a stream, never whole.
    fn compare_existing(&self, key: &str, expected: &[Part]) -> Result<PutOutcome> {
        let mut reader = self.reader(key)?;
        let mut same = true;
        for p in expected {
            let mut hasher = DomainHasher::new(context::PART);
            let copied =
                std::io::copy(&mut (&mut reader).take(p.len), &mut HashWriter(&mut hasher))
                    .map_err(|source| Error::from_io(key, source))?;
            same &= copied == p.len && hasher.finish() == p.hash;
        }
        let mut more = [0u8; 1];
        let trailing = reader
            .read(&mut more)
            .map_err(|source| Error::from_io(key, source))?;
        if same && trailing == 0 {
            Ok(PutOutcome::AlreadyPresent)
        } else {
            Err(Error::ObjectConflict {
                store: self.location.clone(),
                key: key.to_string(),
            })
        }
    }

    fn too_many_parts(&self, key: &str, len: u64, parts: usize) -> Error {
        Error::Store {
            store: self.location.clone(),
            key: key.to_string(),
            op: "create",
            detail: format!(
                "{len} bytes would take {parts} parts (at most {} allowed)",
                parts::MAX_PARTS
            ),
        }
    }

    /// Keys (relative to this store) of all objects under `dir`, sorted. Parts of objects
    /// written in parts are not objects and are not listed.
    pub fn list(&self, dir: &str) -> Result<Vec<String>> {
        let path = self.path(dir)?;
        let prefix_parts = self.prefix.parts().count();
        if let Some(root) = &self.local {
            return self.list_local(root, &path, prefix_parts);
        }
        let metas: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(self.inner.list(Some(&path)).try_collect())
            .map_err(|e| self.map_err(dir, "list", e))?;
        let mut out: Vec<String> = metas
            .into_iter()
            .map(|m| {
                let rel: Vec<String> = m
                    .location
                    .parts()
                    .skip(prefix_parts)
                    .map(|p| p.as_ref().to_string())
                    .collect();
                rel.join("/")
            })
            .filter(|k| !parts::is_part_key(k))
            .collect();
        out.sort();
        Ok(out)
    }

    /// [`Store::list`] of a local store: every entry under `path` that is not a directory
    /// (regular files, and links or special files, which reading then refuses by name),
    /// without following links, parts and the store's own staging files left out.
    fn list_local(
        &self,
        root: &std::path::Path,
        path: &Path,
        prefix_parts: usize,
    ) -> Result<Vec<String>> {
        let io = |e: std::io::Error| Error::from_io(&self.location, e);
        let mut start = root.to_path_buf();
        let mut key: Vec<String> = Vec::new();
        for part in path.parts() {
            start.push(part.as_ref());
            key.push(part.as_ref().to_string());
        }
        let mut out = Vec::new();
        let mut pending = match std::fs::symlink_metadata(&start) {
            Ok(m) if m.is_dir() => vec![(start, key)],
            _ => vec![],
        };
        while let Some((dir, key)) = pending.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io)? {
                let entry = entry.map_err(io)?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    return Err(Error::Store {
                        store: self.location.clone(),
                        key: format!("{}/{}", key.join("/"), name.to_string_lossy()),
                        op: "list",
                        detail: "a file name that is not UTF-8".into(),
                    });
                };
                if name == parts::PARTS_DIR || is_staging_file(name) {
                    continue;
                }
                let mut child = key.clone();
                child.push(name.to_string());
                if entry.file_type().map_err(io)?.is_dir() {
                    pending.push((entry.path(), child));
                } else {
                    out.push(child[prefix_parts.min(child.len())..].join("/"));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Check that the store refuses to replace an existing object: create a probe object,
    /// try to create it again with other content, and require the second create to fail and
    /// the first content to survive. The probe object is deleted afterwards.
    pub fn probe_write_once(&self) -> Result<()> {
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let key = format!("{}{nonce}", layout::PROBE);
        let not_honoured = |detail: String| Error::WriteOnceNotHonoured {
            store: self.location.clone(),
            detail,
        };
        match self.put_new(&key, b"first".to_vec()) {
            Ok(()) => {}
            Err(Error::Store { detail, .. })
                if detail.contains("not implemented") || detail.contains("conditional put") =>
            {
                return Err(not_honoured(format!(
                    "conditional create unsupported: {detail}"
                )));
            }
            Err(e) => return Err(e),
        }
        let second = self.put_new(&key, b"second".to_vec());
        let content = self.get(&key);
        let path = self.path(&key)?;
        // Best effort: a store that refuses deletes keeps a 5-byte probe object.
        let _ = self.runtime.block_on(self.inner.delete(&path));
        match second {
            Err(Error::ObjectExists { .. }) => {}
            Ok(()) => {
                return Err(not_honoured(
                    "a second create of the same key succeeded".into(),
                ));
            }
            Err(e) => return Err(e),
        }
        match content? {
            c if c == b"first" => Ok(()),
            _ => Err(not_honoured(
                "the first object's content was replaced".into(),
            )),
        }
    }
}

/// The data parts of an object being written by [`Store::put_once_streamed`].
struct PartWriter<'s> {
    store: &'s Store,
    key: String,
    part_bytes: usize,
    buffer: Vec<u8>,
    /// The parts uploaded or uploading, in order.
    parts: Vec<Part>,
    uploads: std::collections::VecDeque<tokio::task::JoinHandle<Result<()>>>,
    /// False when the object exists: its parts are then only hashed.
    upload: bool,
    len: u64,
}

impl PartWriter<'_> {
    fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.len += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (self.part_bytes - self.buffer.len()).min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buffer.len() == self.part_bytes {
                self.send()?;
            }
        }
        Ok(())
    }

    /// Upload the buffer as the next part, with at most `PARALLEL_UPLOADS` in flight (only
    /// hash it when the object exists).
    fn send(&mut self) -> Result<()> {
        let bytes = bytes::Bytes::from(std::mem::take(&mut self.buffer));
        let part = Part {
            len: bytes.len() as u64,
            hash: parts::part_hash([bytes.as_ref()]),
        };
        self.parts.push(part);
        if self.parts.len() >= parts::MAX_PARTS {
            return Err(self
                .store
                .too_many_parts(&self.key, self.len, self.parts.len() + 1));
        }
        if !self.upload {
            return Ok(());
        }
        while self.uploads.len() >= PARALLEL_UPLOADS {
            self.wait_oldest()?;
        }
        let (store, key) = (self.store.clone(), parts::part_key(&self.key, &part.hash));
        self.uploads.push_back(
            self.store
                .runtime
                .spawn(async move { store.create_part(&key, vec![bytes], &part.hash).await }),
        );
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<()> {
        let Some(upload) = self.uploads.pop_front() else {
            return Ok(());
        };
        self.store
            .runtime
            .block_on(upload)
            .map_err(|e| Error::Store {
                store: self.store.location.clone(),
                key: self.key.clone(),
                op: "create",
                detail: format!("a part upload stopped: {e}"),
            })?
    }

    /// Upload what is left and wait for every upload; the data parts in order.
    fn finish(&mut self) -> Result<Vec<Part>> {
        if !self.buffer.is_empty() {
            self.send()?;
        }
        while !self.uploads.is_empty() {
            self.wait_oldest()?;
        }
        Ok(std::mem::take(&mut self.parts))
    }
}

/// Bytes written into a domain hasher.
struct HashWriter<'h>(&'h mut DomainHasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Read `reader` to its end into `out`, the errors it carries given back as they were.
fn read_all(reader: &mut impl Read, out: &mut Vec<u8>, key: &str) -> Result<()> {
    reader
        .read_to_end(out)
        .map(|_| ())
        .map_err(|source| Error::from_io(key, source))
}

/// A streaming read of one object ([`Store::reader`]).
pub struct ObjectReader {
    inner: Box<dyn Read + Send>,
    read: u64,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("read", &self.read)
            .finish()
    }
}

impl ObjectReader {
    /// Bytes of the object read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Bytes sent by a task on the store's runtime: buffers in order, or the error that ends them.
/// A stream that stops short of the object's length is an error too.
struct Arriving {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes>>,
    current: bytes::Bytes,
    remaining: u64,
    store: String,
    key: String,
}

impl Read for Arriving {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None if self.remaining == 0 => return Ok(0),
                None => {
                    return Err(std::io::Error::other(Error::Store {
                        store: self.store.clone(),
                        key: self.key.clone(),
                        op: "get",
                        detail: format!("the read stopped {} bytes short", self.remaining),
                    }));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        self.remaining = self.remaining.saturating_sub(n as u64);
        Ok(n)
    }
}

/// A file `object_store` writes an object to before moving it into place (`<name>#<digits>`),
/// left behind by a writer that was stopped: not an object.
fn is_staging_file(name: &str) -> bool {
    matches!(name.rsplit_once('#'), Some((_, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn parse_path(path: &str) -> std::result::Result<Path, String> {
    let trimmed = path.trim_matches('/');
    if trimmed.split('/').any(|p| p == ".." || p == ".") {
        return Err(format!("{path:?}: relative components are not allowed"));
    }
    Path::parse(trimmed).map_err(|e| e.to_string())
}

/// `pieces` regrouped into parts of at most `max` bytes each (slices of the same buffers).
fn split(pieces: Vec<bytes::Bytes>, max: u64) -> Vec<Vec<bytes::Bytes>> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut room = max;
    for mut piece in pieces {
        while !piece.is_empty() {
            let take = room.min(piece.len());
            current.push(piece.split_to(take));
            room -= take;
            if room == 0 {
                out.push(std::mem::take(&mut current));
                room = max;
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}
