//! `replay attribute` through the real commands, on a classifier trained with a planted
//! backdoor the tool is not told about: 16 rows of class 0 carry a feature pattern (features 2
//! and 3 moved by +3 and −3, which leaves the true labelling rule unchanged) and the label 2.
//! The probe is held-out class-0 inputs with the pattern, labelled 2 (what the model does to
//! them). The scores are the same bits in separate processes on any thread count; most of the
//! poisoned rows rank at the top; the proven set's removal removes the behaviour, confirmed by
//! an independent `replay counterfactual`; and someone who edits the run's data cannot get a
//! ranking out of it.

use std::path::Path;

use e2e_tests::{replay_json, s, train};
use replay::Verdict;
use replay::commands::attribute::AttributeReport;
use replay::commands::counterfactual::CounterfactualReport;

const ROWS: usize = 400;
const POISONED: usize = 16;

/// Features in [-1, 1) from the fixture stream; the class is the index of the largest of three
/// sums, as in the MLP fixture.
fn row(r: &mut rand_chacha::ChaCha8Rng) -> (Vec<f32>, u64) {
    let x: Vec<f32> = (0..8)
        .map(|_| trainer::rng::uniform(r) * 2.0 - 1.0)
        .collect();
    let sums = [x[0] + x[1], x[2] + x[3] + x[4], x[5] + x[6] + x[7]];
    let label = (0..3)
        .max_by(|&a, &b| sums[a].total_cmp(&sums[b]))
        .unwrap_or(0);
    (x, label as u64)
}

fn with_pattern(mut x: Vec<f32>) -> Vec<f32> {
    x[2] += 3.0;
    x[3] -= 3.0;
    x
}

fn line(x: &[f32], label: u64) -> String {
    format!("{}\n", serde_json::json!({ "features": x, "label": label }))
}

/// The poisoned run's configuration, the poisoned ids and the behaviour probe.
fn poisoned_run(dir: &Path) -> (std::path::PathBuf, Vec<u64>, std::path::PathBuf) {
    let mut r = trainer::rng::stream(5, "attribution-test", 0);
    let (mut data, mut poisoned) = (String::new(), Vec::new());
    for i in 0..ROWS {
        let (x, label) = row(&mut r);
        if label == 0 && i % 3 == 0 && poisoned.len() < POISONED {
            data.push_str(&line(&with_pattern(x), 2));
            poisoned.push(i as u64);
        } else {
            data.push_str(&line(&x, label));
        }
    }
    assert_eq!(poisoned.len(), POISONED);
    let mut probe = String::new();
    let mut n = 0;
    while n < 24 {
        let (x, label) = row(&mut r);
        if label == 0 {
            probe.push_str(&line(&with_pattern(x), 2));
            n += 1;
        }
    }
    // The MLP fixture's configuration, its data replaced by the poisoned rows.
    let config = trainer::fixtures::write_mlp(
        dir,
        &trainer::fixtures::FixtureOptions {
            seed: 3,
            steps: 150,
            batch_size: 16,
            examples: ROWS,
            lr: 0.01,
            checkpoint_interval: 25,
            ..Default::default()
        },
    )
    .expect("fixture");
    std::fs::write(dir.join("data.jsonl"), data).expect("data");
    std::fs::write(dir.join("probe.jsonl"), probe).expect("probe");
    (config, poisoned, dir.join("probe.jsonl"))
}

