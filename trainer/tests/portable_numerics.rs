//! The portable-numerics patches of `vendor/` are in effect: if a dependency update drops one,
//! these fail before any ledger head moves on some other machine.

use burn::tensor::{Tensor, TensorData};
use trainer::backend::Cpu;

/// Element-wise transcendental functions come from the pure-Rust `libm`, not the host's C
/// library: every element of burn-flex's `exp`, `log` and `tanh` equals `libm`'s, bit for bit.
#[test]
fn transcendental_functions_are_libms() {
    let device = burn::backend::flex::FlexDevice;
    // Inputs spread over the ranges training meets, including ones where C libraries differ
    // in the last bit.
    let xs: Vec<f32> = (0..200_000)
        .map(|i| (i as f32 - 100_000.0) * 1.37e-4 + (i % 7) as f32 * 1e-7)
        .collect();
    let n = xs.len();
    let t = || Tensor::<Cpu, 1>::from_data(TensorData::new(xs.clone(), [n]), &device);
    let bits = |t: Tensor<Cpu, 1>| -> Vec<u32> {
        t.into_data()
            .to_vec::<f32>()
            .expect("f32")
            .into_iter()
            .map(f32::to_bits)
            .collect()
    };
    let positive: Vec<f32> = xs.iter().map(|x| x.abs() + 1e-3).collect();
    let p = Tensor::<Cpu, 1>::from_data(TensorData::new(positive.clone(), [n]), &device);
    for (name, got, want) in [
        (
            "exp",
            bits(t().exp()),
            xs.iter()
                .map(|&x| libm::expf(x).to_bits())
                .collect::<Vec<_>>(),
        ),
        (
            "tanh",
            bits(t().tanh()),
            xs.iter().map(|&x| libm::tanhf(x).to_bits()).collect(),
        ),
        (
            "log",
            bits(p.log()),
            positive.iter().map(|&x| libm::logf(x).to_bits()).collect(),
        ),
    ] {
        let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing, 0,
            "{name}: {differing} of {n} elements are not libm's"
        );
    }
}

/// The activations the models use, forward and backward, are `libm`'s element by element
/// (burn-flex evaluates them with `kernels::Unary`, several elements at a time): on a tensor of
/// its own (computed in place), on one another handle shares (into a new buffer, as autodiff's
/// saved input is), and on a transposed view.
#[test]
fn activations_are_libms_on_every_path() {
    use burn::tensor::activation::{gelu, sigmoid, silu};
    let device = burn::backend::flex::FlexDevice;
    let (rows, cols) = (300, 250);
    let xs: Vec<f32> = (0..rows * cols)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 2f32.powi((i % 9) as i32 - 3))
        .collect();
    let sqrt2 = core::f32::consts::SQRT_2;
    let gelu_ref = |x: f32| 0.5 * x * (1.0 + libm::erff(x / sqrt2));
    let sigmoid_ref = |x: f32| {
        if x >= 0.0 {
            1.0 / (1.0 + libm::expf(-x))
        } else {
            let e = libm::expf(x);
            e / (1.0 + e)
        }
    };
    let t = || Tensor::<Cpu, 2>::from_data(TensorData::new(xs.clone(), [rows, cols]), &device);
    let values = |t: Tensor<Cpu, 2>| -> Vec<f32> { t.into_data().to_vec::<f32>().expect("f32") };
    let check = |name: &str, got: Vec<f32>, want: &dyn Fn(usize) -> f32| {
        let differing = (0..got.len())
            .filter(|&i| got[i].to_bits() != want(i).to_bits())
            .count();
        assert_eq!(
            differing,
            0,
            "{name}: {differing} of {} elements are not libm's",
            got.len()
        );
    };
    let transposed = |i: usize| xs[(i % rows) * cols + i / rows];
    check("gelu, owned", values(gelu(t())), &|i| gelu_ref(xs[i]));
    let shared = t();
    let keep = shared.clone();
    check("gelu, shared", values(gelu(shared)), &|i| gelu_ref(xs[i]));
    drop(keep);
    check("gelu, transposed", values(gelu(t().transpose())), &|i| {
        gelu_ref(transposed(i))
    });
    check("sigmoid, owned", values(sigmoid(t())), &|i| {
        sigmoid_ref(xs[i])
    });
    check(
        "sigmoid, transposed",
        values(sigmoid(t().transpose())),
        &|i| sigmoid_ref(transposed(i)),
    );
    check("silu", values(silu(t())), &|i| xs[i] * sigmoid_ref(xs[i]));
    check("erf, shared", values(t().erf()), &|i| libm::erff(xs[i]));

    // GELU's backward pass (Cpu is autodiff's): d(Σ gelu(x)·w)/dx = w·(cdf + x·pdf).
    let ws: Vec<f32> = xs.iter().map(|x| 0.5 - x * 0.25).collect();
    let x = Tensor::<Cpu, 2>::from_data(TensorData::new(xs.clone(), [rows, cols]), &device)
        .require_grad();
    let w = Tensor::<Cpu, 2>::from_data(TensorData::new(ws.clone(), [rows, cols]), &device);
    let grads = (gelu(x.clone()) * w).sum().backward();
    let dx = x.grad(&grads).expect("x takes part in the loss");
    let inv_sqrt_2pi: f32 = 1.0 / (2.0 * core::f32::consts::PI).sqrt();
    check(
        "gelu backward",
        dx.into_data().to_vec::<f32>().expect("f32"),
        &|i| {
            let x = xs[i];
            let cdf = 0.5 * (1.0 + libm::erff(x / sqrt2));
            let pdf = inv_sqrt_2pi * libm::expf(-0.5 * x * x);
            ws[i] * (cdf + x * pdf)
        },
    );
}

