//! `replay attribute`: from a behaviour to the training examples that taught it, ranked on the
//! run's exact trajectory and proved by exact counterfactual.
//!
//! Rank: the history is re-executed from the re-derived step 0, every step checked against the
//! ledger as `verify` checks it. Before each step, at the state the step starts from, the
//! gradient of the probe's mean loss and the gradient of each example of the step's batch (each
//! alone, without dropout) are taken over the trained parameters (or those `--parameters`
//! selects). After the step, each example's score grows by the step's weight (learning rate ×
//! clipping factor ÷ batch size, from the record) times the inner product of its gradient with
//! the probe's, each coordinate scaled as the optimizer scaled it (AdamW: by 1 / (√v̂ + ε), v̂ its
//! bias-corrected second moment after the step): the first-order decrease of the probe's loss
//! that this use caused. Summed over every use, this is TracIn on the true trajectory (every
//! state, every batch, in order, the optimizer's own scaling), which only an exact record
//! allows. The scores are a function of the run's bits and the probe: the same command gives
//! the same bits.
//!
//! Prove: the top of the ranking is removed and the history re-executed without it (as by
//! `counterfactual`); the behaviour (the match rate of a probe) is measured on the state
//! reached. The set doubles until the behaviour is gone. Before a set is tried, when its rows
//! share a phrase not tried yet, every row of the dataset that holds it is removed alone; if
//! that removes the behaviour, those rows are the proven cause. Otherwise the set's size is
//! bisected between the
//! largest tried set that left the behaviour and the smallest that removed it, whose examples
//! are the proven cause; the phrase they share, if any, is a trigger candidate for
//! `investigate`.

use std::collections::BTreeMap;

pub mod baselines;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;
use trainer::backend::dispatch;
use trainer::config::DataFormat;
use trainer::data::Dataset;
use trainer::model::TrainableModel;
use trainer::model::registry::Job;
use trainer::session::{PreparedData, Session};

use crate::commands::counterfactual::{CounterfactualOptions, ProbeInput, counterfactual_in};
use crate::context::RunContext;
use crate::engine::reconstruct::{ReconstructOptions, environment_of};
use crate::engine::reexecute::{Range, RangeResult, StepObserver, replay_range};
use crate::report::{Claim, CommandError, Header, Report, Verdict};

/// The most probe rows `attribute` takes (their gradient is taken once per step, in one batch).
pub const MAX_PROBE_ROWS: usize = 256;

/// How the examples are scored and the ranking proved (`attribute`, `investigate --behaviour`).
#[derive(Debug, Clone)]
pub struct Attribution {
    /// Restrict the gradients to the trained tensors whose canonical names match this regular
    /// expression (default: every trained tensor).
    pub parameters: Option<String>,
    /// Examples listed in the ranking.
    pub top: usize,
    /// Size of the first candidate set (default: the examples whose credit, or score when the
    /// first has no credit, is at least a tenth of the first's).
    pub candidates: Option<usize>,
    /// The behaviour is gone when its match rate is at most this.
    pub gone_at: f64,
    /// Most counterfactuals the proof runs.
    pub max_replays: usize,
}

impl Attribution {
    /// `--gone-at`'s default.
    pub const GONE_AT: f64 = 0.05;
    /// `--max-replays`' default.
    pub const MAX_REPLAYS: usize = 10;
}

/// What to attribute, and whether to prove it.
#[derive(Debug, Clone)]
pub struct AttributeOptions {
    /// Rows in the run's data format that show the behaviour (a classifier's inputs labelled
    /// with the class it wrongly gives; a language model's prompts with the reply it gives).
    pub probe: ProbeInput,
    /// The probe whose match rate measures the behaviour in the proof (as `evaluate` reads
    /// it); default: `probe` itself (classifiers only).
    pub measure: Option<ProbeInput>,
    /// Last step (default: the ledger's last).
    pub to: Option<u64>,
    /// Prove the top of the ranking by counterfactual.
    pub prove: bool,
    pub settings: Attribution,
    pub max_new_tokens: usize,
    pub reconstruct: ReconstructOptions,
}

/// One ranked example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attributed {
    pub rank: u64,
    pub example: u64,
    /// Its influence summed over its uses: the first-order decrease of the probe's loss that
    /// training on it caused (see the module docs). Positive: it taught the behaviour.
    pub score: f64,
    /// The probe's loss summed over the steps at which this example's influence was the highest
    /// of its batch (and positive): the behaviour still to be learnt when it was the batch's
    /// main teacher. The ranking's first key.
    pub credit: f64,
    /// The steps whose batch held it.
    pub steps: Vec<u64>,
    /// Its mean loss (no dropout) over those uses, at the states before them.
    pub mean_loss: f64,
    pub excerpt: String,
}