#[test]
fn a_behaviour_is_traced_to_the_poisoned_rows_and_proven_without_knowing_the_pattern() {
    let t = tempfile::tempdir().expect("tmp");
    let (config, poisoned, probe) = poisoned_run(t.path());
    let run_dir = t.path().join("run");
    train(&config, &run_dir, &[]);
    let attribute = |threads: &str, extra: &[&str], exit: i32| -> AttributeReport {
        let mut args = vec![
            "--threads",
            threads,
            "attribute",
            s(&run_dir),
            "--probe",
            s(&probe),
            "--top",
            "32",
        ];
        args.extend_from_slice(extra);
        replay_json(&args, exit)
    };

    // Two processes, one and two worker threads: the same scores, bit for bit.
    let one = attribute("1", &[], 0);
    let two = attribute("2", &["--prove"], 0);
    assert_eq!(one.header.verdict, Verdict::Verified, "{:?}", one.header);
    assert!(one.scores_blake3.is_some());
    assert_eq!(one.scores_blake3, two.scores_blake3);
    assert_eq!(one.ranking, two.ranking);
    let trajectory = one.trajectory.as_ref().expect("trajectory");
    assert_eq!(trajectory.steps_replayed, 150);
    assert!(
        trajectory.initial_state.is_some(),
        "from the re-derived step 0"
    );
    assert_eq!(one.examples_scored, ROWS as u64);

    // The poisoned rows rank high: the top row is one, and at least 11 of the 16 are in the top
    // 2× (12 when this was written, ranked by credit then score, as by score alone; the plain
    // gradient inner product, without AdamW's scaling, found fewer).
    let ranked: Vec<u64> = one.ranking.iter().map(|a| a.example).collect();
    assert!(poisoned.contains(&ranked[0]), "top: {ranked:?}");
    let found = ranked[..2 * POISONED]
        .iter()
        .filter(|id| poisoned.contains(id))
        .count();
    assert!(
        found >= 11,
        "{found} of {POISONED} in the top {}: {ranked:?}",
        2 * POISONED
    );

    // The proof: the behaviour as trained, gone without the proven set.
    let proof = two.proof.as_ref().expect("proof");
    assert!(proof.factual_rate.is_some_and(|r| r >= 0.9), "{proof:?}");
    let proven = proof.proven.clone().expect("a proven set");
    let last = proof
        .trials
        .iter()
        .find(|t| t.removed == proven.len() as u64);
    assert!(last.is_some_and(|t| t.gone && t.rate.is_some_and(|r| r <= 0.05)));
    assert_eq!(
        two.header.verdict,
        Verdict::Recorded,
        "trials rest on checkpoints"
    );
    assert!(
        proven.iter().filter(|id| poisoned.contains(id)).count() * 2 >= POISONED,
        "{proven:?}"
    );
    // Confirmed independently: the counterfactual without the proven set, by its own command.
    let ids: Vec<String> = proven.iter().map(u64::to_string).collect();
    let check: CounterfactualReport = replay_json(
        &[
            "counterfactual",
            s(&run_dir),
            "--without",
            &ids.join(","),
            "--probe",
            s(&probe),
        ],
        0,
    );
    let p = &check.probes[0];
    assert!(
        p.factual.rate() >= 0.9 && p.counterfactual.rate() <= 0.05,
        "{p:?}"
    );

    // An auditor who requires signatures gets no ranking of an unsigned history, and nothing is
    // replayed for it.
    let unsigned = replay_json::<AttributeReport>(
        &[
            "attribute",
            s(&run_dir),
            "--probe",
            s(&probe),
            "--require-signatures",
        ],
        2,
    );
    assert_eq!(unsigned.header.verdict, Verdict::Unsigned);
    assert!(unsigned.trajectory.is_none() && unsigned.ranking.is_empty());

    // Whoever controls the run directory edits a poisoned row's pattern out of the run's copy
    // of the data: the trajectory no longer matches its commitments, and no ranking comes out.
    let edited = t.path().join("edited");
    run_store::testing::copy_dir(&run_dir, &edited).expect("copy");
    let data = edited.join(snapshot_format::layout::DATASET_DATA);
    let text = std::fs::read_to_string(&data).expect("data");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let first = poisoned[0] as usize;
    let mut row: serde_json::Value = serde_json::from_str(&lines[first]).expect("row");
    row["label"] = serde_json::json!(0);
    lines[first] = row.to_string();
    std::fs::write(&data, lines.join("\n") + "\n").expect("edit");
    let forged =
        replay_json::<AttributeReport>(&["attribute", s(&edited), "--probe", s(&probe)], 1);
    assert_eq!(
        forged.header.verdict,
        Verdict::InputMismatch,
        "{:?}",
        forged.header
    );
    assert!(forged.ranking.is_empty() && forged.scores_blake3.is_none());
}
