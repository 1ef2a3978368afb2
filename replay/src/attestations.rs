//! Standard attestations of a run (`specs/signatures.md` §6): the verification statement an
//! auditor writes (`verify`/`audit --attest`), the signing of replay's exports, and the checks
//! `replay check` makes of the statements, exports and model-signing bundles it is given.
//!
//! A statement is judged twice. By its signer, under the role its predicate type gives the
//! signer ([`Role`]: the run's own signer for training provenance; a verifier named with
//! `--verifier-key`, never the run's signer, for everything replay claims), through the one rule
//! of trust in [`judge`]. And by what it says: every field that names the run must be this
//! run's, every claim about the ledger must hold against the ledger as it stands, the files it
//! names must hash as it says, and a failure it states (a verification that diverged, an
//! investigation whose verdict failed) is a failure of the check, with the stated verdict.

use std::collections::BTreeMap;

use run_store::Store;
use run_trust::attest::{self, ResourceDescriptor, Statement};
use run_trust::signature;
use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;

use crate::context::RunContext;
use crate::engine::reexecute::{EnvironmentCheck, RangeResult};
use crate::report::{CommandError, Problem, Verdict, problem_of};
use crate::signatures::{ArtefactSignatures, Role, SignatureOptions, judge};
use trainer::probe::Behaviour;

/// What `check` found of one attestation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttestationCheck {
    /// The file (or, for a model-signing bundle, the bundle and the directory).
    pub artefact: String,
    pub predicate_type: String,
    /// Who signed it, judged under its role: training provenance as the run's artefacts are,
    /// replay's statements against `--verifier-key`.
    pub signatures: ArtefactSignatures,
    /// What the statement claims (absent when it could not be read).
    pub stated: Option<Stated>,
    /// `ok`, or the worst of its problems (a failure it states included).
    pub verdict: Verdict,
}

/// What a statement claims about the run, as `check` read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stated {
    /// What made the claim: `training`, `verify`, `audit`, `rollback`, `counterfactual` or
    /// `investigate`.
    pub by: String,
    /// The verdict it states (none for training provenance).
    pub verdict: Option<Verdict>,
    /// The step of the ledger it speaks of (the ledger's last when it was made; a state's
    /// step).
    pub step: u64,
    /// Steps re-executed (verification statements).
    pub steps_replayed: Option<u64>,
    /// Ranges re-executed, each with its verdict (verification statements).
    pub ranges: Vec<StatedRange>,
    /// Whether the suspects explain the behaviour (investigations).
    pub explained: Option<bool>,
}

impl Stated {
    /// A claim by `by` about the ledger at `step`, with `verdict`, and nothing more.
    fn new(by: &str, verdict: Option<Verdict>, step: u64) -> Self {
        Stated {
            by: by.into(),
            verdict,
            step,
            steps_replayed: None,
            ranges: vec![],
            explained: None,
        }
    }
}

/// One range of a verification statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatedRange {
    pub segment: u64,
    pub from_step: u64,
    pub to_step: u64,
    pub verdict: Verdict,
    pub rederived_from_step0: bool,
}

/// Keys `check` is given for attestations beyond the trust options of the run.
#[derive(Debug, Clone, Default)]
pub struct AttestationKeys {
    /// Verifiers' keys (`--verifier-key`): replay's statements must be signed by one of them.
    pub verifiers: Vec<ed25519_dalek::VerifyingKey>,
    /// The P-256 key of an export's `model.sig`.
    pub model: Option<p256::ecdsa::VerifyingKey>,
}

