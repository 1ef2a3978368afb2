//! Signatures over a run's history: who committed to the manifest, each ledger segment head,
//! each checkpoint's state root and the completion record (`specs/signatures.md`).
//!
//! A signature is over a [`Statement`]: the kind of artefact, the run id, the run's genesis,
//! the step and the hash the artefact commits to, prefixed by a context string. Moving a
//! signature to another artefact, step or run changes the statement, and the signature no
//! longer verifies. Signatures are ed25519 (RFC 8032; deterministic, so a resumed run re-derives
//! identical signature objects).

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use snapshot_format::envelope::{self, SIGNATURE};
use snapshot_format::hash::{DomainHasher, Hash32};
use snapshot_format::{Error, Result, canonical, layout};

/// Prefix of every signed message.
pub const MESSAGE_CONTEXT: &[u8] = b"training-replay-verifier v1 signature\0";
/// BLAKE3 context of key fingerprints.
pub const FINGERPRINT_CONTEXT: &str = "training-replay-verifier v1 key fingerprint";

/// Kinds of signed artefacts.
pub mod kind {
    /// `manifest.json`: hash = file hash of its bytes, step 0.
    pub const MANIFEST: &str = "manifest";
    /// A ledger segment: hash = its head (hash of its last record), step = its last step.
    pub const SEGMENT: &str = "segment";
    /// A checkpoint: hash = its state root, step = its step.
    pub const CHECKPOINT: &str = "checkpoint";
    /// `complete.json`: hash = file hash of its bytes, step = the final step.
    pub const COMPLETION: &str = "completion";
    /// A verifier's report of one shard of a sharded verification: hash = file hash of the
    /// report's bytes, step = the shard's index. Signed by the verifier, not the trainer.
    pub const SHARD_REPORT: &str = "shard-report";
}

/// What a signature asserts.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    bincode::Encode,
    bincode::Decode,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Statement {
    pub kind: String,
    pub run_id: String,
    pub genesis: Hash32,
    pub step: u64,
    pub hash: Hash32,
}

impl Statement {
    /// The signed message: [`MESSAGE_CONTEXT`] followed by the canonical bincode of the
    /// statement.
    pub fn message(&self) -> Vec<u8> {
        let mut m = MESSAGE_CONTEXT.to_vec();
        m.extend_from_slice(&canonical::encode(self));
        m
    }
}

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
struct StoredSignature {
    statement: Statement,
    public_key: [u8; 32],
    signature: [u8; 64],
}

/// A signature object: the statement, the signer's public key and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub statement: Statement,
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
}

/// Short identity of a public key: `ed25519:` and the first 8 bytes, in hex, of
/// `BLAKE3-derive(FINGERPRINT_CONTEXT, public key)`.
pub fn fingerprint(public_key: &[u8; 32]) -> String {
    let mut h = DomainHasher::new(FINGERPRINT_CONTEXT);
    h.bytes(public_key);
    format!("ed25519:{}", h.finish().short())
}

/// The directory name of a signer's signatures (the fingerprint without its prefix).
fn signer_dir(public_key: &[u8; 32]) -> String {
    fingerprint(public_key)
        .trim_start_matches("ed25519:")
        .to_string()
}

/// Key of the signature by `public_key` over the artefact at `artefact_key`.
pub fn key_for(public_key: &[u8; 32], artefact_key: &str) -> String {
    format!(
        "{}{}/{artefact_key}.sig",
        layout::SIGNATURES,
        signer_dir(public_key)
    )
}

/// The artefact a signature key refers to, if `key` is a signature key.
pub fn artefact_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(layout::SIGNATURES)?;
    let (_, artefact) = rest.split_once('/')?;
    artefact.strip_suffix(".sig")
}

/// Sign `statement`.
pub fn sign(statement: Statement, key: &SigningKey) -> Signed {
    let signature = key.sign(&statement.message()).to_bytes();
    Signed {
        statement,
        public_key: key.verifying_key().to_bytes(),
        signature,
    }
}

impl Signed {
    /// Encode as a signature object.
    pub fn encode(&self) -> Vec<u8> {
        let stored = StoredSignature {
            statement: self.statement.clone(),
            public_key: self.public_key,
            signature: self.signature,
        };
        envelope::encode(SIGNATURE, &canonical::encode(&stored), &[])
    }

    /// Decode a signature object (its cryptographic validity is checked by [`Self::verify`]).
    pub fn decode(bytes: &[u8], artefact: &str) -> Result<Self> {
        let opened = envelope::open(SIGNATURE, bytes, artefact)?;
        let stored: StoredSignature = canonical::decode_exact(opened.header, artefact)?;
        opened.payload(0)?;
        Ok(Signed {
            statement: stored.statement,
            public_key: stored.public_key,
            signature: stored.signature,
        })
    }

    /// The signer's fingerprint.
    pub fn signer(&self) -> String {
        fingerprint(&self.public_key)
    }

