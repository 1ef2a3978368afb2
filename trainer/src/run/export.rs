//! Exporting a completed run's final model, with its provenance attestations.

use crate::error::{Error, Result};
use run_store::Store;
use snapshot_format::layout;
use snapshot_format::manifest::Completion;

use super::files::*;

/// The run's copy of the base model its spec pins, checked against the pin.
/// Export the final state of the completed run at `location` into `out` (write-once objects):
/// `model.safetensors`, and for a LoRA run PEFT's adapter files and the merged model
/// ([`crate::peft::export_files`]). The final checkpoint must hash to the completion record's
/// state root. Returns the names written.
pub fn export_final(
    location: &str,
    out: &str,
    keys: &run_trust::attest::ExportKeys,
) -> Result<Vec<String>> {
    let store = Store::open(location)?;
    let files = RunFiles::load(&store)?;
    let c = Completion::from_json(&store.get(layout::COMPLETE)?, layout::COMPLETE)?;
    let snap = read_checkpoint(&store, c.final_step)?;
    if snap.header.state_root != c.final_state_root {
        return Err(Error::Run {
            store: store.location().to_string(),
            detail: format!(
                "the final checkpoint has root {}; the completion record says {}",
                snap.header.state_root, c.final_state_root
            ),
        });
    }
    let params = snap
        .header
        .tensors
        .iter()
        .zip(&snap.data)
        .filter(|(t, _)| !t.name.starts_with("optimizer."))
        .map(|(t, d)| {
            (
                t.name.clone(),
                t.shape.iter().map(|&d| d as usize).collect(),
                d.to_vec(),
            )
        })
        .collect();
    let base = run_base(&store, &files.spec)?;
    let pin = files.spec.base.as_ref().map(|b| b.blake3);
    let target = Store::create(out)?;
    let exported = crate::peft::export_files(&files.spec.model, base.as_ref(), pin, params)?;
    let attestations = run_trust::attest::export_attestations(
        run_trust::attest::model_name(out),
        &exported,
        run_trust::attest::TRAINING_PREDICATE,
        training_predicate(&files, &c),
        keys,
    )?;
    let mut written = Vec::new();
    for (name, bytes) in exported.into_iter().chain(attestations) {
        target.put_once(&name, bytes)?;
        written.push(name);
    }
    Ok(written)
}
/// The predicate of a run's training provenance statement (`specs/signatures.md` §6.2).
pub fn training_predicate(files: &RunFiles, c: &Completion) -> serde_json::Value {
    let m = &files.manifest;
    serde_json::json!({
        "runId": m.run_id,
        "genesis": m.genesis,
        "specBlake3": m.spec_hash,
        "engine": format!("{} {}", m.engine.name, m.engine.version),
        "environmentClass": m.environment.class(),
        "base": files.spec.base.as_ref().map(|b| serde_json::json!({"blake3": b.blake3})),
        "datasetRoot": files.spec.data.dataset_root,
        "seed": files.spec.run.seed,
        "finalStep": c.final_step,
        "segments": c.segments,
        "ledgerHead": c.ledger_head,
        "finalStateRoot": c.final_state_root,
    })
}
