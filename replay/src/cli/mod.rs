//! The `replay` command line: arguments into options, the report out, the verdict as the exit
//! status.
//!
//! Exit status: 0 verified or ok; 1 verification failed (diverged, input mismatch, environment
//! mismatch); 2 integrity violation (tampered, corrupt, missing artefact, incomplete run, bad
//! signature); 3 usage or operational error; 4 (`investigate`) the suspect examples do not
//! explain the behaviour. See `specs/replay-cli.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::commands::audit::{self, AuditOptions};
use crate::commands::verify::{self, Scope, VerifyOptions};
use crate::commands::{
    self, attribute, check, collect, compare, counterfactual, diff, evaluate, inspect, investigate,
    provenance, rollback, search,
};
use crate::context::LoadOptions;
use crate::engine::reconstruct::ReconstructOptions;
use crate::render::text;
use crate::report::{CommandError, Report};
use crate::shard::{Shard, ShardTarget};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use trainer::backend::DeviceSpec;

mod args;

use args::{Cli, Command, Global, Reconstructing, Replaying, Trust, public_keys};

fn progress(global: &Global, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(0),
        if global.quiet || global.json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{what} {{bar:28}} {{pos}}/{{len}}  {{per_sec}}  ETA {{eta}}"
    )) {
        bar.set_style(style);
    }
    bar
}

fn device(s: &str) -> Result<DeviceSpec, CommandError> {
    Ok(s.parse::<DeviceSpec>()?)
}

fn load_options(
    g: &Global,
    dataset: Option<PathBuf>,
    trust: &Trust,
) -> Result<LoadOptions, CommandError> {
    Ok(LoadOptions {
        dataset,
        trust: trust.options()?,
        max_decoded_bytes: g.max_decoded_bytes,
    })
}

fn reconstruct_options(
    g: &Global,
    r: Replaying,
    c: &Reconstructing,
    trust: &Trust,
) -> Result<ReconstructOptions, CommandError> {
    Ok(ReconstructOptions {
        device: device(&r.device)?,
        from_genesis: c.from_genesis,
        load: load_options(g, r.dataset, trust)?,
    })
}

/// A text file the user named for `option`, read as [`crate::report::read_document`] reads it.
fn text_document(path: &std::path::Path, option: &str) -> Result<String, CommandError> {
    String::from_utf8(crate::report::read_document(path, option)?)
        .map_err(|_| CommandError::Usage(format!("{option} {}: not UTF-8 text", path.display())))
}

/// Example ids listed in a file, separated by whitespace or commas.
fn example_ids(path: &std::path::Path) -> Result<Vec<u64>, CommandError> {
    let text = text_document(path, "--without-file")?;
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.parse().map_err(|_| {
                CommandError::Usage(format!(
                    "--without-file {}: {w:?} is not an example id",
                    path.display()
                ))
            })
        })
        .collect()
}

/// Write the report; a closed standard output (`replay … | head`) is not an error.
fn emit<R: Report>(global: &Global, report: &R, text: impl FnOnce(&R) -> String) -> u8 {
    use std::io::Write;
    let out = if global.json {
        match serde_json::to_string(report) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("replay: cannot serialise the report: {e}");
                return report.exit_code();
            }
        }
    } else {
        text(report)
    };
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    report.exit_code()
}

/// Run `command` under a progress bar of `what` (hidden with --quiet or --json), then emit its
/// report; its exit status.
fn run_emit<R: Report>(
    global: &Global,
    what: &str,
    command: impl FnOnce(&ProgressBar) -> Result<R, CommandError>,
    text: impl FnOnce(&R) -> String,
) -> Result<u8, CommandError> {
    let bar = progress(global, what);
    let report = command(&bar)?;
    bar.finish_and_clear();
    Ok(emit(global, &report, text))
}