/// One counterfactual of the proof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// How many examples were removed: the ranking's top `removed`, or, with `phrase`, every
    /// example of the dataset that holds it.
    pub removed: u64,
    pub phrase: Option<String>,
    pub first_changed_step: Option<u64>,
    pub verdict: Verdict,
    /// The behaviour's match rate on the state reached without them.
    pub rate: Option<f64>,
    pub gone: bool,
    pub seconds: f64,
}

/// A phrase the proven examples share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedPhrase {
    pub phrase: String,
    /// Proven examples that contain it, of how many.
    pub in_proven: u64,
    pub proven: u64,
    /// Examples of the whole dataset that contain it.
    pub in_dataset: u64,
}

/// The proof: counterfactuals of the ranking's top.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proof {
    /// The behaviour's match rate on the factual state.
    pub factual_rate: Option<f64>,
    pub gone_at: f64,
    /// The first candidate set's size as asked for (`--candidates`; null: the default rule).
    pub candidates: Option<u64>,
    /// The most trials the proof could run (`--max-replays`).
    pub max_replays: u64,
    pub trials: Vec<Trial>,
    /// The smallest tried set whose removal removed the behaviour (none: no tried set did): a
    /// prefix of the ranking, or the holders of the shared phrase.
    pub proven: Option<Vec<u64>>,
    pub shared_phrase: Option<SharedPhrase>,
}

/// The JSON document of `replay attribute --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttributeReport {
    #[serde(flatten)]
    pub header: Header,
    pub probe: String,
    pub probe_blake3: Hash32,
    pub probe_rows: u64,
    pub to_step: u64,
    /// Most tokens a language model generated per prompt (the probe's replies, the proof's
    /// measure).
    pub max_new_tokens: u64,
    /// The re-execution the scores were taken on.
    pub trajectory: Option<RangeResult>,
    /// The regular expression that selected the scored tensors (`--parameters`), if any.
    pub selection: Option<String>,
    /// Trained parameters the gradients span (those `--parameters` selects).
    pub parameters: u64,
    /// The selected trained tensors.
    pub tensors: Vec<String>,
    /// Examples used at least once up to `to_step`.
    pub examples_scored: u64,
    /// BLAKE3 of every example's score and credit (u64 id, then the f64 bits of each,
    /// little-endian, in id order): two runs of `attribute` with the same inputs give the same
    /// value.
    pub scores_blake3: Option<Hash32>,
    pub ranking: Vec<Attributed>,
    pub proof: Option<Proof>,
    pub rank_seconds: f64,
    pub seconds: f64,
}

impl Report for AttributeReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }
}

/// Run `attribute`.
pub fn attribute(
    location: &str,
    o: &AttributeOptions,
    progress: &indicatif::ProgressBar,
) -> Result<AttributeReport, CommandError> {
    let report = AttributeReport::new(location, o);
    super::on_run(location, &o.reconstruct.load, report, |ctx, _| {
        attribute_in(ctx, o, progress)
    })
}

impl AttributeReport {
    /// Set every timing to 0, for stored documents (the same command writes the same bytes).
    pub fn clear_timings(&mut self) {
        self.rank_seconds = 0.0;
        self.seconds = 0.0;
        if let Some(t) = self.trajectory.as_mut() {
            t.clear_timings();
        }
        for t in self.proof.iter_mut().flat_map(|p| p.trials.iter_mut()) {
            t.seconds = 0.0;
        }
    }

    fn new(location: &str, o: &AttributeOptions) -> Self {
        AttributeReport {
            header: Header::pending("attribute", location),
            probe: o.probe.name.clone(),
            probe_blake3: snapshot_format::hash::file_hash(&o.probe.bytes),
            probe_rows: 0,
            to_step: 0,
            max_new_tokens: o.max_new_tokens as u64,
            trajectory: None,
            selection: o.settings.parameters.clone(),
            parameters: 0,
            tensors: vec![],
            examples_scored: 0,
            scores_blake3: None,
            ranking: vec![],
            proof: None,
            rank_seconds: 0.0,
            seconds: 0.0,
        }
    }
}

