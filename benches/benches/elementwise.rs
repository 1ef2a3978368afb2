//! The element-wise functions of a training step alone: `libm` one element at a time (what
//! burn-flex ran before), the vectorised functions with `libm`'s bits (`kernels::Unary`,
//! `kernels::gelu_backward`, what it runs now) and PyTorch's (its own vectorised approximations,
//! other bits), on one thread, in nanoseconds per element, over the demo's FFN activations
//! (32 × 32 × 1024 values spread as pre-activations are). Each row also records whether the
//! vectorised result is `libm`'s, bit for bit.

use benchmarks::{Report, median_time, r3};
use kernels::{Unary, gelu_backward, gelu_backward_scalar};

const ELEMENTS: usize = 32 * 32 * 1024;
const RUNS: usize = 20;

/// Values spread as a layer's pre-activations are: mostly within a few units of zero.
fn inputs() -> Vec<f32> {
    (0..ELEMENTS as u32)
        .map(|i| {
            let u = (i.wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0;
            let v = (i.wrapping_mul(2_246_822_519).rotate_left(13) >> 8) as f32 / 16_777_216.0;
            (u + v - 1.0) * 4.0
        })
        .collect()
}

fn ns_per_element(f: impl FnMut()) -> f64 {
    median_time(RUNS, f).as_secs_f64() * 1e9 / ELEMENTS as f64
}

fn main() {
    trainer::alloc::keep_freed_pages();
    let xs = inputs();
    let mut rep = Report::new("elementwise");
    rep.context("elements", ELEMENTS);
    rep.context("threads", 1);
    let file = tempfile::NamedTempFile::new().expect("temporary file");
    let bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(file.path(), bytes).expect("write the inputs");
    let torch = benchmarks::pytorch(
        &mut rep,
        "elementwise.py",
        &[
            "--inputs".to_string(),
            file.path().display().to_string(),
            "--runs".into(),
            RUNS.to_string(),
        ],
    );
    let g = vec![0.75f32; ELEMENTS];
    let mut out = vec![0f32; ELEMENTS];
    let functions = [
        ("exp", Some(Unary::Exp)),
        ("erf", Some(Unary::Erf)),
        ("GELU", Some(Unary::Gelu)),
        ("GELU backward", None),
        ("sigmoid", Some(Unary::Sigmoid)),
    ];
    for (name, unary) in functions {
        let scalar = |i: usize| match unary {
            Some(f) => f.scalar(xs[i]),
            None => gelu_backward_scalar(xs[i], g[i]),
        };
        let one_by_one = ns_per_element(|| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = scalar(i);
            }
        });
        let want: Vec<u32> = out.iter().map(|x| x.to_bits()).collect();
        let vectorised = ns_per_element(|| match unary {
            Some(f) => {
                out.copy_from_slice(&xs);
                f.apply(&mut out);
            }
            None => {
                out.copy_from_slice(&g);
                gelu_backward(&xs, &mut out);
            }
        });
        let same = out.iter().map(|x| x.to_bits()).eq(want.iter().copied());
        let mut row = vec![
            ("libm, one element at a time, ns", r3(one_by_one).into()),
            ("vectorised, ns", r3(vectorised).into()),
            ("speed-up", r3(one_by_one / vectorised).into()),
            ("vectorised is libm's bits", same.into()),
        ];
        if let Some(ns) = torch
            .as_ref()
            .and_then(|t| t["ns_per_element"][name].as_f64())
        {
            row.push(("PyTorch, ns", r3(ns).into()));
        }
        rep.row(name, &row);
    }
    rep.finish();
}
