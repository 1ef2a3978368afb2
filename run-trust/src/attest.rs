//! Standard attestations (`specs/signatures.md` §6): in-toto Statements v1 in DSSE envelopes,
//! signed with an ed25519 key (the run's, or an auditor's), and OpenSSF model-signing bundles
//! (a Sigstore bundle v0.3 holding a DSSE envelope of the model-signing statement over every
//! file of a model directory), signed with an ECDSA P-256 key as `model_signing verify key`
//! checks them. Both are JSON that the ecosystem's own verifiers read: `model_signing`, and
//! in-toto / securesystemslib for the DSSE envelopes.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use snapshot_format::{Error, Result};

/// DSSE payload type of in-toto statements.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// Predicate type of model-signing statements (model_signing 1.x).
pub const MODEL_SIGNING_PREDICATE: &str = "https://model_signing/signature/v1.0";
/// Media type of the Sigstore bundles model_signing reads.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Predicate type of this project's training provenance (`specs/signatures.md` §6.2).
pub const TRAINING_PREDICATE: &str = "urn:training-replay-verifier:training-run:v1";
/// Predicate type of this project's replay verification results (`specs/signatures.md` §6.3).
pub const VERIFICATION_PREDICATE: &str = "urn:training-replay-verifier:replay-verification:v1";
/// Predicate type of a state that replay reconstructed and exported (`rollback`,
/// `counterfactual`; `specs/signatures.md` §6.2).
pub const STATE_PREDICATE: &str = "urn:training-replay-verifier:replayed-state:v1";
/// Predicate type of the findings of `replay investigate` (`specs/signatures.md` §6.3).
pub const INVESTIGATION_PREDICATE: &str = "urn:training-replay-verifier:backdoor-investigation:v1";

/// An in-toto ResourceDescriptor: a name and its digests by algorithm (lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

impl ResourceDescriptor {
    /// A file by its SHA-256 and BLAKE3 digests.
    pub fn file(name: &str, bytes: &[u8]) -> Self {
        ResourceDescriptor {
            name: name.to_string(),
            digest: BTreeMap::from([
                ("sha256".to_string(), hex::encode(Sha256::digest(bytes))),
                (
                    "blake3".to_string(),
                    blake3::hash(bytes).to_hex().to_string(),
                ),
            ]),
        }
    }
}

/// An in-toto Statement v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<ResourceDescriptor>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: serde_json::Value,
}

impl Statement {
    pub fn new(
        subject: Vec<ResourceDescriptor>,
        predicate_type: &str,
        predicate: serde_json::Value,
    ) -> Self {
        Statement {
            statement_type: STATEMENT_TYPE.into(),
            subject,
            predicate_type: predicate_type.into(),
            predicate,
        }
    }
}

/// A DSSE envelope (payload and signatures in standard base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    pub keyid: String,
    pub sig: String,
}

