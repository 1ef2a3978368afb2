//! Layers in Hugging Face's parameter layout, and numerically pinned building blocks.
//!
//! Every reduction here is along one dimension (`sum_dim`/`mean_dim`), never a full reduction,
//! and nothing uses `gather`/`scatter` in a way whose backward accumulates with atomics:
//! see `specs/determinism.md` for why.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// `y = x Wᵀ + b` with `W` stored `[out, in]`, as in PyTorch and Hugging Face checkpoints.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// Placeholder (zeros) of shape `[out, in]` and `[out]`.
    pub fn zeros(d_in: usize, d_out: usize, device: &B::Device) -> Self {
        Linear {
            weight: Param::from_tensor(Tensor::zeros([d_out, d_in], device)),
            bias: Param::from_tensor(Tensor::zeros([d_out], device)),
        }
    }

    /// Apply to `[..., in]`. The leading dimensions are flattened into one, so that the
    /// product is a single `[rows, in] × [in, out]` matrix multiply (the weight a transposed
    /// view, not a copy) and its weight gradient a single `[in, rows] × [rows, out]` one, rather
    /// than one product per batch element summed afterwards.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let w = self.weight.val().transpose();
        let [d_in, d_out] = w.dims();
        let dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let y = x.reshape([rows, d_in]).matmul(w) + self.bias.val().reshape([1, d_out]);
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }
}

/// A lookup table `[num, dim]` (the `weight` of an embedding).
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    /// Placeholder (zeros).
    pub fn zeros(num: usize, dim: usize, device: &B::Device) -> Self {
        Embedding {
            weight: Param::from_tensor(Tensor::zeros([num, dim], device)),
        }
    }

    /// Rows for `ids` `[batch, seq]`: `[batch, seq, dim]`. Uses `select`, whose backward
    /// (`select_assign`) accumulates in index order.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let dim = self.weight.dims()[1];
        self.weight
            .val()
            .select(0, ids.reshape([b * s]))
            .reshape([b, s, dim])
    }

    /// The first `n` rows, `[n, dim]` (positions 0..n).
    pub fn first_rows(&self, n: usize) -> Tensor<B, 2> {
        let dim = self.weight.dims()[1];
        self.weight.val().slice([0..n, 0..dim])
    }
}

/// Layer normalisation over the last dimension with gain `weight` and shift `bias`.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Placeholder (gain 1, shift 0).
    pub fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        LayerNorm {
            weight: Param::from_tensor(Tensor::ones([dim], device)),
            bias: Param::from_tensor(Tensor::zeros([dim], device)),
            eps,
        }
    }

    /// `(x − mean) / sqrt(var + eps) · weight + bias`, with the biased variance.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mean = x.clone().mean_dim(D - 1);
        let centered = x - mean;
        let var = (centered.clone() * centered.clone()).mean_dim(D - 1);
        let normed = centered / (var + self.eps).sqrt();
        let mut shape = [1usize; D];
        shape[D - 1] = self.weight.dims()[0];
        normed * self.weight.val().reshape(shape) + self.bias.val().reshape(shape)
    }
}

/// Softmax over the last dimension: `exp(x − max) / Σ exp(x − max)`, the max detached (the
/// result does not depend on it mathematically, and its backward would need a scatter).
pub fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let m = x.clone().detach().max_dim(D - 1);
    let e = (x - m).exp();
    let s = e.clone().sum_dim(D - 1);
    e / s
}

/// Mean cross-entropy of `logits` `[batch, classes]` against one-hot `targets`, as `[1]`:
/// `−mean_b Σ_c targets · log_softmax(logits)`, with a detached max and no gather.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
    let batch = logits.dims()[0];
    let m = logits.clone().detach().max_dim(1);
    let z = logits - m;
    let lse = z.clone().exp().sum_dim(1).log();
    let log_probs = z - lse;
    let picked = (log_probs * targets).sum_dim(1); // [batch, 1]
    picked.sum_dim(0).reshape([1]).neg() / batch as f64
}

/// Columns of the two-level reduction in [`sum_of_squares`].
pub const REDUCE_COLUMNS: usize = 1024;

/// `Σ xᵢ²` of a flat tensor as `[1]`, in a fixed order on every backend: zero-padded to a
/// multiple of [`REDUCE_COLUMNS`], viewed as `[rows, REDUCE_COLUMNS]`, summed along rows, then
/// the row sums summed. No full reduction (which some backends do with atomics or
/// thread-count-dependent trees).
pub fn sum_of_squares<B: Backend>(x: Tensor<B, 1>) -> Tensor<B, 1> {
    let n = x.dims()[0];
    let cols = REDUCE_COLUMNS.min(n.max(1));
    let rows = n.div_ceil(cols).max(1);
    let padded = if rows * cols == n {
        x
    } else {
        let device = x.device();
        Tensor::cat(vec![x, Tensor::zeros([rows * cols - n], &device)], 0)
    };
    let m = padded.reshape([rows, cols]);
    (m.clone() * m).sum_dim(1).reshape([rows]).sum_dim(0)
}
