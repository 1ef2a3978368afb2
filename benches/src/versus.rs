//! The engine's side of the benchmarks that train a real pretrained model beside PyTorch
//! (`lora_versus_pytorch`, `minilm_versus_pytorch`): a run's configuration, data and base, its
//! training step without recording, the measurements at one thread count, and the rows both
//! sides report.

use std::time::Instant;

use crate::{Report, r3};
use trainer::backend::Cpu;
use trainer::base::BaseWeights;
use trainer::config::{Conversion, ModelSpec, RunConfig, RunSpec};
use trainer::data::Dataset;
use trainer::model::TrainableModel;
use trainer::session::{PreparedData, Session};

/// A run of model `M` on the CPU: its spec, architecture, pinned base and prepared rows.
#[allow(missing_debug_implementations)]
pub struct Setup<M: TrainableModel<Cpu>> {
    spec: RunSpec,
    config: M::Config,
    model: ModelSpec,
    base: BaseWeights,
    data: PreparedData,
}

impl<M: TrainableModel<Cpu>> Setup<M> {
    /// The run configured by the file at `path`, on `rows` (named `rows_name`, in the
    /// configuration's data format), from `base`; `architecture` picks `M`'s configuration out of
    /// the run's model section.
    pub fn new(
        path: &std::path::Path,
        rows: &[u8],
        rows_name: &str,
        base: &BaseWeights,
        conversion: Option<Conversion>,
        architecture: impl Fn(&ModelSpec) -> Option<M::Config>,
    ) -> Self {
        let config = RunConfig::from_file(path).expect("config");
        let dataset =
            Dataset::parse(rows, rows_name, config.data.format, &config.model).expect("dataset");
        let spec = RunSpec::new(&config, &dataset.manifest, Some(base), conversion);
        Setup {
            data: PreparedData::new(&dataset, &spec),
            config: architecture(&config.model).expect("the model kind the benchmark wrote"),
            model: config.model,
            spec,
            base: base.clone(),
        }
    }

    /// A fresh session at step 0.
    pub fn session(&self) -> Session<Cpu, M> {
        Session::initial(
            self.spec.clone(),
            self.config.clone(),
            Some(&self.base),
            burn::backend::flex::FlexDevice,
        )
        .expect("session")
        .0
    }

    /// One step of `s` without recording; its loss.
    pub fn step(&self, s: &mut Session<Cpu, M>) -> f32 {
        let (_, ids) = s.next_batch();
        let batch = self.data.batch::<Cpu>(&ids, s.device());
        f32::from_bits(s.train_step(std::slice::from_ref(&batch)).loss_bits)
    }

    /// The rows (`rows`, JSON Lines with `tokens`) of the first `warmup + steps` batches in the
    /// order the run trains on them, for a reference implementation to train on the same
    /// batches; and the mean tokens of the last `steps` batches each cut to its longest row
    /// (rows cut at `max_len`).
    pub fn ordered_rows(
        &self,
        rows: &[u8],
        warmup: u64,
        steps: u64,
        max_len: u64,
    ) -> (String, f64) {
        let lines: Vec<&str> = std::str::from_utf8(rows).expect("utf-8").lines().collect();
        let row_len = |line: &str| -> u64 {
            let row: serde_json::Value = serde_json::from_str(line).expect("row");
            (row["tokens"].as_array().map_or(0, Vec::len) as u64).min(max_len)
        };
        let mut order = self.session();
        let (mut ordered, mut cut_tokens) = (String::new(), 0);
        for i in 0..warmup + steps {
            let ids = order.next_batch().1;
            if i >= warmup {
                let longest = ids.iter().map(|&id| row_len(lines[id as usize])).max();
                cut_tokens += ids.len() as u64 * longest.unwrap_or(0);
            }
            for id in ids {
                ordered.push_str(lines[id as usize]);
                ordered.push('\n');
            }
        }
        (ordered, cut_tokens as f64 / steps as f64)
    }