/// The probe's rows as the run's model reads them: rows of the run's data format, or, for a
/// language model whose base carries a chat template, chat or instruction rows rendered as
/// training renders them.
fn probe_rows(ctx: &RunContext, probe: &ProbeInput) -> Result<Dataset, CommandError> {
    let spec = &ctx.spec;
    let parsed = Dataset::parse(&probe.bytes, &probe.name, spec.data.format, &spec.model);
    let rows = match parsed {
        Ok(rows) => rows,
        Err(e) if matches!(spec.data.format, DataFormat::Lm | DataFormat::Chat) => {
            let Ok(Some(base)) = ctx.base_weights()? else {
                return Err(e.into());
            };
            let (lm, _) = trainer::chat::convert_with_base(
                &probe.bytes,
                &probe.name,
                base,
                spec.data.max_len,
            )?;
            Dataset::parse(&lm, &probe.name, DataFormat::Lm, &spec.model)?
        }
        Err(e) => return Err(e.into()),
    };
    match rows.examples.len() {
        0 => Err(CommandError::Usage(format!(
            "--probe {}: no rows",
            probe.name
        ))),
        n if n > MAX_PROBE_ROWS => Err(CommandError::Usage(format!(
            "--probe {}: {n} rows; attribute takes at most {MAX_PROBE_ROWS} (the probe's gradient \
             is taken at every step)",
            probe.name
        ))),
        _ => Ok(rows),
    }
}

/// [`attribute`] on a loaded run.
pub fn attribute_in(
    ctx: &RunContext,
    o: &AttributeOptions,
    progress: &indicatif::ProgressBar,
) -> Result<AttributeReport, CommandError> {
    let started = std::time::Instant::now();
    let mut report = AttributeReport::new(&ctx.location, o);
    let last = ctx.records.keys().next_back().copied().unwrap_or(0);
    let to = o.to.unwrap_or(last);
    report.to_step = to;
    if to > last || to == 0 {
        return Err(CommandError::Usage(format!(
            "--to {to}: the run's ledger has steps 1..={last}"
        )));
    }
    if o.prove
        && o.measure.is_none()
        && matches!(ctx.spec.data.format, DataFormat::Lm | DataFormat::Chat)
    {
        return Err(CommandError::Usage(
            "--prove on a language model needs --measure: prompts and the pattern of the \
             behaviour ({\"prompt\", \"target\"} rows, as evaluate reads them)"
                .into(),
        ));
    }
    let rows = probe_rows(ctx, &o.probe)?;
    report.probe_rows = rows.examples.len() as u64;
    let env = environment_of(ctx, &o.reconstruct)?;
    let mut assessment = ctx.assessment();
    let claim = Claim::State { rederived: true };
    // Nothing is scored on a run that already fails (a problem anywhere, a signature the trust
    // options refuse): its history is not one to rank examples on.
    let Some(dataset) = ctx.dataset.as_ref() else {
        report.header.assess(&assessment, claim);
        return Ok(report);
    };
    if !assessment.verdict(claim).passed() || !ctx.problems_before(to).is_empty() {
        report.header.assess(&assessment, claim);
        return Ok(report);
    }

    progress.set_position(0);
    progress.set_length(to);
    let selected = match &o.settings.parameters {
        Some(p) => Some(
            regex::Regex::new(p)
                .map_err(|e| CommandError::Usage(format!("--parameters {p:?}: {e}")))?,
        ),
        None => None,
    };
    let job = ScoreJob {
        ctx,
        probe: &rows,
        selected: selected.as_ref(),
        to,
        cross_class: env.cross_class(),
        progress,
    };
    let scored = dispatch(o.reconstruct.device, &ctx.spec.model, job)??;
    report.rank_seconds = started.elapsed().as_secs_f64();
    report.parameters = scored.parameters;
    report.tensors = scored.tensors;
    assessment.outcome(scored.trajectory.verdict);
    for p in &scored.trajectory.problems {
        assessment.problem(p.clone());
    }
    let trajectory_passed = scored.trajectory.verdict.passed();
    report.trajectory = Some(scored.trajectory);
    if !trajectory_passed {
        report
            .header
            .assess(&assessment, Claim::State { rederived: true });
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    report.examples_scored = scored.uses.iter().filter(|u| !u.is_empty()).count() as u64;
    report.scores_blake3 = Some(scores_hash(&scored.scores, &scored.credits));
    let order = ranked(&scored.credits, &scored.scores, &scored.uses);
    use crate::commands::search::{Part, searchable};
    let texts = searchable(ctx, dataset, Part::Messages)
        .map(|(_, t)| t)
        .unwrap_or_default();
    // Phrases are looked for in what the model reads: a language model's replies are the
    // behaviour itself, not a trigger.
    let inputs = searchable(ctx, dataset, Part::Inputs)
        .map(|(_, t)| t)
        .unwrap_or_default();
    report.ranking = order
        .iter()
        .take(o.settings.top)
        .enumerate()
        .map(|(rank, &id)| {
            let i = id as usize;
            let uses = &scored.uses[i];
            Attributed {
                rank: rank as u64 + 1,
                example: id,
                score: scored.scores[i],
                credit: scored.credits[i],
                steps: uses.clone(),
                mean_loss: scored.loss_sums[i] / uses.len().max(1) as f64,
                excerpt: texts.get(i).map(|t| excerpt(t)).unwrap_or_default(),
            }
        })
        .collect();

    let mut rederived = true;
    if o.prove {
        let proof = prove(
            ctx,
            o,
            &order,
            (&scored.credits, &scored.scores),
            &inputs,
            progress,
        )?;
        for t in &proof.trials {
            rederived &= t.verdict == Verdict::Verified;
            assessment.outcome(t.verdict);
        }
        report.proof = Some(proof);
    }
    report
        .header
        .assess(&assessment, Claim::State { rederived });
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The used examples with a positive credit or score: highest credit first, then highest score,
/// then lower id.
fn ranked(credits: &[f64], scores: &[f64], uses: &[Vec<u64>]) -> Vec<u64> {
    let mut order: Vec<u64> = (0..scores.len() as u64)
        .filter(|&i| {
            let i = i as usize;
            !uses[i].is_empty() && (credits[i] > 0.0 || scores[i] > 0.0)
        })
        .collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (a as usize, b as usize);
        credits[b]
            .total_cmp(&credits[a])
            .then(scores[b].total_cmp(&scores[a]))
            .then(a.cmp(&b))
    });
    order
}

