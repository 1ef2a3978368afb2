//! Human-readable rendering of the reports (the default output of `replay`).

use std::fmt::Write;

use crate::commands::attribute::AttributeReport;
use crate::commands::audit::AuditReport;
use crate::commands::check::CheckReport;
use crate::commands::collect::CollectReport;
use crate::commands::compare::CompareReport;
use crate::commands::counterfactual::CounterfactualReport;
use crate::commands::diff::DiffReport;
use crate::commands::evaluate::EvaluateReport;
use crate::commands::inspect::InspectReport;
use crate::commands::investigate::InvestigateReport;
use crate::commands::provenance::ProvenanceReport;
use crate::commands::rollback::RollbackReport;
use crate::commands::search::SearchReport;
use crate::commands::verify::VerifyReport;
use crate::engine::reexecute::{EnvironmentCheck, InputMismatch, RangeResult};
use crate::render::chart::loss_text;
use crate::report::{Problem, Report, Verdict};
use crate::state::TensorDiff;

/// Tensors listed in text output (JSON lists all).
const TENSORS_SHOWN: usize = 10;

fn signatures(out: &mut String, s: &Option<crate::signatures::SignatureReport>) {
    use crate::signatures::Status;
    let Some(s) = s else { return };
    let total = s.artefacts.len();
    let counts = [
        (Status::Trusted, "signed by a trusted key"),
        (Status::Valid, "validly signed (no --trusted-key given)"),
        (Status::UnknownSigner, "signed by an UNKNOWN key"),
        (Status::Unsigned, "unsigned"),
        (Status::Bad, "with a BAD signature"),
    ];
    let parts: Vec<String> = counts
        .iter()
        .filter(|(st, _)| s.count(*st) > 0)
        .map(|(st, what)| format!("{} {what}", s.count(*st)))
        .collect();
    let _ = writeln!(
        out,
        "  signatures   {total} artefacts: {}",
        parts.join(", ")
    );
    for k in &s.signers {
        let _ = writeln!(
            out,
            "               signer {} ({}){}",
            k.fingerprint,
            k.artefacts,
            if k.trusted { ", trusted" } else { "" }
        );
    }
}

fn verdict_line(out: &mut String, v: Verdict) {
    let _ = writeln!(out, "verdict: {v} (exit {})", v.exit_code());
}

fn problems(out: &mut String, ps: &[Problem]) {
    for p in ps {
        let _ = writeln!(out, "  {:<10} {}: {}", p.kind.name(), p.artefact, p.detail);
    }
}

/// Tensor differences, largest first.
pub fn tensors(out: &mut String, ts: &[TensorDiff], indent: &str) {
    if ts.is_empty() {
        let _ = writeln!(out, "{indent}(none)");
    }
    for t in ts.iter().take(TENSORS_SHOWN) {
        if t.status == "present in both" {
            let _ = writeln!(
                out,
                "{indent}{:<56} max |d| {:.3e}  l2 {:.3e}  ({} of {} elements)",
                t.name, t.max_abs_diff, t.l2, t.differing, t.elements
            );
        } else {
            let _ = writeln!(out, "{indent}{:<56} {}", t.name, t.status);
        }
    }
    if ts.len() > TENSORS_SHOWN {
        let _ = writeln!(
            out,
            "{indent}… and {} more (see --json)",
            ts.len() - TENSORS_SHOWN
        );
    }
}

fn environment(out: &mut String, e: &Option<EnvironmentCheck>) {
    let Some(e) = e else { return };
    if !e.cross_class() {
        let _ = writeln!(out, "  environment  same class ({})", e.run_class.short());
        return;
    }
    let _ = writeln!(
        out,
        "  environment  DIFFERENT class: the run claims {}, this machine is {} (replayed; \
         differences are judged against floating-point noise, never passed)",
        e.run_class.short(),
        e.here_class.short(),
    );
    for (f, run, here) in &e.differences {
        let _ = writeln!(out, "               {f}: run {run:?}, here {here:?}");
    }
}

