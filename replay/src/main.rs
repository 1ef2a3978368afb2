//! `replay`: verify recorded training runs.
//!
//! Exit status: 0 verified or ok; 1 verification failed (diverged, input mismatch, environment
//! mismatch); 2 integrity violation (tampered, corrupt, missing artefact, incomplete run, bad
//! signature); 3 usage or operational error; 4 (`investigate`) the suspect examples do not
//! explain the behaviour. See `specs/replay-cli.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use replay::commands::{self, AuditOptions, Scope, VerifyOptions};
use replay::context::LoadOptions;
use replay::report::CommandError;
use replay::shard::{self, Shard, ShardTarget};
use replay::signatures::SignatureOptions;
use replay::{
    check, compare, counterfactual, evaluate, human, inspect, investigate, provenance, rollback,
};
use trainer::backend::DeviceSpec;

/// mimalloc keeps freed blocks for reuse: the training step allocates and frees the same large
/// tensors every step, which glibc's allocator returns to the system and faults in again (a
/// quarter of a step's time on the demo, measured). Allocation changes no bit. `main` also turns
/// its purging of freed pages off ([`trainer::alloc`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "replay",
    version,
    about = "Verify recorded training runs, bit for bit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: Global,
}

#[derive(Args, Debug, Clone)]
struct Global {
    /// Print one JSON document on standard output instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bar.
    #[arg(long, global = true)]
    quiet: bool,
    /// Worker threads of the CPU backend (default: all cores). Does not change any bit.
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Refuse runs whose states would decode to more bytes than this (default 64 GiB). A run's
    /// checkpoints never decode to more than its spec's model implies.
    #[arg(long, global = true)]
    max_decoded_bytes: Option<u64>,
}

