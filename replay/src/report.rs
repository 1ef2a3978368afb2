//! Verdicts, problems and exit codes: what every command reports (`specs/replay-cli.md`).

use serde::{Deserialize, Serialize};

/// The answer of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Integrity checks passed (commands that do not re-execute).
    Ok,
    /// Re-execution reproduced every recorded bit; for a state, it was re-derived by replay
    /// from the re-derived step 0 (the pinned base weights, the seed and the data).
    Verified,
    /// A state that is the one the run's ledger commits to (a stored checkpoint whose root the
    /// ledger records, or replayed from one), but not re-derived from step 0.
    Recorded,
    /// Re-execution produced different bits: the first step and field are reported.
    Diverged,
    /// An example's content no longer matches its recorded hash.
    InputMismatch,
    /// This machine is not in the run's environment class: bit-exactness is not promised here.
    EnvironmentMismatch,
    /// The run has no completion record: it is still running, was interrupted, or its end was
    /// deleted.
    Incomplete,
    /// An artefact is absent.
    Missing,
    /// An artefact's bytes are inconsistent with themselves (truncated, bad hash inside it).
    Corrupt,
    /// An artefact is well formed but does not match what another artefact commits to.
    Tampered,
    /// A signature does not verify, or signs something other than the artefact it is filed for.
    BadSignature,
    /// Trusted keys were given, and an artefact is signed only by other keys.
    UntrustedSigner,
    /// Signatures are required, and an artefact has none.
    Unsigned,
}

impl Verdict {
    /// Process exit status: 0 verified or ok; 1 verification failed; 2 integrity violation.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Ok | Verdict::Verified | Verdict::Recorded => 0,
            Verdict::Diverged | Verdict::InputMismatch | Verdict::EnvironmentMismatch => 1,
            Verdict::Incomplete
            | Verdict::Missing
            | Verdict::Corrupt
            | Verdict::Tampered
            | Verdict::BadSignature
            | Verdict::UntrustedSigner
            | Verdict::Unsigned => 2,
        }
    }

    /// True when the verdict is a pass.
    pub fn passed(self) -> bool {
        self.exit_code() == 0
    }

    /// Name as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Verified => "verified",
            Verdict::Recorded => "recorded",
            Verdict::Diverged => "diverged",
            Verdict::InputMismatch => "input_mismatch",
            Verdict::EnvironmentMismatch => "environment_mismatch",
            Verdict::Incomplete => "incomplete",
            Verdict::Missing => "missing",
            Verdict::Corrupt => "corrupt",
            Verdict::Tampered => "tampered",
            Verdict::BadSignature => "bad_signature",
            Verdict::UntrustedSigner => "untrusted_signer",
            Verdict::Unsigned => "unsigned",
        }
    }

    /// How bad a verdict is: its exit status first; within an exit status, `recorded` is a
    /// weaker pass than `verified` and `ok`, and `environment_mismatch` (a difference that
    /// rounding explains) a milder failure than `diverged` or `input_mismatch`.
    fn severity(self) -> (u8, u8) {
        let within = match self {
            Verdict::Recorded => 1,
            Verdict::Diverged | Verdict::InputMismatch => 1,
            _ => 0,
        };
        (self.exit_code(), within)
    }

    /// The worse of two verdicts (by their severity: exit status first); on a tie, `self`.
    pub fn worst(self, other: Verdict) -> Verdict {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The most a command can claim when nothing it found is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Integrity of what is stored, nothing re-executed (`check`, `provenance`, `inspect`,
    /// `compare`): `ok`.
    Integrity,
    /// Recorded steps re-executed bit for bit (`verify`, `audit`, `collect`): `verified`.
    Replay,
    /// A state (`rollback`, `diff`, `counterfactual`): `verified` when every state the command
    /// rests on was re-derived by replay from the re-derived step 0, `recorded` otherwise.
    State { rederived: bool },
}

impl Claim {
    fn best(self) -> Verdict {
        match self {
            Claim::Integrity => Verdict::Ok,
            Claim::Replay | Claim::State { rederived: true } => Verdict::Verified,
            Claim::State { rederived: false } => Verdict::Recorded,
        }
    }
}

/// Everything a command found about a run: the one place where a verdict is decided.
///
/// It starts from every problem known about the run (`RunContext::assessment` takes them all from the
/// loaded context: artefacts, the hash chain, ledger bounds, the base model, signatures under
/// the trust options), so no command can leave a class of problem out; the command adds what it
/// found itself (replays, states), and [`Assessment::verdict`] folds all of it into the verdict
/// of its [`Claim`]. A verdict is the worst finding: the highest exit status, the first found on
/// a tie, and at best the claim's own.
#[derive(Debug, Clone, Default)]
pub struct Assessment {
    problems: Vec<Problem>,
    outcomes: Vec<Verdict>,
}

impl Assessment {
    /// An assessment that starts from `problems` (a loaded run's: `RunContext::assessment`).
    pub fn with_problems(problems: Vec<Problem>) -> Self {
        Assessment {
            problems,
            outcomes: vec![],
        }
    }

    /// A problem found by the command.
    pub fn problem(&mut self, p: Problem) {
        self.problems.push(p);
    }

    /// The verdict of something the command re-executed or reconstructed (a range, a state).
    pub fn outcome(&mut self, v: Verdict) {
        self.outcomes.push(v);
    }

    /// Every problem, in the order found.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The header of the report of `command` on `run`: the verdict of `claim` and every
    /// problem.
    pub fn header(&self, command: &str, run: &str, claim: Claim) -> Header {
        let mut header = Header::pending(command, run);
        header.assess(self, claim);
        header
    }

    /// The verdict.
    pub fn verdict(&self, claim: Claim) -> Verdict {
        self.problems
            .iter()
            .map(|p| p.kind)
            .chain(self.outcomes.iter().copied())
            .fold(claim.best(), Verdict::worst)
    }
}

/// What every report begins with: the command, the run it is about, its verdict, and every
/// problem that counts toward the verdict (in JSON, the document's first fields). A verdict is
/// decided once, by an [`Assessment`] ([`Assessment::header`]), or is the problem that stopped
/// the run from loading ([`Header::failed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The command's name.
    pub command: String,
    /// The run's location, as given.
    pub run: String,
    pub verdict: Verdict,
    pub problems: Vec<Problem>,
}

