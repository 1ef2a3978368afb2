//! Standard attestations of a run (`specs/signatures.md` §6): the verification statement an
//! auditor writes (`verify`/`audit --attest`), and the checks `replay check` makes of the
//! statements and model-signing bundles it is given (who signed them, under the one rule of
//! trust in `signatures::judge`, and whether what they state is this run).

use serde::{Deserialize, Serialize};
use snapshot_format::attest::{self, ResourceDescriptor, Statement};
use snapshot_format::signature;

use crate::context::RunContext;
use crate::report::{CommandError, Problem, Verdict};
use crate::signatures::{ArtefactSignatures, SignatureOptions, judge};
use crate::verify::{EnvironmentCheck, RangeResult};

/// What `check` found of one attestation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttestationCheck {
    /// The file (or, for a model-signing bundle, the bundle and the directory).
    pub artefact: String,
    pub predicate_type: String,
    /// Who signed it, judged as the run's artefacts are (verification statements: against
    /// `--verifier-key`).
    pub signatures: ArtefactSignatures,
    /// `ok`, or the worst of its problems.
    pub verdict: Verdict,
}

/// Keys `check` is given for attestations beyond the trust options of the run.
#[derive(Debug, Clone, Default)]
pub struct AttestationKeys {
    /// Auditors' keys: verification statements must be signed by one of them.
    pub verifiers: Vec<ed25519_dalek::VerifyingKey>,
    /// The P-256 key of an export's `model.sig`.
    pub model: Option<p256::ecdsa::VerifyingKey>,
}

/// The fields every statement about the run repeats, as the run has them.
pub(crate) fn run_fields(ctx: &RunContext) -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("runId", serde_json::json!(ctx.manifest.run_id)),
        ("genesis", serde_json::json!(ctx.manifest.genesis)),
        ("specBlake3", serde_json::json!(ctx.manifest.spec_hash)),
        ("datasetRoot", serde_json::json!(ctx.spec.data.dataset_root)),
    ]
}

/// The head of the ledger as the statement's `ledgerStep` names it.
fn ledger_head_at(ctx: &RunContext, predicate: &serde_json::Value) -> serde_json::Value {
    let step = predicate["ledgerStep"].as_u64().unwrap_or(u64::MAX);
    serde_json::json!(ctx.records.get(&step).map(|r| r.hash()))
}

/// The last step of the ledger and its head (`ledgerStep`, `ledgerHead` of a statement).
pub(crate) fn ledger_point(ctx: &RunContext) -> (u64, snapshot_format::Hash32) {
    ctx.records
        .iter()
        .next_back()
        .map(|(s, r)| (*s, r.hash()))
        .unwrap_or((0, snapshot_format::Hash32::ZERO))
}

/// Sign an export that replay wrote to `store` (`files`, read back as stored): its provenance
/// statement (predicate `replayed-state`: the run's fields, the step, the state root and how
/// the state was derived) with the ed25519 key, and `model.sig` with the P-256 key.
pub(crate) fn attest_export(
    store: &snapshot_format::Store,
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
    let mut predicate: serde_json::Map<String, serde_json::Value> = run_fields(ctx)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if let serde_json::Value::Object(extra) = state {
        predicate.extend(extra);
    }
    Ok(attest::sign_export(
        store,
        attest::model_name(out),
        &exported,
        attest::STATE_PREDICATE,
        serde_json::Value::Object(predicate),
        keys,
    )?)
}

