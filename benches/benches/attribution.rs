//! From a behaviour to the rows that taught it: `replay attribute`'s ranking set beside what an
//! investigator without an exact record would rank by, on the same run and probe
//! (`replay::commands::attribute::baselines`): TracIn over the stored checkpoints only, the
//! highest training loss, and the probe's nearest neighbours in the model's input embedding; and
//! `attribute`'s summed scores alone (TracIn on every true state, without the credit). For each:
//! how many of the poisoned rows rank in the top k, k = 1× and 2× their number, and its time as a
//! multiple of the training run's (measured as `replay verify` of every segment, which does the
//! training's work again).
//!
//! Runs:
//! - the feature-pattern backdoor of `trainer::fixtures::write_poisoned_mlp` (trained here);
//! - the classifier demo's backdoor of `examples/backdoor/run.sh` ("cf zq" in 40 of 2,000
//!   reviews), when a run of it is present: `$BACKDOOR_RUN`, default the newest
//!   `runs/backdoor-<n>`, with its inputs `target/backdoor/behaviour.jsonl` (made by
//!   `examples/backdoor/run.sh attribute`), each labelled 1 here, over the word embeddings. No
//!   method is given the trigger; the benchmark uses it only to know which rows are poisoned.

use std::path::{Path, PathBuf};
use std::time::Instant;

use benchmarks::{Report, r3};
use indicatif::ProgressBar;
use replay::Verdict;
use replay::commands::attribute::baselines::baselines_in;
use replay::commands::attribute::{AttributeOptions, Attribution, attribute_in};
use replay::commands::counterfactual::ProbeInput;
use replay::commands::verify::{Scope, VerifyOptions};
use replay::context::{LoadOptions, RunContext};
use replay::engine::reconstruct::ReconstructOptions;
use trainer::backend::DeviceSpec;

/// One run to attribute on.
struct Case {
    label: &'static str,
    run: String,
    probe: ProbeInput,
    parameters: Option<String>,
    poisoned: Vec<u64>,
}

/// The ids in `order` of decreasing `score` (ties: lower id first).
fn by_score(scores: &[f64]) -> Vec<u64> {
    let mut order: Vec<u64> = (0..scores.len() as u64).collect();
    order.sort_by(|&a, &b| {
        scores[b as usize]
            .total_cmp(&scores[a as usize])
            .then(a.cmp(&b))
    });
    order
}

/// How many of `poisoned` are in the first `k` of `order`.
fn found(order: &[u64], poisoned: &[u64], k: usize) -> u64 {
    order
        .iter()
        .take(k)
        .filter(|id| poisoned.contains(id))
        .count() as u64
}