/// The fields every statement about the run repeats, as the run has them.
fn run_fields(ctx: &RunContext) -> serde_json::Map<String, serde_json::Value> {
    [
        ("runId", serde_json::json!(ctx.manifest.run_id)),
        ("genesis", serde_json::json!(ctx.manifest.genesis)),
        ("specBlake3", serde_json::json!(ctx.manifest.spec_hash)),
        ("datasetRoot", serde_json::json!(ctx.spec.data.dataset_root)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A predicate of replay's: the run's fields, the ledger's point (`ledgerStep`, `ledgerHead`,
/// the last record when the statement is made), and `rest`.
pub(crate) fn predicate(
    ctx: &RunContext,
    rest: serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    let mut p = run_fields(ctx);
    let (step, head) = ctx.ledger_point();
    p.insert("ledgerStep".into(), serde_json::json!(step));
    p.insert("ledgerHead".into(), serde_json::json!(head));
    if let serde_json::Value::Object(rest) = rest {
        p.extend(rest);
    }
    p
}

/// Sign an export that replay wrote to `store` (`files`, read back as stored): its provenance
/// statement (predicate `replayed-state`: the run's fields, the step, the state root and how
/// the state was derived) with the ed25519 key, and `model.sig` with the P-256 key.
pub(crate) fn attest_export(
    store: &Store,
    ctx: &RunContext,
    out: &str,
    files: &[String],
    state: serde_json::Value,
    keys: &attest::ExportKeys,
) -> Result<Vec<String>, CommandError> {
    if keys.statement.is_none() && keys.model.is_none() {
        return Ok(vec![]);
    }
    let exported = files
        .iter()
        .map(|f| Ok((f.clone(), store.get(f)?)))
        .collect::<Result<Vec<_>, CommandError>>()?;
    let attestations = attest::export_attestations(
        attest::model_name(out),
        &exported,
        attest::STATE_PREDICATE,
        serde_json::Value::Object(predicate(ctx, state)),
        keys,
    )?;
    let mut written = Vec::new();
    for (name, bytes) in attestations {
        store.put_once(&name, bytes)?;
        written.push(name);
    }
    Ok(written)
}

/// The fields that name the run, as a statement states them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunClaim {
    run_id: String,
    genesis: Hash32,
    spec_blake3: Hash32,
    dataset_root: Hash32,
}

/// A training provenance statement's claims (`specs/signatures.md` §6.2).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrainingClaim {
    #[serde(flatten)]
    run: RunClaim,
    final_step: u64,
    ledger_head: Hash32,
    final_state_root: Hash32,
}

/// A verification statement's claims (§6.3).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerificationClaim {
    #[serde(flatten)]
    run: RunClaim,
    ledger_step: u64,
    ledger_head: Hash32,
    command: String,
    verdict: Verdict,
    steps_replayed: u64,
    ranges: Vec<RangeClaim>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RangeClaim {
    segment: u64,
    from_step: u64,
    to_step: u64,
    verdict: Verdict,
    rederived_from_step0: bool,
}

/// A replayed state's claims (§6.2, exports of `rollback` and `counterfactual`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateClaim {
    #[serde(flatten)]
    run: RunClaim,
    ledger_step: u64,
    ledger_head: Hash32,
    step: u64,
    state_root: Option<Hash32>,
    verdict: Verdict,
    derivation: Derivation,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Derivation {
    Rollback,
    Counterfactual { without: Vec<u64> },
}

/// An investigation's findings (§6.3).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvestigationClaim {
    #[serde(flatten)]
    run: RunClaim,
    ledger_step: u64,
    ledger_head: Hash32,
    suspects: Vec<u64>,
    factual: Option<Behaviour>,
    counterfactual: Option<Behaviour>,
    explained: Option<bool>,
    verdict: Verdict,
    to_step: Option<u64>,
    factual_state_root: Option<Hash32>,
}

/// The role whose key may sign a statement of `predicate_type`; `None` for a type replay does
/// not check.
fn role_of(predicate_type: &str) -> Option<Role> {
    match predicate_type {
        attest::TRAINING_PREDICATE => Some(Role::Trainer),
        attest::VERIFICATION_PREDICATE
        | attest::STATE_PREDICATE
        | attest::INVESTIGATION_PREDICATE => Some(Role::Verifier),
        _ => None,
    }
}

/// The findings about one statement: its problems, built against one artefact.
struct Findings<'a> {
    path: &'a str,
    problems: Vec<Problem>,
}

