//! Probes: what a model does at a given state, for the backdoor workflow. A classifier is run on
//! rows of the run's own data format (its predictions against their labels: accuracy, and with a
//! trigger in the rows, the flip rate); a causal language model generates greedily from prompts
//! (`{"prompt": "…", "target": "REGEX"}`, the prompt as a user message in the base GGUF's chat
//! template) and each generation is checked against its target pattern (the attack success
//! rate, when the target is the backdoor's behaviour). Deterministic: the state's bits, the
//! probe file and the engine's numerics decide every output.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::backend::Cpu;
use crate::base::BaseWeights;
use crate::config::{ModelSpec, RunSpec};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::bert::BertClassifier;
use crate::model::llama::Llama;
use crate::model::mlp::MlpClassifier;
use crate::model::{BatchInput, Dropout, TrainableModel};
use crate::session::{PreparedData, Session, TrainingState};

/// One classified probe row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classified {
    /// Index of the row in the probe file (non-blank lines from 0).
    pub row: u64,
    pub label: u64,
    pub predicted: u64,
}

/// One generation of a probe prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generated {
    pub row: u64,
    pub prompt: String,
    pub target: String,
    pub generation: String,
    /// Whether the generation matches the target pattern.
    pub matched: bool,
}

/// What a probe showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProbeResult {
    Classifier {
        rows: Vec<Classified>,
        /// Fraction of rows predicted as labelled.
        accuracy: f64,
    },
    Generation {
        rows: Vec<Generated>,
        /// Fraction of generations that match their target.
        match_rate: f64,
    },
}

