//! A run as the verifier sees it: every artefact read and cross-checked without re-executing
//! anything, with every problem recorded rather than the first one thrown.

use std::collections::BTreeMap;

use run_store::Store;
use snapshot_format::dataset::DatasetManifest;
use snapshot_format::layout::segment_ending_at;
use snapshot_format::ledger::StepRecord;
use snapshot_format::manifest::{Completion, RunManifest};
use snapshot_format::{Hash32, layout};
use trainer::config::RunSpec;
use trainer::data::Dataset;

use crate::report::{Assessment, CommandError, Problem, Verdict, problem_of};
use crate::signatures::{SignatureOptions, SignatureReport};
use run_trust::signature::{Statement, kind};
use snapshot_format::limits::ReadLimits;

/// One ledger segment as found.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub index: u64,
    pub key: String,
    pub first_step: u64,
    pub last_step: u64,
    /// Hash of the last record.
    pub head: Hash32,
}

/// A loaded run.
#[derive(Debug)]
pub struct RunContext {
    pub location: String,
    pub store: Store,
    pub manifest: RunManifest,
    /// `file_hash` of the manifest's bytes as read (what its signature signs).
    pub manifest_hash: Hash32,
    pub spec: RunSpec,
    /// The dataset manifest, if it decoded and matches the spec's root.
    pub dataset_manifest: Option<DatasetManifest>,
    /// The dataset (the run's copy, or the one given on the command line), if it parsed.
    pub dataset: Option<Dataset>,
    /// Records of the segments that decoded, by step.
    pub records: BTreeMap<u64, StepRecord>,
    /// Segments that decoded, by index.
    pub segments: BTreeMap<u64, SegmentInfo>,
    /// Steps of the checkpoints present.
    pub checkpoints: Vec<u64>,
    pub completion: Option<Completion>,
    /// `file_hash` of the completion record's bytes as read, when it decoded.
    pub completion_hash: Option<Hash32>,
    /// The base model's bytes, when the spec pins one and the run's copy matches the pin.
    pub base: Option<Vec<u8>>,
    /// The base model parsed (once, on first use).
    base_parsed: std::sync::OnceLock<Result<Option<trainer::base::BaseWeights>, Problem>>,
    /// Who signed what, judged by the trust options the run was loaded with.
    pub signatures: SignatureReport,
    /// The trust options the run was loaded with: statements about it are judged by the same.
    pub trust: SignatureOptions,
    /// Limits for decoding this run's checkpoints: no state may decode to more than the spec's
    /// model implies.
    pub limits: ReadLimits,
    /// Reads the run's checkpoints under `limits`, reconstructing delta chains.
    pub states: run_store::CheckpointReader,
    /// Every problem found while loading, in the order found: artefacts, the hash chain, ledger
    /// bounds, the base model, signatures.
    pub problems: Vec<Problem>,
    /// Total size of the objects read, in bytes.
    pub bytes_read: u64,
}

impl RunContext {
    /// The statements the run's artefacts must be signed under, by artefact key, from the bytes
    /// the run was loaded from.
    pub fn expected_signatures(&self) -> BTreeMap<String, Statement> {
        let ctx = self;
        let st = |kind: &str, step: u64, hash: Hash32| Statement {
            kind: kind.to_string(),
            run_id: ctx.manifest.run_id.clone(),
            genesis: ctx.manifest.genesis,
            step,
            hash,
        };
        let mut out = BTreeMap::new();
        out.insert(
            layout::MANIFEST.to_string(),
            st(kind::MANIFEST, 0, ctx.manifest_hash),
        );
        for s in ctx.segments.values() {
            out.insert(s.key.clone(), st(kind::SEGMENT, s.last_step, s.head));
        }
        for &c in &ctx.checkpoints {
            if let Some(root) = ctx.committed_root(c) {
                out.insert(layout::checkpoint(c), st(kind::CHECKPOINT, c, root));
            }
        }
        if let (Some(c), Some(hash)) = (&ctx.completion, ctx.completion_hash) {
            out.insert(
                layout::COMPLETE.to_string(),
                st(kind::COMPLETION, c.final_step, hash),
            );
        }
        out
    }

    /// The assessment of this run: every problem found loading it (`Assessment`).
    pub fn assessment(&self) -> Assessment {
        Assessment::with_problems(self.problems.clone())
    }