/// DSSE's pre-authentication encoding: `DSSEv1 SP len(type) SP type SP len(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The key id securesystemslib gives an ed25519 key by default (SHA-256 of the canonical JSON
/// of `{"keytype", "keyval": {"public": hex}, "scheme"}`), so that in-toto tooling matches the
/// envelope's signature to the key without being told.
pub fn ed25519_keyid(key: &ed25519_dalek::VerifyingKey) -> String {
    let canonical = format!(
        r#"{{"keytype":"ed25519","keyval":{{"public":"{}"}},"scheme":"ed25519"}}"#,
        hex::encode(key.as_bytes())
    );
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// `statement` in a DSSE envelope signed with `key`: the envelope's JSON, pretty-printed.
pub fn sign_statement(statement: &Statement, key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    let payload = serde_json::to_vec(statement).unwrap_or_default();
    let sig = key.sign(&pae(PAYLOAD_TYPE, &payload));
    let envelope = Envelope {
        payload: BASE64.encode(&payload),
        payload_type: PAYLOAD_TYPE.into(),
        signatures: vec![EnvelopeSignature {
            keyid: ed25519_keyid(&key.verifying_key()),
            sig: BASE64.encode(sig.to_bytes()),
        }],
    };
    let mut json = serde_json::to_vec_pretty(&envelope).unwrap_or_default();
    json.push(b'\n');
    json
}

/// A statement read from its envelope, and the keys (of those offered) whose signature over it
/// verifies.
#[derive(Debug, Clone)]
pub struct Opened {
    pub statement: Statement,
    pub signers: Vec<ed25519_dalek::VerifyingKey>,
    /// Offered keys named by a signature's key id whose signature does not verify: the
    /// statement (or the signature) was altered after signing.
    pub failed: Vec<ed25519_dalek::VerifyingKey>,
    /// Signatures in the envelope that no offered key verifies.
    pub unverified: usize,
}

/// Read the DSSE envelope of an in-toto statement (`artefact` names it in errors) and check its
/// signatures against `keys`. Whether the signers are trusted is the caller's decision.
pub fn open_statement(
    bytes: &[u8],
    artefact: &str,
    keys: &[ed25519_dalek::VerifyingKey],
) -> Result<Opened> {
    let json = |detail: String| Error::Json {
        artefact: artefact.to_string(),
        detail,
    };
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| json(e.to_string()))?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(json(format!(
            "payload type {:?}, not {PAYLOAD_TYPE}",
            envelope.payload_type
        )));
    }
    let payload = BASE64
        .decode(&envelope.payload)
        .map_err(|e| json(format!("payload: {e}")))?;
    let statement: Statement =
        serde_json::from_slice(&payload).map_err(|e| json(format!("statement: {e}")))?;
    if statement.statement_type != STATEMENT_TYPE {
        return Err(json(format!(
            "statement type {:?}, not {STATEMENT_TYPE}",
            statement.statement_type
        )));
    }
    let message = pae(&envelope.payload_type, &payload);
    let mut signers = Vec::new();
    let mut failed = Vec::new();
    let mut unverified = 0;
    for s in &envelope.signatures {
        let signer = BASE64
            .decode(&s.sig)
            .ok()
            .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
            .and_then(|sig| keys.iter().find(|k| k.verify(&message, &sig).is_ok()));
        match signer {
            Some(k) if !signers.contains(k) => signers.push(*k),
            Some(_) => {}
            None => {
                unverified += 1;
                failed.extend(keys.iter().filter(|k| ed25519_keyid(k) == s.keyid));
            }
        }
    }
    Ok(Opened {
        statement,
        signers,
        failed,
        unverified,
    })
}

/// An ECDSA P-256 key pair for model signing, generated from the operating system's randomness.
pub fn generate_model_signing_key() -> Result<p256::ecdsa::SigningKey> {
    let mut seed = [0u8; 32];
    loop {
        getrandom::fill(&mut seed).map_err(|e| Error::InvalidKey {
            source_name: "the operating system's random source".into(),
            detail: e.to_string(),
        })?;
        // A 256-bit string is a valid scalar unless it is zero or not below the group order.
        if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&seed) {
            return Ok(k);
        }
    }
}

/// PKCS#8 PEM of a P-256 private key, as model_signing reads it.
pub fn model_signing_key_pem(key: &p256::ecdsa::SigningKey) -> Result<String> {
    use p256::pkcs8::EncodePrivateKey;
    key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map(|p| p.to_string())
        .map_err(|e| Error::InvalidKey {
            source_name: "P-256 key".into(),
            detail: e.to_string(),
        })
}

/// SubjectPublicKeyInfo PEM of a P-256 public key.
pub fn model_signing_public_pem(key: &p256::ecdsa::VerifyingKey) -> Result<String> {
    use p256::pkcs8::EncodePublicKey;
    key.to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| Error::InvalidKey {
            source_name: "P-256 key".into(),
            detail: e.to_string(),
        })
}

/// The key hint of a model-signing bundle: the SHA-256 of the public key's PEM, in hex.
pub fn public_key_hint(public_pem: &str) -> String {
    hex::encode(Sha256::digest(public_pem.as_bytes()))
}

/// Read a P-256 private key (PKCS#8 PEM, as `trainer keygen --kind p256` writes it).
pub fn read_model_signing_key(path: &std::path::Path) -> Result<p256::ecdsa::SigningKey> {
    use p256::pkcs8::DecodePrivateKey;
    let invalid = |detail: String| Error::InvalidKey {
        source_name: path.display().to_string(),
        detail,
    };
    let text = crate::signature::read_key_text(path).map_err(|e| invalid(e.to_string()))?;
    p256::ecdsa::SigningKey::from_pkcs8_pem(&text)
        .map_err(|e| invalid(format!("not a PKCS#8 PEM P-256 private key ({e})")))
}

/// Read a P-256 public key (SubjectPublicKeyInfo PEM).
pub fn read_model_signing_public_key(path: &std::path::Path) -> Result<p256::ecdsa::VerifyingKey> {
    use p256::pkcs8::DecodePublicKey;
    let invalid = |detail: String| Error::InvalidKey {
        source_name: path.display().to_string(),
        detail,
    };
    let text = crate::signature::read_key_text(path).map_err(|e| invalid(e.to_string()))?;
    p256::ecdsa::VerifyingKey::from_public_key_pem(&text)
        .map_err(|e| invalid(format!("not a PEM P-256 public key ({e})")))
}

