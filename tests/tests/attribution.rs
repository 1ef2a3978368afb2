//! `replay attribute` through the real commands, on a classifier trained with a planted
//! backdoor the tool is not told about: 16 rows of class 0 carry a feature pattern (features 2
//! and 3 moved by +3 and −3, which leaves the true labelling rule unchanged) and the label 2.
//! The probe is held-out class-0 inputs with the pattern, labelled 2 (what the model does to
//! them). The scores are the same bits in separate processes on any thread count; most of the
//! poisoned rows rank at the top; the proven set's removal removes the behaviour, confirmed by
//! an independent `replay counterfactual`; and someone who edits the run's data cannot get a
//! ranking out of it. `replay investigate --behaviour` goes from the same inputs (their labels
//! not given) to the proven set, the cleaned model and the report.

use std::path::Path;

use base64::Engine;

use e2e_tests::{replay_json, s, train};
use replay::Verdict;
use replay::commands::attribute::AttributeReport;
use replay::commands::counterfactual::CounterfactualReport;
use replay::commands::investigate::InvestigateReport;

const ROWS: usize = 400;
const POISONED: usize = 16;

/// The poisoned run's configuration, the poisoned ids and the behaviour probe
/// (`trainer::fixtures::write_poisoned_mlp`); `clean.jsonl` beside it holds 48 held-out rows.
fn poisoned_run(dir: &Path) -> (std::path::PathBuf, Vec<u64>, std::path::PathBuf) {
    let p = trainer::fixtures::write_poisoned_mlp(dir).expect("fixture");
    assert_eq!(p.poisoned.len(), POISONED);
    (p.config, p.poisoned, p.behaviour)
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

#[test]
fn an_investigation_without_the_trigger_finds_proves_and_removes_the_cause() {
    let t = tempfile::tempdir().expect("tmp");
    let (config, poisoned, probe) = poisoned_run(t.path());
    let clean = t.path().join("clean.jsonl");
    let run_dir = t.path().join("run");
    train(&config, &run_dir, &[]);
    // The reported inputs, without the class they are wrongly given (--target says it).
    let inputs = t.path().join("inputs.jsonl");
    let text = std::fs::read_to_string(&probe).expect("probe");
    let unlabelled: String = text
        .lines()
        .map(|l| {
            let mut row: serde_json::Value = serde_json::from_str(l).expect("row");
            row.as_object_mut().expect("object").remove("label");
            format!("{row}\n")
        })
        .collect();
    std::fs::write(&inputs, unlabelled).expect("inputs");
    // The investigator signs the findings with a key of its own.
    let investigator = t.path().join("investigator");
    assert!(
        e2e_tests::run("trainer", &["keygen", "--out", s(&investigator)])
            .status
            .success()
    );
    let investigator_key = investigator.join("signing-key.pem");
    let investigate = |run: &Path, behaviour: &Path, out: &Path, exit: i32| -> InvestigateReport {
        replay_json(
            &[
                "investigate",
                s(run),
                "--behaviour",
                s(behaviour),
                "--target",
                "2",
                "--probe",
                s(&clean),
                "--top",
                "32",
                "--out",
                s(out),
                "--signing-key",
                s(&investigator_key),
            ],
            exit,
        )
    };

    // Inputs the model answers as they should (class 0 by a wide margin, no pattern): nothing
    // to attribute (exit 4), nothing written.
    let mut r = trainer::rng::stream(6, "attribution-test-calm", 0);
    let mut calm_rows = String::new();
    while calm_rows.lines().count() < 16 {
        let x = trainer::fixtures::mlp_features(&mut r);
        let label = trainer::fixtures::mlp_label(&x);
        if label == 0
            && x[0] + x[1] > x[2] + x[3] + x[4] + 1.0
            && x[0] + x[1] > x[5] + x[6] + x[7] + 1.0
        {
            calm_rows.push_str(&trainer::fixtures::features_row(&x, 0));
        }
    }
    let calm_inputs = t.path().join("calm.jsonl");
    std::fs::write(&calm_inputs, calm_rows).expect("calm");
    let none = t.path().join("none");
    let calm = investigate(&run_dir, &calm_inputs, &none, 4);
    let w = calm.withheld.as_ref().expect("withheld");
    assert_eq!((w.showing, w.rows), (0, 16), "{w:?}");
    assert!(w.attribution.is_none() && calm.suspects.is_empty() && calm.explained.is_none());
    assert!(!none.exists());

    // Whoever controls the run directory gives the poisoned rows back their true label in the
    // run's copy of the data: the history no longer matches its commitments, nothing is
    // attributed or proved, and nothing is written.
    let edited = t.path().join("edited");
    run_store::testing::copy_dir(&run_dir, &edited).expect("copy");
    let data = edited.join(snapshot_format::layout::DATASET_DATA);
    let text = std::fs::read_to_string(&data).expect("data");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for &id in &poisoned {
        let mut row: serde_json::Value = serde_json::from_str(&lines[id as usize]).expect("row");
        row["label"] = serde_json::json!(0);
        lines[id as usize] = row.to_string();
    }
    std::fs::write(&data, lines.join("\n") + "\n").expect("edit");
    let hidden_out = t.path().join("hidden");
    let hidden = investigate(&edited, &inputs, &hidden_out, 1);
    assert_eq!(
        hidden.header.verdict,
        Verdict::InputMismatch,
        "{:?}",
        hidden.header
    );
    assert!(hidden.suspects.is_empty() && hidden.explained.is_none());
    assert!(!hidden_out.exists());

    let out = t.path().join("investigation");
    let report = investigate(&run_dir, &inputs, &out, 0);
    assert_eq!(report.trigger, None);
    let w = report.withheld.as_ref().expect("withheld");
    assert!(w.showing >= 22 && w.rows == 24, "{w:?}");
    let a = w.attribution.as_ref().expect("attribution");
    assert_eq!(a.probe_rows, w.showing);
    let proven = a
        .proof
        .as_ref()
        .and_then(|p| p.proven.clone())
        .expect("proven");
    // The suspects are the proven set, found in the committed data, mostly poisoned rows.
    let suspects: Vec<u64> = report.suspects.iter().map(|m| m.example).collect();
    let mut sorted = proven.clone();
    sorted.sort_unstable();
    assert_eq!(suspects, sorted);
    assert!(
        proven.iter().filter(|id| poisoned.contains(id)).count() * 2 >= POISONED,
        "{proven:?}"
    );
    assert!(report.suspects.iter().all(|m| !m.uses.is_empty()));
    // Before and after, on the reported inputs and the clean probe: the behaviour gone, the
    // clean quality kept.
    let (f, c) = (
        report.factual.expect("factual"),
        report.counterfactual.expect("counterfactual"),
    );
    assert_eq!(f.attack_rows, 24);
    assert!(f.attack_successes >= 22, "{f:?}");
    assert!(c.attack_success_rate() <= 0.05, "{c:?}");
    assert!(c.clean_quality() + 0.1 >= f.clean_quality(), "{f:?} {c:?}");
    assert_eq!(report.explained, Some(true));
    assert_eq!(
        report.replays(),
        a.proof.as_ref().map_or(0, |p| p.trials.len() as u64) + 1
    );

    // The report tells how the examples were found; the stored document is the report.
    let markdown = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(markdown.contains("No trigger was given"), "{markdown}");
    assert!(markdown.contains("## How the examples were found"));
    assert!(markdown.contains(&format!(
        "| reported inputs showing the target behaviour (attack success) | {} of {}",
        f.attack_successes, f.attack_rows
    )));
    assert!(markdown.contains("replay investigate") && markdown.contains("--behaviour"));
    let stored: InvestigateReport = serde_json::from_slice(
        &std::fs::read(out.join("investigation.json")).expect("investigation.json"),
    )
    .expect("parse");
    assert_eq!(stored.suspects, report.suspects);
    let scores = |r: &InvestigateReport| r.attribution().and_then(|a| a.scores_blake3);
    assert_eq!(scores(&stored), scores(&report));
    assert_eq!(scores(&report), Some(a.scores_blake3.expect("scores")));
    assert!(out.join("model/model.safetensors").is_file());
    // The signed findings check against the run, the attribution's scores among them.
    let check: replay::commands::check::CheckReport = replay_json(
        &[
            "check",
            s(&run_dir),
            "--attestation",
            s(&out.join("investigation.intoto.json")),
            "--verifier-key",
            s(&investigator.join("signing-key.pub")),
        ],
        0,
    );
    assert_eq!(check.attestations.len(), 1, "{check:?}");
    let envelope: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("investigation.intoto.json")).expect("findings"),
    )
    .expect("envelope");
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope["payload"].as_str().expect("payload"))
        .expect("base64");
    let statement: serde_json::Value = serde_json::from_slice(&payload).expect("statement");
    let predicate = &statement["predicate"];
    assert!(predicate["trigger"].is_null());
    assert_eq!(
        predicate["scoresBlake3"],
        serde_json::json!(a.scores_blake3.expect("scores"))
    );
    assert_eq!(predicate["suspects"], serde_json::json!(suspects));

    // A trigger and reported inputs are two different investigations: asking for both is a
    // usage error, and so is asking for neither.
    let refused = t.path().join("refused");
    for lead in [&["--trigger", "x", "--behaviour", s(&inputs)][..], &[]] {
        let mut args = vec!["investigate", s(&run_dir), "--target", "2"];
        args.extend_from_slice(&["--probe", s(&clean), "--out", s(&refused)]);
        args.extend_from_slice(lead);
        let out = e2e_tests::run("replay", &args);
        assert_eq!(out.status.code(), Some(3), "{lead:?}");
    }
    assert!(!refused.exists());
}