    /// The first batch's loss at step 0 without dropout, and the initial model as
    /// `model.safetensors` (Hugging Face names; a LoRA run's base with its adapters merged), for
    /// a reference implementation to start from the same weights.
    pub fn initial_model(&self) -> (f32, Vec<u8>) {
        let mut s = self.session();
        let loss = {
            let (_, ids) = s.next_batch();
            s.evaluate(&self.data.batch::<Cpu>(&ids, s.device()))
        };
        let params = s
            .capture()
            .tensors
            .iter()
            .filter(|t| !t.name.starts_with("optimizer."))
            .map(|t| {
                let shape = t.shape.iter().map(|&d| d as usize).collect();
                (t.name.clone(), shape, t.bytes().to_vec())
            })
            .collect();
        let files = trainer::peft::export_files(&self.model, Some(&self.base), None, params)
            .expect("export");
        let model = files
            .into_iter()
            .find(|(name, _)| name == "model.safetensors")
            .expect("model.safetensors")
            .1;
        (loss, model)
    }
}

/// What the engine measured at one thread count.
struct Measured {
    threads: usize,
    ms: f64,
    roots: [String; 2],
    record_ms: f64,
    checkpoint_bytes: u64,
    first_loss: f32,
}

/// Median ms per step over `steps` steps after `warmup` on `threads` threads, the state roots
/// after `check` steps of two fresh sessions, the recording work on the final state (ms to
/// capture and hash it, bytes of its checkpoint) and the first step's loss.
fn engine<M: TrainableModel<Cpu>>(
    setup: &Setup<M>,
    threads: usize,
    warmup: u64,
    steps: u64,
    check: u64,
) -> Measured
where
    M::Config: Sync,
{
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        let mut session = setup.session();
        let mut times = Vec::new();
        let mut first_loss = f32::NAN;
        for i in 0..warmup + steps {
            let t = Instant::now();
            let loss = setup.step(&mut session);
            if i == 0 {
                first_loss = loss;
            }
            if i >= warmup {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let t = Instant::now();
        let state = session.capture();
        let hashes = state.tensor_hashes();
        state.root(&hashes).expect("root");
        let record_ms = t.elapsed().as_secs_f64() * 1e3;
        let provenance = snapshot_format::snapshot::Provenance {
            run_id: "bench".into(),
            kind: snapshot_format::snapshot::SnapshotKind::Checkpoint,
            parent: None,
            producer: "bench".into(),
        };
        let bytes = state
            .encode(&hashes, &provenance, Default::default(), None)
            .expect("encode")
            .len();
        let roots = [0, 1].map(|_| {
            let mut s = setup.session();
            for _ in 0..check {
                setup.step(&mut s);
            }
            let state = s.capture();
            state.root(&state.tensor_hashes()).expect("root").to_hex()
        });
        Measured {
            threads,
            ms: times[times.len() / 2],
            roots,
            record_ms,
            checkpoint_bytes: bytes,
            first_loss,
        }
    })
}

/// The engine's rows at each thread count measured, `how` the batches were padded, `tokens`
/// per batch; with PyTorch's JSON (`ms_per_step` by thread count), each row's ratio to it.
fn engine_rows(
    rep: &mut Report,
    how: &str,
    ours: &[Measured],
    torch: Option<&serde_json::Value>,
    tokens: f64,
) {
    let torch_ms =
        |threads: usize| -> Option<f64> { torch?["ms_per_step"][threads.to_string()].as_f64() };
    let same_threads = ours.iter().all(|m| m.roots[0] == ours[0].roots[0]);
    for m in ours {
        let mut row = vec![
            ("ms/step", r3(m.ms).into()),
            ("tokens/s", r3(tokens / m.ms * 1e3).into()),
            ("identical across runs", (m.roots[0] == m.roots[1]).into()),
            ("identical across 1 and 2 threads", same_threads.into()),
            ("recording: capture + hash, ms", r3(m.record_ms).into()),
            ("checkpoint bytes", m.checkpoint_bytes.into()),
            ("first step's loss", f64::from(m.first_loss).into()),
        ];
        if let Some(t) = torch_ms(m.threads) {
            row.push(("× PyTorch's time", r3(m.ms / t).into()));
        }
        rep.row(&format!("engine{how}, {} thread(s)", m.threads), &row);
    }
}

