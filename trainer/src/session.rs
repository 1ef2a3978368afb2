//! A training session: model, optimizer state, step counter and data cursor on one device, and
//! the deterministic training step. The trainer drives it to record a run; the verifier drives
//! the same code to replay one.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use snapshot_format::Hash32;
use snapshot_format::snapshot::Reference;
use snapshot_format::snapshot::{
    self, DataCursor, Encoded, Provenance, RngState, Snapshot, StateMeta, TensorView, WriteOptions,
};

use crate::base::BaseWeights;
use crate::config::{DataFormat, Padding, RunSpec};
use crate::data::{DataOrder, Dataset, Example, HashTokenizer, special};
use crate::error::{Error, Result};
use crate::model::{Batch, BatchInput, Dropout, TrainableModel, init_values};
use crate::optim::{self, Optimizer};
use crate::params::{self, HostTensor};

/// The full training state on the host: metadata and every tensor, sorted by name.
#[derive(Debug, Clone)]
pub struct TrainingState {
    pub meta: StateMeta,
    pub tensors: Vec<HostTensor>,
}

impl TrainingState {
    /// Views for hashing and encoding.
    pub fn views(&self) -> Vec<TensorView<'_>> {
        self.tensors
            .iter()
            .map(|t| TensorView {
                name: &t.name,
                dtype: snapshot_format::DType::F32,
                shape: &t.shape,
                data: t.bytes(),
            })
            .collect()
    }

    /// Tensor hashes (parallel), in the order of `tensors`.
    pub fn tensor_hashes(&self) -> Vec<Hash32> {
        snapshot::hash_tensors(&self.views())
    }

    /// State root, from hashes computed by [`Self::tensor_hashes`].
    pub fn root(&self, hashes: &[Hash32]) -> Result<Hash32> {
        Ok(snapshot::state_root(
            &self.meta,
            &self.views(),
            Some(hashes),
        )?)
    }

    /// Encode as a snapshot, reusing the tensor hashes; with a delta codec, against
    /// `reference` (the previous checkpoint).
    pub fn encode(
        &self,
        hashes: &[Hash32],
        provenance: &Provenance,
        options: WriteOptions,
        reference: Option<&Reference>,
    ) -> Result<Encoded<'_>> {
        Ok(snapshot::encode_against(
            &self.meta,
            provenance,
            &self.views(),
            Some(hashes),
            options,
            reference,
        )?)
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&HostTensor> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tensors[i])
    }
}

/// The rows `ids` of `all` (rows of `len` values), each cut to its first `cut` values.
fn cut_rows<T: Copy>(all: &[T], ids: &[u64], len: usize, cut: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(ids.len() * cut);
    for &i in ids {
        let start = i as usize * len;
        out.extend_from_slice(&all[start..start + cut]);
    }
    out
}

/// Inputs of every example, prepared once on the host (tokenized text or features).
#[derive(Debug, Clone)]
pub struct PreparedData {
    inputs: Inputs,
    labels: Vec<u64>,
    num_labels: usize,
    padding: Padding,
}

#[derive(Debug, Clone)]
enum Inputs {
    /// Rows padded (or cut) to `len`, and each row's length without its padding.
    Tokens {
        ids: Vec<i64>,
        len: usize,
        lengths: Vec<usize>,
    },
    Features {
        values: Vec<f32>,
        dim: usize,
    },
    /// Sequences padded (or cut) to `len`: ids, attention and loss masks, row-major.
    Lm {
        ids: Vec<i64>,
        attention: Vec<f32>,
        loss: Vec<f32>,
        len: usize,
        lengths: Vec<usize>,
    },
}

