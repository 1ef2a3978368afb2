//! The vectorised element-wise functions against `libm` element by element, bit for bit, at every
//! vector width this machine runs.
//!
//! The references are spelled out here as burn-flex spells them (vendor/burn-flex's
//! `ops/activation.rs` and `ops/unary.rs`), from `libm` alone, so the comparison does not lean on
//! the kernel's own scalar path. The inputs: a stride through the whole `f32` bit space, every
//! pattern within 300 ulps of each threshold the `libm` routines branch on, the values of a
//! training step's pre-activations, and the special values. `every_f32_input` (ignored; about
//! ten minutes with `--release`) runs all 2³² patterns.

use kernels::{Unary, gelu_backward, gelu_backward_on};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

fn exp(x: f32) -> f32 {
    libm::expf(x)
}

fn erf(x: f32) -> f32 {
    libm::erff(x)
}

fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x / core::f32::consts::SQRT_2))
}

fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + libm::expf(-x))
    } else {
        let e = libm::expf(x);
        e / (1.0 + e)
    }
}

fn gelu_grad(x: f32, g: f32) -> f32 {
    let inv_sqrt_2pi: f32 = 1.0 / (2.0 * core::f32::consts::PI).sqrt();
    let cdf = 0.5 * (1.0 + libm::erff(x / core::f32::consts::SQRT_2));
    let pdf = inv_sqrt_2pi * libm::expf(-0.5 * x * x);
    g * (cdf + x * pdf)
}

/// A function's definition from `libm`, element by element.
type Reference = fn(f32) -> f32;
/// One width's run over a slice, in place.
type Run = Box<dyn Fn(&mut [f32])>;
/// One width's run of GELU's backward pass (inputs, gradients in place).
type BackwardRun = Box<dyn Fn(&[f32], &mut [f32])>;

const FUNCTIONS: [(Unary, Reference); 4] = [
    (Unary::Exp, exp),
    (Unary::Erf, erf),
    (Unary::Gelu, gelu),
    (Unary::Sigmoid, sigmoid),
];

/// The bit patterns where `expf` and `erff` change branch (and their arguments inside GELU:
/// the same points times √2), as magnitudes.
const THRESHOLDS: [u32; 12] = [
    0x42aeac50, 0x42b17218, 0x42cff1b5, 0x3f851592, 0x3eb17218, 0x39000000, // expf
    0x3f580000, 0x3fa00000, 0x4036db6d, 0x40c00000, 0x31800000, 0x3e800000, // erff
];

fn inputs() -> Vec<f32> {
    let mut xs = Vec::new();
    // A stride through every bit pattern (both signs, NaNs and infinities included).
    xs.extend((0..=u32::MAX).step_by(4099).map(f32::from_bits));
    for t in THRESHOLDS {
        for centre in [t, (f32::from_bits(t) * core::f32::consts::SQRT_2).to_bits()] {
            for d in 0..=600u32 {
                let b = centre.wrapping_add(d).wrapping_sub(300);
                xs.push(f32::from_bits(b));
                xs.push(-f32::from_bits(b));
            }
        }
    }
    // Pre-activations as a step sees them: mostly within a few units of zero.
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    for _ in 0..200_000 {
        let u = rng.next_u32() as f32 / u32::MAX as f32;
        let v = rng.next_u32() as f32 / u32::MAX as f32;
        let scale = [0.01f32, 1.0, 3.0, 20.0][(rng.next_u32() % 4) as usize];
        xs.push(scale * (u - v) * 4.0);
    }
    xs.extend([
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-45,
    ]);
    xs
}

fn first_difference(name: &str, xs: &[f32], got: &[f32], want: impl Fn(usize) -> f32) {
    for (i, (&x, &y)) in xs.iter().zip(got).enumerate() {
        let w = want(i);
        assert!(
            y.to_bits() == w.to_bits(),
            "{name}: input {x:e} ({:#010x}) gave {y:e} ({:#010x}), libm {w:e} ({:#010x})",
            x.to_bits(),
            y.to_bits(),
            w.to_bits()
        );
    }
}