impl Header {
    /// The header of a report still being made: its verdict is `incomplete` until an
    /// assessment decides it ([`Header::assess`]).
    pub fn pending(command: &str, run: &str) -> Self {
        Header {
            command: command.into(),
            run: run.into(),
            verdict: Verdict::Incomplete,
            problems: vec![],
        }
    }

    /// The verdict of `claim` under `assessment`, and every problem it holds.
    pub fn assess(&mut self, assessment: &Assessment, claim: Claim) {
        self.verdict = assessment.verdict(claim);
        self.problems = assessment.problems().to_vec();
    }

    /// The header of a report on a run that could not be loaded: its verdict is the problem's.
    pub fn failed(command: &str, run: &str, problem: Problem) -> Self {
        Header {
            command: command.into(),
            run: run.into(),
            verdict: problem.kind,
            problems: vec![problem],
        }
    }
}

/// A command's report: a serialisable document that begins with its [`Header`], and the exit
/// status it gives (`specs/replay-cli.md` §2).
pub trait Report: Serialize {
    fn header(&self) -> &Header;

    fn header_mut(&mut self) -> &mut Header;

    /// The exit status: the verdict's.
    fn exit_code(&self) -> u8 {
        self.header().verdict.exit_code()
    }
}

/// One problem found in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `missing`, `corrupt`, `tampered` or `incomplete`.
    pub kind: Verdict,
    /// The artefact (store key) it concerns.
    pub artefact: String,
    pub detail: String,
}

impl Problem {
    /// A problem of `kind` with `artefact`.
    pub fn new(kind: Verdict, artefact: impl Into<String>, detail: impl Into<String>) -> Self {
        Problem {
            kind,
            artefact: artefact.into(),
            detail: detail.into(),
        }
    }
}

/// The integrity verdict of a format error: missing, corrupt or tampered; `None` for an
/// operational failure (store unreachable, permission), which is not a finding about the run.
pub fn classify(e: &snapshot_format::Error) -> Option<Verdict> {
    use snapshot_format::Error as E;
    if !e.is_integrity_violation() {
        return None;
    }
    Some(match e {
        E::ObjectMissing { .. } | E::PartMissing { .. } => Verdict::Missing,
        // A checkpoint that cannot be reconstructed is what its reference is: missing,
        // corrupt or tampered.
        E::DeltaReferenceUnavailable { source, .. } => return classify(source),
        // A well-formed reference other than the one the delta was encoded against.
        E::ChainBroken { .. }
        | E::DeltaReferenceMismatch { .. }
        | E::MisplacedCheckpoint { .. }
        | E::SegmentMisplaced { .. }
        | E::StepOutOfOrder { .. }
        | E::SpecHashMismatch { .. }
        | E::DatasetRootMismatch { .. }
        | E::ObjectConflict { .. } => Verdict::Tampered,
        E::BadSignature { .. } => Verdict::BadSignature,
        _ => Verdict::Corrupt,
    })
}