/// The model-signing statement over the files of a model directory (`(name, bytes)`, names
/// relative to the directory with `/` separators), `ignore` listing the directory's paths that
/// are not part of the model (the signature itself, the attestations beside it).
pub fn model_signing_statement(
    model_name: &str,
    files: &[(String, Vec<u8>)],
    ignore: &[&str],
) -> Statement {
    let mut resources: Vec<(String, [u8; 32])> = files
        .iter()
        .map(|(name, bytes)| (name.clone(), Sha256::digest(bytes).into()))
        .collect();
    resources.sort();
    let mut root = Sha256::new();
    for (_, digest) in &resources {
        root.update(digest);
    }
    let predicate = serde_json::json!({
        "serialization": {
            "method": "files",
            "hash_type": "sha256",
            "allow_symlinks": false,
            "ignore_paths": ignore,
        },
        "resources": resources
            .iter()
            .map(|(name, d)| serde_json::json!({
                "name": name,
                "algorithm": "sha256",
                "digest": hex::encode(d),
            }))
            .collect::<Vec<_>>(),
    });
    Statement::new(
        vec![ResourceDescriptor {
            name: model_name.to_string(),
            digest: BTreeMap::from([("sha256".to_string(), hex::encode(root.finalize()))]),
        }],
        MODEL_SIGNING_PREDICATE,
        predicate,
    )
}

/// A model-signing bundle (`model.sig`) over the files of a model directory, signed with `key`
/// (ECDSA P-256 over SHA-256, DER, the bundle's key hint the SHA-256 of the public key's PEM),
/// as `model_signing sign key` writes it.
pub fn model_signing_bundle(
    model_name: &str,
    files: &[(String, Vec<u8>)],
    ignore: &[&str],
    key: &p256::ecdsa::SigningKey,
) -> Result<Vec<u8>> {
    let statement = model_signing_statement(model_name, files, ignore);
    let payload = serde_json::to_vec(&statement).unwrap_or_default();
    let sig: p256::ecdsa::Signature =
        p256::ecdsa::signature::Signer::sign(key, &pae(PAYLOAD_TYPE, &payload));
    let public = model_signing_public_pem(key.verifying_key())?;
    let bundle = serde_json::json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": public_key_hint(&public)},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": BASE64.encode(&payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": BASE64.encode(sig.to_der().as_bytes()), "keyid": ""}],
        },
    });
    let mut json = serde_json::to_vec_pretty(&bundle).unwrap_or_default();
    json.push(b'\n');
    Ok(json)
}

/// Paths `model_signing` leaves out of a model by default (`ignore_git_paths`).
const GIT_PATHS: [&str; 4] = [".git", ".gitattributes", ".github", ".gitignore"];

/// Whether `path` is `ignored` or lies under it.
fn under(path: &str, ignored: &str) -> bool {
    let ignored = ignored.trim_end_matches('/');
    path == ignored
        || path
            .strip_prefix(ignored)
            .is_some_and(|r| r.starts_with('/'))
}