    /// Steps at which checkpoints must exist, as far as the run has got.
    pub fn expected_checkpoints(&self) -> Vec<u64> {
        let total = self.spec.run.steps;
        let interval = self.manifest.recording.checkpoint_interval;
        let last = self
            .completion
            .as_ref()
            .map(|c| c.final_step)
            .or_else(|| self.segments.values().map(|s| s.last_step).max())
            .unwrap_or(0)
            .min(total);
        (0..=last)
            .filter(|&s| snapshot_format::layout::is_checkpoint_step(s, total, interval))
            .collect()
    }

    /// The checkpoint interval.
    pub fn interval(&self) -> u64 {
        self.manifest.recording.checkpoint_interval
    }

    /// Key of the ledger segment that holds the record of `step`.
    pub fn segment_key(&self, step: u64) -> String {
        layout::segment(segment_ending_at(step, self.interval()))
    }

    /// The latest checkpoint step at or before `step` that is present.
    pub fn checkpoint_at_or_before(&self, step: u64) -> Option<u64> {
        self.checkpoints.iter().rev().find(|&&c| c <= step).copied()
    }

    /// Step ranges `(after checkpoint, up to checkpoint)` of every segment the run should have.
    pub fn segment_ranges(&self) -> Vec<(u64, u64, u64)> {
        let cps = self.expected_checkpoints();
        cps.windows(2)
            .enumerate()
            .map(|(i, w)| (i as u64 + 1, w[0], w[1]))
            .collect()
    }

    /// The run's dataset, which a re-executing command needs loaded (a usage error otherwise).
    pub fn loaded_dataset(&self) -> Result<&trainer::data::Dataset, CommandError> {
        self.dataset
            .as_ref()
            .ok_or_else(|| CommandError::Usage("the run's dataset did not load".into()))
    }

    /// The pinned base weights, for a command that cannot go on without them: a base that is
    /// missing or does not match its pin is an error naming it.
    pub fn required_base(&self) -> Result<Option<&trainer::base::BaseWeights>, CommandError> {
        self.base_weights()?
            .map_err(|p| CommandError::Usage(format!("{}: {}", p.artefact, p.detail)))
    }

    /// The base weights the spec pins, parsed (`None` when the spec pins none); a base model
    /// that is absent, does not match its pin or does not parse is the problem that says so.
    pub fn base_weights(
        &self,
    ) -> Result<Result<Option<&trainer::base::BaseWeights>, Problem>, CommandError> {
        if self.base_parsed.get().is_none() {
            let parsed = match (&self.spec.base, &self.base) {
                (None, _) => Ok(None),
                (Some(pin), Some(bytes)) => {
                    match trainer::base::BaseWeights::parse(bytes, pin.run_key()) {
                        Ok(w) => Ok(Some(w)),
                        Err(e) => Err(crate::report::problem_of_trainer(e)?),
                    }
                }
                (Some(pin), None) => {
                    let kind = self
                        .problems
                        .iter()
                        .find(|p| p.artefact == pin.run_key())
                        .map(|p| p.kind)
                        .unwrap_or(Verdict::Missing);
                    Err(Problem::new(
                        kind,
                        pin.run_key(),
                        "the pinned base model is not available as pinned",
                    ))
                }
            };
            let _ = self.base_parsed.set(parsed);
        }
        Ok(match self.base_parsed.get() {
            Some(Ok(b)) => Ok(b.as_ref()),
            Some(Err(p)) => Err(p.clone()),
            None => Ok(None),
        })
    }

    /// The state root the run commits to for the state after `step` (the manifest's initial
    /// root for step 0).
    pub fn committed_root(&self, step: u64) -> Option<Hash32> {
        if step == 0 {
            Some(self.manifest.initial_state_root)
        } else {
            self.records.get(&step).and_then(|r| r.state_root)
        }
    }

    /// The ledger's head after `step`: the hash of its record of `step`, or the genesis for
    /// step 0 (what the first record chains to); `None` when the ledger has no such record.
    pub fn head_at(&self, step: u64) -> Option<Hash32> {
        if step == 0 {
            Some(self.manifest.genesis)
        } else {
            self.records.get(&step).map(StepRecord::hash)
        }
    }