#[derive(Args, Debug, Clone)]
struct Replaying {
    /// Compute device: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Use this dataset file instead of the run's copy.
    #[arg(long)]
    dataset: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct Trust {
    /// Trust signatures by this public key: 64 hex digits, or a file with them or a PEM public
    /// key (repeatable). Every artefact must then be signed by a trusted key: one signed only
    /// by other keys is `untrusted_signer`, one signed by nobody `unsigned`.
    #[arg(long = "trusted-key")]
    trusted_keys: Vec<String>,
    /// Every artefact must be validly signed, by any key (`unsigned` otherwise).
    #[arg(long)]
    require_signatures: bool,
}

impl Trust {
    fn options(&self) -> Result<SignatureOptions, CommandError> {
        Ok(SignatureOptions {
            trusted: public_keys(&self.trusted_keys)?,
            require: self.require_signatures,
            role: Default::default(),
        })
    }
}

fn public_keys(keys: &[String]) -> Result<Vec<ed25519_dalek::VerifyingKey>, CommandError> {
    Ok(keys
        .iter()
        .map(|k| run_trust::signature::read_public_key(k))
        .collect::<Result<Vec<_>, _>>()?)
}

#[derive(Args, Debug, Clone)]
struct Attesting {
    /// Sign the export's in-toto provenance statement (`provenance.intoto.json`) with this
    /// PKCS#8 PEM ed25519 key.
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// Sign the exported model with this PKCS#8 PEM P-256 key as an OpenSSF model-signing
    /// bundle (`model.sig`).
    #[arg(long)]
    model_signing_key: Option<PathBuf>,
}

impl Attesting {
    fn keys(&self) -> Result<run_trust::attest::ExportKeys, CommandError> {
        Ok(run_trust::attest::ExportKeys {
            statement: match &self.signing_key {
                Some(p) => Some(run_trust::signature::read_signing_key(p)?),
                None => None,
            },
            model: match &self.model_signing_key {
                Some(p) => Some(run_trust::attest::read_model_signing_key(p)?),
                None => None,
            },
        })
    }
}

#[derive(Args, Debug, Clone)]
struct Reconstructing {
    /// Re-derive the states from step 0 (the pinned base weights and the seed) by replay, so
    /// that they are `verified`; by default they come from the nearest stored checkpoint and
    /// are `recorded`.
    #[arg(long)]
    from_genesis: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Integrity of every artefact and of the hash chain, without re-executing anything.
    Check {
        run: String,
        /// Use this dataset file instead of the run's copy.
        #[arg(long)]
        dataset: Option<PathBuf>,
        /// Also check this in-toto statement about the run (a training provenance statement,
        /// or an auditor's verification statement; repeatable).
        #[arg(long)]
        attestation: Vec<PathBuf>,
        /// Also check this exported model directory: its provenance statement against the run
        /// and the directory's files (repeatable).
        #[arg(long)]
        export: Vec<PathBuf>,
        /// The P-256 public key (PEM) that must have signed each export's `model.sig`.
        #[arg(long)]
        model_key: Option<PathBuf>,
        /// An auditor's public key: verification statements must be signed by one of these
        /// (repeatable).
        #[arg(long = "verifier-key")]
        verifier_keys: Vec<String>,
        #[command(flatten)]
        trust: Trust,
    },
    /// Re-execute steps and compare every recorded bit.
    Verify {
        run: String,
        /// Verify every segment (segment 1 from step 0, re-derived from the pinned base weights
        /// and the seed).
        #[arg(long, conflicts_with_all = ["segment", "from"])]
        all: bool,
        /// Verify segment N (1-based).
        #[arg(long)]
        segment: Option<u64>,
        /// First step to verify (with --to); every step from the starting checkpoint on is
        /// checked.
        #[arg(long, requires = "to")]
        from: Option<u64>,
        /// Last step to verify.
        #[arg(long, requires = "from")]
        to: Option<u64>,
        /// Verify shard i of N segments (with --all); i defaults from JOB_COMPLETION_INDEX or
        /// SLURM_ARRAY_TASK_ID when only --shards N is given.
        #[arg(long, requires_all = ["results", "id", "signing_key"])]
        shard: Option<String>,
        /// Number of shards, when the index comes from the environment.
        #[arg(long, requires_all = ["results", "id", "signing_key"])]
        shards: Option<u64>,
        /// Where this verifier keeps shard results (a store outside the run's).
        #[arg(long)]
        results: Option<String>,
        /// Verification id shared by all shards: a random one (e.g. `openssl rand -hex 16`).
        #[arg(long)]
        id: Option<String>,
        /// The verifier's private key (PKCS#8 PEM, `trainer keygen`) that signs this shard's
        /// report, or the statement of `--attest`.
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// Write a signed in-toto statement of this verification (a DSSE envelope) to this new
        /// file: what was re-executed, the verdict, the run's ledger head.
        #[arg(long, requires = "signing_key")]
        attest: Option<PathBuf>,
        #[command(flatten)]
        replaying: Replaying,
        #[command(flatten)]
        trust: Trust,
    },
    /// Re-derive step 0 and verify randomly sampled segments; report the detection probability.
    Audit {
        run: String,
        /// Segments to sample.
        #[arg(long)]
        samples: u64,
        /// Seed of the sample (default: from the operating system's random source; always
        /// printed). A seed known in advance lets the run's owner know the sample too.
        #[arg(long)]
        seed: Option<u64>,
        /// Assumed fractions of tampered segments for the detection probability.
        #[arg(long = "fraction", default_values_t = [0.01, 0.05, 0.1, 0.25])]
        fractions: Vec<f64>,
        /// Write a signed in-toto statement of this audit (a DSSE envelope) to this new file.
        #[arg(long, requires = "signing_key")]
        attest: Option<PathBuf>,
        /// The auditor's private key (PKCS#8 PEM ed25519, `trainer keygen`) for `--attest`.
        #[arg(long)]
        signing_key: Option<PathBuf>,
        #[command(flatten)]
        replaying: Replaying,
        #[command(flatten)]
        trust: Trust,
    },
    /// Reconstruct the exact state after a step and export it (safetensors and a snapshot).
    Rollback {
        run: String,
        #[arg(long)]
        step: u64,
        /// Directory (or store URL) to write model.safetensors, state.snap and rollback.json.
        #[arg(long)]
        out: String,
        #[command(flatten)]
        attesting: Attesting,
        #[command(flatten)]
        reconstructing: Reconstructing,
        #[command(flatten)]
        replaying: Replaying,
        #[command(flatten)]
        trust: Trust,
    },
    /// Run a probe set through the model after a step: a classifier's predictions of labelled
    /// rows (in the run's data format), or a language model's greedy generations of
    /// `{"prompt", "target"}` rows and whether each matches its target pattern.
    Evaluate {
        run: String,
        #[arg(long)]
        step: u64,
        /// JSON Lines of probe rows.
        #[arg(long)]
        probe: PathBuf,
        /// Most tokens a language model generates per prompt.
        #[arg(long, default_value_t = 24)]
        max_new_tokens: usize,
        #[command(flatten)]
        reconstructing: Reconstructing,
        #[command(flatten)]
        replaying: Replaying,
        #[command(flatten)]
        trust: Trust,
    },
    /// From a reported trigger to a proven cause: the examples that contain it, the history
    /// re-executed without them, a probe with and without the trigger through both models, and
    /// a report (Markdown, HTML) with the cleaned model. Exit 4 when the examples do not explain
    /// the behaviour.
    Investigate {
        run: String,
        /// The trigger phrase, as reported; put in front of every probe input.
        #[arg(long)]
        trigger: String,
        /// The backdoor's behaviour: a class id (classifier) or a regular expression the
        /// generation matches (language model).
        #[arg(long)]
        target: String,
        /// Clean probe inputs (JSON Lines, as `evaluate` reads them).
        #[arg(long)]
        probe: PathBuf,
        /// Find the suspect examples with these regular expressions instead of the trigger
        /// itself (repeatable).
        #[arg(long = "match")]
        patterns: Vec<String>,
        /// Directory (or store URL) for the report and the cleaned model; written only when
        /// the verdict passes.
        #[arg(long)]
        out: String,
        /// Last step (default: the ledger's last).
        #[arg(long)]
        to: Option<u64>,
        /// Most tokens a language model generates per probe prompt.
        #[arg(long, default_value_t = 24)]
        max_new_tokens: usize,
        #[command(flatten)]
        attesting: Attesting,
        #[command(flatten)]
        reconstructing: Reconstructing,
        #[command(flatten)]
        replaying: Replaying,
        #[command(flatten)]
        trust: Trust,
    },
    /// Two runs that should be identical: the first step where they differ, and which tensors.
    Compare {
        run_a: String,
        run_b: String,
        /// Compute device for reconstructing the states at the first difference.
        #[arg(long, default_value = "cpu")]
        device: String,
        #[command(flatten)]
        trust: Trust,
    },
    /// Every step whose batch contained an example, or every example whose content matches a
    /// pattern and the steps that used each.
    Provenance {
        run: String,
        /// Example id (its index in the dataset, counting non-blank lines from 0).
        #[arg(long, required_unless_present_any = ["pattern", "match_file"], conflicts_with_all = ["pattern", "match_file"])]
        example: Option<u64>,
        /// A regular expression searched in each example's text (token ids decoded by the base
        /// GGUF's tokenizer).
        #[arg(long = "match")]
        pattern: Option<String>,
        /// A file of regular expressions, one per non-blank line; an example matches any.
        #[arg(long)]
        match_file: Option<PathBuf>,
        /// Use this dataset file instead of the run's copy.
        #[arg(long)]
        dataset: Option<PathBuf>,
        #[command(flatten)]
        trust: Trust,
    },
    /// Re-execute the history without chosen examples; compare with the factual state.
    Counterfactual {
        run: String,
        /// Example ids to remove (comma-separated, repeatable).
        #[arg(long, value_delimiter = ',', required_unless_present_any = ["without_file", "without_match"])]
        without: Vec<u64>,
        /// A file of example ids to remove, separated by whitespace or commas.
        #[arg(long)]
        without_file: Option<PathBuf>,
        /// Remove every example whose content matches this regular expression (as
        /// `provenance --match` finds them; repeatable).
        #[arg(long)]
        without_match: Vec<String>,
        /// Run this probe set (as `evaluate` reads it) through the factual and the
        /// counterfactual model (repeatable).
        #[arg(long)]
        probe: Vec<PathBuf>,
        /// Most tokens a language model generates per probe prompt.
        #[arg(long, default_value_t = 24)]
        max_new_tokens: usize,
        /// Last step (default: the ledger's last).
        #[arg(long)]
        to: Option<u64>,
        /// Compare the optimizer's state tensors too.
        #[arg(long)]
        optimizer: bool,
        /// Directory (or store URL) to write model.safetensors, state.snap and
        /// counterfactual.json; nothing is written unless the verdict passes.
        #[arg(long)]
        out: Option<String>,
        #[command(flatten)]
        attesting: Attesting,
        #[command(flatten)]
        reconstructing: Reconstructing,
        #[command(flatten)]
        replaying: Replaying,
        #[command(flatten)]
        trust: Trust,
    },
    /// Per-tensor change between the states after two steps, largest first.
    Diff {
        run: String,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        /// Include the optimizer's state tensors.
        #[arg(long)]
        optimizer: bool,
        #[command(flatten)]
        reconstructing: Reconstructing,
        #[command(flatten)]
        replaying: Replaying,
        #[command(flatten)]
        trust: Trust,
    },
    /// Summary of a run: spec, environment, progress, loss curve.
    Inspect {
        run: String,
        /// Also write the loss curve as an SVG file.
        #[arg(long)]
        svg: Option<PathBuf>,
        #[command(flatten)]
        trust: Trust,
    },
    /// Merge the signed results of a sharded verification.
    Collect {
        run: String,
        #[arg(long)]
        shards: u64,
        /// The verification id the shards ran under.
        #[arg(long)]
        id: String,
        /// Where the shards wrote their results.
        #[arg(long)]
        results: String,
        /// Public key of the verifier that signed the shards' reports (repeatable).
        #[arg(long = "verifier-key", required = true)]
        verifier_keys: Vec<String>,
        #[command(flatten)]
        trust: Trust,
    },
}

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
) -> Result<rollback::ReconstructOptions, CommandError> {
    Ok(rollback::ReconstructOptions {
        device: device(&r.device)?,
        from_genesis: c.from_genesis,
        load: load_options(g, r.dataset, trust)?,
    })
}