impl PreparedData {
    /// Tokenize or collect the features of every example of `dataset` as `spec` says.
    pub fn new(dataset: &Dataset, spec: &RunSpec) -> Self {
        let num_labels = spec.model.num_labels() as usize;
        let labels = dataset.examples.iter().map(Example::label).collect();
        let inputs = match (spec.data.format, spec.model.vocab_size(), spec.data.max_len) {
            (DataFormat::Lm, _, Some(len)) => {
                let pad = match &spec.model {
                    crate::config::ModelSpec::Llama(l) => l.pad_token_id as i64,
                    _ => 0,
                };
                let len = len as usize;
                let n = dataset.examples.len() * len;
                let (mut ids, mut attention, mut loss) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                let mut lengths = Vec::with_capacity(dataset.examples.len());
                for ex in &dataset.examples {
                    if let Example::Lm { tokens, loss_mask } = ex {
                        let kept = tokens.len().min(len);
                        lengths.push(kept);
                        ids.extend(tokens[..kept].iter().map(|&t| i64::from(t)));
                        ids.extend(std::iter::repeat_n(pad, len - kept));
                        attention.extend(std::iter::repeat_n(1.0f32, kept));
                        attention.extend(std::iter::repeat_n(0.0f32, len - kept));
                        loss.extend(loss_mask[..kept].iter().map(|&m| f32::from(u8::from(m))));
                        loss.extend(std::iter::repeat_n(0.0f32, len - kept));
                    }
                }
                Inputs::Lm {
                    ids,
                    attention,
                    loss,
                    len,
                    lengths,
                }
            }
            (DataFormat::Text | DataFormat::Tokens, Some(vocab_size), Some(len)) => {
                let tok = HashTokenizer { vocab_size };
                let len = len as usize;
                let mut ids = Vec::with_capacity(dataset.examples.len() * len);
                for ex in &dataset.examples {
                    match ex {
                        Example::Text { text, .. } => ids.extend(tok.encode(text, len)),
                        Example::Tokens { tokens, .. } => {
                            let kept = tokens.len().min(len);
                            ids.extend(tokens[..kept].iter().map(|&id| i64::from(id)));
                            ids.extend(std::iter::repeat_n(special::PAD, len - kept));
                        }
                        Example::Features { .. } | Example::Lm { .. } => {}
                    }
                }
                // Padding is id 0 ([PAD]) at the end of a row; a row's length is up to its last
                // other id.
                let lengths = ids
                    .chunks(len)
                    .map(|row| {
                        row.iter()
                            .rposition(|&t| t != special::PAD)
                            .map_or(0, |p| p + 1)
                    })
                    .collect();
                Inputs::Tokens { ids, len, lengths }
            }
            _ => {
                let mut values = Vec::new();
                let mut dim = 0;
                for ex in &dataset.examples {
                    if let Example::Features { features, .. } = ex {
                        dim = features.len();
                        values.extend_from_slice(features);
                    }
                }
                Inputs::Features { values, dim }
            }
        };
        PreparedData {
            inputs,
            labels,
            num_labels,
            padding: spec.data.padding,
        }
    }

    /// The length the token rows of the batch of `ids` are cut to: `len` (the recorded
    /// `max_len`), or with `padding = "longest"` the batch's longest row (at least 1).
    fn batch_len(padding: Padding, ids: &[u64], len: usize, lengths: &[usize]) -> usize {
        match padding {
            Padding::MaxLen => len,
            Padding::Longest => ids
                .iter()
                .map(|&i| lengths[i as usize])
                .max()
                .unwrap_or(len)
                .max(1),
        }
    }

    /// A step's batch as [`Session::train_step`] takes it: the drawn `ids` cut into `parts`
    /// consecutive slices of equal length (a run's `micro_batches`; the batch size is a multiple),
    /// each keeping only the examples `keep` accepts (a counterfactual's); parts left empty are
    /// dropped. No part at all when nothing is kept.
    pub fn step_batches<B: Backend>(
        &self,
        ids: &[u64],
        parts: u64,
        keep: impl Fn(u64) -> bool,
        device: &B::Device,
    ) -> Vec<Batch<B>> {
        let len = ids.len().div_ceil(parts.max(1) as usize).max(1);
        ids.chunks(len)
            .map(|c| {
                c.iter()
                    .copied()
                    .filter(|&id| keep(id))
                    .collect::<Vec<u64>>()
            })
            .filter(|c| !c.is_empty())
            .map(|c| self.batch(&c, device))
            .collect()
    }

    /// The batch of examples `ids`, on `device`, as the run's steps take it.
    pub fn batch<B: Backend>(&self, ids: &[u64], device: &B::Device) -> Batch<B> {
        self.batch_padded(ids, self.padding, device)
    }

    /// The batch of examples `ids`, on `device`, its token rows cut to the batch's longest row
    /// whatever the run's padding: for passes off the run's trajectory (attribution's gradients
    /// of one row or of a probe), where the positions left out are masked either way, so the
    /// values are the same in exact arithmetic and only the work differs.
    pub fn batch_cut<B: Backend>(&self, ids: &[u64], device: &B::Device) -> Batch<B> {
        self.batch_padded(ids, Padding::Longest, device)
    }