fn input_mismatch(out: &mut String, m: &InputMismatch) {
    let _ = writeln!(
        out,
        "      step {}: example {} of {} hashes to {}, the run committed to {}",
        m.step, m.example_id, m.dataset, m.found, m.committed
    );
}

/// One range's result.
pub fn range(out: &mut String, r: &RangeResult) {
    let label = if r.segment > 0 {
        format!("segment {:<4}", r.segment)
    } else if r.to_step == 0 {
        "step 0      ".to_string()
    } else {
        "steps       ".to_string()
    };
    let start = match (r.initial_state.is_some(), r.start_checkpoint) {
        (true, _) => "step 0 re-derived".to_string(),
        (false, Some(c)) => format!("checkpoint {c}"),
        (false, None) => "-".to_string(),
    };
    let steps = if r.to_step == 0 {
        String::new()
    } else {
        format!("steps {:>6}..={:<6}", r.from_step, r.to_step)
    };
    let _ = writeln!(
        out,
        "  {label} {steps:<21} {:<20} ({} steps replayed from {start}, {:.1} s)",
        r.verdict.name(),
        r.steps_replayed,
        r.seconds
    );
    if let Some(i) = &r.initial_state {
        let _ = writeln!(
            out,
            "      step 0 re-derived from the pinned base and seed in {:.2} s: root {} ({})",
            i.seconds,
            i.rederived_root.short(),
            if i.rederived_root == i.recorded_root {
                "as recorded"
            } else {
                "NOT the recorded one"
            }
        );
    }
    problems(out, &r.problems);
    if let Some(m) = &r.input_mismatch {
        input_mismatch(out, m);
    }
    if let Some(d) = &r.divergence {
        let _ = writeln!(
            out,
            "      first difference at step {}: {}",
            d.step, d.field
        );
        let _ = writeln!(out, "        recorded {}", d.recorded);
        let _ = writeln!(out, "        replayed {}", d.replayed);
        if let Some(s) = d.tensors_at_step {
            let _ = writeln!(
                out,
                "      tensors differing from the stored state after step {s}:"
            );
            tensors(out, &d.tensors, "        ");
        }
    }
    if !r.deltas.is_empty() {
        let max_loss = r.deltas.iter().map(|d| d.loss_abs_diff).fold(0.0, f64::max);
        let max_gn = r
            .deltas
            .iter()
            .map(|d| d.grad_norm_abs_diff)
            .fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "      across {} steps: max |loss difference| {max_loss:.3e}, max |grad-norm difference| {max_gn:.3e}",
            r.deltas.len()
        );
    }
    if let Some(n) = &r.noise {
        let _ = writeln!(out, "      {}", n.reason);
    }
}

/// `check`.
pub fn check(r: &CheckReport) -> String {
    let mut out = String::new();
    let c = &r.checked;
    let _ = writeln!(
        out,
        "check {}: {}, {}, {}, {}, {:.1} MB in {:.2} s",
        r.header.run,
        count(c.segments, "segment", "segments"),
        count(c.records, "record", "records"),
        count(c.checkpoints, "checkpoint", "checkpoints"),
        count(c.examples, "example", "examples"),
        c.bytes as f64 / 1e6,
        r.seconds
    );
    signatures(&mut out, &r.signatures);
    for a in &r.attestations {
        let _ = writeln!(
            out,
            "  attestation  {}\n               {}, {} ({}): {}",
            a.artefact,
            a.predicate_type,
            a.signatures.status.name(),
            if a.signatures.signers.is_empty() {
                "no verified signer".to_string()
            } else {
                a.signatures.signers.join(", ")
            },
            a.verdict
        );
        if let Some(st) = &a.stated {
            stated(&mut out, st);
        }
    }
    problems(&mut out, &r.header.problems);
    for w in &r.warnings {
        let _ = writeln!(out, "  warning    {w}");
    }
    verdict_line(&mut out, r.header.verdict);
    out
}

