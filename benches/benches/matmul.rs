//! The matrix product alone: the fixed-order kernel (`kernels::matmul`, the engine's `f32`
//! product) against PyTorch's (`torch.matmul`, MKL or oneDNN) on the shapes of the demo's and
//! SmolLM2 + LoRA's training steps, with their layouts (a `Linear` reads its weight as a
//! transposed view; the weight gradient reads the activations transposed), in GFLOP/s and as a
//! share of this machine's measured FMA peak (a register-resident chain of fused multiply-adds
//! at the kernel's vector width: cores × frequency × lanes × 2 × FMA units, as the CPU delivers
//! it). Each shape also records whether the kernel's bits are the same at 4, 8 and 16 lanes.

use benchmarks::{Report, median_time, r3};
use kernels::{MatRef, matmul, matmul_on};
use pulp::{Simd, WithSimd};

/// `(label, m, k, n, A transposed, B transposed)`.
#[rustfmt::skip]
const SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
    ("demo: attention projection x·Wᵀ", 1024, 256, 256, false, true),
    ("demo: FFN in x·Wᵀ", 1024, 256, 1024, false, true),
    ("demo: FFN out x·Wᵀ", 1024, 1024, 256, false, true),
    ("demo: FFN in, input gradient dY·W", 1024, 1024, 256, false, false),
    ("demo: FFN in, weight gradient dYᵀ·X", 1024, 1024, 256, true, false),
    ("SmolLM2: attention projection x·Wᵀ", 320, 576, 576, false, true),
    ("SmolLM2: MLP up x·Wᵀ", 320, 576, 1536, false, true),
    ("SmolLM2: MLP down x·Wᵀ", 320, 1536, 576, false, true),
    ("SmolLM2: MLP down, input gradient dY·W", 320, 576, 1536, false, false),
    ("SmolLM2: LM head x·Eᵀ", 320, 576, 49152, false, true),
    ("square 2048", 2048, 2048, 2048, false, false),
];

/// A chain of fused multiply-adds in `CHAINS` independent registers: the FMA units' throughput.
struct Peak {
    iterations: usize,
}

const CHAINS: usize = 12;

impl WithSimd for Peak {
    type Output = (f32, usize);

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> (f32, usize) {
        let (x, y) = (simd.splat_f32s(0.999_9), simd.splat_f32s(1e-4));
        let mut acc = [simd.splat_f32s(std::hint::black_box(1.0)); CHAINS];
        for _ in 0..self.iterations {
            for a in acc.iter_mut() {
                *a = simd.mul_add_f32s(*a, x, y);
            }
        }
        let lanes: &[f32] = pulp::bytemuck::cast_slice(&acc);
        (lanes.iter().sum(), S::F32_LANES)
    }
}

/// Measured peak GFLOP/s of `threads` threads running the FMA chain at once.
fn peak(threads: usize) -> (f64, usize) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let iterations = 50_000_000;
    let mut lanes = 0;
    let t = median_time(3, || {
        let r = pool.broadcast(|_| pulp::Arch::new().dispatch(Peak { iterations }));
        lanes = r[0].1;
        r
    });
    let flops = (threads * iterations * CHAINS * lanes * 2) as f64;
    (flops / t.as_secs_f64() / 1e9, lanes)
}

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) >> 8) as f32 / 16_777_216.0 - 0.5)
        .collect()
}

/// A `rows × cols` operand stored row-major, or stored as its transpose and viewed transposed.
fn operand(data: &[f32], rows: usize, cols: usize, transposed: bool) -> MatRef<'_> {
    let view = if transposed {
        MatRef::row_major(data, cols, rows).map(MatRef::transpose)
    } else {
        MatRef::row_major(data, rows, cols)
    };
    view.expect("operand shape")
}

fn main() {
    let mut rep = Report::new("matmul");
    let (peak1, lanes) = peak(1);
    let (peak2, _) = peak(2);
    rep.context("kernel lanes (this CPU)", lanes);
    rep.context("measured FMA peak, 1 thread, GFLOP/s", r3(peak1));
    rep.context("measured FMA peak, 2 threads, GFLOP/s", r3(peak2));
    let shapes: Vec<serde_json::Value> = SHAPES
        .iter()
        .map(|&(label, m, k, n, at, bt)| serde_json::json!([label, m, k, n, at, bt]))
        .collect();
    let torch = benchmarks::pytorch(
        &mut rep,
        "matmul.py",
        &[
            "--threads".to_string(),
            "1".into(),
            "2".into(),
            "--shapes".into(),
            serde_json::Value::from(shapes).to_string(),
        ],
    );
    let pools: Vec<rayon::ThreadPool> = [1, 2]
        .iter()
        .map(|&t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .expect("pool")
        })
        .collect();
    for &(label, m, k, n, at, bt) in SHAPES {
        let (a_data, b_data) = (values(m * k, 1), values(k * n, 2));
        let (a, b) = (operand(&a_data, m, k, at), operand(&b_data, k, n, bt));
        let mut c = vec![0.0f32; m * n];
        let flops = (2 * m * k * n) as f64;
        let runs = ((4e9 / flops) as usize).clamp(3, 50);
        let mut row = vec![("m × k × n", format!("{m} × {k} × {n}").into())];
        for (threads, pool) in [1usize, 2].into_iter().zip(&pools) {
            let t = pool.install(|| {
                // Warm the pool's threads (and their packing buffers) before timing.
                for _ in 0..3 {
                    matmul(&mut c, a, b, threads > 1);
                }
                median_time(runs, || matmul(&mut c, a, b, threads > 1))
            });
            let gflops = flops / t.as_secs_f64() / 1e9;
            let peak = if threads == 1 { peak1 } else { peak2 };
            row.push((
                if threads == 1 {
                    "kernel GFLOP/s, 1 thread"
                } else {
                    "kernel GFLOP/s, 2 threads"
                },
                r3(gflops).into(),
            ));
            row.push((
                if threads == 1 {
                    "% of peak, 1 thread"
                } else {
                    "% of peak, 2 threads"
                },
                r3(100.0 * gflops / peak).into(),
            ));
            if let Some(g) = torch
                .as_ref()
                .and_then(|t| t["gflops"][label][threads.to_string()].as_f64())
            {
                row.push((
                    if threads == 1 {
                        "PyTorch GFLOP/s, 1 thread"
                    } else {
                        "PyTorch GFLOP/s, 2 threads"
                    },
                    r3(g).into(),
                ));
            }
        }
        row.push((
            "same bits at 4, 8 and 16 lanes",
            same_bits_at_every_width(&mut c, a, b).into(),
        ));
        rep.row(label, &row);
    }
    rep.finish();
}

/// Whether the 4-, 8- and 16-lane kernels give the dispatched kernel's bits (false where this
/// CPU lacks AVX2 and FMA, which the widths need).
fn same_bits_at_every_width(c: &mut [f32], a: MatRef<'_>, b: MatRef<'_>) -> bool {
    let Some(v3) = pulp::x86::V3::try_new() else {
        return false;
    };
    matmul(c, a, b, false);
    let want: Vec<u32> = c.iter().map(|x| x.to_bits()).collect();
    let mut same = |run: &dyn Fn(&mut [f32])| {
        run(c);
        c.iter().map(|x| x.to_bits()).eq(want.iter().copied())
    };
    same(&|c| matmul_on(pulp::x86::V3_128b(v3), c, a, b))
        && same(&|c| matmul_on(v3, c, a, b))
        && same(&|c| matmul_on(pulp::x86::V3_512b(v3), c, a, b))
}