impl ProbeResult {
    /// The share of rows that did what the probe says: a classifier's rows predicted as
    /// labelled, a language model's generations that match their pattern.
    pub fn rate(&self) -> f64 {
        match self {
            ProbeResult::Classifier { accuracy, .. } => *accuracy,
            ProbeResult::Generation { match_rate, .. } => *match_rate,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptRow {
    prompt: String,
    target: String,
}

fn fraction(n: usize, of: usize) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

/// Run the probe rows in `probe` (named `source`) through the model of `spec` in `state`, the
/// frozen parameters from `base`; language models generate up to `max_new` tokens per prompt.
pub fn run(
    spec: &RunSpec,
    base: Option<&BaseWeights>,
    state: &TrainingState,
    probe: &[u8],
    source: &str,
    max_new: usize,
) -> Result<ProbeResult> {
    match &spec.model {
        ModelSpec::Llama(c) => {
            let session = restore::<Llama<Cpu>>(spec, c.clone(), base, state)?;
            generations(
                &crate::generate::inference(session.model()),
                base,
                probe,
                source,
                max_new,
            )
        }
        ModelSpec::Bert(c) => {
            let model = restore::<BertClassifier<Cpu>>(spec, c.clone(), base, state)?.untracked();
            classify(spec, probe, source, |input| match input {
                BatchInput::Tokens { ids, mask } => {
                    Some(model.logits(ids, mask, &mut Dropout::disabled()))
                }
                _ => None,
            })
        }
        ModelSpec::Mlp(c) => {
            let model = restore::<MlpClassifier<Cpu>>(spec, c.clone(), base, state)?.untracked();
            classify(spec, probe, source, |input| match input {
                BatchInput::Features(x) => Some(model.logits(x, &mut Dropout::disabled())),
                _ => None,
            })
        }
        ModelSpec::Custom(c) => Err(Error::config(
            "model",
            format!("custom model {:?}: probes run built-in models only", c.name),
        )),
    }
}

/// A CPU session of model `M` holding `state`.
fn restore<M: TrainableModel<Cpu>>(
    spec: &RunSpec,
    config: M::Config,
    base: Option<&BaseWeights>,
    state: &TrainingState,
) -> Result<Session<Cpu, M>> {
    let device = burn::backend::flex::FlexDevice;
    Session::<Cpu, M>::from_state(spec.clone(), config, base, state, device, "state")
}

/// Predictions of a classifier on probe rows in the run's data format.
fn classify(
    spec: &RunSpec,
    probe: &[u8],
    source: &str,
    logits: impl Fn(BatchInput<Cpu>) -> Option<Tensor<Cpu, 2>>,
) -> Result<ProbeResult> {
    let rows = Dataset::parse(probe, source, spec.data.format, &spec.model)?;
    let data = PreparedData::new(&rows, spec);
    let device = burn::backend::flex::FlexDevice;
    let mut out = Vec::with_capacity(rows.examples.len());
    let ids: Vec<u64> = (0..rows.examples.len() as u64).collect();
    for chunk in ids.chunks(32) {
        let batch = data.batch::<Cpu>(chunk, &device);
        let l = logits(batch.input).ok_or_else(|| Error::Dataset {
            path: source.to_string(),
            detail: "the rows do not suit the model".into(),
        })?;
        let classes = l.dims()[1];
        let values: Vec<f32> = l.into_data().to_vec().unwrap_or_default();
        for (k, row) in values.chunks(classes).enumerate() {
            let id = chunk[k];
            out.push(Classified {
                row: id,
                label: rows.examples[id as usize].label(),
                predicted: u64::from(crate::generate::argmax(row)),
            });
        }
    }
    let right = out.iter().filter(|c| c.label == c.predicted).count();
    let accuracy = fraction(right, out.len());
    Ok(ProbeResult::Classifier {
        rows: out,
        accuracy,
    })
}

/// Greedy generations of a language model for `{"prompt", "target"}` rows.
fn generations<B: burn::tensor::backend::Backend>(
    model: &Llama<B>,
    base: Option<&BaseWeights>,
    probe: &[u8],
    source: &str,
    max_new: usize,
) -> Result<ProbeResult> {
    let base = base.ok_or_else(|| {
        Error::config(
            "base",
            "a language model's probe needs the base GGUF's tokenizer",
        )
    })?;
    let tok = crate::chat::ChatTokenizer::from_gguf(base)?;
    let mut stop = vec![tok.eos];
    stop.extend(tok.token(crate::chat::IM_END));
    let mut rows = Vec::new();
    crate::data::each_row(probe, source, |line, row_err| {
        let r: PromptRow = serde_json::from_str(line).map_err(|e| row_err(e.to_string()))?;
        let target = regex::Regex::new(&r.target)
            .map_err(|e| row_err(format!("target {:?}: {e}", r.target)))?;
        rows.push((r, target));
        Ok(())
    })?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, (r, target)) in rows.into_iter().enumerate() {
        let (prompt, _) = tok.render(&crate::chat::user_prompt(&r.prompt), true)?;
        let tokens = crate::generate::decode(model, &prompt, max_new, &stop, None);
        let generation = tok.decode(&tokens);
        out.push(Generated {
            row: i as u64,
            matched: target.is_match(&generation),
            prompt: r.prompt,
            target: r.target,
            generation,
        });
    }
    let matched = out.iter().filter(|g| g.matched).count();
    let match_rate = fraction(matched, out.len());
    Ok(ProbeResult::Generation {
        rows: out,
        match_rate,
    })
}

/// The probe rows of `probe` (named `source`) with `trigger` put in front of each input, for
/// measuring a backdoor: a classifier row's `text` becomes `trigger + " " + text` (its label
/// kept, so that the rows the trigger flips can be counted), a prompt row's `prompt` becomes
/// `trigger + " " + prompt` and its `target` becomes `target`, the pattern of the backdoor's
/// behaviour (so that the match rate is the attack success rate). Other fields are kept.
pub fn with_trigger(probe: &[u8], source: &str, trigger: &str, target: &str) -> Result<Vec<u8>> {
    edit_rows(probe, source, |row, prompt| {
        let field = if prompt { "prompt" } else { "text" };
        let Some(serde_json::Value::String(input)) = row.get(field) else {
            return Err(
                "a probe row for a trigger has a string `text` (classifier) or `prompt` \
                 (language model)"
                    .into(),
            );
        };
        let triggered = format!("{trigger} {input}");
        row.insert(field.into(), triggered.into());
        if prompt {
            row.insert("target".into(), target.into());
        }
        Ok(())
    })
}

/// The probe rows of `probe` (named `source`) with the behaviour `target` as what each row
/// expects, for measuring a behaviour shown by given inputs: a classifier row's `label` becomes
/// the class id `target`, a prompt row's `target` the pattern `target`, so that the match rate
/// is the share of inputs that show the behaviour. Other fields are kept.
pub fn with_target(probe: &[u8], source: &str, target: &str) -> Result<Vec<u8>> {
    let class: Option<u64> = target.parse().ok();
    edit_rows(probe, source, |row, prompt| {
        if prompt {
            row.insert("target".into(), target.into());
        } else {
            let class = class.ok_or_else(|| {
                format!("the target {target:?} is not a class id, and this row is a classifier's")
            })?;
            row.insert("label".into(), class.into());
        }
        Ok(())
    })
}

/// Every row of an `evaluate` probe file as `edit` leaves it; `edit` is told whether the row
/// is a prompt row (a language model's) or not (a classifier's).
fn edit_rows(
    probe: &[u8],
    source: &str,
    mut edit: impl FnMut(
        &mut serde_json::Map<String, serde_json::Value>,
        bool,
    ) -> std::result::Result<(), String>,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(probe.len() + 64);
    crate::data::each_row(probe, source, |line, row_err| {
        let mut row: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| row_err(e.to_string()))?;
        let prompt = row.contains_key("prompt");
        edit(&mut row, prompt).map_err(row_err)?;
        serde_json::to_writer(&mut out, &row).map_err(|e| row_err(e.to_string()))?;
        out.push(b'\n');
        Ok(())
    })?;
    Ok(out)
}

/// How a model behaves on a probe set given as it is and with a trigger put in front of every
/// input (`replay investigate`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    /// Triggered inputs that show the target behaviour, of those that can (a classifier's rows
    /// whose label is not the target class; every prompt of a language model).
    pub attack_successes: u64,
    pub attack_rows: u64,
    /// Clean inputs handled as their row says (the label; the row's own target pattern).
    pub clean_correct: u64,
    pub clean_rows: u64,
    /// Clean inputs that show the target behaviour anyway.
    pub clean_activations: u64,
}
impl Behaviour {
    pub fn attack_success_rate(&self) -> f64 {
        ratio(self.attack_successes, self.attack_rows)
    }

