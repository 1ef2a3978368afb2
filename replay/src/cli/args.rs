//! The command line's arguments (clap), and the options they make.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::report::CommandError;
use crate::signatures::SignatureOptions;

#[derive(Parser, Debug)]
#[command(
    name = "replay",
    version,
    about = "Verify recorded training runs, bit for bit"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    #[command(flatten)]
    pub(crate) global: Global,
}
#[derive(Args, Debug, Clone)]
pub(crate) struct Global {
    /// Print one JSON document on standard output instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// No progress bar.
    #[arg(long, global = true)]
    pub(crate) quiet: bool,
    /// Worker threads of the CPU backend (default: all cores). Does not change any bit.
    #[arg(long, global = true)]
    pub(crate) threads: Option<usize>,
    /// Refuse runs whose states would decode to more bytes than this (default 64 GiB). A run's
    /// checkpoints never decode to more than its spec's model implies.
    #[arg(long, global = true)]
    pub(crate) max_decoded_bytes: Option<u64>,
}
#[derive(Args, Debug, Clone)]
pub(crate) struct Replaying {
    /// Compute device: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
    /// Use this dataset file instead of the run's copy.
    #[arg(long)]
    pub(crate) dataset: Option<PathBuf>,
}
#[derive(Args, Debug, Clone)]
pub(crate) struct Trust {
    /// Trust signatures by this public key: 64 hex digits, or a file with them or a PEM public
    /// key (repeatable). Every artefact must then be signed by a trusted key: one signed only
    /// by other keys is `untrusted_signer`, one signed by nobody `unsigned`.
    #[arg(long = "trusted-key")]
    pub(crate) trusted_keys: Vec<String>,
    /// Every artefact must be validly signed, by any key (`unsigned` otherwise).
    #[arg(long)]
    pub(crate) require_signatures: bool,
}
impl Trust {
    pub(crate) fn options(&self) -> Result<SignatureOptions, CommandError> {
        Ok(SignatureOptions {
            trusted: public_keys(&self.trusted_keys)?,
            require: self.require_signatures,
            role: Default::default(),
        })
    }
}
pub(crate) fn public_keys(
    keys: &[String],
) -> Result<Vec<ed25519_dalek::VerifyingKey>, CommandError> {
    Ok(keys
        .iter()
        .map(|k| run_trust::signature::read_public_key(k))
        .collect::<Result<Vec<_>, _>>()?)
}
#[derive(Args, Debug, Clone)]
pub(crate) struct Attesting {
    /// Sign the export's in-toto provenance statement (`provenance.intoto.json`) with this
    /// PKCS#8 PEM ed25519 key.
    #[arg(long)]
    pub(crate) signing_key: Option<PathBuf>,
    /// Sign the exported model with this PKCS#8 PEM P-256 key as an OpenSSF model-signing
    /// bundle (`model.sig`).
    #[arg(long)]
    pub(crate) model_signing_key: Option<PathBuf>,
}
impl Attesting {
    pub(crate) fn keys(&self) -> Result<run_trust::attest::ExportKeys, CommandError> {
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
/// How `attribute` (and `investigate --behaviour`) scores the examples and proves the ranking.
#[derive(Args, Debug, Clone)]
pub(crate) struct Attributing {
    /// Score over the trained tensors whose canonical names match this regular expression
    /// only (for instance `word_embeddings`: a trigger phrase is rare tokens).
    #[arg(long)]
    pub(crate) parameters: Option<String>,
    /// Examples listed in the ranking.
    #[arg(long, default_value_t = 20)]
    pub(crate) top: usize,
    /// Size of the first candidate set the proof removes (default: the examples whose credit,
    /// or score when the first has no credit, is at least a tenth of the first's).
    #[arg(long)]
    pub(crate) candidates: Option<usize>,
    /// The behaviour is gone when its match rate is at most this.
    #[arg(long, default_value_t = crate::commands::attribute::Attribution::GONE_AT)]
    pub(crate) gone_at: f64,
    /// Most counterfactual replays the proof runs.
    #[arg(long, default_value_t = crate::commands::attribute::Attribution::MAX_REPLAYS)]
    pub(crate) max_replays: usize,
}
impl Attributing {
    pub(crate) fn settings(self) -> crate::commands::attribute::Attribution {
        crate::commands::attribute::Attribution {
            parameters: self.parameters,
            top: self.top,
            candidates: self.candidates,
            gone_at: self.gone_at,
            max_replays: self.max_replays,
        }
    }
}
#[derive(Args, Debug, Clone)]
pub(crate) struct Reconstructing {
    /// Re-derive the states from step 0 (the pinned base weights and the seed) by replay, so
    /// that they are `verified`; by default they come from the nearest stored checkpoint and
    /// are `recorded`.
    #[arg(long)]
    pub(crate) from_genesis: bool,
}
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
        #[arg(long, default_value_t = crate::commands::evaluate::MAX_NEW_TOKENS)]
        max_new_tokens: usize,
        #[command(flatten)]
        reconstructing: Reconstructing,
        #[command(flatten)]
        replaying: Replaying,
        #[command(flatten)]
        trust: Trust,
    },
    /// From a reported trigger, or from inputs that show a behaviour, to a proven cause: the
    /// examples that contain the trigger (or that `attribute` ranks first and proves), the
    /// history re-executed without them, the behaviour measured through both models, and a
    /// report (Markdown, HTML) with the cleaned model. Exit 4 when the examples do not explain
    /// the behaviour.
    Investigate {
        run: String,
        /// The trigger phrase, as reported; put in front of every probe input.
        #[arg(
            long,
            required_unless_present = "behaviour",
            conflicts_with = "behaviour"
        )]
        trigger: Option<String>,
        /// Inputs that show the behaviour, the trigger unknown (JSON Lines as `evaluate` reads
        /// them, each row's label or target replaced by --target): the examples that taught it
        /// are ranked on the run's trajectory and proved by counterfactual, as `attribute
        /// --prove` does. At most 256 rows.
        #[arg(long, conflicts_with = "patterns")]
        behaviour: Option<PathBuf>,
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
        #[arg(long, default_value_t = crate::commands::evaluate::MAX_NEW_TOKENS)]
        max_new_tokens: usize,
        #[command(flatten)]
        attributing: Attributing,
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
    /// From a behaviour to the training examples that taught it: every example scored on the
    /// run's exact trajectory (re-executed from the re-derived step 0) by its influence on a
    /// probe's loss, ranked; with --prove, the top of the ranking removed by counterfactual
    /// until the behaviour is gone, then bisected to the smallest prefix that removes it.
    Attribute {
        run: String,
        /// Rows in the run's data format that show the behaviour: a classifier's inputs
        /// labelled with the class it wrongly gives, a language model's prompts with the reply
        /// it gives (chat rows for a GGUF base). At most 256.
        #[arg(long)]
        probe: PathBuf,
        /// Prove the top of the ranking by exact counterfactual.
        #[arg(long)]
        prove: bool,
        /// The probe whose match rate is the behaviour in the proof, as `evaluate` reads it
        /// (default: --probe, for a classifier; required for a language model).
        #[arg(long)]
        measure: Option<PathBuf>,
        #[command(flatten)]
        attributing: Attributing,
        /// Most tokens a language model generates per probe prompt.
        #[arg(long, default_value_t = crate::commands::evaluate::MAX_NEW_TOKENS)]
        max_new_tokens: usize,
        /// Last step (default: the ledger's last).
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        reconstructing: Reconstructing,
        #[command(flatten)]
        replaying: Replaying,
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
        #[arg(long, default_value_t = crate::commands::evaluate::MAX_NEW_TOKENS)]
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