/// Every `f32` matrix product of the engine runs on the fixed-order kernel (`kernels`, patched
/// into burn-flex's matmul): each element is the definition's chain of fused multiply-adds in
/// blocks of `kernels::KC`, whatever the shape. Checked through burn's tensor API on the shapes
/// where gemm took other orders (a small output with a transposed operand, which gemm summed
/// horizontally across 8 lanes; a vector-shaped product; a batched product with a transposed,
/// broadcast operand), and on one deeper than a block.
#[test]
fn every_f32_matmul_runs_on_the_fixed_order_kernel() {
    let device = burn::backend::flex::FlexDevice;
    let values = |len: usize, seed: u32| -> Vec<f32> {
        (0..len as u32)
            .map(|i| {
                let v = ((i.wrapping_mul(2_654_435_761) ^ seed) >> 8) as f32 / 16_777_216.0;
                (v - 0.5) * 2f32.powi((i % 13) as i32 - 6)
            })
            .collect()
    };
    let definition = |a: &[f32], b: &[f32], [m, k, n]: [usize; 3]| -> Vec<u32> {
        let mut c = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let mut total = 0.0f32;
                for (block, k0) in (0..k).step_by(kernels::KC).enumerate() {
                    let s = (k0..(k0 + kernels::KC).min(k))
                        .fold(0.0f32, |s, kk| a[i * k + kk].mul_add(b[kk * n + j], s));
                    total = if block == 0 { s } else { total + s };
                }
                c.push(total.to_bits());
            }
        }
        c
    };
    let bits = |t: Tensor<Cpu, 2>| -> Vec<u32> {
        let v: Vec<f32> = t.into_data().to_vec().expect("f32 data");
        v.iter().map(|x| x.to_bits()).collect()
    };
    for [m, k, n] in [
        [8, 40, 16],
        [1, 300, 7],
        [9, 1, 5],
        [33, 1100, 3],
        [64, 64, 64],
    ] {
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let lhs = Tensor::<Cpu, 2>::from_data(TensorData::new(a.clone(), [m, k]), &device);
        // B as a transposed view of its transpose, as a Linear layer reads its weight.
        let bt: Vec<f32> = (0..n * k).map(|e| b[(e % k) * n + e / k]).collect();
        let rhs = Tensor::<Cpu, 2>::from_data(TensorData::new(bt, [n, k]), &device).transpose();
        assert_eq!(
            bits(lhs.matmul(rhs)),
            definition(&a, &b, [m, k, n]),
            "[{m}, {k}] × [{k}, {n}]"
        );
    }
    // Batched, with the right operand broadcast over the batch and transposed.
    let (batch, m, k, n) = (3, 5, 20, 4);
    let a = values(batch * m * k, 3);
    let b = values(k * n, 4);
    let bt: Vec<f32> = (0..n * k).map(|e| b[(e % k) * n + e / k]).collect();
    let lhs = Tensor::<Cpu, 3>::from_data(TensorData::new(a.clone(), [batch, m, k]), &device);
    let rhs = Tensor::<Cpu, 3>::from_data(TensorData::new(bt, [1, n, k]), &device).swap_dims(1, 2);
    let got = bits(lhs.matmul(rhs).reshape([batch * m, n]));
    let want: Vec<u32> = (0..batch)
        .flat_map(|p| definition(&a[p * m * k..(p + 1) * m * k], &b, [m, k, n]))
        .collect();
    assert_eq!(got, want, "batched [{batch}, {m}, {k}] × [1, {k}, {n}]");
}

/// The SIMD layer is built without its AVX-512 paths: reductions add 8 lanes at a time on
/// every x86-64-v3 CPU, with or without AVX-512. Asked of the build (the feature graph: the
/// vendored macerator, its `avx512` feature, which its build script turns into `cfg(avx512)`,
/// enabled by no crate), not of this machine, so that it fails on any machine when the feature
/// comes back; here, the dispatch is then at most AVX2.
#[test]
fn simd_dispatch_is_built_without_avx512() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["tree", "--workspace", "--locked"])
        .args(["-e", "features", "-i", "macerator"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tree.lines()
            .next()
            .is_some_and(|l| l.contains("vendor/macerator")),
        "the patched macerator: {tree}"
    );
    assert!(
        !tree.contains("macerator feature \"avx512\""),
        "macerator's avx512 feature is enabled:\n{tree}"
    );
    let arch = format!("{:?}", macerator::Arch::new());
    assert!(
        ["V3", "V2", "Scalar"].contains(&arch.as_str()) || !cfg!(target_arch = "x86_64"),
        "{arch}"
    );
}

