//! Signatures of a run, checked against the artefacts they are filed for and a list of trusted
//! keys (`specs/signatures.md`).

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use run_store::Store;
use run_trust::signature::{self, Signed, Statement};
use serde::{Deserialize, Serialize};
use snapshot_format::layout;

use crate::report::{CommandError, Problem, Verdict, problem_of};

/// Who may sign a claim (`specs/signatures.md` §4, §6.5): the role decides which keys the
/// user names for it and whether a signature by a key nobody named can pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// The run's signer (the training team): the run's artefacts and its training provenance.
    /// Trusted under `--trusted-key`; with no key named, any valid signature is `valid`.
    #[default]
    Trainer,
    /// A verifier (an auditor, an investigator): statements of what replay re-executed,
    /// reconstructed or found. Trusted only under a key named with `--verifier-key`, and never
    /// a key that signed the run itself: a run cannot vouch for its own verification.
    Verifier,
}

impl Role {
    /// The keys of this role, as the user names them.
    fn named(self) -> &'static str {
        match self {
            Role::Trainer => "a trusted key (--trusted-key)",
            Role::Verifier => "a verifier key (--verifier-key)",
        }
    }
}

/// What to trust and require.
#[derive(Debug, Clone, Default)]
pub struct SignatureOptions {
    /// Keys whose signatures are trusted for the role (`--trusted-key`, `--verifier-key`).
    /// Naming one requires every artefact to carry a valid signature by one of them.
    pub trusted: Vec<VerifyingKey>,
    /// Every artefact must be validly signed, by anyone (`--require-signatures`).
    pub require: bool,
    /// Whose signatures these options judge.
    pub role: Role,
}

impl SignatureOptions {
    /// Whether an unsigned artefact is a problem: signatures are required, or a trusted key was
    /// named (a trust list that an artefact can satisfy by carrying no signature at all would
    /// let anyone strip the signatures of a rewritten history).
    pub fn required(&self) -> bool {
        self.require || !self.trusted.is_empty() || self.role == Role::Verifier
    }

    /// The options that judge a verifier's statement: signed by one of `verifiers`, required.
    pub fn verifier(verifiers: &[VerifyingKey]) -> Self {
        SignatureOptions {
            trusted: verifiers.to_vec(),
            require: true,
            role: Role::Verifier,
        }
    }
}

/// The signature status of one artefact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Signed by a trusted key.
    Trusted,
    /// Signed, signature valid; no trusted keys were given to judge the signer.
    Valid,
    /// Signed only by keys outside the trusted list.
    UnknownSigner,
    /// No signature.
    Unsigned,
    /// A signature does not verify or signs something else.
    Bad,
}

impl Status {
    /// The status as the JSON documents write it.
    pub fn name(self) -> &'static str {
        match self {
            Status::Trusted => "trusted",
            Status::Valid => "valid",
            Status::UnknownSigner => "unknown_signer",
            Status::Unsigned => "unsigned",
            Status::Bad => "bad",
        }
    }
}

/// One artefact and who signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtefactSignatures {
    pub artefact: String,
    pub status: Status,
    /// Fingerprints of the signers whose signatures verified.
    pub signers: Vec<String>,
}

/// A key that signed something in the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignerInfo {
    pub fingerprint: String,
    pub public_key: String,
    pub trusted: bool,
    /// Artefacts it validly signed.
    pub artefacts: u64,
}

/// Signatures of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureReport {
    pub trusted_keys: Vec<String>,
    pub required: bool,
    pub signers: Vec<SignerInfo>,
    pub artefacts: Vec<ArtefactSignatures>,
}

impl SignatureReport {
    /// How many artefacts have each status.
    pub fn count(&self, status: Status) -> usize {
        self.artefacts.iter().filter(|a| a.status == status).count()
    }
}