/// What a statement claims, in one line and a line per range.
fn stated(out: &mut String, st: &crate::attestations::Stated) {
    let mut line = format!("               states: {} at step {}", st.by, st.step);
    if let Some(v) = st.verdict {
        line += &format!(", verdict {v}");
    }
    if let Some(n) = st.steps_replayed {
        line += &format!(", {n} steps replayed");
    }
    if let Some(e) = st.explained {
        line += &format!(", explained {e}");
    }
    let _ = writeln!(out, "{line}");
    for r in &st.ranges {
        let _ = writeln!(
            out,
            "                 {} steps {:>6}..={:<6} {}{}",
            if r.segment == 0 {
                "steps     ".to_string()
            } else {
                format!("segment {:<2}", r.segment)
            },
            r.from_step,
            r.to_step,
            r.verdict,
            if r.rederived_from_step0 {
                " (from step 0 re-derived)"
            } else {
                ""
            }
        );
    }
}

/// `verify`.
pub fn verify(r: &VerifyReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "verify {} ({}{}): {} steps replayed in {:.1} s ({:.2} steps/s)",
        r.header.run,
        r.scope,
        r.shard
            .as_ref()
            .map(|s| format!(", shard {}/{} of {}", s.shard.index, s.shard.count, s.id))
            .unwrap_or_default(),
        r.steps_replayed,
        r.seconds,
        r.steps_per_second
    );
    environment(&mut out, &r.environment);
    signatures(&mut out, &r.signatures);
    problems(&mut out, &r.header.problems);
    for range_result in &r.ranges {
        range(&mut out, range_result);
    }
    if let Some(k) = &r.result_key {
        let _ = writeln!(out, "  result written to {k}");
    }
    verdict_line(&mut out, r.header.verdict);
    out
}

/// `audit`.
pub fn audit(r: &AuditReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "audit {}: {} of {} segments sampled with seed {} ({}; repeat with --seed {})",
        r.header.run,
        r.sampled.len(),
        r.segments_total,
        r.seed,
        match r.seed_source {
            crate::commands::audit::SeedSource::Os => "drawn from the operating system",
            crate::commands::audit::SeedSource::Given => "GIVEN: the sample was predictable",
        },
        r.seed
    );
    environment(&mut out, &r.environment);
    signatures(&mut out, &r.signatures);
    problems(&mut out, &r.header.problems);
    for range_result in &r.ranges {
        range(&mut out, range_result);
    }
    let _ = writeln!(out, "  passed {:?}, failed {:?}", r.passed, r.failed);
    let _ = writeln!(out, "  probability that this sample catches tampering:");
    for d in &r.detection {
        let _ = writeln!(
            out,
            "    if {:>5.1}% of segments ({}) were tampered: {:.1}%",
            d.tampered_fraction * 100.0,
            d.tampered_segments,
            d.probability * 100.0
        );
    }
    verdict_line(&mut out, r.header.verdict);
    out
}

/// `collect`.
pub fn collect(r: &CollectReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "collect {} ({} in {}): {} of {} shards reported, {} segments, {} steps replayed",
        r.header.run,
        r.id,
        r.results,
        r.shards_present.len(),
        r.shards,
        r.segments.len(),
        r.steps_replayed
    );
    let _ = writeln!(out, "  verifier keys {}", r.verifier_keys.join(", "));
    problems(&mut out, &r.header.problems);
    for (k, v) in &r.segments {
        if !v.passed() {
            let _ = writeln!(out, "  segment {k}: {v}");
        }
    }
    verdict_line(&mut out, r.header.verdict);
    out
}