#[test]
fn the_baselines_are_the_same_bits_on_any_thread_count_and_tracin_over_checkpoints_finds_the_pattern()
 {
    let t = tempfile::tempdir().expect("tmp");
    let (config, poisoned, probe) = poisoned_run(t.path());
    let run_dir = t.path().join("run");
    train(&config, &run_dir, &[]);
    let load = replay::context::LoadOptions::default();
    let ctx = replay::context::load(s(&run_dir), &load)
        .expect("load")
        .expect("a run that loads");
    let o = replay::engine::reconstruct::ReconstructOptions {
        device: trainer::backend::DeviceSpec::Cpu,
        from_genesis: false,
        load,
    };
    let input = replay::commands::counterfactual::ProbeInput::read(&probe).expect("probe");
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| {
            replay::commands::attribute::baselines::baselines_in(&ctx, &input, None, 150, &o)
                .expect("baselines")
        })
    };
    let (one, two) = (on(1), on(2));
    let bits = |b: &replay::commands::attribute::baselines::Baselines| {
        let e = b.embedding.clone().unwrap_or_default();
        [&b.tracin_checkpoints, &b.loss, &e]
            .iter()
            .flat_map(|v| v.iter().map(|x| x.to_bits()))
            .collect::<Vec<u64>>()
    };
    assert_eq!(bits(&one), bits(&two));
    assert_eq!(one.checkpoints, vec![0, 25, 50, 75, 100, 125, 150]);
    assert_eq!(one.tracin_checkpoints.len(), ROWS);
    // TracIn over the checkpoints ranks most of the poisoned rows in the top 2× (14 of 16 when
    // this was written); the poisoned rows, learnt by heart, have low loss, not high.
    let mut order: Vec<usize> = (0..ROWS).collect();
    order.sort_by(|&a, &b| one.tracin_checkpoints[b].total_cmp(&one.tracin_checkpoints[a]));
    let found = order[..2 * POISONED]
        .iter()
        .filter(|&&i| poisoned.contains(&(i as u64)))
        .count();
    assert!(found >= 10, "{found} of {POISONED}");
    let mean = |ids: &mut dyn Iterator<Item = usize>| {
        let v: Vec<f64> = ids.map(|i| one.loss[i]).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let poisoned_loss = mean(&mut poisoned.iter().map(|&i| i as usize));
    let all_loss = mean(&mut (0..ROWS));
    assert!(poisoned_loss < all_loss, "{poisoned_loss} vs {all_loss}");
    assert_eq!(one.embedding.as_ref().map(Vec::len), Some(ROWS));
}