    /// The last step of the ledger and the head after it.
    pub fn ledger_point(&self) -> (u64, Hash32) {
        self.records
            .iter()
            .next_back()
            .map(|(s, r)| (*s, r.hash()))
            .unwrap_or((0, self.manifest.genesis))
    }

    /// Problems that make steps `..=to` unreplayable: problems of the manifest, the dataset
    /// manifest, and of the ledger up to `to` (the chain into the range must hold). Signature
    /// findings do not stop replay (they count toward every verdict all the same).
    pub fn problems_before(&self, to: u64) -> Vec<Problem> {
        self.problems
            .iter()
            .filter(|p| {
                !matches!(
                    p.kind,
                    Verdict::BadSignature | Verdict::UntrustedSigner | Verdict::Unsigned
                )
            })
            .filter(|p| match layout::parse_segment(&p.artefact) {
                Some(i) => {
                    let first = (i - 1) * self.interval() + 1;
                    first <= to
                }
                None => {
                    p.artefact == layout::MANIFEST
                        || p.artefact == layout::DATASET_MANIFEST
                        || p.artefact.starts_with(layout::LEDGER)
                }
            })
            .cloned()
            .collect()
    }
}

/// Options for loading.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Use this dataset file instead of the run's copy.
    pub dataset: Option<std::path::PathBuf>,
    /// Which signers to trust, and whether signatures are required.
    pub trust: SignatureOptions,
    /// Refuse runs whose states would decode to more bytes than this (default
    /// [`snapshot_format::limits::DEFAULT_MAX_DECODED_BYTES`]).
    pub max_decoded_bytes: Option<u64>,
}

/// Load the run at `location`: `Ok(Err(problem))` when its manifest cannot be used (nothing else
/// can be interpreted without it; a finding for the report), `Err` on operational or usage
/// errors. Every other problem is recorded in the context.
pub fn load(
    location: &str,
    options: &LoadOptions,
) -> Result<Result<RunContext, Problem>, CommandError> {
    match load_context(location, options) {
        Ok(c) => Ok(Ok(c)),
        Err(LoadFailure::Problem(p)) => Ok(Err(p)),
        Err(LoadFailure::Command(e)) => Err(e),
    }
}

