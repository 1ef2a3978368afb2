//! `trainer`: record a verifiable fine-tuning run.
//!
//! Exit status: 0 success; 2 an input failed an integrity check (base model hash, a corrupt
//! artefact met while resuming); 3 usage, configuration or operational error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trainer::backend::DeviceSpec;
use trainer::config::RunConfig;
use trainer::run::{self, RunOptions, RunSummary};
use trainer::{Error, demo};

/// mimalloc keeps freed blocks for reuse: the training step allocates and frees the same large
/// tensors every step, which glibc's allocator returns to the system and faults in again (a
/// quarter of a step's time on the demo, measured). Allocation changes no bit. `main` also turns
/// its purging of freed pages off ([`trainer::alloc`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "trainer",
    version,
    about = "Record a bit-deterministic, verifiable fine-tuning run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct Common {
    /// Compute device: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Worker threads of the CPU backend (default: all cores). Does not change any bit.
    #[arg(long)]
    threads: Option<usize>,
    /// Stop after this many steps without completing the run (resume continues it).
    #[arg(long)]
    max_steps: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Print the summary as JSON on standard output.
    #[arg(long)]
    json: bool,
    /// Train data-parallel with the processes an MPI launcher started (`mpirun -n N`, or
    /// `srun` with an MPI plugin): each computes its share of every step's micro-batches
    /// (`[run] micro_batches`, a multiple of N); the run's bits are those of one process, and
    /// only the first process writes it. Needs a trainer built with `--features trainer/mpi`.
    #[arg(long)]
    mpi: bool,
    /// Train data-parallel with N local processes: runs this command again under Open MPI's
    /// `mpirun -n N` with `--mpi` (as many processes as asked, whatever the cores).
    #[arg(long, conflicts_with = "mpi")]
    workers: Option<usize>,
    /// Sign the run's manifest, ledger segments, checkpoints and completion record with this
    /// PKCS#8 PEM ed25519 key (see `trainer keygen`).
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// Sign the exported model (`--export`) with this PKCS#8 PEM P-256 key: an OpenSSF
    /// model-signing bundle, `model.sig`, that `model_signing verify key` checks (see
    /// `trainer keygen --kind p256`). With `--signing-key`, the export also gets its in-toto
    /// provenance statement, `provenance.intoto.json`.
    #[arg(long)]
    model_signing_key: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Ed25519,
    P256,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a run from a configuration file.
    Run {
        config: PathBuf,
        /// Where to write the run: a directory, file://, s3://, gs://, az:// or memory://.
        #[arg(long)]
        out: String,
        /// Run id (default: the config file's name and the start time).
        #[arg(long)]
        run_id: Option<String>,
        /// When the run completes, export its final model into this directory
        /// (`model.safetensors`; a LoRA run also PEFT's `adapter_model.safetensors` and
        /// `adapter_config.json`, and the merged model as `model.safetensors`).
        #[arg(long)]
        export: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Continue an interrupted run from its latest checkpoint.
    Resume {
        run: String,
        /// Resume on a machine of another environment class (the result will differ in bits
        /// from an uninterrupted run, and replay will report it).
        #[arg(long)]
        allow_environment_mismatch: bool,
        /// When the run completes, export its final model into this directory (as `run`).
        #[arg(long)]
        export: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Fine-tune the embedded demo model on the shipped dataset.
    Demo {
        /// Where to write the run (default: runs/demo-<unix time>).
        #[arg(long)]
        out: Option<String>,
        /// Where to write the demo's base model, dataset and config.
        #[arg(long, default_value = "runs/demo-assets")]
        assets: PathBuf,
        #[arg(long, default_value_t = 300)]
        steps: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Create an ed25519 key pair for signing runs.
    Keygen {
        /// Directory for signing-key.pem (private, mode 0600), signing-key.pub (hex) and
        /// signing-key.pub.pem; with `--kind p256`, model-signing-key.pem (private, mode 0600)
        /// and model-signing-key.pub.pem.
        #[arg(long)]
        out: PathBuf,
        /// `ed25519` (runs, ledgers, in-toto statements) or `p256` (OpenSSF model-signing
        /// bundles of exported models).
        #[arg(long, default_value = "ed25519")]
        kind: KeyKind,
    },
    /// Print this machine's environment fingerprint as JSON.
    Fingerprint {
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Generation with a GGUF Llama model, alone or with a LoRA adapter merged in (greedy, or
    /// sampled with a seed): each prompt as a user message in the model's chat template.
    Generate {
        /// The GGUF file.
        #[arg(long)]
        base: PathBuf,
        /// A LoRA adapter directory as PEFT writes it (`adapter_config.json`,
        /// `adapter_model.safetensors`; `replay rollback` exports one), merged into the base.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// A prompt (repeatable).
        #[arg(long, required = true)]
        prompt: Vec<String>,
        /// Most tokens to generate per prompt.
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// The prompt as plain text, without the chat template.
        #[arg(long)]
        raw: bool,
        /// Sample at this temperature instead of choosing the likeliest token (greedy).
        #[arg(long)]
        temperature: Option<f64>,
        /// Seed of the sampling (with --temperature): the same seed, the same tokens.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the logits of each prompt's positions to DIR/prompt-N.f32 (little-endian f32,
        /// `[prompt tokens, vocab]`), for comparison with another implementation.
        #[arg(long)]
        logits_dir: Option<PathBuf>,
        /// Worker threads of the CPU backend (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Print the generations as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Print the pin of each file (the `blake3` of a `[base]` section): its file hash, then its
    /// path.
    Hash {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn options(common: &Common) -> Result<RunOptions, Error> {
    if let Some(n) = common.threads {
        // Fails only if the pool was already built, which nothing does before this point.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    let collective = if common.mpi {
        Some(mpi_workers()?)
    } else {
        None
    };
    Ok(RunOptions {
        collective,
        device: common.device.parse::<DeviceSpec>()?,
        run_id: None,
        progress: !common.quiet && !common.json,
        max_steps: common.max_steps,
        allow_environment_mismatch: false,
        signing_key: match &common.signing_key {
            Some(path) => Some(run_trust::signature::read_signing_key(path)?),
            None => None,
        },
    })
}

/// Whether this trainer can train data-parallel (built with MPI).
fn mpi_workers_available() -> Result<(), Error> {
    if cfg!(feature = "mpi") {
        Ok(())
    } else {
        mpi_workers().map(|_| ())
    }
}

/// The workers an MPI launcher started.
#[cfg(feature = "mpi")]
fn mpi_workers() -> Result<std::sync::Arc<dyn trainer::dist::Collective>, Error> {
    match trainer::dist::Mpi::init() {
        Some(m) => Ok(std::sync::Arc::new(m)),
        None => Err(Error::config("--mpi", "MPI is already initialised")),
    }
}

#[cfg(not(feature = "mpi"))]
fn mpi_workers() -> Result<std::sync::Arc<dyn trainer::dist::Collective>, Error> {
    Err(Error::config(
        "--mpi",
        "this trainer is built without MPI: cargo build --release --features trainer/mpi \
         (needs a system MPI, e.g. Debian's libopenmpi-dev, and libclang-dev)",
    ))
}

/// Whether this process is a data-parallel worker other than the first: it trains the same
/// steps, keeps them in memory and prints nothing.
fn detached(o: &RunOptions) -> bool {
    o.collective.as_ref().is_some_and(|c| c.rank() != 0)
}

/// Print the summary; `trusted_key` is how to name the signer's public key to `replay`.
fn report(s: &RunSummary, common: &Common, trusted_key: Option<&str>) {
    use std::io::Write;
    // A closed standard output (`trainer … | head`) is not an error.
    let _ = std::io::stdout()
        .lock()
        .write_all(render(s, common, trusted_key).as_bytes());
}

fn render(s: &RunSummary, common: &Common, trusted_key: Option<&str>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if common.json {
        let v = serde_json::json!({
            "location": s.location,
            "run_id": s.run_id,
            "steps_done": s.steps_done,
            "final_step": s.final_step,
            "total_steps": s.total_steps,
            "completed": s.completed,
            "ledger_head": s.ledger_head,
            "state_root": s.state_root,
            "parameters": s.parameters,
            "trained_parameters": s.trained_parameters,
            "steps_per_second": s.steps_per_second,
            "exchange_seconds": s.exchange_seconds,
            "last_loss": s.last_loss,
            "bytes_written": s.bytes_written,
            "signed_by": s.signed_by,
            "base_tensors_loaded": s.init.loaded.len(),
            "parameters_initialised": s.init.initialized,
        });
        let _ = writeln!(out, "{v}");
        return out;
    }
    let status = if s.completed {
        "Run complete"
    } else {
        "Run stopped"
    };
    let _ = writeln!(out, "{status}: {}", s.location);
    let _ = writeln!(out, "  run id        {}", s.run_id);
    let _ = writeln!(
        out,
        "  steps         {} of {} ({} this time, {:.2} steps/s, {} threads)",
        s.final_step,
        s.total_steps,
        s.steps_done,
        s.steps_per_second,
        rayon::current_num_threads()
    );
    if s.trained_parameters == s.parameters {
        let _ = writeln!(out, "  parameters    {}", s.parameters);
    } else {
        let _ = writeln!(
            out,
            "  parameters    {} ({} trained, the rest frozen)",
            s.parameters, s.trained_parameters
        );
    }
    if !s.init.loaded.is_empty() || !s.init.initialized.is_empty() {
        // Name a few; `--json` lists them all.
        const SHOWN: usize = 4;
        let new = &s.init.initialized;
        let named = match new.len() {
            0 => "none".to_string(),
            n if n <= SHOWN => new.join(", "),
            n => format!("{}, … ({n} in all)", new[..SHOWN].join(", ")),
        };
        let _ = writeln!(
            out,
            "  from base     {} tensors; newly initialised: {named}",
            s.init.loaded.len(),
        );
    }
    let _ = writeln!(out, "  last loss     {:.4}", s.last_loss);
    let _ = writeln!(out, "  ledger head   {}", s.ledger_head);
    let _ = writeln!(out, "  state root    {}", s.state_root);
    let _ = writeln!(
        out,
        "  written       {:.1} MB",
        s.bytes_written as f64 / 1e6
    );
    if let Some(f) = &s.signed_by {
        let _ = writeln!(out, "  signed by     {f}");
    }
    if s.completed {
        let trust = trusted_key
            .map(|k| format!(" --trusted-key {k}"))
            .unwrap_or_default();
        let _ = writeln!(out, "Verify it:");
        let _ = writeln!(out, "  replay check {}{trust}", s.location);
        let _ = writeln!(out, "  replay verify {} --all{trust}", s.location);
    } else {
        let _ = writeln!(out, "Continue it:  trainer resume {}", s.location);
    }
    out
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Run {
            config,
            out,
            run_id,
            export,
            common,
        } => {
            let c = RunConfig::from_file(&config)?;
            let mut o = options(&common)?;
            o.run_id = run_id;
            if detached(&o) {
                run::start_detached(&c, &o)?;
                return Ok(());
            }
            check_export_target(export.as_deref())?;
            let s = run::start(&c, &out, &o)?;
            report(&s, &common, public_hex(&o).as_deref());
            export_completed(&s, export.as_deref(), &common)?;
        }
        Command::Resume {
            run: location,
            allow_environment_mismatch,
            export,
            common,
        } => {
            let mut o = options(&common)?;
            o.allow_environment_mismatch = allow_environment_mismatch;
            // Every worker reads the run before the first writes to it.
            if let Some(c) = o.collective.clone() {
                if c.rank() != 0 {
                    run::resume_detached(&location, &o, || c.barrier())?;
                    return Ok(());
                }
                c.barrier();
            }
            check_export_target(export.as_deref())?;
            let s = run::resume(&location, &o)?;
            report(&s, &common, public_hex(&o).as_deref());
            export_completed(&s, export.as_deref(), &common)?;
        }
        Command::Demo {
            out,
            assets,
            steps,
            common,
        } => {
            let config_path = demo::write_assets(&assets, steps)?;
            // The demo signs its run, with a key kept beside its other inputs.
            let demo_key = assets.join(keys::PRIVATE);
            if common.signing_key.is_none() && !demo_key.exists() {
                keys::write(&assets)?;
            }
            let c = demo::load_config(&config_path)?;
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let out = out.unwrap_or_else(|| format!("runs/demo-{unix}"));
            let mut o = options(&common)?;
            o.run_id = Some(format!("demo-{unix}"));
            if o.signing_key.is_none() {
                o.signing_key = Some(run_trust::signature::read_signing_key(&demo_key)?);
            }
            if !common.json {
                eprintln!(
                    "demo: fine-tuning a {}-layer BERT-style classifier on {} reviews for {steps} steps; \
                     inputs in {}, run in {out}",
                    demo::model_config().num_layers,
                    demo::DATASET
                        .split(|&b| b == b'\n')
                        .filter(|l| !l.is_empty())
                        .count(),
                    assets.display()
                );
            }
            let s = run::start(&c, &out, &o)?;
            let hint = if common.signing_key.is_none() {
                Some(assets.join(keys::PUBLIC).display().to_string())
            } else {
                public_hex(&o)
            };
            report(&s, &common, hint.as_deref());
        }
        Command::Keygen {
            out,
            kind: KeyKind::P256,
        } => {
            let public = keys::write_p256(&out)?;
            println!(
                "wrote {} (private, mode 0600)",
                out.join(keys::MODEL_PRIVATE).display()
            );
            println!(
                "public key   {} (SHA-256 of the PEM: {})",
                out.join(keys::MODEL_PUBLIC_PEM).display(),
                public
            );
            println!(
                "verify exported models with: model_signing verify key DIR --signature DIR/model.sig --public_key {}",
                out.join(keys::MODEL_PUBLIC_PEM).display()
            );
        }
        Command::Keygen {
            out,
            kind: KeyKind::Ed25519,
        } => {
            let public = keys::write(&out)?;
            println!(
                "wrote {} (private, mode 0600)",
                out.join(keys::PRIVATE).display()
            );
            println!("public key   {}", hex::encode(public.to_bytes()));
            println!(
                "fingerprint  {}",
                run_trust::signature::fingerprint(&public.to_bytes())
            );
            println!(
                "verify runs with: replay check RUN --trusted-key {}",
                out.join(keys::PUBLIC).display()
            );
        }
        Command::Fingerprint { device } => {
            let f = device.parse::<DeviceSpec>()?.fingerprint()?;
            println!(
                "{}",
                serde_json::json!({ "environment": f, "class": f.class() })
            );
        }
        Command::Generate {
            base,
            adapter,
            prompt,
            max_new_tokens,
            raw,
            temperature,
            seed,
            logits_dir,
            threads,
            json,
        } => {
            let sampling = match temperature {
                None => None,
                Some(t) if t > 0.0 && t.is_finite() => Some(trainer::generate::Sampling {
                    temperature: t,
                    seed,
                }),
                Some(t) => {
                    return Err(Error::config(
                        "--temperature",
                        format!("{t} is not a positive temperature"),
                    ));
                }
            };
            if let Some(n) = threads {
                let _ = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build_global();
            }
            let io = |path: &std::path::Path, source| Error::Io {
                path: path.display().to_string(),
                source,
            };
            let bytes = std::fs::read(&base).map_err(|e| io(&base, e))?;
            let name = base.display().to_string();
            let adapter = adapter
                .as_deref()
                .map(trainer::generate::PeftAdapter::read)
                .transpose()?;
            let o = trainer::generate::GenerateOptions {
                max_new_tokens,
                raw,
                sampling,
                with_logits: logits_dir.is_some(),
            };
            let out = trainer::generate::generate(&bytes, &name, adapter.as_ref(), &prompt, &o)?;
            if let Some(dir) = &logits_dir {
                std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            }
            for (i, g) in out.iter().enumerate() {
                if let Some(dir) = &logits_dir {
                    let path = dir.join(format!("prompt-{i}.f32"));
                    let raw: Vec<u8> = g
                        .prompt_logits
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect();
                    std::fs::write(&path, raw).map_err(|e| io(&path, e))?;
                }
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"prompt": prompt[i], "generation": g})
                    );
                } else {
                    println!("> {}\n{}\n", prompt[i], g.text);
                }
            }
        }
        Command::Hash { files } => {
            for path in files {
                let bytes = std::fs::read(&path).map_err(|source| Error::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                let pin = snapshot_format::hash::file_hash(&bytes);
                println!("{pin}  {}", path.display());
            }
        }
    }
    Ok(())
}

/// Key files written by `trainer keygen`.
mod keys {
    use std::io::Write;
    use std::path::Path;

    use trainer::Error;

    pub const PRIVATE: &str = "signing-key.pem";
    pub const PUBLIC: &str = "signing-key.pub";
    pub const PUBLIC_PEM: &str = "signing-key.pub.pem";

    pub const MODEL_PRIVATE: &str = "model-signing-key.pem";
    pub const MODEL_PUBLIC_PEM: &str = "model-signing-key.pub.pem";

    fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Write a private key's PEM to `dir/name`, mode 0600; never overwrites an existing file.
    fn write_private(dir: &Path, name: &str, pem: &str) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let private = dir.join(name);
        let mut f = {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            o.open(&private).map_err(|e| io(&private, e))?
        };
        f.write_all(pem.as_bytes()).map_err(|e| io(&private, e))
    }

    /// Generate an ed25519 key pair into `dir`; never overwrites an existing private key.
    pub fn write(dir: &Path) -> Result<ed25519_dalek::VerifyingKey, Error> {
        let key = run_trust::signature::generate()?;
        let public = key.verifying_key();
        write_private(dir, PRIVATE, &run_trust::signature::private_key_pem(&key)?)?;
        let public_path = dir.join(PUBLIC);
        std::fs::write(
            &public_path,
            format!("{}\n", hex::encode(public.to_bytes())),
        )
        .map_err(|e| io(&public_path, e))?;
        let pem_path = dir.join(PUBLIC_PEM);
        std::fs::write(&pem_path, run_trust::signature::public_key_pem(&public)?)
            .map_err(|e| io(&pem_path, e))?;
        Ok(public)
    }

    /// Generate a P-256 key pair for model signing into `dir`; returns the SHA-256 of the public
    /// key's PEM (the key hint of model-signing bundles).
    pub fn write_p256(dir: &Path) -> Result<String, Error> {
        use run_trust::attest;
        let key = attest::generate_model_signing_key()?;
        write_private(dir, MODEL_PRIVATE, &attest::model_signing_key_pem(&key)?)?;
        let pem = attest::model_signing_public_pem(key.verifying_key())?;
        let path = dir.join(MODEL_PUBLIC_PEM);
        std::fs::write(&path, &pem).map_err(|e| io(&path, e))?;
        Ok(attest::public_key_hint(&pem))
    }
}

/// An export directory must be new or empty: checked before training, so that a finished run
/// does not meet a conflict at its end.
fn check_export_target(dir: Option<&str>) -> Result<(), Error> {
    let Some(dir) = dir else { return Ok(()) };
    let path = std::path::Path::new(dir);
    let occupied = std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        return Err(Error::config(
            "--export",
            format!("{dir} already holds files; exports are written once, into a new directory"),
        ));
    }
    Ok(())
}

/// Export the final model of a completed run into `dir`, when one is named.
fn export_completed(s: &RunSummary, dir: Option<&str>, common: &Common) -> Result<(), Error> {
    let Some(dir) = dir else { return Ok(()) };
    if !s.completed {
        eprintln!("trainer: the run is not complete; nothing exported to {dir}");
        return Ok(());
    }
    let keys = run_trust::attest::ExportKeys {
        statement: match &common.signing_key {
            Some(path) => Some(run_trust::signature::read_signing_key(path)?),
            None => None,
        },
        model: match &common.model_signing_key {
            Some(path) => Some(run_trust::attest::read_model_signing_key(path)?),
            None => None,
        },
    };
    let files = run::export_final(&s.location, dir, &keys)?;
    if !common.json {
        eprintln!("exported {} to {dir}", files.join(", "));
    }
    Ok(())
}

fn public_hex(o: &RunOptions) -> Option<String> {
    o.signing_key
        .as_ref()
        .map(|k| hex::encode(k.verifying_key().to_bytes()))
}

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::BaseModelHashMismatch { .. } => 2,
        Error::Format(f) if f.is_integrity_violation() => 2,
        _ => 3,
    }
}