/// Large copies of permuted tensors (burn-flex's `to_contiguous`, which the patch splits over
/// the first dimension across threads) put every element where a row-major copy of the
/// permuted view has it, on 1 and 2 threads: a 4-D attention-style permutation and a 2-D
/// transpose, both above the size where the copy goes parallel.
#[test]
fn large_permuted_copies_are_exact_on_any_thread_count() {
    let device = burn::backend::flex::FlexDevice;
    let [b, s, h, d] = [16, 32, 4, 64];
    let n = b * s * h * d;
    let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| {
            let t =
                Tensor::<Cpu, 4>::from_data(TensorData::new(values.clone(), [b, s, h, d]), &device);
            let got: Vec<f32> = t
                .swap_dims(1, 2)
                .reshape([n])
                .into_data()
                .to_vec()
                .expect("f32");
            // Element (bi, hi, si, di) of the permuted view is (bi, si, hi, di) of the original.
            let want: Vec<f32> = (0..n)
                .map(|e| {
                    let (bi, hi, si, di) = (e / (h * s * d), e / (s * d) % h, e / d % s, e % d);
                    (((bi * s + si) * h + hi) * d + di) as f32
                })
                .collect();
            assert!(got == want, "4-D permutation on {threads} thread(s)");

            let [r, c] = [512, 256];
            let t = Tensor::<Cpu, 2>::from_data(
                TensorData::new(values[..r * c].to_vec(), [r, c]),
                &device,
            );
            let got: Vec<f32> = t
                .transpose()
                .reshape([r * c])
                .into_data()
                .to_vec()
                .expect("f32");
            let want: Vec<f32> = (0..r * c).map(|e| ((e % r) * c + e / r) as f32).collect();
            assert!(got == want, "2-D transpose on {threads} thread(s)");
        });
    }
}

/// Element-wise products, sums and differences of views that are neither contiguous nor a
/// broadcast pattern (burn-flex's strided path, which the patch copies contiguous in parallel
/// first) are each element's own operation, on 1 and 2 threads:
/// two permuted 4-D views, a permuted view and a contiguous tensor, and two transposed views
/// whose last dimension is strided.
#[test]
fn binary_ops_of_strided_views_are_exact_on_any_thread_count() {
    let device = burn::backend::flex::FlexDevice;
    let [b, s, h, d] = [16, 32, 4, 64];
    let n = b * s * h * d;
    let xs: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 2f32.powi((i % 7) as i32 - 3))
        .collect();
    let ys: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.414_213_5).fract() - 0.3) * 3.0)
        .collect();
    // Element e of the [b, h, s, d] view is element (bi, si, hi, di) of the [b, s, h, d] data.
    let permuted = |e: usize| {
        let (bi, hi, si, di) = (e / (h * s * d), e / (s * d) % h, e / d % s, e % d);
        ((bi * s + si) * h + hi) * d + di
    };
    let (rows, cols) = (512, 256);
    let transposed = |e: usize| (e % rows) * cols + e / rows;
    let bits = |t: Vec<f32>| -> Vec<u32> { t.into_iter().map(f32::to_bits).collect() };
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| {
            let t4 = |v: &[f32]| {
                Tensor::<Cpu, 4>::from_data(TensorData::new(v.to_vec(), [b, s, h, d]), &device)
            };
            let values = |t: Tensor<Cpu, 4>| -> Vec<f32> { t.into_data().to_vec().expect("f32") };
            let got = values(t4(&xs).swap_dims(1, 2) * t4(&ys).swap_dims(1, 2));
            let want: Vec<f32> = (0..n).map(|e| xs[permuted(e)] * ys[permuted(e)]).collect();
            assert!(
                bits(got) == bits(want),
                "permuted × permuted, {threads} thread(s)"
            );
            let contiguous =
                Tensor::<Cpu, 4>::from_data(TensorData::new(ys.clone(), [b, h, s, d]), &device);
            let got = values(t4(&xs).swap_dims(1, 2) + contiguous);
            let want: Vec<f32> = (0..n).map(|e| xs[permuted(e)] + ys[e]).collect();
            assert!(
                bits(got) == bits(want),
                "permuted + contiguous, {threads} thread(s)"
            );
            let t2 = |v: &[f32]| {
                Tensor::<Cpu, 2>::from_data(
                    TensorData::new(v[..rows * cols].to_vec(), [rows, cols]),
                    &device,
                )
                .transpose()
            };
            let got: Vec<f32> = (t2(&xs) - t2(&ys)).into_data().to_vec().expect("f32");
            let want: Vec<f32> = (0..rows * cols)
                .map(|e| xs[transposed(e)] - ys[transposed(e)])
                .collect();
            assert!(
                bits(got) == bits(want),
                "transposed − transposed, {threads} thread(s)"
            );
        });
    }
}
