//! `replay check`: the integrity of every artefact and of the chain, without re-executing any
//! step. Reports every problem found.

use serde::{Deserialize, Serialize};
use snapshot_format::layout;

use crate::attestations::{
    AttestationCheck, AttestationKeys, Subjects, check_export, check_statement,
};
use crate::context::{LoadOptions, RunContext};
use crate::report::{Claim, CommandError, Header, Problem, Report, problem_of};
use crate::signatures::SignatureReport;

/// What `check` looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub segments: u64,
    pub records: u64,
    pub checkpoints: u64,
    pub examples: u64,
    pub bytes: u64,
}

/// The JSON document of `replay check --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    #[serde(flatten)]
    pub header: Header,
    /// Findings that are not integrity problems (objects the layout does not know).
    pub warnings: Vec<String>,
    /// Who signed what (absent when the manifest could not be read).
    pub signatures: Option<SignatureReport>,
    pub checked: Counts,
    /// The attestations checked (`--attestation`, `--export`), each with its signer.
    #[serde(default)]
    pub attestations: Vec<AttestationCheck>,
    pub seconds: f64,
}

impl Report for CheckReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }
}

/// Attestations to check beside the run.
#[derive(Debug, Clone, Default)]
pub struct Attested {
    /// In-toto statement files (DSSE envelopes).
    pub statements: Vec<std::path::PathBuf>,
    /// Exported model directories.
    pub exports: Vec<std::path::PathBuf>,
    pub keys: AttestationKeys,
}

/// Check the run at `location`.
pub fn check(
    location: &str,
    options: &LoadOptions,
    attested: &Attested,
    progress: &indicatif::ProgressBar,
) -> Result<CheckReport, CommandError> {
    let report = CheckReport {
        header: Header::pending("check", location),
        warnings: vec![],
        signatures: None,
        checked: Counts::default(),
        attestations: vec![],
        seconds: 0.0,
    };
    super::on_run(location, options, report, |ctx, _| {
        check_on(ctx, attested, progress)
    })
}

/// [`check`] on a loaded run.
pub fn check_on(
    ctx: &RunContext,
    attested: &Attested,
    progress: &indicatif::ProgressBar,
) -> Result<CheckReport, CommandError> {
    let started = std::time::Instant::now();
    let location = ctx.location.as_str();
    let mut assessment = ctx.assessment();
    let (checkpoint_problems, checkpoint_bytes) = check_checkpoints(ctx, progress)?;
    for p in checkpoint_problems {
        assessment.problem(p);
    }
    let warnings = unexpected_objects(ctx)?;
    let mut attestations = Vec::new();
    for path in &attested.statements {
        let name = path.display().to_string();
        let bytes = crate::report::read_document(path, "--attestation")?;
        let (c, problems) = check_statement(
            ctx,
            &ctx.trust,
            &attested.keys,
            &name,
            &bytes,
            Subjects::Beside(match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => std::path::Path::new("."),
            }),
        );
        attestations.push(c);
        problems.into_iter().for_each(|p| assessment.problem(p));
    }
    for dir in &attested.exports {
        let (c, problems) = check_export(ctx, &ctx.trust, &attested.keys, dir)?;
        attestations.extend(c);
        problems.into_iter().for_each(|p| assessment.problem(p));
    }
    Ok(CheckReport {
        header: assessment.header("check", location, Claim::Integrity),
        warnings,
        signatures: Some(ctx.signatures.clone()),
        checked: Counts {
            segments: ctx.segments.len() as u64,
            records: ctx.records.len() as u64,
            checkpoints: ctx.checkpoints.len() as u64,
            examples: ctx.dataset.as_ref().map(|d| d.len()).unwrap_or(0),
            bytes: ctx.bytes_read + checkpoint_bytes,
        },
        attestations,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Decode every checkpoint and compare each with what the run commits to. Checkpoints are
/// streamed from the store in step order (never held whole in their encoded form), each
/// window of tensors decoded in parallel: a delta's reference is then the checkpoint just
/// verified, which the reader keeps decoded, so no chain is decoded twice.
fn check_checkpoints(
    ctx: &RunContext,
    progress: &indicatif::ProgressBar,
) -> Result<(Vec<Problem>, u64), CommandError> {
    progress.set_length(ctx.checkpoints.len() as u64);
    // A run of delta checkpoints needs each one's values for the next; others need none (a
    // wrong hint costs a second read, never a check).
    let keep = ctx.manifest.recording.codec == snapshot_format::manifest::CheckpointCodec::Delta;
    let mut problems = Vec::new();
    let mut bytes = 0;
    for &step in &ctx.checkpoints {
        let key = layout::checkpoint(step);
        let (checked, read) = ctx.states.check(step, keep);
        match checked {
            Ok(header) => {
                problems.extend(crate::state::commitment_problems(ctx, step, &key, &header))
            }
            Err(e) => problems.push(problem_of(e)?),
        }
        bytes += read;
        progress.inc(1);
    }
    Ok((problems, bytes))
}

/// Objects in the run that the layout does not define (verification results excepted).
fn unexpected_objects(ctx: &RunContext) -> Result<Vec<String>, CommandError> {
    // The base model's key is the one of its format, as the spec records it.
    let base = ctx.spec.base.as_ref().map(|b| b.run_key());
    let known = |k: &str| {
        [
            layout::MANIFEST,
            layout::DATASET_MANIFEST,
            layout::DATASET_DATA,
            layout::COMPLETE,
        ]
        .contains(&k)
            || Some(k) == base
            || layout::parse_checkpoint(k).is_some()
            || layout::parse_segment(k).is_some()
            || k.starts_with(layout::SIGNATURES)
            || k.starts_with(crate::shard::RESULTS_PREFIX)
    };
    Ok(ctx
        .store
        .list("")?
        .into_iter()
        .filter(|k| !known(k))
        .map(|k| format!("unexpected object {k}"))
        .collect())
}