    /// Check that this object signs exactly `expected` and that the signature verifies.
    pub fn verify(&self, expected: &Statement, artefact: &str) -> Result<()> {
        let bad = |detail: String| Error::BadSignature {
            artefact: artefact.to_string(),
            detail,
        };
        if self.statement != *expected {
            return Err(bad(format!(
                "it signs {} {:?} step {} hash {}, not this artefact ({} {:?} step {} hash {})",
                self.statement.kind,
                self.statement.run_id,
                self.statement.step,
                self.statement.hash.short(),
                expected.kind,
                expected.run_id,
                expected.step,
                expected.hash.short()
            )));
        }
        let key = VerifyingKey::from_bytes(&self.public_key)
            .map_err(|e| bad(format!("public key is not a valid ed25519 point: {e}")))?;
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.verify_strict(&self.statement.message(), &sig)
            .map_err(|_| {
                bad(format!(
                    "the signature by {} does not verify",
                    self.signer()
                ))
            })
    }
}

/// A new signing key from the operating system's random source.
pub fn generate() -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| Error::InvalidKey {
        source_name: "operating system random source".into(),
        detail: e.to_string(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A signing key as PKCS#8 PEM.
pub fn private_key_pem(key: &SigningKey) -> Result<String> {
    key.to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map(|s| s.to_string())
        .map_err(|e| Error::InvalidKey {
            source_name: "signing key".into(),
            detail: e.to_string(),
        })
}

/// A public key as SubjectPublicKeyInfo PEM.
pub fn public_key_pem(key: &VerifyingKey) -> Result<String> {
    key.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| Error::InvalidKey {
            source_name: "public key".into(),
            detail: e.to_string(),
        })
}

/// The text of a key file: a regular file of at most [`MAX_SIGNATURE_BYTES`](snapshot_format::limits::MAX_SIGNATURE_BYTES), UTF-8.
pub fn read_key_text(path: &Path) -> Result<String> {
    let bytes =
        snapshot_format::file::read_file(path, snapshot_format::limits::MAX_SIGNATURE_BYTES)?;
    String::from_utf8(bytes).map_err(|_| Error::InvalidKey {
        source_name: path.display().to_string(),
        detail: "not UTF-8 text".into(),
    })
}

/// Read a PKCS#8 PEM signing key.
pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    let name = path.display().to_string();
    let text = read_key_text(path)?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| Error::InvalidKey {
        source_name: name,
        detail: format!("not a PKCS#8 PEM ed25519 private key ({e})"),
    })
}

/// A public key given as 64 hex digits, or as a file holding them or a SubjectPublicKeyInfo
/// PEM (`trainer keygen` writes both).
pub fn read_public_key(spec: &str) -> Result<VerifyingKey> {
    let invalid = |detail: String| Error::InvalidKey {
        source_name: spec.to_string(),
        detail,
    };
    let from_hex = |s: &str| -> Option<VerifyingKey> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b).ok()?;
        VerifyingKey::from_bytes(&b).ok()
    };
    if let Some(k) = from_hex(spec) {
        return Ok(k);
    }
    let text = read_key_text(Path::new(spec)).map_err(|e| {
        invalid(format!(
            "neither 64 hexadecimal digits nor a readable key file ({e})"
        ))
    })?;
    if let Some(k) = from_hex(&text) {
        return Ok(k);
    }
    VerifyingKey::from_public_key_pem(&text)
        .map_err(|e| invalid(format!("not a hex or PEM ed25519 public key ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(step: u64) -> Statement {
        Statement {
            kind: kind::CHECKPOINT.into(),
            run_id: "r".into(),
            genesis: Hash32([1; 32]),
            step,
            hash: Hash32([2; 32]),
        }
    }

    #[test]
    fn signs_verifies_and_round_trips() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let s = sign(statement(4), &key);
        let back = Signed::decode(&s.encode(), "sig").expect("decodes");
        assert_eq!(back, s);
        back.verify(&statement(4), "sig").expect("verifies");
        assert!(matches!(
            back.verify(&statement(8), "sig"),
            Err(Error::BadSignature { .. })
        ));
        let mut forged = back.clone();
        forged.signature[0] ^= 1;
        assert!(matches!(
            forged.verify(&statement(4), "sig"),
            Err(Error::BadSignature { .. })
        ));
    }

    #[test]
    fn keys_round_trip_through_pem_and_hex() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let dir = std::env::temp_dir().join(format!("sig-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let pem = dir.join("k.pem");
        std::fs::write(&pem, private_key_pem(&key).expect("pem")).expect("write");
        assert_eq!(
            read_signing_key(&pem).expect("read").to_bytes(),
            key.to_bytes()
        );
        let public = key.verifying_key();
        let pub_pem = dir.join("k.pub.pem");
        std::fs::write(&pub_pem, public_key_pem(&public).expect("pem")).expect("write");
        assert_eq!(
            read_public_key(pub_pem.to_str().expect("utf-8")).expect("pem"),
            public
        );
        assert_eq!(
            read_public_key(&hex::encode(public.to_bytes())).expect("hex"),
            public
        );
        assert!(matches!(
            read_public_key("zz"),
            Err(Error::InvalidKey { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn signature_keys_name_signer_and_artefact() {
        let pk = SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes();
        let k = key_for(&pk, "ledger/segment-000001.seg");
        assert!(k.starts_with("signatures/") && k.ends_with("ledger/segment-000001.seg.sig"));
        assert_eq!(artefact_of(&k), Some("ledger/segment-000001.seg"));
        assert!(fingerprint(&pk).starts_with("ed25519:"));
    }
}