/// `rollback`.
pub fn rollback(r: &RollbackReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rollback {} to step {}", r.header.run, r.step);
    environment(&mut out, &r.environment);
    problems(&mut out, &r.header.problems);
    if let Some(rr) = &r.replay {
        range(&mut out, rr);
    }
    if let Some(root) = r.state_root {
        let _ = writeln!(out, "  state root   {root}");
    }
    match r.committed_root {
        Some(c) => {
            let _ = writeln!(
                out,
                "  committed    {c} ({})",
                if Some(c) == r.state_root {
                    "equal"
                } else {
                    "DIFFERENT"
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  committed    (no root recorded for this step; the path was confirmed up to the next one)"
            );
        }
    }
    match &r.out {
        Some(o) => {
            let _ = writeln!(out, "  wrote        {} in {o}", r.files.join(", "));
        }
        None => {
            let _ = writeln!(out, "  wrote        nothing (the verdict does not pass)");
        }
    }
    verdict_line(&mut out, r.header.verdict);
    out
}

/// `compare`.
pub fn compare(r: &CompareReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "compare {} with {}: {} ({} steps compared, {:.2} s)",
        r.header.run,
        r.run_b,
        if r.identical {
            "identical"
        } else {
            "they differ"
        },
        r.steps_compared,
        r.seconds
    );
    problems(&mut out, &r.header.problems);
    if !r.spec_differences.is_empty() {
        let _ = writeln!(out, "  spec differences:");
        for (p, a, b) in &r.spec_differences {
            let _ = writeln!(out, "    {p}: {a} vs {b}");
        }
    }
    if let Some(d) = &r.first_difference {
        let _ = writeln!(out, "  first difference at step {}:", d.step);
        for f in &d.fields {
            let _ = writeln!(out, "    {:<12} {} vs {}", f.field, f.a, f.b);
        }
        if let Some(s) = d.tensors_at_step {
            let _ = writeln!(
                out,
                "  tensors differing after step {s} ({}):",
                d.tensors_from
            );
            tensors(&mut out, &d.tensors, "    ");
        }
    }
    verdict_line(&mut out, r.header.verdict);
    out
}

/// `provenance`.
pub fn provenance(r: &ProvenanceReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "provenance of example {} in {}: used at {} steps (of {} scanned)",
        r.example,
        r.header.run,
        r.uses.len(),
        r.steps_scanned
    );
    match (r.committed_hash, r.current_hash) {
        (Some(c), Some(f)) if c == f => {
            let _ = writeln!(out, "  content      matches its commitment {}", c.short());
        }
        (Some(c), Some(f)) => {
            let _ = writeln!(out, "  content      CHANGED: committed {c}, now {f}");
        }
        _ => {
            let _ = writeln!(
                out,
                "  content      cannot be checked (dataset or its manifest unreadable)"
            );
        }
    }
    problems(&mut out, &r.header.problems);
    for u in &r.uses {
        let _ = writeln!(
            out,
            "  step {:>7}  epoch {:>3}  position {:>3}",
            u.step, u.epoch, u.position
        );
    }
    verdict_line(&mut out, r.header.verdict);
    out
}

/// `provenance --match`.
pub fn search(r: &SearchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "provenance of {} in {}: {} of {} examples match ({})",
        r.patterns
            .iter()
            .map(|p| format!("/{p}/"))
            .collect::<Vec<_>>()
            .join(" or "),
        r.header.run,
        r.matches.len(),
        r.examples_searched,
        if r.searched.is_empty() {
            "nothing searched"
        } else {
            &r.searched
        }
    );
    let _ = writeln!(out, "  dataset root {}", r.dataset_root);
    problems(&mut out, &r.header.problems);
    for m in &r.matches {
        let steps: Vec<String> = m.uses.iter().map(|u| u.step.to_string()).collect();
        let _ = writeln!(
            out,
            "  example {:>6}  {}  {}",
            m.example,
            if steps.is_empty() {
                "never used".to_string()
            } else {
                format!("steps {}", steps.join(", "))
            },
            m.excerpt
        );
    }
    verdict_line(&mut out, r.header.verdict);
    out
}