/// The one rule of trust: an artefact whose signatures by `keys` verified (and none failed,
/// unless `bad`) under the trust options `o`; and the problem that status is, if any. A
/// verifier's claim is never merely `valid`: without a verifier key that signed it, it is
/// `unknown_signer`.
pub fn judge(
    artefact: &str,
    bad: bool,
    keys: &[[u8; 32]],
    o: &SignatureOptions,
) -> (ArtefactSignatures, Option<Problem>) {
    let trusted: Vec<[u8; 32]> = o.trusted.iter().map(VerifyingKey::to_bytes).collect();
    let status = if bad {
        Status::Bad
    } else if keys.is_empty() {
        Status::Unsigned
    } else if keys.iter().any(|k| trusted.contains(k)) {
        Status::Trusted
    } else if trusted.is_empty() && o.role == Role::Trainer {
        Status::Valid
    } else {
        Status::UnknownSigner
    };
    let problem = match status {
        Status::UnknownSigner => Some(Problem::new(
            Verdict::UntrustedSigner,
            artefact.to_string(),
            format!(
                "signed only by {}, not by {}",
                keys.iter()
                    .map(signature::fingerprint)
                    .collect::<Vec<_>>()
                    .join(", "),
                o.role.named()
            ),
        )),
        Status::Unsigned if o.required() => Some(Problem::new(
            Verdict::Unsigned,
            artefact.to_string(),
            "no signature".to_string(),
        )),
        _ => None,
    };
    let judged = ArtefactSignatures {
        artefact: artefact.to_string(),
        status,
        signers: keys.iter().map(signature::fingerprint).collect(),
    };
    (judged, problem)
}

/// Check every signature of the run; returns the report and the problems it implies.
pub fn check(
    store: &Store,
    expected: &BTreeMap<String, Statement>,
    o: &SignatureOptions,
) -> Result<(SignatureReport, Vec<Problem>), CommandError> {
    let trusted: Vec<[u8; 32]> = o.trusted.iter().map(VerifyingKey::to_bytes).collect();
    let mut problems = Vec::new();
    let mut valid: BTreeMap<String, Vec<[u8; 32]>> = BTreeMap::new();
    let mut bad: BTreeMap<String, String> = BTreeMap::new();
    for key in store.list(layout::SIGNATURES)? {
        let Some(artefact) = signature::artefact_of(&key).map(str::to_string) else {
            problems.push(Problem::new(
                Verdict::Corrupt,
                key,
                "not a signature key".to_string(),
            ));
            continue;
        };
        let bytes = match store.get(&key) {
            Ok(b) => b,
            Err(e) => {
                problems.push(problem_of(e)?);
                continue;
            }
        };
        let signed = match Signed::decode(&bytes, &key) {
            Ok(s) => s,
            Err(e) => {
                problems.push(problem_of(e)?);
                bad.insert(artefact, "unreadable signature".into());
                continue;
            }
        };
        if signature::key_for(&signed.public_key, &artefact) != key {
            let detail = format!(
                "signed by {}, but filed under another signer",
                signed.signer()
            );
            problems.push(Problem::new(Verdict::BadSignature, key, detail.clone()));
            bad.insert(artefact, detail);
            continue;
        }
        let Some(statement) = expected.get(&artefact) else {
            // A signature of an artefact that is absent: the absence is reported elsewhere.
            continue;
        };
        match signed.verify(statement, &key) {
            Ok(()) => valid.entry(artefact).or_default().push(signed.public_key),
            Err(e) => {
                bad.insert(artefact, e.to_string());
                problems.push(problem_of(e)?);
            }
        }
    }
    let mut artefacts = Vec::new();
    let mut signers: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    for artefact in expected.keys() {
        let keys = valid.get(artefact).cloned().unwrap_or_default();
        for k in &keys {
            *signers.entry(*k).or_default() += 1;
        }
        let (judged, problem) = judge(artefact, bad.contains_key(artefact), &keys, o);
        problems.extend(problem);
        artefacts.push(judged);
    }
    let report = SignatureReport {
        trusted_keys: trusted.iter().map(signature::fingerprint).collect(),
        required: o.required(),
        signers: signers
            .into_iter()
            .map(|(k, n)| SignerInfo {
                fingerprint: signature::fingerprint(&k),
                public_key: hex::encode(k),
                trusted: trusted.contains(&k),
                artefacts: n,
            })
            .collect(),
        artefacts,
    };
    Ok((report, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_are_the_json_names() {
        for s in [
            Status::Trusted,
            Status::Valid,
            Status::UnknownSigner,
            Status::Unsigned,
            Status::Bad,
        ] {
            assert_eq!(serde_json::to_value(s).expect("json"), s.name());
        }
    }
}