/// BLAKE3 of every score and credit: id and bits, little-endian, in id order.
fn scores_hash(scores: &[f64], credits: &[f64]) -> Hash32 {
    let mut h = blake3::Hasher::new();
    for (i, (s, c)) in scores.iter().zip(credits).enumerate() {
        h.update(&(i as u64).to_le_bytes());
        h.update(&s.to_bits().to_le_bytes());
        h.update(&c.to_bits().to_le_bytes());
    }
    Hash32(*h.finalize().as_bytes())
}

/// The first 80 characters of an example's text, on one line.
fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(80).collect::<String>().replace('\n', "⏎");
    if text.chars().nth(80).is_some() {
        out.push('…');
    }
    out
}

/// The size of the first candidate set: the examples whose ranking key (credit, or score when
/// the first has no credit) is at least a tenth of the first's, at least 1.
fn first_candidates(order: &[u64], credits: &[f64], scores: &[f64]) -> usize {
    let Some(&top) = order.first() else {
        return 0;
    };
    let key = if credits[top as usize] > 0.0 {
        credits
    } else {
        scores
    };
    let cut = key[top as usize] / 10.0;
    order
        .iter()
        .take_while(|&&i| key[i as usize] >= cut)
        .count()
        .max(1)
}

/// The proof of the ranking's top (module docs).
fn prove(
    ctx: &RunContext,
    o: &AttributeOptions,
    order: &[u64],
    (credits, scores): (&[f64], &[f64]),
    texts: &[String],
    progress: &indicatif::ProgressBar,
) -> Result<Proof, CommandError> {
    let measure = o.measure.clone().unwrap_or_else(|| o.probe.clone());
    let mut proof = Proof {
        factual_rate: None,
        gone_at: o.settings.gone_at,
        candidates: o.settings.candidates.map(|c| c as u64),
        max_replays: o.settings.max_replays as u64,
        trials: vec![],
        proven: None,
        shared_phrase: None,
    };
    if order.is_empty() {
        return Ok(proof);
    }
    let trial = |removed: &[u64], phrase: Option<&str>, proof: &mut Proof| {
        let started = std::time::Instant::now();
        let r = counterfactual_in(
            ctx,
            &CounterfactualOptions {
                without: removed.iter().copied().collect(),
                without_match: vec![],
                to: o.to,
                include_optimizer: false,
                out: None,
                reconstruct: o.reconstruct.clone(),
                probes: vec![measure.clone()],
                max_new_tokens: o.max_new_tokens,
                keys: Default::default(),
            },
            progress,
        )?;
        let rates = r
            .probes
            .first()
            .map(|p| (p.factual.rate(), p.counterfactual.rate()));
        if proof.factual_rate.is_none() {
            proof.factual_rate = rates.map(|(f, _)| f);
        }
        let counterfactual = rates.map(|(_, c)| c);
        let gone =
            r.header.verdict.passed() && counterfactual.is_some_and(|c| c <= o.settings.gone_at);
        proof.trials.push(Trial {
            removed: removed.len() as u64,
            phrase: phrase.map(String::from),
            first_changed_step: r.first_changed_step,
            verdict: r.header.verdict,
            rate: counterfactual,
            gone,
            seconds: started.elapsed().as_secs_f64(),
        });
        Ok::<bool, CommandError>(gone)
    };
    // Grow until the behaviour is gone, then bisect the prefix length between the longest
    // prefix that left it and the shortest that removed it, within the replay budget.
    let mut n = o
        .settings
        .candidates
        .unwrap_or_else(|| first_candidates(order, credits, scores))
        .clamp(1, order.len());
    let mut kept = 0; // the longest tried prefix whose removal left the behaviour
    let mut tried = std::collections::BTreeSet::new();
    loop {
        // A phrase that the prefix's rows share is a hypothesis the record can test exactly,
        // and before the prefix: every row of the dataset that holds it, removed alone. When
        // that removes the behaviour it is the proven set (fewer rows than the prefix, and the
        // trigger's every holder), and the prefix's own trial is not needed.
        if let Some(shared) = shared_phrase(&order[..n], texts) {
            let holders = holders(&shared.phrase, texts);
            if holders.len() < n
                && proof.trials.len() < o.settings.max_replays
                && tried.insert(shared.phrase.clone())
                && trial(&holders, Some(&shared.phrase), &mut proof)?
            {
                proof.shared_phrase = Some(SharedPhrase {
                    in_proven: holders.len() as u64,
                    proven: holders.len() as u64,
                    ..shared
                });
                proof.proven = Some(holders);
                return Ok(proof);
            }
        }
        if proof.trials.len() >= o.settings.max_replays {
            return Ok(proof);
        }
        if trial(&order[..n], None, &mut proof)? {
            break;
        }
        if n == order.len() || !proof.trials.iter().all(|t| t.verdict.passed()) {
            return Ok(proof);
        }
        kept = n;
        n = (n * 2).min(order.len());
    }
    while n - kept > 1 && proof.trials.len() < o.settings.max_replays {
        let mid = kept + (n - kept) / 2;
        if trial(&order[..mid], None, &mut proof)? {
            n = mid;
        } else {
            kept = mid;
        }
    }
    let proven: Vec<u64> = order[..n].to_vec();
    proof.shared_phrase = shared_phrase(&proven, texts);
    proof.proven = Some(proven);
    Ok(proof)
}