fn load_context(location: &str, options: &LoadOptions) -> Result<RunContext, LoadFailure> {
    let store = Store::open(location).map_err(|e| LoadFailure::from_format(e, location))?;
    let mut bytes_read = 0u64;
    let manifest_bytes = store
        .get(layout::MANIFEST)
        .map_err(|e| LoadFailure::from_format(e, location))?;
    bytes_read += manifest_bytes.len() as u64;
    let manifest = RunManifest::from_json(&manifest_bytes, layout::MANIFEST)
        .map_err(|e| LoadFailure::from_format(e, location))?;
    if manifest.computed_genesis() != manifest.genesis {
        return Err(LoadFailure::Problem(Problem::new(
            Verdict::Tampered,
            layout::MANIFEST,
            format!(
                "genesis {} is not the hash of the spec hash and the initial state root",
                manifest.genesis
            ),
        )));
    }
    let spec = RunSpec::from_value(&manifest.spec, layout::MANIFEST).map_err(|e| {
        LoadFailure::Problem(Problem::new(
            Verdict::Corrupt,
            layout::MANIFEST,
            e.to_string(),
        ))
    })?;
    let limits = decode_limits(&spec, options.max_decoded_bytes).map_err(LoadFailure::Command)?;
    // Every object read from here on is bounded by its class (`layout::max_bytes`).
    let store = store.with_limits(limits);

    let mut problems = Vec::new();

    // Dataset manifest and dataset.
    let dataset_manifest = match store.get(layout::DATASET_MANIFEST) {
        Ok(b) => {
            bytes_read += b.len() as u64;
            match DatasetManifest::decode(&b, layout::DATASET_MANIFEST) {
                Ok(m) if m.root == spec.data.dataset_root => Some(m),
                Ok(m) => {
                    problems.push(Problem::new(
                        Verdict::Tampered,
                        layout::DATASET_MANIFEST,
                        format!(
                            "root {} differs from the spec's dataset root {}",
                            m.root, spec.data.dataset_root
                        ),
                    ));
                    None
                }
                Err(e) => {
                    note(&mut problems, e, location)?;
                    None
                }
            }
        }
        Err(e) => {
            note(&mut problems, e, location)?;
            None
        }
    };
    let (data_name, data_bytes) = match &options.dataset {
        Some(path) => (
            path.display().to_string(),
            snapshot_format::file::read_file(path, limits.max_object_bytes)
                .map_err(|e| LoadFailure::Command(CommandError::Usage(format!("--dataset {e}")))),
        ),
        None => (
            layout::DATASET_DATA.to_string(),
            store
                .get(layout::DATASET_DATA)
                .map_err(|e| LoadFailure::from_format(e, location)),
        ),
    };
    let dataset = match data_bytes {
        Ok(bytes) => {
            bytes_read += bytes.len() as u64;
            match Dataset::parse(&bytes, &data_name, spec.data.format, &spec.model) {
                Ok(d) => Some(d),
                Err(e) => {
                    problems.push(Problem::new(
                        Verdict::Corrupt,
                        data_name.clone(),
                        e.to_string(),
                    ));
                    None
                }
            }
        }
        Err(LoadFailure::Problem(p)) => {
            problems.push(p);
            None
        }
        Err(other) => return Err(other),
    };
    if let (Some(d), Some(m)) = (&dataset, &dataset_manifest) {
        if d.len() != m.len() {
            problems.push(Problem::new(
                Verdict::InputMismatch,
                data_name.clone(),
                format!(
                    "{} examples; the dataset manifest lists {}",
                    d.len(),
                    m.len()
                ),
            ));
        } else {
            for (i, (a, b)) in d
                .manifest
                .example_hashes
                .iter()
                .zip(&m.example_hashes)
                .enumerate()
            {
                if a != b {
                    problems.push(Problem::new(
                        Verdict::InputMismatch,
                        data_name.clone(),
                        format!("example {i} hashes to {a}; the dataset manifest commits to {b}"),
                    ));
                }
            }
        }
    }

    // Ledger segments and the chain.
    let listed = store
        .list(layout::LEDGER)
        .map_err(|e| LoadFailure::from_format(e, location))?;
    let mut indices: Vec<u64> = listed
        .iter()
        .filter_map(|k| layout::parse_segment(k))
        .collect();
    indices.sort_unstable();
    let (completion, completion_hash) = match store.get_opt(layout::COMPLETE) {
        Ok(None) => (None, None),
        Err(e) => {
            note(&mut problems, e, location)?;
            (None, None)
        }
        Ok(Some(b)) => {
            bytes_read += b.len() as u64;
            match Completion::from_json(&b, layout::COMPLETE) {
                Ok(c) => (Some(c), Some(snapshot_format::hash::file_hash(&b))),
                Err(e) => {
                    note(&mut problems, e, location)?;
                    (None, None)
                }
            }
        }
    };
    let interval = manifest.recording.checkpoint_interval;
    let highest = indices
        .last()
        .copied()
        .unwrap_or(0)
        .max(completion.as_ref().map(|c| c.segments).unwrap_or(0))
        // A ledger cannot have more segments than its steps need: objects beyond are reported
        // by the bounds check below, not read.
        .min(segment_ending_at(spec.run.steps, interval));
    let mut records = BTreeMap::new();
    let mut segments = BTreeMap::new();
    for entry in run_store::ledger::walk(&store, manifest.genesis, interval, highest) {
        bytes_read += entry.bytes_read;
        let seg = match entry.segment {
            Ok(s) => s,
            Err(e) => {
                note(&mut problems, e, location)?;
                continue;
            }
        };
        if let Err(e) = entry.link {
            note(&mut problems, e, location)?;
        }
        segments.insert(
            entry.index,
            SegmentInfo {
                index: entry.index,
                key: entry.key,
                first_step: seg.first_step(),
                last_step: seg.last_step(),
                head: seg.head(),
            },
        );
        for r in seg.records {
            records.insert(r.step, r);
        }
    }

    // Checkpoints present.
    let checkpoints = run_store::ledger::checkpoint_steps(&store)
        .map_err(|e| LoadFailure::from_format(e, location))?;

    // The base model, against its pin.
    let base = match &spec.base {
        None => None,
        Some(pin) => match store.get(pin.run_key()) {
            Ok(b) => {
                bytes_read += b.len() as u64;
                let found = snapshot_format::hash::file_hash(&b);
                if found == pin.blake3 {
                    Some(b)
                } else {
                    problems.push(Problem::new(
                        Verdict::Tampered,
                        pin.run_key(),
                        format!(
                            "BLAKE3 {found} does not match the spec's pinned {}",
                            pin.blake3
                        ),
                    ));
                    None
                }
            }
            Err(e) => {
                note(&mut problems, e, location)?;
                None
            }
        },
    };

    let states_store = store.clone();
    let mut ctx = RunContext {
        location: location.to_string(),
        store,
        manifest_hash: snapshot_format::hash::file_hash(&manifest_bytes),
        manifest,
        spec,
        dataset_manifest,
        dataset,
        records,
        segments,
        checkpoints,
        completion,
        completion_hash,
        base,
        base_parsed: std::sync::OnceLock::new(),
        signatures: SignatureReport::default(),
        trust: options.trust.clone(),
        states: run_store::CheckpointReader::new(states_store, limits),
        limits,
        problems,
        bytes_read,
    };
    structural_checks(&mut ctx, &indices);
    let (signatures, signature_problems) =
        crate::signatures::check(&ctx.store, &ctx.expected_signatures(), &options.trust)
            .map_err(LoadFailure::Command)?;
    ctx.signatures = signatures;
    ctx.problems.extend(signature_problems);
    Ok(ctx)
}