/// `evaluate`.
pub fn evaluate(r: &EvaluateReport) -> String {
    use trainer::probe::ProbeResult;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "evaluate {} at step {} on {} ({})",
        r.header.run,
        r.step,
        r.probe,
        r.probe_blake3.short()
    );
    environment(&mut out, &r.environment);
    problems(&mut out, &r.header.problems);
    if let Some(rr) = &r.replay {
        range(&mut out, rr);
    }
    if let Some(root) = r.state_root {
        let _ = writeln!(out, "  state root   {root}");
    }
    match &r.result {
        Some(ProbeResult::Classifier { rows, accuracy }) => {
            let wrong: Vec<String> = rows
                .iter()
                .filter(|c| c.label != c.predicted)
                .map(|c| c.row.to_string())
                .collect();
            let _ = writeln!(
                out,
                "  accuracy     {:.4} ({} of {} rows as labelled)",
                accuracy,
                rows.len() - wrong.len(),
                rows.len()
            );
            if !wrong.is_empty() {
                let _ = writeln!(out, "  other label  rows {}", wrong.join(", "));
            }
        }
        Some(ProbeResult::Generation { rows, match_rate }) => {
            let matched = rows.iter().filter(|g| g.matched).count();
            let _ = writeln!(
                out,
                "  match rate   {:.4} ({matched} of {} generations match their target)",
                match_rate,
                rows.len()
            );
            for g in rows {
                let _ = writeln!(
                    out,
                    "  {} {:?} -> {:?}",
                    if g.matched { "match" } else { "     " },
                    g.prompt,
                    g.generation
                );
            }
        }
        None => {}
    }
    verdict_line(&mut out, r.header.verdict);
    out
}

/// `n` and the noun in the right number.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Steps listed in text output (JSON lists all).
const STEPS_SHOWN: usize = 8;

/// `counterfactual`.
pub fn counterfactual(r: &CounterfactualReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "counterfactual {} without examples {:?}, up to step {}",
        r.header.run, r.without, r.to_step
    );
    environment(&mut out, &r.environment);
    problems(&mut out, &r.header.problems);
    let start = r.first_changed_step.map(|f| f - 1);
    for (what, step, rr) in [
        ("start", start, &r.factual_start),
        ("end", Some(r.to_step), &r.factual_end),
    ] {
        match (step, rr) {
            (_, Some(rr)) if rr.verdict == Verdict::Verified => {
                let _ = writeln!(
                    out,
                    "  factual {what:<6}after step {}: {}, {} steps replayed from {} ({:.1} s)",
                    rr.to_step,
                    if rr.rederived() {
                        "re-derived"
                    } else {
                        "recorded"
                    },
                    rr.steps_replayed,
                    if rr.initial_state.is_some() {
                        "step 0 re-derived".to_string()
                    } else {
                        format!("checkpoint {}", rr.start_checkpoint.unwrap_or(0))
                    },
                    rr.seconds
                );
            }
            (_, Some(rr)) => range(&mut out, rr),
            (Some(s), None) if r.counterfactual_root.is_some() => {
                let _ = writeln!(
                    out,
                    "  factual {what:<6}after step {s}: stored checkpoint, as the ledger records it"
                );
            }
            _ => {}
        }
    }
    if let Some(m) = &r.input_mismatch {
        input_mismatch(&mut out, m);
    }
    match r.first_changed_step {
        None => {
            let _ = writeln!(
                out,
                "  changed      nothing: no batch up to step {} held these examples",
                r.to_step
            );
        }
        Some(first) => {
            let changed: Vec<_> = r.steps.iter().filter(|s| !s.removed.is_empty()).collect();
            let skipped = r.steps.iter().filter(|s| s.batch_size == 0).count();
            let _ = writeln!(
                out,
                "  changed      {} (first at step {first}), {skipped} left empty (no update); {} re-executed",
                count(changed.len() as u64, "batch", "batches"),
                count(r.steps.len() as u64, "step", "steps")
            );
            for s in changed.iter().take(STEPS_SHOWN) {
                let _ = writeln!(
                    out,
                    "    step {:>7}  removed {:?}, trained on {}",
                    s.step, s.removed, s.batch_size
                );
            }
            if changed.len() > STEPS_SHOWN {
                let _ = writeln!(
                    out,
                    "    … and {} more (see --json)",
                    changed.len() - STEPS_SHOWN
                );
            }
        }
    }
    if let Some(s) = r.steps.last() {
        let _ = writeln!(
            out,
            "  loss         at step {}: recorded {}, counterfactual {}",
            s.step,
            s.loss_recorded,
            s.loss_counterfactual
                .map(|l| l.to_string())
                .unwrap_or_else(|| "(no update)".into())
        );
    }
    for e in &r.examples {
        let _ = writeln!(
            out,
            "  example {:<5}label {}, used {}: loss {} factual, {} counterfactual (no dropout)",
            e.example,
            e.label,
            count(e.uses, "time", "times"),
            e.loss_factual,
            e.loss_counterfactual
        );
    }
    if let (Some(f), Some(c)) = (r.factual_root, r.counterfactual_root) {
        let _ = writeln!(out, "  state root   factual        {f}");
        let _ = writeln!(
            out,
            "               counterfactual {c}{}",
            if f == c { " (equal)" } else { "" }
        );
        let _ = writeln!(
            out,
            "  {} tensors differ from the factual state, largest first:",
            r.tensors.len()
        );
        tensors(&mut out, &r.tensors, "    ");
    }
    for p in &r.probes {
        let _ = writeln!(
            out,
            "  probe        {} ({}): factual {} → counterfactual {}",
            p.probe,
            p.probe_blake3.short(),
            probe_rate(&p.factual),
            probe_rate(&p.counterfactual)
        );
    }
    if let Some(o) = &r.out {
        let _ = writeln!(out, "  wrote        {} in {o}", r.files.join(", "));
    }
    verdict_line(&mut out, r.header.verdict);
    out
}