/// Check a model-signing bundle against the files of a model directory and a P-256 key, as
/// `model_signing verify key` does: the key hint, the signature over the DSSE payload, a
/// statement of one subject whose root digest is the SHA-256 of its resources' digests in the
/// order listed, a `files` serialization over SHA-256 without symbolic links, and then its
/// manifest (each resource's path and digest) equal to the directory's: every file of `files`
/// (paths relative to the directory, `/`-separated, the whole tree) but those under its
/// `ignore_paths` and git's, none missing, none extra, every digest equal. The error names the
/// differences.
pub fn verify_model_signing_bundle(
    bundle: &[u8],
    artefact: &str,
    files: &[(String, Vec<u8>)],
    key: &p256::ecdsa::VerifyingKey,
) -> Result<()> {
    use p256::ecdsa::signature::Verifier as _;
    let bad = |detail: String| Error::BadSignature {
        artefact: artefact.to_string(),
        detail,
    };
    let json = |detail: String| Error::Json {
        artefact: artefact.to_string(),
        detail,
    };
    let v: serde_json::Value = serde_json::from_slice(bundle).map_err(|e| json(e.to_string()))?;
    if v["mediaType"] != BUNDLE_MEDIA_TYPE {
        return Err(json(format!("media type {}", v["mediaType"])));
    }
    let hint = public_key_hint(&model_signing_public_pem(key)?);
    if v["verificationMaterial"]["publicKey"]["hint"] != hint.as_str() {
        return Err(bad(
            "signed with another key (the bundle's key hint differs)".into(),
        ));
    }
    let envelope: Envelope =
        serde_json::from_value(v["dsseEnvelope"].clone()).map_err(|e| json(e.to_string()))?;
    let payload = BASE64
        .decode(&envelope.payload)
        .map_err(|e| json(format!("payload: {e}")))?;
    let sig = envelope
        .signatures
        .first()
        .and_then(|s| BASE64.decode(&s.sig).ok())
        .and_then(|b| p256::ecdsa::Signature::from_der(&b).ok())
        .ok_or_else(|| bad("no ECDSA signature".into()))?;
    key.verify(&pae(&envelope.payload_type, &payload), &sig)
        .map_err(|_| bad("the signature does not verify with this key".into()))?;
    let signed: Statement =
        serde_json::from_slice(&payload).map_err(|e| json(format!("statement: {e}")))?;
    if signed.predicate_type != MODEL_SIGNING_PREDICATE {
        return Err(json(format!("predicate type {:?}", signed.predicate_type)));
    }
    let [subject] = signed.subject.as_slice() else {
        return Err(json(format!(
            "{} subjects; a model-signing statement has one",
            signed.subject.len()
        )));
    };
    let serialization = &signed.predicate["serialization"];
    if serialization["method"] != "files"
        || serialization["hash_type"] != "sha256"
        || serialization["allow_symlinks"] != false
    {
        return Err(json(format!(
            "serialization {serialization}: only files hashed with SHA-256, without symbolic \
             links, are checked"
        )));
    }
    let ignore: Vec<String> = serde_json::from_value(serialization["ignore_paths"].clone())
        .map_err(|e| json(format!("ignore_paths: {e}")))?;
    #[derive(Deserialize)]
    struct Resource {
        name: String,
        algorithm: String,
        digest: String,
    }
    let resources: Vec<Resource> = serde_json::from_value(signed.predicate["resources"].clone())
        .map_err(|e| json(format!("resources: {e}")))?;
    // The root digest over the resources as listed: the manifest is the one signed.
    let mut root = Sha256::new();
    let mut expected = BTreeMap::new();
    for r in &resources {
        let digest = hex::decode(&r.digest)
            .ok()
            .filter(|d| d.len() == 32 && r.algorithm == "sha256")
            .ok_or_else(|| json(format!("resource {:?}: not a SHA-256 digest", r.name)))?;
        root.update(&digest);
        if expected
            .insert(r.name.as_str(), r.digest.as_str())
            .is_some()
        {
            return Err(json(format!("resource {:?} is listed twice", r.name)));
        }
    }
    if subject.digest.get("sha256").map(String::as_str) != Some(&hex::encode(root.finalize())) {
        return Err(bad(
            "the manifest is inconsistent: its resources do not hash to its root digest".into(),
        ));
    }
    let actual: BTreeMap<&str, String> = files
        .iter()
        .filter(|(name, _)| {
            !ignore
                .iter()
                .map(String::as_str)
                .chain(GIT_PATHS)
                .any(|i| under(name, i))
        })
        .map(|(name, bytes)| (name.as_str(), hex::encode(Sha256::digest(bytes))))
        .collect();
    let mut differences = Vec::new();
    for (name, digest) in &actual {
        match expected.get(name) {
            None => differences.push(format!("{name} is not signed")),
            Some(d) if d != digest => differences.push(format!("{name} differs")),
            Some(_) => {}
        }
    }
    for name in expected.keys().filter(|n| !actual.contains_key(*n)) {
        differences.push(format!("{name} is missing"));
    }
    if !differences.is_empty() {
        return Err(bad(format!(
            "the model's files differ from the signed manifest: {}",
            differences.join(", ")
        )));
    }
    Ok(())
}

/// The model-signing bundle written beside an export's files.
pub const MODEL_SIGNATURE: &str = "model.sig";
/// The provenance statement (a DSSE envelope) written beside an export's files.
pub const PROVENANCE: &str = "provenance.intoto.json";

/// Keys that sign an export: the in-toto provenance statement with an ed25519 key, the
/// model-signing bundle with a P-256 key. Either may be absent.
#[derive(Debug, Clone, Default)]
pub struct ExportKeys {
    pub statement: Option<ed25519_dalek::SigningKey>,
    pub model: Option<p256::ecdsa::SigningKey>,
}