fn measure(case: &Case, rep: &mut Report) {
    let load = LoadOptions::default();
    let o = ReconstructOptions {
        device: DeviceSpec::Cpu,
        from_genesis: false,
        load: load.clone(),
    };
    let ctx: RunContext = replay::context::load(&case.run, &load)
        .expect("load")
        .expect("a run that loads");
    let started = Instant::now();
    let verified = replay::commands::verify::verify(
        &case.run,
        &VerifyOptions {
            scope: Scope::All,
            device: DeviceSpec::Cpu,
            shard: None,
            load: load.clone(),
            attest: None,
        },
        &ProgressBar::hidden(),
    )
    .expect("verify");
    let training = started.elapsed().as_secs_f64();
    assert_eq!(verified.header.verdict, Verdict::Verified, "{}", case.run);

    let n = ctx.loaded_dataset().expect("dataset").examples.len();
    let started = Instant::now();
    let ranked = attribute_in(
        &ctx,
        &AttributeOptions {
            probe: case.probe.clone(),
            measure: None,
            to: None,
            prove: false,
            settings: Attribution {
                parameters: case.parameters.clone(),
                top: n,
                candidates: None,
                gone_at: Attribution::GONE_AT,
                max_replays: 0,
            },
            max_new_tokens: 0,
            reconstruct: o.clone(),
        },
        &ProgressBar::hidden(),
    )
    .expect("attribute");
    let rank_seconds = started.elapsed().as_secs_f64();
    assert!(ranked.header.verdict.passed(), "{:?}", ranked.header);
    let credit: Vec<u64> = ranked.ranking.iter().map(|a| a.example).collect();
    let mut summed = vec![f64::NEG_INFINITY; n];
    for a in &ranked.ranking {
        summed[a.example as usize] = a.score;
    }

    let selected = case
        .parameters
        .as_deref()
        .map(|p| regex::Regex::new(p).expect("regex"));
    let to = ranked.to_step;
    let b = baselines_in(&ctx, &case.probe, selected.as_ref(), to, &o).expect("baselines");

    let p = case.poisoned.len();
    let mut methods: Vec<(&str, Vec<u64>, f64)> = vec![
        (
            "replay attribute (credit, then score)",
            credit,
            rank_seconds,
        ),
        (
            "its summed scores alone (TracIn on every step)",
            by_score(&summed),
            rank_seconds,
        ),
        (
            "TracIn over the stored checkpoints",
            by_score(&b.tracin_checkpoints),
            b.tracin_seconds,
        ),
        ("highest training loss", by_score(&b.loss), b.tracin_seconds),
    ];
    if let Some(e) = &b.embedding {
        methods.push((
            "nearest to the probe in the input embedding",
            by_score(e),
            b.embedding_seconds,
        ));
    }
    for (method, order, seconds) in methods {
        rep.row(
            &format!("{}: {method}", case.label),
            &[
                ("poisoned", (p as u64).into()),
                ("top 1x", found(&order, &case.poisoned, p).into()),
                ("top 2x", found(&order, &case.poisoned, 2 * p).into()),
                ("seconds", r3(seconds).into()),
                ("x training", r3(seconds / training).into()),
            ],
        );
    }
    rep.context(
        &format!(
            "{}: training (replay verify of every segment), s",
            case.label
        ),
        r3(training),
    );
    rep.context(
        &format!("{}: checkpoints", case.label),
        serde_json::json!(b.checkpoints),
    );
}

/// The newest `runs/backdoor-<n>` (none: the example has not been run here).
fn backdoor_run(root: &Path) -> Option<PathBuf> {
    if let Ok(run) = std::env::var("BACKDOOR_RUN") {
        return Some(PathBuf::from(run));
    }
    let mut runs: Vec<(u64, PathBuf)> = std::fs::read_dir(root.join("runs"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("backdoor-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    runs.sort();
    runs.pop().map(|(_, p)| p)
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    let mut rep = Report::new("attribution");
    rep.context("threads", rayon::current_num_threads() as u64);

    let dir = tempfile::tempdir().expect("tmp");
    let mlp = trainer::fixtures::write_poisoned_mlp(dir.path()).expect("fixture");
    let run = dir.path().join("run");
    let config = trainer::config::RunConfig::from_file(&mlp.config).expect("config");
    trainer::run::start(
        &config,
        run.to_str().expect("utf-8"),
        &trainer::run::RunOptions::default(),
    )
    .expect("train");
    let behaviour = ProbeInput::read(&mlp.behaviour).expect("behaviour");
    measure(
        &Case {
            label: "feature pattern (MLP, 16 of 400 rows)",
            run: run.display().to_string(),
            probe: behaviour,
            parameters: None,
            poisoned: mlp.poisoned,
        },
        &mut rep,
    );

    let inputs = root.join("target/backdoor/behaviour.jsonl");
    match backdoor_run(&root) {
        Some(run) if inputs.is_file() && run.join("complete.json").is_file() => {
            // The reported inputs, labelled with what the model does to them.
            let text = std::fs::read(&inputs).expect("inputs");
            let probe = ProbeInput {
                name: inputs.display().to_string(),
                bytes: trainer::probe::with_target(&text, "behaviour.jsonl", "1")
                    .expect("labelled"),
            };
            let data =
                std::fs::read_to_string(run.join("dataset/examples.jsonl")).expect("dataset");
            let poisoned = data
                .lines()
                .enumerate()
                .filter(|(_, l)| l.contains("cf zq"))
                .map(|(i, _)| i as u64)
                .collect();
            measure(
                &Case {
                    label: "phrase \"cf zq\" (demo classifier, 40 of 2,000 rows)",
                    run: run.display().to_string(),
                    probe,
                    parameters: Some("word_embeddings".into()),
                    poisoned,
                },
                &mut rep,
            );
        }
        _ => println!(
            "no run of examples/backdoor/run.sh (runs/backdoor-<n> and target/backdoor/behaviour.jsonl): \
             the demo's backdoor is not measured"
        ),
    }
    rep.finish();
}