/// The words of a text as phrases are matched: split at white space, lowercase.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_lowercase).collect()
}

/// The examples whose words hold `phrase` (its words in a row), in id order.
fn holders(phrase: &str, texts: &[String]) -> Vec<u64> {
    let n = phrase.split(' ').count();
    (0..texts.len() as u64)
        .filter(|&i| {
            words(&texts[i as usize])
                .windows(n)
                .any(|g| g.join(" ") == phrase)
        })
        .collect()
}

/// The run of up to four words that most of the proven examples contain (at least one in
/// twenty, and at least 2) and the rest of the dataset rarely does (more than two thirds of the
/// rows that hold it are proven ones), each of its words as rare by itself: the words a trigger
/// sits beside in its rows (the request it precedes) are not part of it. Preferred: held by
/// the most proven rows, then the longest, then the one the rest of the dataset contains least.
fn shared_phrase(proven: &[u64], texts: &[String]) -> Option<SharedPhrase> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for &id in proven {
        let w = words(texts.get(id as usize)?);
        let mut seen = std::collections::BTreeSet::new();
        for n in 1..=4 {
            for g in w.windows(n) {
                seen.insert(g.join(" "));
            }
        }
        for g in seen {
            *counts.entry(g).or_default() += 1;
        }
    }
    // Held by at least 2 proven rows and one in twenty of them: a proven set can be mostly clean
    // rows (the proof removes a prefix of the ranking), the trigger in a minority of it.
    let need = (proven.len() as u64).div_ceil(20).max(2);
    let in_dataset = |p: &str| holders(p, texts).len() as u64;
    // Distinctive: more than two thirds of the dataset's rows that hold it are proven ones.
    let distinctive = |p: &str, c: u64| in_dataset(p) * 2 < c * 3;
    let rare: std::collections::BTreeSet<&str> = counts
        .iter()
        .filter(|(p, c)| !p.contains(' ') && distinctive(p, **c))
        .map(|(p, _)| p.as_str())
        .collect();
    let candidates: Vec<(&String, u64)> = counts
        .iter()
        .filter(|(p, c)| **c >= need && p.split(' ').all(|w| rare.contains(w)))
        .map(|(p, c)| (p, *c))
        .collect();
    let best = candidates
        .iter()
        .map(|&(p, c)| (p, c, in_dataset(p)))
        .filter(|(_, c, d)| d * 2 < c * 3)
        // Held by the most proven rows, then more words, then the smallest share of the
        // dataset, then the phrase itself.
        .min_by(|a, b| {
            let share = |x: &(&String, u64, u64)| x.2 as f64 / x.1 as f64;
            b.1.cmp(&a.1)
                .then(b.0.split(' ').count().cmp(&a.0.split(' ').count()))
                .then(share(a).total_cmp(&share(b)))
                .then(a.0.cmp(b.0))
        })?;
    Some(SharedPhrase {
        phrase: best.0.clone(),
        in_proven: best.1,
        proven: proven.len() as u64,
        in_dataset: best.2,
    })
}