/// The model name of an export directory or store URL, as model_signing names a model: the
/// last component of its path.
pub fn model_name(out: &str) -> &str {
    let trimmed = out.trim_end_matches('/');
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

/// The attestations of an export's `files`, to be written beside them: `provenance.intoto.json`
/// (a statement whose subjects are the files by SHA-256 and BLAKE3, with the given predicate)
/// when `keys` has a statement key, and `model.sig` (a model-signing bundle over the files,
/// named `model_name`, ignoring both attestation files) when it has a model key; by name.
pub fn export_attestations(
    model_name: &str,
    files: &[(String, Vec<u8>)],
    predicate_type: &str,
    predicate: serde_json::Value,
    keys: &ExportKeys,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(key) = &keys.statement {
        let subject = files
            .iter()
            .map(|(name, bytes)| ResourceDescriptor::file(name, bytes))
            .collect();
        let statement = Statement::new(subject, predicate_type, predicate);
        out.push((PROVENANCE.to_string(), sign_statement(&statement, key)));
    }
    if let Some(key) = &keys.model {
        let bundle = model_signing_bundle(model_name, files, &[MODEL_SIGNATURE, PROVENANCE], key)?;
        out.push((MODEL_SIGNATURE.to_string(), bundle));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_is_dsse_v1() {
        // The example of the DSSE specification (protocol.md, v1.0.0).
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn a_signed_statement_opens_only_with_its_key() {
        let key = crate::signature::generate().expect("key");
        let other = crate::signature::generate().expect("key");
        let statement = Statement::new(
            vec![ResourceDescriptor::file("model.safetensors", b"weights")],
            TRAINING_PREDICATE,
            serde_json::json!({"step": 3}),
        );
        let env = sign_statement(&statement, &key);
        let opened =
            open_statement(&env, "a", &[other.verifying_key(), key.verifying_key()]).expect("open");
        assert_eq!(opened.statement, statement);
        assert_eq!(opened.signers, vec![key.verifying_key()]);
        let foreign = open_statement(&env, "a", &[other.verifying_key()]).expect("open");
        assert!(foreign.signers.is_empty() && foreign.failed.is_empty());
        assert_eq!(foreign.unverified, 1);
        // A changed statement under the same signature verifies with no key.
        let mut e: Envelope = serde_json::from_slice(&env).expect("json");
        let mut changed = statement.clone();
        changed.predicate = serde_json::json!({"step": 4});
        e.payload = BASE64.encode(serde_json::to_vec(&changed).expect("json"));
        let forged = serde_json::to_vec(&e).expect("json");
        let opened = open_statement(&forged, "a", &[key.verifying_key()]).expect("open");
        assert!(opened.signers.is_empty());
        assert_eq!(opened.failed, vec![key.verifying_key()]);
        assert!(open_statement(b"{", "a", &[]).is_err());
    }

    #[test]
    fn a_model_signing_bundle_covers_every_file() {
        let key = generate_model_signing_key().expect("key");
        let files = vec![
            ("model.safetensors".to_string(), b"weights".to_vec()),
            ("config.json".to_string(), b"{}".to_vec()),
        ];
        let bundle = model_signing_bundle("m", &files, &["model.sig"], &key).expect("bundle");
        let vk = *key.verifying_key();
        verify_model_signing_bundle(&bundle, "model.sig", &files, &vk).expect("verifies");
        // The signature file itself, listed in ignore_paths, may sit beside the files.
        let mut with_sig = files.clone();
        with_sig.push(("model.sig".into(), bundle.clone()));
        verify_model_signing_bundle(&bundle, "model.sig", &with_sig, &vk).expect("verifies");
        let mut changed = files.clone();
        changed[0].1[0] ^= 1;
        assert!(verify_model_signing_bundle(&bundle, "s", &changed, &vk).is_err());
        let mut extra = files.clone();
        extra.push(("extra.bin".into(), vec![]));
        assert!(verify_model_signing_bundle(&bundle, "s", &extra, &vk).is_err());
        let other = *generate_model_signing_key().expect("key").verifying_key();
        assert!(verify_model_signing_bundle(&bundle, "s", &files, &other).is_err());
        // A key written and read back is the same key.
        let pem = model_signing_key_pem(&key).expect("pem");
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("k.pem"), pem).expect("write");
        let back = read_model_signing_key(&dir.path().join("k.pem")).expect("read");
        assert_eq!(back.verifying_key(), key.verifying_key());
    }
}