/// The problem a format error represents, or the error itself when it is operational.
pub fn problem_of(e: snapshot_format::Error) -> Result<Problem, snapshot_format::Error> {
    match classify(&e) {
        Some(kind) => Ok(Problem::new(
            kind,
            e.artefact().unwrap_or_default().to_string(),
            e.to_string(),
        )),
        None => Err(e),
    }
}

/// The verdict of a trainer error met while loading a run, as a problem, or the error when it
/// is operational or a usage error.
pub fn problem_of_trainer(e: trainer::Error) -> Result<Problem, trainer::Error> {
    match e {
        trainer::Error::Format(f) => problem_of(f).map_err(trainer::Error::Format),
        trainer::Error::BaseModelHashMismatch {
            path,
            pinned,
            found,
        } => Ok(Problem::new(
            Verdict::Tampered,
            path,
            format!("base model BLAKE3 {found} does not match the pinned {pinned}"),
        )),
        trainer::Error::Run { store, detail } => Ok(Problem::new(Verdict::Tampered, store, detail)),
        trainer::Error::Dataset { path, detail }
        | trainer::Error::DatasetRow { path, detail, .. } => {
            Ok(Problem::new(Verdict::Corrupt, path, detail))
        }
        trainer::Error::Config { path, detail } | trainer::Error::BaseModel { path, detail } => {
            Ok(Problem::new(Verdict::Corrupt, path, detail))
        }
        other => Err(other),
    }
}

/// A file the user named for `option` (a probe, a statement, a list of ids): a regular file of
/// at most [`snapshot_format::limits::MAX_DOCUMENT_BYTES`], or a usage error.
pub fn read_document(path: &std::path::Path, option: &str) -> Result<Vec<u8>, CommandError> {
    snapshot_format::file::read_file(path, snapshot_format::limits::MAX_DOCUMENT_BYTES)
        .map_err(|e| CommandError::Usage(format!("{option} {e}")))
}

/// An error that stops a command: operational or usage (exit 3).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Format(#[from] snapshot_format::Error),
    #[error(transparent)]
    Trainer(#[from] trainer::Error),
    #[error("{0}")]
    Usage(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_ordering() {
        assert_eq!(Verdict::Verified.exit_code(), 0);
        assert_eq!(Verdict::Diverged.exit_code(), 1);
        assert_eq!(Verdict::EnvironmentMismatch.exit_code(), 1);
        assert_eq!(Verdict::Tampered.exit_code(), 2);
        assert_eq!(
            Verdict::Verified.worst(Verdict::Diverged),
            Verdict::Diverged
        );
        assert_eq!(
            Verdict::Tampered.worst(Verdict::Diverged),
            Verdict::Tampered
        );
        assert_eq!(
            serde_json::to_string(&Verdict::InputMismatch).expect("json"),
            "\"input_mismatch\""
        );
    }

    #[test]
    fn an_assessment_is_at_best_its_claim_and_at_worst_its_worst_finding() {
        let mut a = Assessment::default();
        assert_eq!(a.verdict(Claim::Integrity), Verdict::Ok);
        assert_eq!(a.verdict(Claim::Replay), Verdict::Verified);
        assert_eq!(
            a.verdict(Claim::State { rederived: false }),
            Verdict::Recorded
        );
        a.outcome(Verdict::Verified);
        assert_eq!(
            a.verdict(Claim::State { rederived: false }),
            Verdict::Recorded,
            "a verified replay from a stored checkpoint does not make the state re-derived"
        );
        a.outcome(Verdict::EnvironmentMismatch);
        assert_eq!(a.verdict(Claim::Replay), Verdict::EnvironmentMismatch);
        a.outcome(Verdict::Diverged);
        assert_eq!(
            a.verdict(Claim::Replay),
            Verdict::Diverged,
            "a divergence beyond noise outweighs a difference within it"
        );
        a.problem(Problem::new(Verdict::Unsigned, "ledger/x", "no signature"));
        assert_eq!(a.verdict(Claim::Replay), Verdict::Unsigned);
        a.problem(Problem::new(Verdict::Tampered, "ledger/y", "chain"));
        assert_eq!(
            a.verdict(Claim::Replay),
            Verdict::Unsigned,
            "first on a tie"
        );
    }
}