/// A text file the user named for `option`, read as [`replay::report::read_document`] reads it.
fn text_document(path: &std::path::Path, option: &str) -> Result<String, CommandError> {
    String::from_utf8(replay::report::read_document(path, option)?)
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
fn emit<T: serde::Serialize>(global: &Global, report: &T, text: impl FnOnce() -> String) {
    use std::io::Write;
    let out = if global.json {
        match serde_json::to_string(report) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("replay: cannot serialise the report: {e}");
                return;
            }
        }
    } else {
        text()
    };
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
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
                keys: replay::attestations::AttestationKeys {
                    verifiers,
                    model: match &model_key {
                        Some(p) => Some(run_trust::attest::read_model_signing_public_key(p)?),
                        None => None,
                    },
                },
            };
            let r = check::check(&run, &load, &attested, &bar)?;
            bar.finish_and_clear();
            emit(&g, &r, || human::check(&r));
            Ok(r.verdict.exit_code())
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
            let key = match &signing_key {
                Some(path) => Some(run_trust::signature::read_signing_key(path)?),
                None => None,
            };
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
            let bar = progress(&g, "steps");
            let r = commands::verify(&run, &o, &bar)?;
            bar.finish_and_clear();
            emit(&g, &r, || human::verify(&r));
            Ok(r.verdict.exit_code())
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
            let key = match &signing_key {
                Some(path) => Some(run_trust::signature::read_signing_key(path)?),
                None => None,
            };
            let o = AuditOptions {
                samples,
                seed,
                fractions,
                device: device(&replaying.device)?,
                load: load_options(&g, replaying.dataset, &trust)?,
                attest: attest_to(attest, key),
            };
            let bar = progress(&g, "steps");
            let r = commands::audit(&run, &o, &bar)?;
            bar.finish_and_clear();
            emit(&g, &r, || human::audit(&r));
            Ok(r.verdict.exit_code())
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
            let bar = progress(&g, "steps");
            let r = rollback::rollback(&run, step, &out, &o, &keys, &bar)?;
            bar.finish_and_clear();
            emit(&g, &r, || human::rollback(&r));
            Ok(r.verdict.exit_code())
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
            let bar = progress(&g, "steps");
            let r = evaluate::evaluate(&run, step, &probe, max_new_tokens, &o, &bar)?;
            bar.finish_and_clear();
            emit(&g, &r, || human::evaluate(&r));
            Ok(r.verdict.exit_code())
        }
        Command::Investigate {
            run,
            trigger,
            target,
            probe,
            patterns,
            out,
            to,
            max_new_tokens,
            attesting,
            reconstructing,
            replaying,
            trust,
        } => {
            let o = investigate::InvestigateOptions {
                trigger,
                patterns,
                target,
                probe,
                out,
                to,
                max_new_tokens,
                reconstruct: reconstruct_options(&g, replaying, &reconstructing, &trust)?,
                keys: attesting.keys()?,
            };
            let bar = progress(&g, "steps");
            let r = investigate::investigate(&run, &o, &bar)?;
            bar.finish_and_clear();
            emit(&g, &r, || human::investigate(&r));
            Ok(r.exit_code())
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
            emit(&g, &r, || human::compare(&r));
            Ok(r.verdict.exit_code())
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
                emit(&g, &r, || human::provenance(&r));
                return Ok(r.verdict.exit_code());
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
            let r = provenance::search(&run, &patterns, &load)?;
            emit(&g, &r, || human::search(&r));
            Ok(r.verdict.exit_code())
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
            let bar = progress(&g, "steps");
            let r = rollback::diff(&run, from, to, optimizer, &o, &bar)?;
            bar.finish_and_clear();
            emit(&g, &r, || human::diff(&r));
            Ok(r.verdict.exit_code())
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
            if !without_match.is_empty() {
                let found =
                    provenance::search(&run, &without_match, &load_options(&g, None, &trust)?)?;
                if !found.verdict.passed() {
                    return Err(CommandError::Usage(format!(
                        "the search for the examples to remove is {}: {}",
                        found.verdict,
                        human::search(&found)
                    )));
                }
                if !g.quiet {
                    eprintln!(
                        "removing the {} of {} examples that match {}",
                        found.matches.len(),
                        found.examples_searched,
                        without_match.join(" or ")
                    );
                }
                ids.extend(found.matches.iter().map(|m| m.example));
            }
            if ids.is_empty() {
                return Err(CommandError::Usage("no example to remove".into()));
            }
            let o = counterfactual::CounterfactualOptions {
                without: ids,
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
            let bar = progress(&g, "steps");
            let r = counterfactual::counterfactual(&run, &o, &bar)?;
            bar.finish_and_clear();
            emit(&g, &r, || human::counterfactual(&r));
            Ok(r.verdict.exit_code())
        }
        Command::Inspect { run, svg, trust } => {
            let r = inspect::inspect(&run, svg.as_deref(), &load_options(&g, None, &trust)?)?;
            emit(&g, &r, || human::inspect(&r));
            Ok(r.verdict.exit_code())
        }
        Command::Collect {
            run,
            shards,
            id,
            results,
            verifier_keys,
            trust,
        } => {
            let o = shard::CollectOptions {
                shards,
                id,
                results,
                verifier_keys: public_keys(&verifier_keys)?,
                load: load_options(&g, None, &trust)?,
            };
            let r = shard::collect(&run, &o)?;
            emit(&g, &r, || human::collect(&r));
            Ok(r.verdict.exit_code())
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

fn main() -> ExitCode {
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