/// `investigate`.
pub fn investigate(r: &InvestigateReport) -> String {
    let mut out = String::new();
    match (&r.trigger, &r.withheld) {
        (Some(trigger), _) => {
            let _ = writeln!(
                out,
                "investigate {}: trigger {trigger:?}, target {:?}",
                r.header.run, r.target
            );
            let _ = writeln!(
                out,
                "  find         {} of {} committed examples match {} (dataset root {})",
                r.suspects.len(),
                r.examples_searched,
                r.patterns
                    .iter()
                    .map(|p| format!("/{p}/"))
                    .collect::<Vec<_>>()
                    .join(" or "),
                r.dataset_root.short()
            );
        }
        (None, Some(w)) => {
            let _ = writeln!(
                out,
                "investigate {}: no trigger; behaviour {:?} on {} ({})",
                r.header.run,
                r.target,
                w.inputs,
                w.inputs_blake3.short()
            );
            let _ = writeln!(
                out,
                "  shown        {} of {} inputs show it in the model as trained (the probe attributed)",
                w.showing, w.rows
            );
            if let Some(a) = &w.attribution {
                attribution(&mut out, a);
            }
            if let Some(command) = super::investigation::trigger_command(r) {
                let _ = writeln!(out, "  next         {command}");
            }
        }
        (None, None) => {}
    }
    problems(&mut out, &r.header.problems);
    if let (Some(f), Some(c)) = (&r.factual, &r.counterfactual) {
        let _ = writeln!(
            out,
            "  probe        {} ({}){}",
            r.probe,
            r.probe_blake3.short(),
            if r.trigger.is_some() {
                ", the trigger put in front of each input"
            } else {
                " (clean), and the inputs that show the behaviour"
            }
        );
        let _ = writeln!(
            out,
            "  {:<40}{:>22}{:>22}",
            "", "as trained", "without the examples"
        );
        for (what, a, b) in [
            (
                if r.trigger.is_some() {
                    "attack success (triggered inputs)"
                } else {
                    "attack success (reported inputs)"
                },
                (f.attack_successes, f.attack_rows),
                (c.attack_successes, c.attack_rows),
            ),
            (
                "clean quality (clean inputs)",
                (f.clean_correct, f.clean_rows),
                (c.clean_correct, c.clean_rows),
            ),
            (
                "target behaviour on clean inputs",
                (f.clean_activations, f.clean_rows),
                (c.clean_activations, c.clean_rows),
            ),
        ] {
            let cell = |(n, of): (u64, u64)| format!("{n}/{of}");
            let _ = writeln!(out, "  {what:<40}{:>22}{:>22}", cell(a), cell(b));
        }
    }
    if let Some(h) = &r.history {
        let _ = writeln!(
            out,
            "  re-executed  steps {} to {} without them ({} counterfactual replays in all)",
            h.first_changed_step.unwrap_or(h.to_step),
            h.to_step,
            r.replays()
        );
    }
    let _ = writeln!(
        out,
        "  finding      {}",
        match r.explained {
            Some(true) => "the suspect examples caused the behaviour: removing them lowers it",
            Some(false) => "the suspect examples do not explain the behaviour",
            None if r.suspects.is_empty() && r.trigger.is_some() => "no committed example matches",
            None if r.suspects.is_empty() => "no set of examples was proved to cause it",
            None => "nothing measured",
        }
    );
    if !r.files.is_empty() {
        let _ = writeln!(out, "  wrote        {} in {}", r.files.join(", "), r.out);
    }
    let _ = writeln!(
        out,
        "verdict: {} (exit {})",
        r.header.verdict,
        r.exit_code()
    );
    out
}