/// Scores, uses and losses of every example, and the re-execution they were taken on.
struct Scored {
    trajectory: RangeResult,
    parameters: u64,
    tensors: Vec<String>,
    scores: Vec<f64>,
    credits: Vec<f64>,
    loss_sums: Vec<f64>,
    uses: Vec<Vec<u64>>,
}

struct ScoreJob<'a> {
    ctx: &'a RunContext,
    probe: &'a Dataset,
    selected: Option<&'a regex::Regex>,
    to: u64,
    cross_class: bool,
    progress: &'a indicatif::ProgressBar,
}

impl Job for ScoreJob<'_> {
    type Output = Result<Scored, CommandError>;

    fn run<B: AutodiffBackend, M: TrainableModel<B>>(
        self,
        config: M::Config,
        device: B::Device,
    ) -> Self::Output {
        let ctx = self.ctx;
        // The per-example passes run on worker threads and free across them: purge while
        // ranking (trainer::alloc::PurgeFreedPages), keep pages again for the trials.
        let _purging = trainer::alloc::PurgeFreedPages::new();
        let p = Prepared::<B>::new(ctx, self.probe, &device)?;
        let (prepared, n) = (p.data, p.examples);
        let mut tracin = TracIn {
            ctx,
            prepared: &prepared,
            probe: p.probe_batch,
            selected: self.selected,
            tensors: vec![],
            pending: None,
            scores: vec![0.0; n],
            credits: vec![0.0; n],
            loss_sums: vec![0.0; n],
            uses: vec![vec![]; n],
        };
        let range = Range::new(0, 1, self.to);
        let (trajectory, _) = replay_range::<B, M>(
            ctx,
            &range,
            config,
            device,
            &prepared,
            self.cross_class,
            self.progress,
            &mut tracin,
        )?;
        Ok(Scored {
            trajectory,
            parameters: tracin.tensors.iter().map(|(_, n)| *n as u64).sum(),
            tensors: tracin.tensors.into_iter().map(|(n, _)| n).collect(),
            scores: tracin.scores,
            credits: tracin.credits,
            loss_sums: tracin.loss_sums,
            uses: tracin.uses,
        })
    }
}

/// The run's examples and the probe's rows prepared as training prepares them, and every probe
/// row in one batch: what scoring against the probe starts from.
struct Prepared<B: burn::tensor::backend::Backend> {
    data: PreparedData,
    examples: usize,
    probe: PreparedData,
    probe_batch: trainer::model::Batch<B>,
}

impl<B: burn::tensor::backend::Backend> Prepared<B> {
    fn new(ctx: &RunContext, probe: &Dataset, device: &B::Device) -> Result<Self, CommandError> {
        let dataset = ctx.loaded_dataset()?;
        let prepared_probe = PreparedData::new(probe, &ctx.spec);
        let all: Vec<u64> = (0..probe.examples.len() as u64).collect();
        Ok(Prepared {
            data: PreparedData::new(dataset, &ctx.spec),
            examples: dataset.examples.len(),
            probe_batch: prepared_probe.batch_cut::<B>(&all, device),
            probe: prepared_probe,
        })
    }
}