/// Reading limits for the run: its states at most the bytes the spec's model implies (its
/// parameters and the optimizer's slots, `f32`), so that a checkpoint that declares larger
/// tensors is refused before anything is allocated for them; any other object (the dataset,
/// the base model) at most `max` bytes (`--max-decoded-bytes`).
fn decode_limits(spec: &RunSpec, max: Option<u64>) -> Result<ReadLimits, CommandError> {
    let cap = max.unwrap_or(snapshot_format::limits::DEFAULT_MAX_DECODED_BYTES);
    let implied = spec.state_bytes().unwrap_or(u128::from(cap));
    if implied > u128::from(cap) {
        return Err(CommandError::Usage(format!(
            "the run's model implies states of {implied} bytes, above the limit of {cap} \
             (--max-decoded-bytes)"
        )));
    }
    Ok(ReadLimits {
        max_decoded_bytes: implied as u64,
        max_object_bytes: cap,
    })
}

/// Checks that need only what is loaded: expected objects present, nothing beyond the run's
/// last step, completion consistent, batch hashes consistent with the dataset manifest.
/// `segment_indices` are the segments listed in the store.
fn structural_checks(ctx: &mut RunContext, segment_indices: &[u64]) {
    let interval = ctx.interval();
    let total = ctx.spec.run.steps;
    let mut problems = Vec::new();
    // Nothing may run past the spec's final step (or the completion's segment count).
    let allowed = segment_ending_at(total, interval).min(
        ctx.completion
            .as_ref()
            .map(|c| c.segments)
            .unwrap_or(u64::MAX),
    );
    for &i in segment_indices.iter().filter(|&&i| i > allowed) {
        problems.push(Problem::new(
            Verdict::Tampered,
            layout::segment(i),
            format!(
                "a segment beyond the run's last: {total} steps with checkpoints every \
                 {interval} make {} segments",
                segment_ending_at(total, interval)
            ),
        ));
    }
    for r in ctx.records.values().filter(|r| r.step > total) {
        problems.push(Problem::new(
            Verdict::Tampered,
            layout::segment(segment_ending_at(r.step, interval)),
            format!("records step {}, beyond the run's {total} steps", r.step),
        ));
    }
    for &c in ctx
        .checkpoints
        .iter()
        .filter(|&&c| c > total || !snapshot_format::layout::is_checkpoint_step(c, total, interval))
    {
        problems.push(Problem::new(
            Verdict::Tampered,
            layout::checkpoint(c),
            format!(
                "a checkpoint at step {c}, which is not a checkpoint step of this run \
                 ({total} steps, every {interval})"
            ),
        ));
    }
    for step in ctx.expected_checkpoints() {
        if !ctx.checkpoints.contains(&step) {
            problems.push(Problem::new(
                Verdict::Missing,
                layout::checkpoint(step),
                "checkpoint absent".to_string(),
            ));
        }
    }
    // Segments must end at checkpoint steps.
    for s in ctx.segments.values() {
        if !snapshot_format::layout::is_checkpoint_step(s.last_step, total, interval) {
            problems.push(Problem::new(
                Verdict::Tampered,
                s.key.clone(),
                format!(
                    "ends at step {}, which is not a checkpoint step",
                    s.last_step
                ),
            ));
        }
    }
    match &ctx.completion {
        None => {
            let last = ctx.records.keys().next_back().copied().unwrap_or(0);
            let detail = if last >= total {
                format!(
                    "the ledger reaches the final step {total} but {} is absent",
                    layout::COMPLETE
                )
            } else {
                format!("no completion record; the ledger ends at step {last} of {total}")
            };
            let kind = if last >= total {
                Verdict::Missing
            } else {
                Verdict::Incomplete
            };
            problems.push(Problem::new(kind, layout::COMPLETE, detail));
        }
        Some(c) => {
            let last = ctx.records.values().next_back();
            let expected_segments = segment_ending_at(total, interval);
            let mut wrong = Vec::new();
            if c.run_id != ctx.manifest.run_id {
                wrong.push(format!(
                    "run id {:?} (manifest {:?})",
                    c.run_id, ctx.manifest.run_id
                ));
            }
            if c.final_step != total {
                wrong.push(format!("final step {} (spec {total})", c.final_step));
            }
            if c.segments != expected_segments {
                wrong.push(format!(
                    "{} segments (expected {expected_segments})",
                    c.segments
                ));
            }
            if let Some(r) = last {
                if r.step == total && r.hash() != c.ledger_head {
                    wrong.push(format!(
                        "ledger head {} (ledger {})",
                        c.ledger_head,
                        r.hash()
                    ));
                }
                if r.step == total && r.state_root != Some(c.final_state_root) {
                    wrong.push(format!("final state root {}", c.final_state_root));
                }
            }
            if !wrong.is_empty() {
                problems.push(Problem::new(
                    Verdict::Tampered,
                    layout::COMPLETE,
                    wrong.join("; "),
                ));
            }
        }
    }
    // Every record's batch must hash as the dataset manifest says.
    if let Some(m) = &ctx.dataset_manifest {
        for r in ctx.records.values() {
            if let Some(bad) = r.example_ids.iter().find(|&&id| id >= m.len()) {
                problems.push(Problem::new(
                    Verdict::Tampered,
                    layout::segment(segment_ending_at(r.step, interval)),
                    format!(
                        "step {} lists example {bad}, beyond the dataset's {} examples",
                        r.step,
                        m.len()
                    ),
                ));
                continue;
            }
            let hashes: Vec<Hash32> = r
                .example_ids
                .iter()
                .map(|&i| m.example_hashes[i as usize])
                .collect();
            let computed = snapshot_format::hash::batch_hash(&hashes);
            if computed != r.batch_hash {
                problems.push(Problem::new(
                    Verdict::Tampered,
                    layout::segment(segment_ending_at(r.step, interval)),
                    format!(
                        "step {}: batch hash {} is not the hash of its examples in the dataset manifest ({computed})",
                        r.step, r.batch_hash
                    ),
                ));
            }
        }
    }
    ctx.problems.extend(problems);
}

/// Record a format error as a problem; operational errors stop the load.
fn note(
    problems: &mut Vec<Problem>,
    e: snapshot_format::Error,
    location: &str,
) -> Result<(), LoadFailure> {
    problems.push(problem_of(e).map_err(|e| LoadFailure::from_format(e, location))?);
    Ok(())
}

/// Why a run could not be loaded at all.
#[derive(Debug)]
enum LoadFailure {
    /// The manifest is missing, corrupt or tampered: a finding about the run.
    Problem(Problem),
    /// An operational or usage error.
    Command(CommandError),
}

impl LoadFailure {
    fn from_format(e: snapshot_format::Error, location: &str) -> Self {
        match problem_of(e) {
            Ok(mut p) => {
                if p.artefact.is_empty() {
                    p.artefact = location.to_string();
                }
                LoadFailure::Problem(p)
            }
            Err(e) => LoadFailure::Command(e.into()),
        }
    }
}