/// `attribute`.
pub fn attribute(r: &AttributeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "attribute {}: probe {} ({} rows, {}), steps 1..={}",
        r.header.run,
        r.probe,
        r.probe_rows,
        r.probe_blake3.short(),
        r.to_step
    );
    problems(&mut out, &r.header.problems);
    attribution(&mut out, r);
    verdict_line(&mut out, r.header.verdict);
    out
}

/// At most `n` ids, then how many there are in all.
fn some_ids(ids: &[u64], n: usize) -> String {
    let mut s: Vec<String> = ids.iter().take(n).map(u64::to_string).collect();
    if ids.len() > n {
        s.push(format!("… ({} in all)", ids.len()));
    }
    s.join(", ")
}

/// The trajectory, the ranking and the proof of an attribution.
fn attribution(out: &mut String, r: &AttributeReport) {
    if let Some(t) = &r.trajectory {
        range(out, t);
    }
    if let Some(h) = &r.scores_blake3 {
        let _ = writeln!(
            out,
            "  scored       {} examples over {} trained parameters ({} tensors) in {:.1} s; scores {}",
            r.examples_scored,
            r.parameters,
            r.tensors.len(),
            r.rank_seconds,
            h.short()
        );
        let _ = writeln!(
            out,
            "  {:>4} {:>8} {:>8} {:>11} {:>5} {:>9}  excerpt",
            "rank", "example", "credit", "score", "uses", "mean loss"
        );
        for a in &r.ranking {
            let _ = writeln!(
                out,
                "  {:>4} {:>8} {:>8.4} {:>11.4e} {:>5} {:>9.4}  {}",
                a.rank,
                a.example,
                a.credit,
                a.score,
                a.steps.len(),
                a.mean_loss,
                a.excerpt
            );
        }
    }
    if let Some(p) = &r.proof {
        let rate = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.4}"));
        let _ = writeln!(
            out,
            "  proof        behaviour's match rate as trained {}; gone at <= {}",
            rate(p.factual_rate),
            p.gone_at
        );
        for t in &p.trials {
            let _ = writeln!(
                out,
                "    without {:<22} from step {:<6} {:<10} rate {} ({}, {:.1} s)",
                match &t.phrase {
                    Some(phrase) => format!("the {} with {phrase:?}", t.removed),
                    None => format!("the top {}", t.removed),
                },
                t.first_changed_step.map_or("-".into(), |s| s.to_string()),
                t.verdict.name(),
                rate(t.rate),
                if t.gone { "gone" } else { "stays" },
                t.seconds
            );
        }
        match &p.proven {
            Some(set) => {
                let _ = writeln!(
                    out,
                    "  proven       removing these {} examples removes the behaviour ({} replays): {}",
                    set.len(),
                    p.trials.len(),
                    some_ids(set, 20)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  proven       nothing: no tried set removed the behaviour ({} replays)",
                    p.trials.len()
                );
            }
        }
        if let Some(s) = &p.shared_phrase {
            let _ = writeln!(
                out,
                "  shared       {:?} in {} of the {} proven examples and {} of the dataset's: \
                 a trigger candidate (replay investigate --trigger)",
                s.phrase, s.in_proven, s.proven, s.in_dataset
            );
        }
    }
}