/// Check one in-toto statement file against the run: its signature and what it states.
pub fn check_statement(
    ctx: &RunContext,
    o: &SignatureOptions,
    keys: &AttestationKeys,
    path: &str,
    bytes: &[u8],
) -> (AttestationCheck, Vec<Problem>) {
    let run_signers: Vec<ed25519_dalek::VerifyingKey> = ctx
        .signatures
        .signers
        .iter()
        .filter_map(|s| signature::read_public_key(&s.public_key).ok())
        .collect();
    let mut candidates = o.trusted.clone();
    candidates.extend(run_signers);
    candidates.extend(keys.verifiers.iter().copied());
    let mut problems = Vec::new();
    let opened = match attest::open_statement(bytes, path, &candidates) {
        Ok(o) => o,
        Err(e) => {
            let p = Problem::new(Verdict::Corrupt, path.to_string(), e.to_string());
            let (signatures, _) = judge(path, true, &[], o);
            return (
                AttestationCheck {
                    artefact: path.into(),
                    predicate_type: String::new(),
                    signatures,
                    verdict: Verdict::Corrupt,
                },
                vec![p],
            );
        }
    };
    let statement = &opened.statement;
    let signers: Vec<[u8; 32]> = opened.signers.iter().map(|k| k.to_bytes()).collect();
    // Verification statements are an auditor's: trusted when a named verifier key signed them.
    let verifiers = SignatureOptions {
        trusted: keys.verifiers.clone(),
        require: true,
    };
    let by_auditor = [
        attest::VERIFICATION_PREDICATE,
        attest::INVESTIGATION_PREDICATE,
    ]
    .contains(&statement.predicate_type.as_str());
    let trust = if by_auditor { &verifiers } else { o };
    let altered = !opened.failed.is_empty();
    let (signatures, problem) = judge(path, altered, &signers, trust);
    if altered {
        problems.push(Problem::new(
            Verdict::BadSignature,
            path.to_string(),
            format!(
                "the signature by {} does not verify: the statement was altered after signing",
                opened
                    .failed
                    .iter()
                    .map(|k| signature::fingerprint(&k.to_bytes()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    } else if signers.is_empty() && opened.unverified > 0 {
        problems.push(Problem::new(
            Verdict::UntrustedSigner,
            path.to_string(),
            "signed by a key that is neither trusted nor one that signed the run".to_string(),
        ));
    } else {
        problems.extend(problem);
    }
    let p = &statement.predicate;
    let mut expect = run_fields(ctx);
    match statement.predicate_type.as_str() {
        attest::TRAINING_PREDICATE => {
            if let Some(c) = &ctx.completion {
                expect.push(("ledgerHead", serde_json::json!(c.ledger_head)));
                expect.push(("finalStep", serde_json::json!(c.final_step)));
                expect.push(("finalStateRoot", serde_json::json!(c.final_state_root)));
            }
        }
        // The ledger may have grown since: the head it names must be the record it names.
        attest::VERIFICATION_PREDICATE | attest::INVESTIGATION_PREDICATE => {
            expect.push(("ledgerHead", ledger_head_at(ctx, p)));
        }
        attest::STATE_PREDICATE => {
            // A rolled-back state is the one the ledger commits to at its step; a
            // counterfactual state is a new one, which only its re-execution can confirm.
            if p["derivation"]["kind"] == "rollback" {
                let step = p["step"].as_u64().unwrap_or(u64::MAX);
                expect.push(("stateRoot", serde_json::json!(ctx.committed_root(step))));
            }
        }
        other => problems.push(Problem::new(
            Verdict::Corrupt,
            path.to_string(),
            format!("predicate type {other:?} is not one that replay checks"),
        )),
    }
    for (field, want) in expect {
        if p[field] != want {
            problems.push(Problem::new(
                Verdict::Tampered,
                path.to_string(),
                format!("states {field} = {}, the run has {want}", p[field]),
            ));
        }
    }
    let verdict = worst(&problems);
    (
        AttestationCheck {
            artefact: path.into(),
            predicate_type: statement.predicate_type.clone(),
            signatures,
            verdict,
        },
        problems,
    )
}

/// The worst verdict of `problems` (`ok` when there are none).
fn worst(problems: &[Problem]) -> Verdict {
    problems
        .iter()
        .map(|p| p.kind)
        .max_by_key(|v| v.exit_code())
        .unwrap_or(Verdict::Ok)
}

/// Check an exported model directory against the run: its provenance statement (as
/// [`check_statement`]) and that the statement's subjects are the directory's files, and with a
/// P-256 key, its model-signing bundle over those files.
pub fn check_export(
    ctx: &RunContext,
    o: &SignatureOptions,
    keys: &AttestationKeys,
    dir: &std::path::Path,
) -> Result<(Vec<AttestationCheck>, Vec<Problem>), CommandError> {
    let files = read_dir_files(dir)?;
    let mut checks = Vec::new();
    let mut problems = Vec::new();
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
            let (mut check, mut found) = check_statement(ctx, o, keys, &provenance, bytes);
            if let Ok(opened) = attest::open_statement(bytes, &provenance, &[]) {
                let mut subjects = opened.statement.subject.clone();
                subjects.sort_by(|a, b| a.name.cmp(&b.name));
                let actual: Vec<ResourceDescriptor> = model
                    .iter()
                    .map(|(n, b)| ResourceDescriptor::file(n, b))
                    .collect();
                if subjects != actual {
                    found.push(Problem::new(
                        Verdict::Tampered,
                        provenance.clone(),
                        format!(
                            "the statement's subjects are not the directory's files ({} stated, {} present, or a digest differs)",
                            subjects.len(),
                            actual.len()
                        ),
                    ));
                }
            }
            check.verdict = worst(&found);
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
            verdict: worst(&found),
        });
        problems.extend(found);
    }
    Ok((checks, problems))
}

/// Every regular file directly in `dir`, by name, sorted.
fn read_dir_files(dir: &std::path::Path) -> Result<Vec<(String, Vec<u8>)>, CommandError> {
    let err = |e: std::io::Error| CommandError::Usage(format!("--export {}: {e}", dir.display()));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        if entry.file_type().map_err(err)?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((name, std::fs::read(entry.path()).map_err(err)?));
        }
    }
    files.sort();
    Ok(files)
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
    let (step, head) = ledger_point(ctx);
    let predicate = serde_json::json!({
        "runId": ctx.manifest.run_id,
        "genesis": ctx.manifest.genesis,
        "specBlake3": ctx.manifest.spec_hash,
        "datasetRoot": ctx.spec.data.dataset_root,
        "ledgerStep": step,
        "ledgerHead": head,
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
    });
    let subject = vec![ResourceDescriptor {
        name: format!("run:{}", ctx.manifest.run_id),
        digest: [("blake3".to_string(), head.to_string())].into(),
    }];
    let statement = Statement::new(subject, attest::VERIFICATION_PREDICATE, predicate);
    // Written once: an existing file (an earlier audit's statement) is never replaced.
    let err = |e: std::io::Error| CommandError::Usage(format!("--attest {}: {e}", out.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(err)?;
    std::io::Write::write_all(&mut f, &attest::sign_statement(&statement, key)).map_err(err)
}