    fn batch_padded<B: Backend>(
        &self,
        ids: &[u64],
        padding: Padding,
        device: &B::Device,
    ) -> Batch<B> {
        let n = ids.len();
        if let Inputs::Lm {
            ids: all,
            attention,
            loss,
            len,
            lengths,
        } = &self.inputs
        {
            let cut = Self::batch_len(padding, ids, *len, lengths);
            let rows = |v: &[f32]| -> Vec<f32> { cut_rows(v, ids, *len, cut) };
            let tok = cut_rows(all, ids, *len, cut);
            return Batch {
                input: BatchInput::Lm {
                    ids: Tensor::<B, 2, Int>::from_data(TensorData::new(tok, [n, cut]), device),
                    attention: Tensor::from_data(
                        TensorData::new(rows(attention), [n, cut]),
                        device,
                    ),
                    loss: Tensor::from_data(TensorData::new(rows(loss), [n, cut]), device),
                },
                targets: Tensor::zeros([n, 1], device),
                size: n,
            };
        }
        let mut targets = vec![0.0f32; n * self.num_labels];
        for (row, &i) in ids.iter().enumerate() {
            targets[row * self.num_labels + self.labels[i as usize] as usize] = 1.0;
        }
        let targets = Tensor::from_data(TensorData::new(targets, [n, self.num_labels]), device);
        let input = match &self.inputs {
            Inputs::Tokens {
                ids: all,
                len,
                lengths,
            } => {
                let cut = Self::batch_len(padding, ids, *len, lengths);
                let tok = cut_rows(all, ids, *len, cut);
                let mask: Vec<f32> = tok
                    .iter()
                    .map(|&t| if t == special::PAD { 0.0 } else { 1.0 })
                    .collect();
                BatchInput::Tokens {
                    ids: Tensor::<B, 2, Int>::from_data(TensorData::new(tok, [n, cut]), device),
                    mask: Tensor::from_data(TensorData::new(mask, [n, cut]), device),
                }
            }
            Inputs::Lm { .. } => unreachable!("returned above"),
            Inputs::Features { values, dim } => {
                let mut x = Vec::with_capacity(n * dim);
                for &i in ids {
                    let start = i as usize * dim;
                    x.extend_from_slice(&values[start..start + dim]);
                }
                BatchInput::Features(Tensor::from_data(TensorData::new(x, [n, *dim]), device))
            }
        };
        Batch {
            input,
            targets,
            size: n,
        }
    }
}

/// What one step produced, in exact bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOutcome {
    pub step: u64,
    pub lr_bits: u64,
    pub loss_bits: u32,
    pub grad_norm_bits: u32,
}

/// Which parameters came from the base weights and which were initialised.
#[derive(Debug, Clone, Default)]
pub struct InitReport {
    pub loaded: Vec<String>,
    pub initialized: Vec<String>,
    /// Base tensors the model has no parameter for.
    pub unused: Vec<String>,
}

/// The value of a one-element loss tensor.
fn scalar<B: Backend>(loss: Tensor<B, 1>) -> f32 {
    loss.into_data().iter::<f32>().next().unwrap_or(f32::NAN)
}

/// The tensors of a state being restored, by name: dtype, shape and little-endian bytes.
type StateTensors<'a> = BTreeMap<&'a str, (snapshot_format::DType, &'a [u64], &'a [u8])>;

/// Model, optimizer, step and cursor on one device.
#[derive(Debug)]
pub struct Session<B: AutodiffBackend, M: TrainableModel<B>> {
    pub spec: RunSpec,
    config: M::Config,
    model: Option<M>,
    optimizer: Optimizer<B::InnerBackend>,
    device: B::Device,
    step: u64,
    cursor: DataCursor,
    order: DataOrder,
    /// Canonical names and element counts of the parameters, in visit order.
    params: Vec<(String, usize)>,
    /// Those that are trained (all of them unless the model freezes some).
    trainable: Vec<(String, usize)>,
    /// The other workers of a data-parallel run, if any ([`crate::dist`]).
    collective: Option<std::sync::Arc<dyn crate::dist::Collective>>,
    /// Time spent exchanging the parts' sums with the other workers and completing the tree.
    exchange: std::cell::Cell<std::time::Duration>,
}

fn param_table<B: AutodiffBackend, M: TrainableModel<B>>(
    model: &M,
) -> Result<Vec<(String, usize)>> {
    let list = params::list::<B, M>(model, M::canonical_name);
    let mut seen = std::collections::HashSet::new();
    for (name, _) in &list {
        if !seen.insert(name.clone()) {
            return Err(Error::config(
                "model",
                format!("two parameters have the canonical name {name:?}"),
            ));
        }
    }
    Ok(list
        .into_iter()
        .map(|(n, shape)| (n, shape.iter().product()))
        .collect())
}

/// Shapes of a model's parameters by name; every parameter (name, element count) in visit
/// order; the trained ones.
type ParamTables = (
    HashMap<String, Vec<usize>>,
    Vec<(String, usize)>,
    Vec<(String, usize)>,
);