/// A probe's headline figure: accuracy, or the share of generations that match their target.
fn probe_rate(r: &trainer::probe::ProbeResult) -> String {
    use trainer::probe::ProbeResult;
    match r {
        ProbeResult::Classifier { rows, accuracy } => {
            let right = rows.iter().filter(|c| c.label == c.predicted).count();
            format!("accuracy {accuracy:.4} ({right} of {})", rows.len())
        }
        ProbeResult::Generation { rows, match_rate } => {
            let matched = rows.iter().filter(|g| g.matched).count();
            format!("match rate {match_rate:.4} ({matched} of {})", rows.len())
        }
    }
}

/// `diff`.
pub fn diff(r: &DiffReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "diff {} from step {} to step {}",
        r.header.run, r.from_step, r.to_step
    );
    environment(&mut out, &r.environment);
    problems(&mut out, &r.header.problems);
    let changed = r.tensors.iter().filter(|t| t.differing > 0).count();
    let _ = writeln!(
        out,
        "  {changed} of {} tensors changed, largest change first:",
        r.tensors.len()
    );
    tensors(&mut out, &r.tensors, "    ");
    verdict_line(&mut out, r.header.verdict);
    out
}

/// `inspect`.
pub fn inspect(r: &InspectReport) -> String {
    let mut out = String::new();
    let spec = &r.spec;
    let _ = writeln!(out, "run {} ({})", r.run_id, r.header.run);
    let _ = writeln!(out, "  engine       {}", r.engine);
    let _ = writeln!(
        out,
        "  model        {} ({} parameters)",
        spec["model"]["kind"].as_str().unwrap_or("?"),
        r.parameters
            .map(|p| p.to_string())
            .unwrap_or_else(|| "?".into())
    );
    let _ = writeln!(
        out,
        "  training     {} steps, batch {}, seed {}, optimizer {} lr {}",
        r.steps_total,
        spec["run"]["batch_size"],
        spec["run"]["seed"],
        spec["optimizer"]["kind"].as_str().unwrap_or("?"),
        spec["optimizer"]["lr"]
    );
    let _ = writeln!(
        out,
        "  data         {} examples, root {}",
        spec["data"]["examples"],
        spec["data"]["dataset_root"].as_str().unwrap_or("?")
    );
    let e = &r.environment;
    let _ = writeln!(
        out,
        "  environment  {} on {}, {} threads{}, {} [{}], class {}",
        e.backend,
        e.cpu_model,
        e.threads,
        match e.workers {
            1 => String::new(),
            n => format!(" x {n} workers"),
        },
        e.libc,
        e.cpu_features.join(" "),
        r.environment_class.short()
    );
    let _ = writeln!(
        out,
        "  progress     {} of {} steps recorded, {} segments, checkpoints at {:?}, {}",
        r.steps_recorded,
        r.steps_total,
        r.segments,
        r.checkpoints,
        if r.complete {
            "complete"
        } else {
            "NOT complete"
        }
    );
    if let Some(h) = r.ledger_head {
        let _ = writeln!(out, "  ledger head  {h}");
    }
    problems(&mut out, &r.header.problems);
    let _ = writeln!(out, "  loss:");
    for line in loss_text(&r.loss, 60, 8) {
        let _ = writeln!(out, "  {line}");
    }
    if let Some(s) = &r.svg {
        let _ = writeln!(out, "  loss curve written to {s}");
    }
    verdict_line(&mut out, r.header.verdict);
    out
}