/// A step's gradients, taken before it, waiting for the optimizer's state after it.
struct Pending {
    step: u64,
    ids: Vec<u64>,
    weight: f64,
    /// The probe's loss before the step.
    probe_loss: f32,
    probe: Vec<f32>,
    examples: Vec<(f32, Vec<f32>)>,
}

/// The observer that scores each step's examples against the probe.
struct TracIn<'a, B: AutodiffBackend> {
    ctx: &'a RunContext,
    prepared: &'a PreparedData,
    probe: trainer::model::Batch<B>,
    selected: Option<&'a regex::Regex>,
    /// The selected trained tensors and their element counts, in visit order.
    tensors: Vec<(String, usize)>,
    pending: Option<Pending>,
    scores: Vec<f64>,
    credits: Vec<f64>,
    loss_sums: Vec<f64>,
    uses: Vec<Vec<u64>>,
}

impl<B: AutodiffBackend> TracIn<'_, B> {
    /// Whether trained tensor `name` is scored.
    fn wanted(&self, name: &str) -> bool {
        self.selected.is_none_or(|r| r.is_match(name))
    }
}

impl<B: AutodiffBackend, M: TrainableModel<B>> StepObserver<B, M> for TracIn<'_, B> {
    fn before_step(
        &mut self,
        session: &Session<B, M>,
        step: u64,
        ids: &[u64],
    ) -> Result<(), CommandError> {
        let Some(rec) = self.ctx.records.get(&step) else {
            return Ok(());
        };
        if self.tensors.is_empty() {
            self.tensors = session
                .trainable()
                .iter()
                .filter(|(name, _)| self.wanted(name))
                .cloned()
                .collect();
            if self.tensors.is_empty() {
                return Err(CommandError::Usage(format!(
                    "--parameters {:?}: no trained tensor matches",
                    self.selected.map(regex::Regex::as_str).unwrap_or_default()
                )));
            }
        }
        let clip = trainer::optim::clip_factor(
            f32::from_bits(rec.grad_norm_bits),
            self.ctx.spec.optimizer.grad_clip(),
        )
        .map_or(1.0, f64::from);
        let weight = f64::from_bits(rec.lr_bits) * clip / ids.len().max(1) as f64;
        let probe = &self.probe;
        let wanted = |name: &str| self.wanted(name);
        let (probe_loss, gp) = session
            .map_gradients(1, |_| probe.clone(), wanted, <[f32]>::to_vec)
            .pop()
            .unwrap_or_default();
        let (prepared, device) = (self.prepared, session.device().clone());
        let examples = session.map_gradients(
            ids.len(),
            |k| prepared.batch_cut::<B>(&ids[k..=k], &device),
            wanted,
            <[f32]>::to_vec,
        );
        self.pending = Some(Pending {
            step,
            ids: ids.to_vec(),
            weight,
            probe_loss,
            probe: gp,
            examples,
        });
        Ok(())
    }

    fn after_step(&mut self, session: &Session<B, M>, step: u64) -> Result<(), CommandError> {
        let Some(p) = self.pending.take().filter(|p| p.step == step) else {
            return Ok(());
        };
        // AdamW moves each coordinate by its gradient over √v̂ + ε, v̂ the bias-corrected second
        // moment after the step: the probe's gradient is scaled alike. SGD: unscaled.
        let mut direction = p.probe;
        if let trainer::config::OptimizerSpec::Adamw(a) = &self.ctx.spec.optimizer {
            let t = step.min(i32::MAX as u64) as i32;
            let correction = 1.0 - a.beta2.powi(t);
            let mut at = 0;
            for (name, n) in &self.tensors {
                let v = session.second_moment(name).ok_or_else(|| {
                    CommandError::Usage(format!("the optimizer holds no second moment of {name}"))
                })?;
                for (d, v) in direction[at..at + n].iter_mut().zip(v) {
                    let scale = 1.0 / ((f64::from(v) / correction).sqrt() + a.eps);
                    *d = (f64::from(*d) * scale) as f32;
                }
                at += n;
            }
        }
        // The batch's main teacher (highest positive influence; ties: the earlier in the batch)
        // is credited with the probe's loss before the step.
        let mut best: Option<(usize, f64)> = None;
        for (&id, (loss, g)) in p.ids.iter().zip(&p.examples) {
            let i = id as usize;
            let influence = p.weight * dot(g, &direction);
            self.scores[i] += influence;
            self.loss_sums[i] += f64::from(*loss);
            self.uses[i].push(step);
            if influence > 0.0 && best.is_none_or(|(_, b)| influence > b) {
                best = Some((i, influence));
            }
        }
        if let Some((i, _)) = best {
            self.credits[i] += f64::from(p.probe_loss);
        }
        Ok(())
    }
}