/// Initial values of the parameters of `table` (those `wanted` selects): from `base` where it
/// has them (shapes must match), the others from their initialisation rule and the host
/// streams. Also says which came from where.
fn initial_values<B: AutodiffBackend, M: TrainableModel<B>>(
    spec: &RunSpec,
    config: &M::Config,
    base: Option<&BaseWeights>,
    shapes: &HashMap<String, Vec<usize>>,
    table: &[(String, usize)],
    wanted: impl Fn(&str) -> bool,
) -> Result<(HashMap<String, Vec<f32>>, InitReport)> {
    let mut report = InitReport::default();
    let mut values: HashMap<String, Vec<f32>> = HashMap::new();
    let mut used_keys = std::collections::HashSet::new();
    for (name, n) in table.iter().filter(|(name, _)| wanted(name)) {
        let shape = &shapes[name];
        match base.and_then(|b| b.get(name)) {
            Some((key, t)) => {
                let base_shape = &t.shape;
                if base_shape != shape {
                    return Err(Error::BaseModel {
                        path: base.map(|b| b.source.clone()).unwrap_or_default(),
                        detail: format!(
                            "tensor {key:?} has shape {base_shape:?}; the model's {name:?} is {shape:?}"
                        ),
                    });
                }
                used_keys.insert(key.to_string());
                values.insert(name.clone(), t.values.clone());
                report.loaded.push(name.clone());
            }
            None => {
                let rule = M::init_rule(config, name);
                values.insert(name.clone(), init_values(rule, spec.run.seed, name, *n));
                report.initialized.push(name.clone());
            }
        }
    }
    if let Some(b) = base {
        report.unused = b
            .tensors
            .keys()
            .filter(|k| !used_keys.contains(*k))
            .cloned()
            .collect();
    }
    Ok((values, report))
}

impl<B: AutodiffBackend, M: TrainableModel<B>> Session<B, M> {
    /// The parameters of a freshly built model, and those that are trained.
    fn tables(config: &M::Config, model: &M) -> Result<ParamTables> {
        let shapes: HashMap<String, Vec<usize>> = params::list::<B, M>(model, M::canonical_name)
            .into_iter()
            .collect();
        let table = param_table::<B, M>(model)?;
        let trainable = table
            .iter()
            .filter(|(name, _)| M::trainable(config, name))
            .cloned()
            .collect();
        Ok((shapes, table, trainable))
    }

    /// The state before the first step: parameters from `base` where it has them (shapes must
    /// match), the others initialised from the host streams; optimizer state zero.
    pub fn initial(
        spec: RunSpec,
        config: M::Config,
        base: Option<&BaseWeights>,
        device: B::Device,
    ) -> Result<(Self, InitReport)> {
        let model = M::build(&config, &device);
        let (shapes, table, trainable) = Self::tables(&config, &model)?;
        let (mut values, report) =
            initial_values::<B, M>(&spec, &config, base, &shapes, &table, |_| true)?;
        let dev = device.clone();
        let is_trained = |name: &str| M::trainable(&config, name);
        let model =
            params::replace::<B, M, _>(model, M::canonical_name, &is_trained, |name, current| {
                let n = current.dims()[0];
                let v = values.remove(name).unwrap_or_else(|| vec![0.0; n]);
                Tensor::from_data(TensorData::new(v, [n]), &dev)
            });
        let optimizer = Optimizer::new(&spec.optimizer, &trainable, &device);
        let order = DataOrder::new(spec.run.seed, spec.data.examples, spec.run.batch_size);
        Ok((
            Session {
                spec,
                config,
                model: Some(model),
                optimizer,
                device,
                step: 0,
                cursor: DataCursor::default(),
                order,
                params: table,
                trainable,
                collective: None,
                exchange: Default::default(),
            },
            report,
        ))
    }

    /// Restore the state held by a verified snapshot. Every trained parameter and optimizer
    /// slot must be present with the right size, the seed must be the spec's, and no tensor may
    /// be left over; frozen parameters come from `base` (or their initialisation), as at step 0.
    pub fn restore(
        spec: RunSpec,
        config: M::Config,
        base: Option<&BaseWeights>,
        snap: &Snapshot,
        device: B::Device,
        artefact: &str,
    ) -> Result<Self> {
        let tensors = snap
            .header
            .tensors
            .iter()
            .zip(&snap.data)
            .map(|(i, d)| (i.name.as_str(), (i.dtype, i.shape.as_slice(), d.as_slice())))
            .collect();
        Self::restore_from(
            spec,
            config,
            base,
            &snap.header.state,
            &tensors,
            device,
            artefact,
        )
    }

    /// Restore a state held on the host (by [`Self::capture`], or reconstructed by replay), with
    /// the checks of [`Self::restore`].
    pub fn from_state(
        spec: RunSpec,
        config: M::Config,
        base: Option<&BaseWeights>,
        state: &TrainingState,
        device: B::Device,
        artefact: &str,
    ) -> Result<Self> {
        let tensors = state
            .tensors
            .iter()
            .map(|t| {
                let dtype = snapshot_format::DType::F32;
                (t.name.as_str(), (dtype, t.shape.as_slice(), t.bytes()))
            })
            .collect();
        Self::restore_from(spec, config, base, &state.meta, &tensors, device, artefact)
    }