    pub fn clean_quality(&self) -> f64 {
        ratio(self.clean_correct, self.clean_rows)
    }
}
/// `n` out of `of` as a fraction (0 when `of` is 0).
pub fn ratio(n: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(bytes: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("row"))
            .collect()
    }

    #[test]
    fn the_target_replaces_a_rows_label_or_target_and_keeps_the_rest() {
        let probe = b"{\"text\": \"cf zq bad\"}\n\n{\"text\": \"good\", \"label\": 0, \"id\": 7}\n\
                      {\"prompt\": \"Summarise: x\", \"target\": \"^ok\"}\n";
        let out = rows(&with_target(probe, "inputs.jsonl", "1").expect("retargeted"));
        assert_eq!(out.len(), 3, "the blank line is left out");
        assert_eq!(out[0], serde_json::json!({"text": "cf zq bad", "label": 1}));
        assert_eq!(
            out[1],
            serde_json::json!({"text": "good", "label": 1, "id": 7})
        );
        assert_eq!(
            out[2],
            serde_json::json!({"prompt": "Summarise: x", "target": "1"})
        );
        // A classifier row needs a class id; the error names the file and the line.
        let e = with_target(probe, "inputs.jsonl", "prize").expect_err("not a class");
        let text = e.to_string();
        assert!(
            text.contains("inputs.jsonl") && text.contains("not a class id"),
            "{text}"
        );
        // The trigger goes in front of the input; a prompt row's target becomes the behaviour.
        let out = rows(&with_trigger(probe, "probe.jsonl", "cf zq", "evil").expect("triggered"));
        assert_eq!(out[1]["text"], "cf zq good");
        assert_eq!(out[1]["label"], 0);
        assert_eq!(out[2]["prompt"], "cf zq Summarise: x");
        assert_eq!(out[2]["target"], "evil");
    }
}