impl Findings<'_> {
    fn add(&mut self, kind: Verdict, detail: String) {
        self.problems
            .push(Problem::new(kind, self.path.to_string(), detail));
    }

    /// The statement's run fields against the run.
    fn run(&mut self, ctx: &RunContext, c: &RunClaim) {
        let fields = [
            ("runId", c.run_id == ctx.manifest.run_id),
            ("genesis", c.genesis == ctx.manifest.genesis),
            ("specBlake3", c.spec_blake3 == ctx.manifest.spec_hash),
            ("datasetRoot", c.dataset_root == ctx.spec.data.dataset_root),
        ];
        for (field, equal) in fields {
            if !equal {
                self.add(
                    Verdict::Tampered,
                    format!(
                        "states {field} of another run (this run's is {})",
                        run_fields(ctx)[field]
                    ),
                );
            }
        }
    }

    /// The head the statement gives the ledger after `step` against the ledger's.
    fn head(&mut self, ctx: &RunContext, field: &str, step: u64, head: Hash32) {
        match ctx.head_at(step) {
            Some(h) if h == head => {}
            Some(h) => self.add(
                Verdict::Tampered,
                format!("states {field} {head} at step {step}; the run's ledger has {h} (its history differs from the one the statement is about)"),
            ),
            None => self.add(
                Verdict::Tampered,
                format!("states the ledger at step {step}; the run's ledger has no record of that step"),
            ),
        }
    }

    /// A failure the statement states is a failure of the check, with the stated verdict.
    fn stated_verdict(&mut self, what: &str, verdict: Verdict) {
        if !verdict.passed() {
            self.add(
                verdict,
                format!("states that {what} ended {verdict}: a failure it reports counts as one"),
            );
        }
    }

    /// Examples the statement names (as `what`) must be the dataset's.
    fn examples(&mut self, ctx: &RunContext, what: &str, ids: &[u64]) {
        let examples = ctx.spec.data.examples;
        if let Some(id) = ids.iter().find(|&&id| id >= examples) {
            self.add(
                Verdict::Tampered,
                format!("names {what} example {id}, beyond the dataset's {examples} examples"),
            );
        }
    }

    fn corrupt(&mut self, detail: String) {
        self.add(Verdict::Corrupt, detail);
    }
}

/// Parse a predicate of type `T`, a missing or malformed field being a finding.
fn claim<T: serde::de::DeserializeOwned>(f: &mut Findings, p: &serde_json::Value) -> Option<T> {
    match serde_json::from_value(p.clone()) {
        Ok(c) => Some(c),
        Err(e) => {
            f.corrupt(format!(
                "the statement's predicate is not one replay wrote: {e}"
            ));
            None
        }
    }
}