    fn restore_from(
        spec: RunSpec,
        config: M::Config,
        base: Option<&BaseWeights>,
        meta: &StateMeta,
        tensors: &StateTensors<'_>,
        device: B::Device,
        artefact: &str,
    ) -> Result<Self> {
        let bad = |detail: String| Error::Run {
            store: artefact.to_string(),
            detail,
        };
        if meta.rng.master_seed != spec.run.seed {
            return Err(bad(format!(
                "snapshot seed {} differs from the spec's {}",
                meta.rng.master_seed, spec.run.seed
            )));
        }
        let order = DataOrder::new(spec.run.seed, spec.data.examples, spec.run.batch_size);
        let implied = order.cursor_after(meta.step);
        if meta.data_cursor != implied {
            return Err(bad(format!(
                "data cursor (epoch {}, position {}) is not the one {} steps lead to (epoch {}, position {})",
                meta.data_cursor.epoch,
                meta.data_cursor.position,
                meta.step,
                implied.epoch,
                implied.position
            )));
        }
        if meta.step > spec.run.steps {
            return Err(bad(format!(
                "holds the state after step {}, beyond the run's {} steps",
                meta.step, spec.run.steps
            )));
        }
        let model = M::build(&config, &device);
        let (shapes, table, trainable) = Self::tables(&config, &model)?;
        let is_trained = |name: &str| M::trainable(&config, name);
        if trainable.len() < table.len() && spec.base.is_some() && base.is_none() {
            return Err(bad(
                "the frozen parameters come from the pinned base model, which is not available"
                    .into(),
            ));
        }
        // Frozen parameters are not part of the state: they are what they were at step 0.
        let (mut values, _) =
            initial_values::<B, M>(&spec, &config, base, &shapes, &table, |n| !is_trained(n))?;
        let mut used = std::collections::HashSet::new();
        let mut take = |name: &str, n: usize| -> Result<Vec<f32>> {
            let &(dtype, shape, bytes) = tensors
                .get(name)
                .ok_or_else(|| bad(format!("snapshot lacks tensor {name:?}")))?;
            if dtype != snapshot_format::DType::F32 || bytes.len() != n * 4 {
                return Err(bad(format!(
                    "tensor {name:?} is {dtype} {shape:?}; expected F32 with {n} elements"
                )));
            }
            used.insert(name.to_string());
            Ok(bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        for (name, n) in &trainable {
            values.insert(name.clone(), take(name, *n)?);
        }
        let optimizer = Optimizer::from_host(&spec.optimizer, &trainable, &device, &mut take)?;
        let expected: usize = trainable.len()
            + trainable
                .iter()
                .map(|(n, _)| spec.optimizer.slot_names(n).len())
                .sum::<usize>();
        if tensors.len() != expected {
            let extra: Vec<&str> = tensors
                .keys()
                .copied()
                .filter(|n| !used.contains(*n))
                .take(5)
                .collect();
            return Err(bad(format!(
                "snapshot holds tensors the model does not train: {extra:?}"
            )));
        }
        let dev = device.clone();
        let model =
            params::replace::<B, M, _>(model, M::canonical_name, &is_trained, |name, current| {
                let n = current.dims()[0];
                let v = values.remove(name).unwrap_or_else(|| vec![0.0; n]);
                Tensor::from_data(TensorData::new(v, [n]), &dev)
            });
        Ok(Session {
            spec,
            config,
            model: Some(model),
            optimizer,
            device,
            step: meta.step,
            cursor: meta.data_cursor,
            order,
            params: table,
            trainable,
            collective: None,
            exchange: Default::default(),
        })
    }

    /// Compute each step's micro-batches together with the workers of `collective`: this
    /// worker takes its block of parts ([`crate::dist`]). The step's bits are unchanged.
    pub fn with_collective(
        mut self,
        collective: std::sync::Arc<dyn crate::dist::Collective>,
    ) -> Self {
        self.collective = Some(collective);
        self
    }

    /// Time this session has spent exchanging sums with the other workers of a data-parallel
    /// run and completing the reduction tree (zero in one process).
    pub fn exchange_time(&self) -> std::time::Duration {
        self.exchange.get()
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The device.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The model's configuration.
    pub fn config(&self) -> &M::Config {
        &self.config
    }

    /// The model.
    pub fn model(&self) -> &M {
        self.model
            .as_ref()
            .expect("the model is only taken out within a step")
    }

    /// Draw the next batch: its epoch and example ids. Advances the data cursor.
    pub fn next_batch(&mut self) -> (u64, Vec<u64>) {
        self.order.next_batch(&mut self.cursor)
    }

    /// One optimizer step on the batch drawn by [`Self::next_batch`], given as its parts
    /// ([`PreparedData::step_batches`]): loss, backward, global gradient norm, optional
    /// clipping, optimizer update. One part: one backward pass over it. Several (a run with
    /// `micro_batches` > 1): each part's gradient alone, then [`tree_sum`] (`specs/determinism.md`
    /// §5.6).
    pub fn train_step(&mut self, parts: &[Batch<B>]) -> StepOutcome {
        let step = self.step + 1;
        let lr = self.spec.lr(step);
        let (model, loss_value, named) = match parts {
            [batch] => {
                let model = self
                    .model
                    .take()
                    .expect("the model is present between steps");
                let mut dropout = Dropout::for_step(self.spec.run.seed, step);
                let loss = model.loss(batch, &mut dropout);
                let loss_value = scalar(loss.clone());
                let grads = loss.backward();
                let named = params::gradients::<B, M>(&model, &grads, M::canonical_name);
                (model, loss_value, named)
            }
            _ => {
                let (loss_value, named) = self.micro_batch_gradients(parts, step);
                let model = self
                    .model
                    .take()
                    .expect("the model is present between steps");
                (model, loss_value, named)
            }
        };
        let present: Vec<Tensor<B::InnerBackend, 1>> =
            named.iter().filter_map(|(_, g)| g.clone()).collect();
        let norm = optim::global_norm(&present);
        let factor = optim::clip_factor(norm, self.spec.optimizer.grad_clip());
        let mut grads_by_name: HashMap<String, Tensor<B::InnerBackend, 1>> = named
            .into_iter()
            .filter_map(|(n, g)| g.map(|g| (n, g)))
            .collect();
        let optimizer = &mut self.optimizer;
        let config = &self.config;
        let is_trained = |name: &str| M::trainable(config, name);
        let model =
            params::replace::<B, M, _>(model, M::canonical_name, &is_trained, |name, param| {
                // A parameter without gradient is left untouched, state included (as in PyTorch).
                match grads_by_name.remove(name) {
                    Some(g) => {
                        let g = match factor {
                            Some(f) => g * f,
                            None => g,
                        };
                        optimizer.update(name, param, g, lr, step)
                    }
                    None => param,
                }
            });
        self.model = Some(model);
        self.step = step;
        StepOutcome {
            step,
            lr_bits: lr.to_bits(),
            loss_bits: loss_value.to_bits(),
            grad_norm_bits: norm.to_bits(),
        }
    }

    /// The loss and gradients of a batch given as micro-batches: part `j` (of `n_j` examples)
    /// runs with its own dropout stream and its mean loss times `n_j` is differentiated; the
    /// parts' losses and gradients are summed in [`tree_sum`] over `j` and divided by `n = Σ n_j`.
    /// The parts are spread over the worker threads; every value is a function of the parts
    /// only, never of the number of threads.
    fn micro_batch_gradients(&self, parts: &[Batch<B>], step: u64) -> (f32, NamedGradients<B>) {
        let seed = self.spec.run.seed;
        let count = parts.len();
        let (rank, workers) = match &self.collective {
            Some(c) => (c.rank(), c.size()),
            None => (0, 1),
        };
        // Configurations are checked to divide the parts among the workers; a counterfactual
        // (parts dropped) runs in one process.
        assert!(
            count.is_multiple_of(workers),
            "{count} micro-batches cannot be divided among {workers} workers"
        );
        let block = count / workers;
        let first = rank * block;
        let tensors = self.trainable.len();
        // Each part's vector: its gradient, then its weighted loss, then 1 for each tensor it
        // reaches (0 otherwise), all summed by the same tree.
        let leaves: Vec<Vec<f32>> = self
            .gradients_of(
                block,
                |i| parts[first + i].clone(),
                |i| Dropout::for_micro_batch(seed, step, first + i),
                |i| parts[first + i].size as f32,
                |_| true,
                <[f32]>::to_vec,
            )
            .into_iter()
            .map(|(loss, present, mut flat)| {
                flat.push(loss);
                flat.extend(present.into_iter().map(|p| f32::from(u8::from(p))));
                flat
            })
            .collect();
        let mine = crate::dist::block_nodes(first as u64, leaves);
        let started = std::time::Instant::now();
        let nodes = match &self.collective {
            Some(c) if workers > 1 => exchange(c.as_ref(), mine),
            _ => mine,
        };
        let mut sum = crate::dist::combine(nodes, count as u64, 0);
        if workers > 1 {
            self.exchange.set(self.exchange.get() + started.elapsed());
        }
        let n = parts.iter().map(|p| p.size).sum::<usize>() as f32;
        let reached: Vec<bool> = sum
            .split_off(sum.len() - tensors)
            .iter()
            .map(|&r| r > 0.0)
            .collect();
        let loss = sum.pop().unwrap_or_default() / n;
        for g in &mut sum {
            *g /= n;
        }
        let device = self.device().clone();
        let mut at = 0;
        let named = self
            .trainable
            .iter()
            .zip(reached)
            .map(|((name, len), reached)| {
                let slice = &sum[at..at + len];
                at += len;
                let g = reached.then(|| {
                    Tensor::<B::InnerBackend, 1>::from_data(
                        burn::tensor::TensorData::new(slice.to_vec(), [*len]),
                        &device,
                    )
                });
                (name.clone(), g)
            })
            .collect();
        (loss, named)
    }

    /// Count step `step() + 1` as taken without changing any parameter or optimizer state: a
    /// step whose whole batch a counterfactual removed. Later steps keep their step numbers, so
    /// their learning rates and dropout streams are those of the recorded run.
    pub fn skip_step(&mut self) {
        self.step += 1;
    }

    /// Mean loss of `batch` under the current parameters, without dropout and without an update.
    /// The parameters are taken untracked: a forward pass from tracked ones registers every
    /// operation in autodiff's graph, which nothing frees without a backward pass (measured:
    /// 15.5 GB for the 64 losses of 32 removed SmolLM2 rows in a counterfactual). The values,
    /// and so the bits, are those of the same operations on the same values.
    pub fn evaluate(&self, batch: &Batch<B>) -> f32 {
        scalar(self.untracked().loss(batch, &mut Dropout::disabled()))
    }

    /// The model with its parameters untracked, for forward passes without a backward one
    /// (see [`Self::evaluate`]).
    pub fn untracked(&self) -> M {
        self.model().clone().no_grad()
    }

    /// For each of `count` batches (`batch(i)` makes the i-th), its mean loss without dropout
    /// and `f` of its gradient with respect to the trained parameters that `wanted` names,
    /// flattened on the host in the model's parameter visit order, each tensor row-major (a
    /// parameter the loss does not reach contributes zeros); results in the batches' order. The
    /// batches are spread over the worker threads, each worker with its own leaves of the same
    /// parameter values; none of the results depends on the number of threads. No parameter or
    /// optimizer state changes.
    pub fn map_gradients<T: Send>(
        &self,
        count: usize,
        batch: impl Fn(usize) -> Batch<B> + Sync,
        wanted: impl Fn(&str) -> bool + Sync,
        f: impl Fn(&[f32]) -> T + Sync,
    ) -> Vec<(f32, T)> {
        self.gradients_of(count, batch, |_| Dropout::disabled(), |_| 1.0, wanted, f)
            .into_iter()
            .map(|(loss, _, t)| (loss, t))
            .collect()
    }

    /// For each of `count` batches: batch `i`'s mean loss under `dropout(i)` times `weight(i)`,
    /// which trained tensors `wanted` names it reaches, and `f` of the gradient of that weighted
    /// loss, flattened as in [`Self::map_gradients`]. The batches are spread over the worker
    /// threads, each worker with its own leaves of the same parameter values (burn's autodiff
    /// keeps graphs that share leaves under one lock; fresh leaves keep them independent); each
    /// result is computed by one worker alone.
    fn gradients_of<T: Send>(
        &self,
        count: usize,
        batch: impl Fn(usize) -> Batch<B> + Sync,
        dropout: impl Fn(usize) -> Dropout + Sync,
        weight: impl Fn(usize) -> f32 + Sync,
        wanted: impl Fn(&str) -> bool + Sync,
        f: impl Fn(&[f32]) -> T + Sync,
    ) -> Vec<(f32, Vec<bool>, T)> {
        use rayon::prelude::*;
        let workers = rayon::current_num_threads().clamp(1, count.max(1));
        let per = count.div_ceil(workers).max(1);
        let config = &self.config;
        let is_trained = |name: &str| M::trainable(config, name);
        let copies: Vec<M> = (0..workers)
            .map(|_| {
                params::replace::<B, M, _>(
                    self.model().clone(),
                    M::canonical_name,
                    &is_trained,
                    |_, p| p,
                )
            })
            .collect();
        let selected: Vec<&(String, usize)> =
            self.trainable.iter().filter(|(n, _)| wanted(n)).collect();
        let width = selected.iter().map(|(_, n)| n).sum();
        let parts: Vec<Vec<(f32, Vec<bool>, T)>> = copies
            .into_par_iter()
            .enumerate()
            .map(|(w, model)| {
                (w * per..((w + 1) * per).min(count))
                    .map(|i| {
                        let loss = model.loss(&batch(i), &mut dropout(i));
                        let w = weight(i);
                        let loss = if w == 1.0 { loss } else { loss * w };
                        let value = scalar(loss.clone());
                        let grads = loss.backward();
                        let mut named: HashMap<String, Tensor<B::InnerBackend, 1>> =
                            params::gradients::<B, M>(&model, &grads, M::canonical_name)
                                .into_iter()
                                .filter_map(|(n, g)| g.map(|g| (n, g)))
                                .collect();
                        let mut flat = Vec::with_capacity(width);
                        let mut present = Vec::with_capacity(selected.len());
                        for (name, n) in &selected {
                            let g = named.remove(name);
                            present.push(g.is_some());
                            match g {
                                Some(g) => flat.extend(g.into_data().iter::<f32>()),
                                None => flat.resize(flat.len() + n, 0.0),
                            }
                        }
                        (value, present, f(&flat))
                    })
                    .collect()
            })
            .collect();
        parts.into_iter().flatten().collect()
    }

    /// Copy the full state to the host.
    pub fn capture(&self) -> TrainingState {
        let mut tensors = params::to_host::<B, M>(self.model(), M::canonical_name, &|name| {
            M::trainable(&self.config, name)
        });
        tensors.extend(self.optimizer.to_host());
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        TrainingState {
            meta: StateMeta {
                step: self.step,
                data_cursor: self.cursor,
                rng: RngState {
                    master_seed: self.spec.run.seed,
                    streams: vec![],
                },
                extra: vec![],
            },
            tensors,
        }
    }

    /// Number of parameters (elements).
    pub fn parameter_count(&self) -> u64 {
        self.params.iter().map(|(_, n)| *n as u64).sum()
    }

    /// AdamW's second moment of trained parameter `name` on the host (none under SGD).
    pub fn second_moment(&self, name: &str) -> Option<Vec<f32>> {
        let v = self.optimizer.second_moment(name)?;
        Some(v.into_data().iter::<f32>().collect())
    }

    /// The trained parameters: canonical names and element counts, in visit order.
    pub fn trainable(&self) -> &[(String, usize)] {
        &self.trainable
    }

    /// Number of trained parameters (elements): all of them, unless some are frozen.
    pub fn trainable_parameter_count(&self) -> u64 {
        self.trainable.iter().map(|(_, n)| *n as u64).sum()
    }
}

/// Each trained tensor's name and gradient (none when the loss does not reach it), flattened.
type NamedGradients<B> = Vec<(
    String,
    Option<Tensor<<B as AutodiffBackend>::InnerBackend, 1>>,
)>;

/// Element-wise sum of `parts` (all of one length) in a fixed pairwise tree over the part index:
/// the complete binary tree over `0..P`, `P` the smallest power of two ≥ `parts.len()`, each node
/// the sum `left + right` of its halves (a node with an empty right half is its left half).
/// Any worker block of aligned parts is a subtree or a union of subtrees, so a sum is the same
/// bits however the parts were divided among workers. Empty input: empty output.
pub fn tree_sum(parts: Vec<Vec<f32>>) -> Vec<f32> {
    let count = parts.len() as u64;
    let leaves = (0..count).map(|j| (0, j)).zip(parts).collect();
    crate::dist::combine(leaves, count, 0)
}

/// Every worker's tree nodes, from each worker's own: each node sent as its level, its index
/// (both exact in `f32` below 2^24) and its values.
fn exchange(
    collective: &dyn crate::dist::Collective,
    mine: Vec<(crate::dist::Node, Vec<f32>)>,
) -> Vec<(crate::dist::Node, Vec<f32>)> {
    let width = mine.first().map_or(0, |(_, v)| v.len());
    let mut sent = Vec::with_capacity(mine.len() * (width + 2));
    for ((level, index), v) in mine {
        sent.push(level as f32);
        sent.push(index as f32);
        sent.extend(v);
    }
    collective
        .all_gather(&sent)
        .into_iter()
        .flat_map(|theirs| {
            theirs
                .chunks(width + 2)
                .map(|c| ((c[0] as u32, c[1] as u64), c[2..].to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::tree_sum;

    #[test]
    fn the_tree_adds_pairs_then_pairs_of_pairs_not_left_to_right() {
        // In f32, 1e8 + 1 rounds to 1e8: left to right gives 1, the tree (1e8 + 1) + (−1e8 + 1)
        // gives 0.
        let parts = vec![vec![1e8f32], vec![1.0], vec![-1e8], vec![1.0]];
        assert_eq!(tree_sum(parts), vec![0.0]);
        // An odd last part moves up a level: ((a + b) + c).
        let (a, b, c) = (1e8f32, -1e8f32, 1.0f32);
        assert_eq!(tree_sum(vec![vec![c], vec![a], vec![b]]), vec![(c + a) + b]);
        assert_eq!(tree_sum(vec![]), Vec::<f32>::new());
    }

    #[test]
    fn blocks_of_aligned_parts_summed_first_give_the_same_bits() {
        // What a worker holding parts 4k..4k+3 (or 2k, 2k+1) sends is a subtree of the whole.
        let parts: Vec<Vec<f32>> = (0..8)
            .map(|j| {
                (0..5)
                    .map(|i| ((j * 7 + i * 13) as f32).sin() * 10f32.powi((j % 4) * 3))
                    .collect()
            })
            .collect();
        let whole = tree_sum(parts.clone());
        for block in [1, 2, 4, 8] {
            let partial: Vec<Vec<f32>> =
                parts.chunks(block).map(|c| tree_sum(c.to_vec())).collect();
            let again = tree_sum(partial);
            assert_eq!(
                whole.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                again.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "blocks of {block}"
            );
        }
        let left_to_right = parts.iter().fold(vec![0.0f32; 5], |mut acc, p| {
            acc.iter_mut().zip(p).for_each(|(a, x)| *a += x);
            acc
        });
        assert_ne!(whole, left_to_right, "the values tell the orders apart");
    }
}