/// The command's exit status (section 2 of `specs/replay-cli.md`).
fn run(cli: Cli) -> Result<u8, CommandError> {
    let g = cli.global;
    if let Some(n) = g.threads {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    match cli.command {
        Command::Check {
            run,
            dataset,
            attestation,
            export,
            model_key,
            verifier_keys,
            trust,
        } => {
            let load = load_options(&g, dataset, &trust)?;
            let verifiers = public_keys(&verifier_keys)?;
            if let Some(k) = verifiers.iter().find(|k| load.trust.trusted.contains(k)) {
                return Err(CommandError::Usage(format!(
                    "--verifier-key {}: also named with --trusted-key; a run's own signer \
                     cannot be its verifier",
                    run_trust::signature::fingerprint(&k.to_bytes())
                )));
            }
            let bar = progress(&g, "checkpoints");
            let attested = check::Attested {
                statements: attestation,
                exports: export,
                keys: crate::attestations::AttestationKeys {
                    verifiers,
                    model: match &model_key {
                        Some(p) => Some(run_trust::attest::read_model_signing_public_key(p)?),
                        None => None,
                    },
                },
            };
            let r = check::check(&run, &load, &attested, &bar)?;
            bar.finish_and_clear();
            Ok(emit(&g, &r, text::check))
        }
        Command::Verify {
            run,
            all,
            segment,
            from,
            to,
            shard,
            shards,
            results,
            id,
            signing_key,
            attest,
            replaying,
            trust,
        } => {
            let scope = match (all, segment, from, to) {
                (_, Some(n), _, _) => Scope::Segment(n),
                (_, None, Some(from), Some(to)) => Scope::Steps { from, to },
                _ => Scope::All,
            };
            let shard = match (shard, shards) {
                (Some(s), _) => Some(s.parse::<Shard>()?),
                (None, Some(count)) => {
                    let index = Shard::index_from_env().ok_or_else(|| {
                        CommandError::Usage(
                            "--shards given, but neither JOB_COMPLETION_INDEX nor SLURM_ARRAY_TASK_ID is set; use --shard i/N".into(),
                        )
                    })?;
                    Some(format!("{index}/{count}").parse::<Shard>()?)
                }
                (None, None) => None,
            };
            if shard.is_some() && scope != Scope::All {
                return Err(CommandError::Usage("--shard applies to --all".into()));
            }
            let key = signing_key
                .as_deref()
                .map(run_trust::signature::read_signing_key)
                .transpose()?;
            let shard = match (shard, results, id, &key) {
                (Some(shard), Some(results), Some(id), Some(key)) => Some(ShardTarget {
                    shard,
                    id,
                    results,
                    key: key.clone(),
                }),
                _ => None,
            };
            let o = VerifyOptions {
                scope,
                device: device(&replaying.device)?,
                shard,
                load: load_options(&g, replaying.dataset, &trust)?,
                attest: attest_to(attest, key),
            };
            run_emit(
                &g,
                "steps",
                |bar| verify::verify(&run, &o, bar),
                text::verify,
            )
        }
        Command::Audit {
            run,
            samples,
            seed,
            fractions,
            attest,
            signing_key,
            replaying,
            trust,
        } => {
            if seed.is_some() && !g.json {
                eprintln!(
                    "replay: warning: --seed fixes the sample; anyone who knows the seed knows \
                     which segments are checked. Leave it out for an unpredictable sample."
                );
            }
            let key = signing_key
                .as_deref()
                .map(run_trust::signature::read_signing_key)
                .transpose()?;
            let o = AuditOptions {
                samples,
                seed,
                fractions,
                device: device(&replaying.device)?,
                load: load_options(&g, replaying.dataset, &trust)?,
                attest: attest_to(attest, key),
            };
            run_emit(&g, "steps", |bar| audit::audit(&run, &o, bar), text::audit)
        }
        Command::Rollback {
            run,
            step,
            out,
            attesting,
            reconstructing,
            replaying,
            trust,
        } => {
            let o = reconstruct_options(&g, replaying, &reconstructing, &trust)?;
            let keys = attesting.keys()?;
            run_emit(
                &g,
                "steps",
                |bar| rollback::rollback(&run, step, &out, &o, &keys, bar),
                text::rollback,
            )
        }
        Command::Evaluate {
            run,
            step,
            probe,
            max_new_tokens,
            reconstructing,
            replaying,
            trust,
        } => {
            let o = reconstruct_options(&g, replaying, &reconstructing, &trust)?;
            run_emit(
                &g,
                "steps",
                |bar| evaluate::evaluate(&run, step, &probe, max_new_tokens, &o, bar),
                text::evaluate,
            )
        }
        Command::Investigate {
            run,
            trigger,
            behaviour,
            target,
            probe,
            patterns,
            out,
            to,
            max_new_tokens,
            attributing,
            attesting,
            reconstructing,
            replaying,
            trust,
        } => {
            let lead = match (trigger, behaviour) {
                (Some(phrase), _) => investigate::Lead::Trigger { phrase, patterns },
                (None, Some(inputs)) => investigate::Lead::Behaviour {
                    inputs: counterfactual::ProbeInput::read_option(&inputs, "--behaviour")?,
                    attribution: attributing.settings(),
                },
                (None, None) => {
                    return Err(CommandError::Usage(
                        "investigate needs --trigger or --behaviour".into(),
                    ));
                }
            };
            let o = investigate::InvestigateOptions {
                lead,
                target,
                probe,
                out,
                to,
                max_new_tokens,
                reconstruct: reconstruct_options(&g, replaying, &reconstructing, &trust)?,
                keys: attesting.keys()?,
            };
            run_emit(
                &g,
                "steps",
                |bar| investigate::investigate(&run, &o, bar),
                text::investigate,
            )
        }
        Command::Compare {
            run_a,
            run_b,
            device: d,
            trust,
        } => {
            let bar = progress(&g, "steps");
            let o = compare::CompareOptions {
                device: device(&d)?,
                load: load_options(&g, None, &trust)?,
            };
            let r = compare::compare(&run_a, &run_b, &o, &bar)?;
            bar.finish_and_clear();
            Ok(emit(&g, &r, text::compare))
        }
        Command::Provenance {
            run,
            example,
            pattern,
            match_file,
            dataset,
            trust,
        } => {
            let load = load_options(&g, dataset, &trust)?;
            if let Some(example) = example {
                let r = provenance::provenance(&run, example, &load)?;
                return Ok(emit(&g, &r, text::provenance));
            }
            let mut patterns: Vec<String> = pattern.into_iter().collect();
            if let Some(file) = match_file {
                let text = text_document(&file, "--match-file")?;
                patterns.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
            }
            if patterns.is_empty() {
                return Err(CommandError::Usage("no pattern to search for".into()));
            }
            let r = search::search(&run, &patterns, &load)?;
            Ok(emit(&g, &r, text::search))
        }
        Command::Diff {
            run,
            from,
            to,
            optimizer,
            reconstructing,
            replaying,
            trust,
        } => {
            let o = reconstruct_options(&g, replaying, &reconstructing, &trust)?;
            run_emit(
                &g,
                "steps",
                |bar| diff::diff(&run, from, to, optimizer, &o, bar),
                text::diff,
            )
        }
        Command::Attribute {
            run,
            probe,
            prove,
            measure,
            attributing,
            max_new_tokens,
            to,
            reconstructing,
            replaying,
            trust,
        } => {
            let o = attribute::AttributeOptions {
                probe: counterfactual::ProbeInput::read(&probe)?,
                measure: measure
                    .as_deref()
                    .map(counterfactual::ProbeInput::read)
                    .transpose()?,
                to,
                prove,
                settings: attributing.settings(),
                max_new_tokens,
                reconstruct: reconstruct_options(&g, replaying, &reconstructing, &trust)?,
            };
            run_emit(
                &g,
                "steps",
                |bar| attribute::attribute(&run, &o, bar),
                text::attribute,
            )
        }
        Command::Counterfactual {
            run,
            without,
            without_file,
            without_match,
            probe,
            max_new_tokens,
            to,
            optimizer,
            out,
            attesting,
            reconstructing,
            replaying,
            trust,
        } => {
            let mut ids: std::collections::BTreeSet<u64> = without.into_iter().collect();
            if let Some(path) = without_file {
                ids.extend(example_ids(&path)?);
            }
            let o = counterfactual::CounterfactualOptions {
                without: ids,
                without_match,
                to,
                include_optimizer: optimizer,
                out,
                reconstruct: reconstruct_options(&g, replaying, &reconstructing, &trust)?,
                probes: probe
                    .iter()
                    .map(|p| counterfactual::ProbeInput::read(p))
                    .collect::<Result<_, _>>()?,
                max_new_tokens,
                keys: attesting.keys()?,
            };
            run_emit(
                &g,
                "steps",
                |bar| counterfactual::counterfactual(&run, &o, bar),
                text::counterfactual,
            )
        }
        Command::Inspect { run, svg, trust } => {
            let r = inspect::inspect(&run, svg.as_deref(), &load_options(&g, None, &trust)?)?;
            Ok(emit(&g, &r, text::inspect))
        }
        Command::Collect {
            run,
            shards,
            id,
            results,
            verifier_keys,
            trust,
        } => {
            let o = collect::CollectOptions {
                shards,
                id,
                results,
                verifier_keys: public_keys(&verifier_keys)?,
                load: load_options(&g, None, &trust)?,
            };
            let r = collect::collect(&run, &o)?;
            Ok(emit(&g, &r, text::collect))
        }
    }
}

/// `--attest FILE` with the key of `--signing-key` (clap requires the key with the file).
fn attest_to(
    out: Option<PathBuf>,
    key: Option<ed25519_dalek::SigningKey>,
) -> Option<commands::Attest> {
    Some(commands::Attest {
        out: out?,
        key: key?,
    })
}

/// Parse the command line, run the command, print its report; the exit status.
pub fn main() -> ExitCode {
    trainer::alloc::keep_freed_pages();
    let cli = match trainer::cli::parse_or_exit::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("replay: {e}");
            ExitCode::from(3)
        }
    }
}
