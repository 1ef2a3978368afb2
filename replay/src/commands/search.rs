//! `replay provenance --match`: every committed example whose content matches a pattern, and
//! the steps that used each.

use crate::commands::provenance::Use;
use crate::context::{LoadOptions, RunContext};
use crate::report::{Claim, CommandError, Header, Report, Verdict};
use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;

/// An example whose content matches a pattern of `provenance --match`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    pub example: u64,
    /// The example's committed hash.
    pub hash: Hash32,
    /// The searched text around the first match.
    pub excerpt: String,
    pub uses: Vec<Use>,
}
/// The JSON document of `replay provenance --match … --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchReport {
    #[serde(flatten)]
    pub header: Header,
    pub patterns: Vec<String>,
    /// What was searched: `text`, or `decoded tokens` (ids decoded by the base GGUF's
    /// tokenizer, the chat template's markup included).
    pub searched: String,
    /// The dataset root the search is a statement about (the committed one).
    pub dataset_root: Hash32,
    pub examples_searched: u64,
    pub matches: Vec<Match>,
    pub steps_scanned: u64,
}

impl Report for SearchReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }
}
/// Which part of a language model's rows [`searchable`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Every token, control tokens included: what `--match` searches.
    Whole,
    /// The tokens that are not targets of the loss (what the model reads, not the reply it is
    /// taught), as the contents of their messages (role lines and control tokens left out):
    /// where a trigger phrase lives.
    Inputs,
    /// The contents of every message, without the template's default system message: what an
    /// excerpt shows.
    Messages,
}