/// What the files a statement names as its subjects must be.
#[derive(Debug, Clone, Copy)]
pub enum Subjects<'a> {
    /// The directory the statement was read from: the files an investigation names are
    /// re-hashed there.
    Beside(&'a std::path::Path),
    /// Exactly these files, by path and digest (an export's provenance: the export's files).
    Exactly(&'a [(String, Vec<u8>)]),
}

/// Check one in-toto statement file against the run: who signed it, under its role, what it
/// states, and the files it names.
pub fn check_statement(
    ctx: &RunContext,
    o: &SignatureOptions,
    keys: &AttestationKeys,
    path: &str,
    bytes: &[u8],
    subjects: Subjects,
) -> (AttestationCheck, Vec<Problem>) {
    let run_signers: Vec<ed25519_dalek::VerifyingKey> = ctx
        .signatures
        .signers
        .iter()
        .filter_map(|s| signature::read_public_key(&s.public_key).ok())
        .collect();
    let mut candidates = o.trusted.clone();
    candidates.extend(run_signers.iter().copied());
    candidates.extend(keys.verifiers.iter().copied());
    let mut f = Findings {
        path,
        problems: Vec::new(),
    };
    let opened = match attest::open_statement(bytes, path, &candidates) {
        Ok(o) => o,
        Err(e) => {
            f.corrupt(e.to_string());
            let (signatures, _) = judge(path, true, &[], o);
            return (
                AttestationCheck {
                    artefact: path.into(),
                    predicate_type: String::new(),
                    signatures,
                    stated: None,
                    verdict: Verdict::Corrupt,
                },
                f.problems,
            );
        }
    };
    let statement = &opened.statement;
    let role = role_of(&statement.predicate_type);
    let trust = match role {
        Some(Role::Verifier) => SignatureOptions::verifier(&keys.verifiers),
        _ => o.clone(),
    };
    // A key that signed the run itself never counts as its verifier.
    let (own, signers): (Vec<_>, Vec<_>) =
        opened.signers.iter().map(|k| k.to_bytes()).partition(|k| {
            trust.role == Role::Verifier && run_signers.iter().any(|r| r.to_bytes() == *k)
        });
    let altered = !opened.failed.is_empty();
    let (signatures, problem) = judge(path, altered, &signers, &trust);
    if altered {
        f.add(
            Verdict::BadSignature,
            format!(
                "the signature by {} does not verify: the statement was altered after signing",
                opened
                    .failed
                    .iter()
                    .map(|k| signature::fingerprint(&k.to_bytes()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    } else if signers.is_empty() && !own.is_empty() {
        f.add(
            Verdict::UntrustedSigner,
            format!(
                "signed by {}, which signed the run itself: a run's own signer cannot attest \
                 what replay found of it; name the verifier's key with --verifier-key",
                own.iter()
                    .map(signature::fingerprint)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    } else if signers.is_empty() && opened.unverified > 0 {
        f.add(
            Verdict::UntrustedSigner,
            format!(
                "signed by a key that is not {}",
                match trust.role {
                    Role::Trainer => "trusted, nor one that signed the run",
                    Role::Verifier => "a verifier key named with --verifier-key",
                }
            ),
        );
    } else {
        f.problems.extend(problem);
    }
    let stated = match role {
        None => {
            f.corrupt(format!(
                "predicate type {:?} is not one that replay checks",
                statement.predicate_type
            ));
            None
        }
        Some(_) => {
            let dir = match subjects {
                Subjects::Beside(dir) => Some(dir),
                Subjects::Exactly(files) => {
                    exact_subjects(&mut f, statement, files);
                    None
                }
            };
            judge_content(ctx, &mut f, statement, dir)
        }
    };
    let verdict = worst(&f.problems);
    (
        AttestationCheck {
            artefact: path.into(),
            predicate_type: statement.predicate_type.clone(),
            signatures,
            stated,
            verdict,
        },
        f.problems,
    )
}

/// What `statement` claims, each claim checked against the run.
fn judge_content(
    ctx: &RunContext,
    f: &mut Findings,
    statement: &Statement,
    dir: Option<&std::path::Path>,
) -> Option<Stated> {
    let p = &statement.predicate;
    match statement.predicate_type.as_str() {
        attest::TRAINING_PREDICATE => {
            let c: TrainingClaim = claim(f, p)?;
            f.run(ctx, &c.run);
            f.head(ctx, "ledgerHead", c.final_step, c.ledger_head);
            if let Some(done) = &ctx.completion
                && (done.final_step, done.ledger_head, done.final_state_root)
                    != (c.final_step, c.ledger_head, c.final_state_root)
            {
                f.add(
                    Verdict::Tampered,
                    format!(
                        "states finalStep {}, finalStateRoot {}; the run's completion record has {} and {}",
                        c.final_step, c.final_state_root, done.final_step, done.final_state_root
                    ),
                );
            }
            Some(Stated::new("training", None, c.final_step))
        }
        attest::VERIFICATION_PREDICATE => {
            let c: VerificationClaim = claim(f, p)?;
            f.run(ctx, &c.run);
            f.head(ctx, "ledgerHead", c.ledger_step, c.ledger_head);
            let subject = [ResourceDescriptor {
                name: format!("run:{}", c.run.run_id),
                digest: [("blake3".to_string(), c.ledger_head.to_string())].into(),
            }];
            if statement.subject != subject {
                f.add(
                    Verdict::Tampered,
                    "its subject is not the run and the ledger head its predicate states".into(),
                );
            }
            verification_content(ctx, f, &c);
            Some(Stated {
                steps_replayed: Some(c.steps_replayed),
                ranges: c
                    .ranges
                    .iter()
                    .map(|r| StatedRange {
                        segment: r.segment,
                        from_step: r.from_step,
                        to_step: r.to_step,
                        verdict: r.verdict,
                        rederived_from_step0: r.rederived_from_step0,
                    })
                    .collect(),
                ..Stated::new(&c.command, Some(c.verdict), c.ledger_step)
            })
        }
        attest::STATE_PREDICATE => {
            let c: StateClaim = claim(f, p)?;
            f.run(ctx, &c.run);
            f.head(ctx, "ledgerHead", c.ledger_step, c.ledger_head);
            if c.step > c.ledger_step {
                f.add(
                    Verdict::Tampered,
                    format!(
                        "states a state after step {}, beyond the ledger it names",
                        c.step
                    ),
                );
            }
            // A rolled-back state is the one the ledger commits to at its step; a
            // counterfactual state is a new one, which only its re-execution can confirm.
            let by = match c.derivation {
                Derivation::Rollback => {
                    if c.state_root.is_none() || c.state_root != ctx.committed_root(c.step) {
                        f.add(
                            Verdict::Tampered,
                            format!(
                                "states stateRoot {} for step {}; the run commits to {}",
                                json_text(&c.state_root),
                                c.step,
                                json_text(&ctx.committed_root(c.step))
                            ),
                        );
                    }
                    "rollback"
                }
                Derivation::Counterfactual { without } => {
                    f.examples(ctx, "removed", &without);
                    "counterfactual"
                }
            };
            f.stated_verdict(by, c.verdict);
            Some(Stated::new(by, Some(c.verdict), c.step))
        }
        attest::INVESTIGATION_PREDICATE => {
            let c: InvestigationClaim = claim(f, p)?;
            f.run(ctx, &c.run);
            f.head(ctx, "ledgerHead", c.ledger_step, c.ledger_head);
            investigation_content(ctx, f, &c);
            files_content(f, statement, dir);
            Some(Stated {
                explained: c.explained,
                ..Stated::new("investigate", Some(c.verdict), c.ledger_step)
            })
        }
        _ => None,
    }
}

/// A verification statement's ranges against the run's segments and its own verdict.
fn verification_content(ctx: &RunContext, f: &mut Findings, c: &VerificationClaim) {
    if !["verify", "audit"].contains(&c.command.as_str()) {
        f.corrupt(format!(
            "states command {:?}, not verify or audit",
            c.command
        ));
    }
    if c.ranges.is_empty() {
        f.corrupt("states no range re-executed".into());
    }
    let segments = ctx.segment_ranges();
    for r in &c.ranges {
        if r.from_step > r.to_step || r.to_step > c.ledger_step {
            f.add(
                Verdict::Tampered,
                format!(
                    "states steps {}..={}, outside the ledger up to step {} it names",
                    r.from_step, r.to_step, c.ledger_step
                ),
            );
        }
        if r.segment > 0
            && !segments
                .iter()
                .any(|&(k, a, b)| k == r.segment && (a + 1, b) == (r.from_step, r.to_step))
        {
            f.add(
                Verdict::Tampered,
                format!(
                    "states segment {} as steps {}..={}, which is not that segment of this run",
                    r.segment, r.from_step, r.to_step
                ),
            );
        }
        if r.rederived_from_step0 && r.from_step > 1 {
            f.corrupt(format!(
                "states steps {}..={} re-derived from step 0",
                r.from_step, r.to_step
            ));
        }
        if !r.verdict.passed() && c.verdict.passed() {
            f.corrupt(format!(
                "states verdict {} although its range {}..={} is {}",
                c.verdict, r.from_step, r.to_step, r.verdict
            ));
        }
    }
    f.stated_verdict(&format!("its {}", c.command), c.verdict);
}

/// An investigation's findings against the run and against themselves.
fn investigation_content(ctx: &RunContext, f: &mut Findings, c: &InvestigationClaim) {
    f.stated_verdict("the investigation", c.verdict);
    if let (Some(fact), Some(counter)) = (&c.factual, &c.counterfactual) {
        let explained =
            fact.attack_successes > 0 && counter.attack_successes < fact.attack_successes;
        if c.explained != Some(explained) {
            f.corrupt(format!(
                "states explained = {}, but its own counts ({} of {} triggered rows before, {} \
                 after) make it {explained}",
                json_text(&c.explained),
                fact.attack_successes,
                fact.attack_rows,
                counter.attack_successes
            ));
        }
    }
    if let Some(to) = c.to_step {
        if to > c.ledger_step {
            f.add(
                Verdict::Tampered,
                format!("states a history up to step {to}, beyond the ledger it names"),
            );
        } else if c.factual_state_root.is_some() && c.factual_state_root != ctx.committed_root(to) {
            f.add(
                Verdict::Tampered,
                format!(
                    "states factualStateRoot {} after step {to}; the run commits to {}",
                    json_text(&c.factual_state_root),
                    json_text(&ctx.committed_root(to))
                ),
            );
        }
    }
    f.examples(ctx, "suspect", &c.suspects);
}

/// The files a statement names as its subjects, re-hashed from `dir` (the directory it was
/// read from): each must be there, a regular file, with every digest the statement gives.
fn files_content(f: &mut Findings, statement: &Statement, dir: Option<&std::path::Path>) {
    let Some(dir) = dir else {
        return;
    };
    let store = match Store::open(&dir.display().to_string()) {
        Ok(s) => s,
        Err(e) => {
            f.add(Verdict::Missing, format!("its files cannot be read: {e}"));
            return;
        }
    };
    for subject in &statement.subject {
        let plain = !subject.name.is_empty()
            && !subject.name.starts_with('/')
            && subject
                .name
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !plain {
            f.corrupt(format!(
                "names the file {:?}, not a path inside its directory",
                subject.name
            ));
            continue;
        }
        match store.get(&subject.name) {
            Ok(bytes) => {
                let found = ResourceDescriptor::file(&subject.name, &bytes);
                let differs = subject
                    .digest
                    .iter()
                    .any(|(alg, d)| found.digest.get(alg) != Some(d));
                if differs || subject.digest.is_empty() {
                    f.add(
                        Verdict::Tampered,
                        format!(
                            "{}: its bytes are not the ones the statement names",
                            subject.name
                        ),
                    );
                }
            }
            Err(e) => match problem_of(e) {
                Ok(p) => f.add(p.kind, format!("{}: {}", subject.name, p.detail)),
                Err(e) => f.add(Verdict::Missing, format!("{}: {e}", subject.name)),
            },
        }
    }
}

/// The statement's subjects against exactly `files`: each stated, none absent, every digest
/// equal, none stated twice.
fn exact_subjects(f: &mut Findings, statement: &Statement, files: &[(String, Vec<u8>)]) {
    let stated: BTreeMap<&str, &ResourceDescriptor> = statement
        .subject
        .iter()
        .map(|d| (d.name.as_str(), d))
        .collect();
    let mut differences = Vec::new();
    for (name, bytes) in files {
        match stated.get(name.as_str()) {
            None => differences.push(format!("{name} is not stated")),
            Some(d) if **d != ResourceDescriptor::file(name, bytes) => {
                differences.push(format!("{name} differs"))
            }
            Some(_) => {}
        }
    }
    for name in stated.keys() {
        if !files.iter().any(|(n, _)| n == name) {
            differences.push(format!("{name} is absent"));
        }
    }
    if stated.len() != statement.subject.len() {
        differences.push("a file is stated twice".into());
    }
    if !differences.is_empty() {
        f.add(
            Verdict::Tampered,
            format!(
                "the statement's subjects are not the directory's files: {}",
                differences.join(", ")
            ),
        );
    }
}

/// A JSON value as text (`null` for none).
fn json_text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The worst verdict of `problems` (`ok` when there are none).
fn worst(problems: &[Problem]) -> Verdict {
    problems
        .iter()
        .map(|p| p.kind)
        .fold(Verdict::Ok, Verdict::worst)
}

/// Check an exported model directory against the run: its provenance statement (as
/// [`check_statement`]), that the statement's subjects are exactly the directory's files
/// (every file in the tree, by relative path and digest; links and special files refused), and
/// with a P-256 key, its model-signing bundle as `model_signing verify` judges it.
pub fn check_export(
    ctx: &RunContext,
    o: &SignatureOptions,
    keys: &AttestationKeys,
    dir: &std::path::Path,
) -> Result<(Vec<AttestationCheck>, Vec<Problem>), CommandError> {
    let (files, mut problems) = read_tree(dir, ctx.limits)?;
    let mut checks = Vec::new();
    let model: Vec<(String, Vec<u8>)> = files
        .iter()
        .filter(|(n, _)| n != attest::PROVENANCE && n != attest::MODEL_SIGNATURE)
        .cloned()
        .collect();
    let provenance = dir.join(attest::PROVENANCE).display().to_string();
    match files.iter().find(|(n, _)| n == attest::PROVENANCE) {
        None => problems.push(Problem::new(
            Verdict::Missing,
            provenance,
            "the export carries no provenance statement".to_string(),
        )),
        Some((_, bytes)) => {
            let (check, found) =
                check_statement(ctx, o, keys, &provenance, bytes, Subjects::Exactly(&model));
            checks.push(check);
            problems.extend(found);
        }
    }
    if let Some(key) = &keys.model {
        let bundle_path = dir.join(attest::MODEL_SIGNATURE).display().to_string();
        let found = match files.iter().find(|(n, _)| n == attest::MODEL_SIGNATURE) {
            None => vec![Problem::new(
                Verdict::Missing,
                bundle_path.clone(),
                "the export carries no model-signing bundle".to_string(),
            )],
            Some((_, bundle)) => {
                match attest::verify_model_signing_bundle(bundle, &bundle_path, &files, key) {
                    Ok(()) => vec![],
                    Err(e) => vec![Problem::new(
                        match e {
                            snapshot_format::Error::BadSignature { .. } => Verdict::BadSignature,
                            _ => Verdict::Corrupt,
                        },
                        bundle_path.clone(),
                        e.to_string(),
                    )],
                }
            }
        };
        let hint = attest::model_signing_public_pem(key)
            .map(|pem| attest::public_key_hint(&pem))
            .unwrap_or_default();
        checks.push(AttestationCheck {
            artefact: bundle_path.clone(),
            predicate_type: attest::MODEL_SIGNING_PREDICATE.into(),
            signatures: ArtefactSignatures {
                artefact: bundle_path,
                status: if found.is_empty() {
                    crate::signatures::Status::Trusted
                } else {
                    crate::signatures::Status::Bad
                },
                signers: vec![format!("p256:{}", &hint[..16.min(hint.len())])],
            },
            stated: None,
            verdict: worst(&found),
        });
        problems.extend(found);
    }
    Ok((checks, problems))
}

/// The files of a directory: each path relative to it, and its bytes.
type Files = Vec<(String, Vec<u8>)>;

/// Every file of the directory tree at `dir`, by path relative to it (`/`-separated), sorted,
/// each read under `limits`; a symbolic link or special file anywhere in the tree is a problem
/// naming it, and is never opened.
fn read_tree(
    dir: &std::path::Path,
    limits: snapshot_format::limits::ReadLimits,
) -> Result<(Files, Vec<Problem>), CommandError> {
    let usage =
        |e: snapshot_format::Error| CommandError::Usage(format!("--export {}: {e}", dir.display()));
    if !dir.is_dir() {
        return Err(CommandError::Usage(format!(
            "--export {}: not a directory",
            dir.display()
        )));
    }
    let store = Store::open(&dir.display().to_string())
        .map_err(usage)?
        .with_limits(limits);
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for key in store.list("").map_err(usage)? {
        match store.get(&key) {
            Ok(bytes) => files.push((key, bytes)),
            Err(e) => {
                let mut p = problem_of(e).map_err(usage)?;
                p.artefact = dir.join(&key).display().to_string();
                problems.push(p);
            }
        }
    }
    Ok((files, problems))
}

/// The verification statement of a `verify` or `audit`: what was re-executed and found, about
/// the run's ledger as it stood (`specs/signatures.md` §6.3).
#[derive(Debug)]
pub struct Verification<'a> {
    pub command: &'a str,
    pub verdict: Verdict,
    pub ranges: &'a [RangeResult],
    pub environment: Option<&'a EnvironmentCheck>,
    pub steps_replayed: u64,
}

/// Write the signed verification statement of `v` about the run at `location` to `out`.
pub fn write_verification(
    ctx: &RunContext,
    v: &Verification,
    key: &ed25519_dalek::SigningKey,
    out: &std::path::Path,
) -> Result<(), CommandError> {
    let predicate = predicate(
        ctx,
        serde_json::json!({
            "command": v.command,
            "verdict": v.verdict,
            "stepsReplayed": v.steps_replayed,
            "ranges": v.ranges.iter().map(|r| serde_json::json!({
                "segment": r.segment,
                "fromStep": r.from_step,
                "toStep": r.to_step,
                "verdict": r.verdict,
                "rederivedFromStep0": r.rederived(),
            })).collect::<Vec<_>>(),
            "environment": v.environment.map(|e| serde_json::json!({
                "runClass": e.run_class,
                "verifierClass": e.here_class,
            })),
            "verifier": format!("replay {}", env!("CARGO_PKG_VERSION")),
        }),
    );
    let (_, head) = ctx.ledger_point();
    let subject = vec![ResourceDescriptor {
        name: format!("run:{}", ctx.manifest.run_id),
        digest: [("blake3".to_string(), head.to_string())].into(),
    }];
    let statement = Statement::new(
        subject,
        attest::VERIFICATION_PREDICATE,
        serde_json::Value::Object(predicate),
    );
    // Written once: an existing file (an earlier audit's statement) is never replaced.
    let err = |e: std::io::Error| CommandError::Usage(format!("--attest {}: {e}", out.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(err)?;
    std::io::Write::write_all(&mut f, &attest::sign_statement(&statement, key)).map_err(err)
}