/// `--workers N` of `run` or `resume`: this command again under `mpirun -n N`, with `--mpi` in
/// place of `--workers N`; its exit status.
fn local_workers(cli: &Cli) -> Option<Result<ExitCode, Error>> {
    let common = match &cli.command {
        Command::Run { common, .. } | Command::Resume { common, .. } => common,
        _ => return None,
    };
    let n = common.workers?;
    if let Err(e) = mpi_workers_available() {
        return Some(Err(e));
    }
    let mut args: Vec<String> = vec![];
    let mut given = std::env::args().skip(1);
    while let Some(a) = given.next() {
        if a == "--workers" {
            given.next();
        } else if !a.starts_with("--workers=") {
            args.push(a);
        }
    }
    args.push("--mpi".into());
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(source) => {
            return Some(Err(Error::Io {
                path: "the trainer's own executable".into(),
                source,
            }));
        }
    };
    let status = std::process::Command::new("mpirun")
        .args(["-n", &n.to_string(), "--oversubscribe"])
        .arg(exe)
        .args(&args)
        .status();
    Some(match status {
        Ok(s) => Ok(ExitCode::from(s.code().unwrap_or(3).clamp(0, 255) as u8)),
        Err(e) => Err(Error::config(
            "--workers",
            format!("cannot start mpirun (Open MPI's launcher, e.g. Debian's openmpi-bin): {e}"),
        )),
    })
}

fn main() -> ExitCode {
    trainer::alloc::keep_freed_pages();
    let cli = match trainer::cli::parse_or_exit::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match local_workers(&cli) {
        Some(Ok(code)) => return code,
        Some(Err(e)) => {
            eprintln!("trainer: {e}");
            return ExitCode::from(exit_code(&e));
        }
        None => {}
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trainer: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}