/// The text of each example that `--match` searches (`part` of a language model's rows), and
/// what it is.
pub(crate) fn searchable(
    ctx: &crate::context::RunContext,
    dataset: &trainer::data::Dataset,
    part: Part,
) -> Result<(&'static str, Vec<String>), CommandError> {
    use trainer::data::Example;
    let tokenizer = || -> Result<trainer::chat::ChatTokenizer, CommandError> {
        let base = match ctx.base_weights()? {
            Ok(Some(b)) if b.format == trainer::base::BaseFormat::Gguf => b,
            _ => {
                return Err(CommandError::Usage(
                    "the run's examples are token ids and its base carries no tokenizer (a GGUF \
                     base does): nothing to search as text"
                        .into(),
                ));
            }
        };
        Ok(trainer::chat::ChatTokenizer::from_gguf(base)?)
    };
    let mut tok = None;
    let mut kind = "text";
    let mut texts = Vec::with_capacity(dataset.examples.len());
    for ex in &dataset.examples {
        texts.push(match ex {
            Example::Text { text, .. } => text.clone(),
            Example::Tokens { tokens, .. } | Example::Lm { tokens, .. } => {
                kind = "decoded tokens";
                if tok.is_none() {
                    tok = Some(tokenizer()?);
                }
                let t = tok.as_ref().ok_or_else(|| {
                    CommandError::Usage("the run's base carries no tokenizer".into())
                })?;
                match (part, ex) {
                    (Part::Inputs, Example::Lm { loss_mask, .. }) => {
                        let read: Vec<u32> = tokens
                            .iter()
                            .zip(loss_mask)
                            .filter(|(_, target)| !**target)
                            .map(|(&id, _)| id)
                            .collect();
                        t.contents(&read)
                    }
                    (Part::Messages, Example::Lm { .. }) => t.messages(tokens),
                    _ => t.decode(tokens),
                }
            }
            Example::Features { .. } => {
                return Err(CommandError::Usage(
                    "the run's examples are feature vectors: nothing to search as text".into(),
                ));
            }
        });
    }
    Ok((kind, texts))
}
/// Up to 40 characters either side of `range` in `text`, on character boundaries.
fn excerpt(text: &str, range: std::ops::Range<usize>) -> String {
    let start = text[..range.start]
        .char_indices()
        .rev()
        .nth(39)
        .map(|(i, _)| i)
        .unwrap_or(0);
    let end = text[range.end..]
        .char_indices()
        .nth(40)
        .map(|(i, _)| range.end + i)
        .unwrap_or(text.len());
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.push_str(&text[start..end].replace('\n', "⏎"));
    if end < text.len() {
        out.push('…');
    }
    out
}
/// Run `provenance --match`: the examples whose content matches any of `patterns` (regular
/// expressions), each with the steps that used it.
pub fn search(
    location: &str,
    patterns: &[String],
    load: &LoadOptions,
) -> Result<SearchReport, CommandError> {
    compile(patterns)?;
    let report = SearchReport::new(location, patterns);
    super::on_run(location, load, report, |ctx, _| search_in(ctx, patterns))
}
/// The regular expressions of `patterns`; one that does not compile is a usage error.
fn compile(patterns: &[String]) -> Result<Vec<regex::Regex>, CommandError> {
    patterns
        .iter()
        .map(|p| {
            regex::Regex::new(p).map_err(|e| CommandError::Usage(format!("pattern {p:?}: {e}")))
        })
        .collect()
}
impl SearchReport {
    fn new(location: &str, patterns: &[String]) -> Self {
        SearchReport {
            header: Header::pending("provenance", location),
            patterns: patterns.to_vec(),
            searched: String::new(),
            dataset_root: Hash32::ZERO,
            examples_searched: 0,
            matches: vec![],
            steps_scanned: 0,
        }
    }
}
/// [`search`] in a loaded run.
pub fn search_in(ctx: &RunContext, patterns: &[String]) -> Result<SearchReport, CommandError> {
    let regexes = compile(patterns)?;
    let mut report = select_in(ctx, true, |_, text| {
        regexes.iter().find_map(|r| r.find(text)).map(|m| m.range())
    })?;
    report.patterns = patterns.to_vec();
    Ok(report)
}
/// The examples `ids` of a loaded run, each with the steps that used it, as a search that
/// matched exactly them (no patterns; each excerpt the start of the example's text, empty for
/// feature vectors).
pub fn examples_in(
    ctx: &RunContext,
    ids: &std::collections::BTreeSet<u64>,
) -> Result<SearchReport, CommandError> {
    select_in(ctx, false, |i, _| ids.contains(&(i as u64)).then_some(0..0))
}
/// The examples of a loaded run for which `select` (the example's id and searchable text)
/// gives the range of a match, each with that excerpt and the steps that used it. Examples
/// without text (feature vectors) are an error when `text_required`, empty texts otherwise.
fn select_in(
    ctx: &RunContext,
    text_required: bool,
    select: impl Fn(usize, &str) -> Option<std::ops::Range<usize>>,
) -> Result<SearchReport, CommandError> {
    let mut report = SearchReport::new(&ctx.location, &[]);
    report.dataset_root = ctx.spec.data.dataset_root;
    report.steps_scanned = ctx.records.len() as u64;
    let mut assessment = ctx.assessment();
    if let Some(dataset) = &ctx.dataset {
        if dataset.manifest.root != ctx.spec.data.dataset_root {
            // Not the data that trained the model: a search of it proves nothing about the run.
            assessment.outcome(Verdict::InputMismatch);
        }
        let (kind, texts) = match searchable(ctx, dataset, Part::Whole) {
            Err(_) if !text_required => ("nothing", vec![String::new(); dataset.examples.len()]),
            found => found?,
        };
        report.searched = kind.into();
        report.examples_searched = texts.len() as u64;
        let mut uses: std::collections::BTreeMap<u64, Vec<Use>> = Default::default();
        for r in ctx.records.values() {
            for (position, id) in r.example_ids.iter().enumerate() {
                uses.entry(*id).or_default().push(Use {
                    step: r.step,
                    epoch: r.epoch,
                    position: position as u64,
                });
            }
        }
        for (i, text) in texts.iter().enumerate() {
            if let Some(range) = select(i, text) {
                report.matches.push(Match {
                    example: i as u64,
                    hash: dataset.manifest.example_hashes[i],
                    excerpt: excerpt(text, range),
                    uses: uses.remove(&(i as u64)).unwrap_or_default(),
                });
            }
        }
    }
    report.header.assess(&assessment, Claim::Integrity);
    Ok(report)
}