/// PyTorch's rows (its JSON: `ms_per_step`, `identical_across_runs` by thread count,
/// `identical_across_threads`, `first_loss`), labelled `PyTorch <version> <with>`.
fn torch_rows(
    rep: &mut Report,
    with: &str,
    how: &str,
    torch: Option<&serde_json::Value>,
    tokens: f64,
) {
    let Some(t) = torch else {
        return;
    };
    for threads in [1usize, 2] {
        let key = threads.to_string();
        let ms = t["ms_per_step"][&key].as_f64().unwrap_or(f64::NAN);
        rep.row(
            &format!(
                "PyTorch {} {with}{how}, {threads} thread(s)",
                t["torch"].as_str().unwrap_or("?")
            ),
            &[
                ("ms/step", r3(ms).into()),
                ("tokens/s", r3(tokens / ms * 1e3).into()),
                (
                    "identical across runs",
                    t["identical_across_runs"][&key].clone(),
                ),
                (
                    "identical across 1 and 2 threads",
                    t["identical_across_threads"].clone(),
                ),
                ("first step's loss", t["first_loss"].clone()),
            ],
        );
    }
}

/// The batches and steps both sides measure: `batch` rows of `max_len` tokens (or cut to the
/// longest row), the median of `steps` steps after `warmup`, and the weights compared across
/// runs and thread counts after `check` steps.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub batch: u64,
    pub max_len: u64,
    pub warmup: u64,
    pub steps: u64,
    pub check: u64,
}

/// The engine on `padded` and on `cut` (the same run with `data.padding = "longest"`) at 1 and
/// 2 threads, and PyTorch's `script` given `inputs` and the plan's options, padded and cut,
/// reported side by side; `with` names the library PyTorch runs the model with, `cut_tokens` the
/// mean tokens of a cut batch. Returns PyTorch's JSON for the padded batches.
pub fn compare<M: TrainableModel<Cpu>>(
    rep: &mut Report,
    plan: Plan,
    (padded, cut): (&Setup<M>, &Setup<M>),
    cut_tokens: f64,
    script: &str,
    inputs: &[&std::ffi::OsStr],
    with: &str,
) -> Option<serde_json::Value>
where
    M::Config: Sync,
{
    let measure = |setup: &Setup<M>| -> Vec<Measured> {
        [1usize, 2]
            .map(|threads| engine(setup, threads, plan.warmup, plan.steps, plan.check))
            .into()
    };
    let (ours, ours_cut) = (measure(padded), measure(cut));
    let numbers = [
        plan.max_len,
        plan.batch,
        plan.warmup,
        plan.steps,
        plan.check,
    ]
    .map(|n| n.to_string());
    let [max_len, batch, warmup, steps, check] = numbers.each_ref().map(String::as_str);
    let mut pytorch = |longest: bool| {
        let mut args: Vec<&std::ffi::OsStr> = inputs.to_vec();
        for a in [
            "--max-len",
            max_len,
            "--batch",
            batch,
            "--threads",
            "1",
            "2",
            "--warmup",
            warmup,
            "--steps",
            steps,
            "--check-steps",
            check,
        ] {
            args.push(a.as_ref());
        }
        if longest {
            args.push("--longest".as_ref());
        }
        crate::pytorch(rep, script, &args)
    };
    let (torch, torch_cut) = (pytorch(false), pytorch(true));
    let (tokens, how) = (
        (plan.batch * plan.max_len) as f64,
        ", each batch cut to its longest row",
    );
    engine_rows(rep, "", &ours, torch.as_ref(), tokens);
    engine_rows(rep, how, &ours_cut, torch_cut.as_ref(), cut_tokens);
    torch_rows(rep, with, "", torch.as_ref(), tokens);
    torch_rows(rep, with, how, torch_cut.as_ref(), cut_tokens);
    torch
}