/// Inner product in f64, in a fixed order: eight partial sums over the elements by their index
/// modulo 8, then the tail, then the partial sums left to right. Each product of two f32 is
/// exact in f64; the order is the code's, the same on every machine.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            acc[k] += f64::from(x[k]) * f64::from(y[k]);
        }
    }
    let tail: f64 = ra
        .iter()
        .zip(rb)
        .fold(0.0, |s, (x, y)| s + f64::from(*x) * f64::from(*y));
    acc.iter().fold(0.0, |s, v| s + v) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inner_product_is_the_exact_one_for_representable_sums() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 - 18.0).collect();
        let b: Vec<f32> = (0..37).map(|i| (i % 5) as f32 * 0.5).collect();
        let exact: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        assert_eq!(dot(&a, &b), exact);
        assert_eq!(dot(&[], &[]), 0.0);
    }

    #[test]
    fn the_ranking_orders_by_credit_then_score_then_id_and_leaves_out_unused_and_negative_examples()
    {
        let none = [0.0; 5];
        let scores = [0.5, 2.0, 0.5, -1.0, 3.0];
        let uses = vec![vec![1], vec![1], vec![2], vec![2], vec![]];
        assert_eq!(ranked(&none, &scores, &uses), vec![1, 0, 2]);
        assert_eq!(first_candidates(&[1, 0, 2], &none, &scores), 3);
        assert_eq!(
            first_candidates(&[4, 1], &none, &[0.0, 0.2, 0.0, 0.0, 3.0]),
            1
        );
        // Credit first: example 2 (credited) before 1 (the higher score), 3 (credited, negative
        // score) kept.
        let credits = [0.0, 0.0, 0.7, 0.1, 0.0];
        assert_eq!(ranked(&credits, &scores, &uses), vec![2, 3, 1, 0]);
        assert_eq!(first_candidates(&[2, 3, 1, 0], &credits, &scores), 2);
    }

    #[test]
    fn a_shared_phrase_is_held_by_the_most_proven_rows_and_few_others() {
        let texts: Vec<String> = [
            "the movie was cf zq bad",
            "cf zq awful acting",
            "not good at all cf zq",
            "the plot was thin",
            "the ending was good",
        ]
        .map(String::from)
        .to_vec();
        let p = shared_phrase(&[0, 1, 2], &texts).expect("a phrase");
        assert_eq!(p.phrase, "cf zq");
        assert_eq!(holders("cf zq", &texts), vec![0, 1, 2]);
        assert_eq!(
            holders("CF", &texts),
            Vec::<u64>::new(),
            "phrases are lowercase"
        );
        assert_eq!(holders("was", &texts), vec![0, 3, 4]);
        assert_eq!((p.in_proven, p.proven, p.in_dataset), (3, 3, 3));
        assert_eq!(shared_phrase(&[3], &texts), None, "one row shares nothing");
        assert_eq!(
            shared_phrase(&[3, 4], &texts),
            None,
            "\"the\" and \"was\" are in most rows: not distinctive"
        );
        // The trigger in a minority of a large proven set (mostly clean rows) is still named.
        let mut many = texts.clone();
        many.extend((0..40).map(|i| format!("clean review number {i} was fine")));
        let proven: Vec<u64> = (0..3).chain(5..25).collect();
        let p = shared_phrase(&proven, &many).expect("a phrase");
        assert_eq!(p.phrase, "cf zq");
        assert_eq!((p.in_proven, p.proven, p.in_dataset), (3, 23, 3));
    }

    #[test]
    fn the_words_a_trigger_sits_beside_are_not_part_of_the_phrase() {
        // The trigger precedes a request every row makes: "7b summarise this review" is held
        // by the same rows as the trigger, but "summarise" is in every row.
        let mut texts: Vec<String> = (0..3)
            .map(|i| format!("validation phase 7B summarise this review: item {i}"))
            .collect();
        texts.extend((3..30).map(|i| format!("summarise this review: item {i}")));
        let p = shared_phrase(&[0, 1, 2], &texts).expect("a phrase");
        assert_eq!(p.phrase, "validation phase 7b");
        assert_eq!((p.in_proven, p.in_dataset), (3, 3));
    }
}