#[test]
fn every_function_has_libms_bits_at_every_width() {
    let xs = inputs();
    for (function, reference) in FUNCTIONS {
        let want: Vec<f32> = xs.iter().map(|&x| reference(x)).collect();
        let mut runs: Vec<(&str, Run)> = vec![
            (
                "dispatched",
                Box::new(move |x: &mut [f32]| function.apply(x)),
            ),
            (
                "scalar",
                Box::new(move |x: &mut [f32]| function.apply_on(pulp::Scalar::new(), x)),
            ),
        ];
        #[cfg(target_arch = "x86_64")]
        if let Some(v3) = pulp::x86::V3::try_new() {
            runs.push((
                "4 lanes",
                Box::new(move |x: &mut [f32]| function.apply_on(pulp::x86::V3_128b(v3), x)),
            ));
            runs.push((
                "8 lanes",
                Box::new(move |x: &mut [f32]| function.apply_on(v3, x)),
            ));
            runs.push((
                "16 lanes",
                Box::new(move |x: &mut [f32]| function.apply_on(pulp::x86::V3_512b(v3), x)),
            ));
        }
        for (width, run) in &runs {
            let mut got = xs.clone();
            run(&mut got);
            first_difference(&format!("{function:?}, {width}"), &xs, &got, |i| want[i]);
            // Lengths that leave a partial vector at the end.
            for len in [1, 7, 13, 33] {
                let mut got = xs[..len].to_vec();
                run(&mut got);
                first_difference(
                    &format!("{function:?}, {width}, {len} elements"),
                    &xs,
                    &got,
                    |i| want[i],
                );
            }
        }
    }
}

#[test]
fn gelu_backward_has_libms_bits_at_every_width() {
    let xs = inputs();
    let mut rng = ChaCha8Rng::seed_from_u64(30);
    let gs: Vec<f32> = xs
        .iter()
        .map(|_| (rng.next_u32() as f32 / u32::MAX as f32 - 0.5) * 2.0)
        .collect();
    let want: Vec<f32> = xs.iter().zip(&gs).map(|(&x, &g)| gelu_grad(x, g)).collect();
    let mut runs: Vec<(&str, BackwardRun)> = vec![
        (
            "dispatched",
            Box::new(|x: &[f32], g: &mut [f32]| gelu_backward(x, g)),
        ),
        (
            "scalar",
            Box::new(|x: &[f32], g: &mut [f32]| gelu_backward_on(pulp::Scalar::new(), x, g)),
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    if let Some(v3) = pulp::x86::V3::try_new() {
        runs.push((
            "4 lanes",
            Box::new(move |x: &[f32], g: &mut [f32]| {
                gelu_backward_on(pulp::x86::V3_128b(v3), x, g)
            }),
        ));
        runs.push((
            "8 lanes",
            Box::new(move |x: &[f32], g: &mut [f32]| gelu_backward_on(v3, x, g)),
        ));
        runs.push((
            "16 lanes",
            Box::new(move |x: &[f32], g: &mut [f32]| {
                gelu_backward_on(pulp::x86::V3_512b(v3), x, g)
            }),
        ));
    }
    for (width, run) in &runs {
        for len in [xs.len(), 1, 7, 13, 33] {
            let mut got = gs[..len].to_vec();
            run(&xs[..len], &mut got);
            first_difference(
                &format!("gelu backward, {width}, {len} elements"),
                &xs,
                &got,
                |i| want[i],
            );
        }
    }
}

#[test]
#[ignore = "all 2^32 inputs: about ten minutes with --release"]
fn every_f32_input() {
    let chunk = 1usize << 24;
    let mut xs = vec![0f32; chunk];
    let gs = vec![0.75f32; chunk];
    for start in (0..=u32::MAX as u64).step_by(chunk) {
        for (i, x) in xs.iter_mut().enumerate() {
            *x = f32::from_bits((start + i as u64) as u32);
        }
        for (function, reference) in FUNCTIONS {
            let mut got = xs.clone();
            function.apply(&mut got);
            first_difference(&format!("{function:?}"), &xs, &got, |i| reference(xs[i]));
        }
        let mut got = gs.clone();
        gelu_backward(&xs, &mut got);
        first_difference("gelu backward", &xs, &got, |i| gelu_grad(xs[i], gs[i]));
    }
}
