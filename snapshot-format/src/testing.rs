//! Test doubles for the storage layer, public so that every crate's tests can use them.

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
    mut f: impl FnMut(&mut crate::ledger::StepRecord),
) -> crate::Result<()> {
    use crate::{layout, ledger::Segment, manifest};
    let io = |path: &std::path::Path, source| crate::Error::Io {
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
