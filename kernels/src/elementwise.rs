//! `libm`'s `expf` and `erff`, and the functions the training step builds on them (GELU and its
//! derivative, the logistic sigmoid), evaluated several elements at a time with **the same bits
//! as `libm`** element by element.
//!
//! burn-flex computes every transcendental function of a tensor with the pure-Rust `libm` crate,
//! one element at a time (vendor/README.md): the same bits on every CPU, but a branchy scalar
//! routine per element. The functions here evaluate, in each vector lane, the very IEEE-754
//! operations `libm`'s scalar routine would evaluate for that lane's input, in the same order and
//! with no fused multiply-add (each product and sum is rounded on its own, as in `libm`); branches
//! become per-lane selections between results or coefficients. Two rewrites make the branches
//! share one evaluation, and neither changes a bit:
//!
//! * a polynomial with fewer coefficients is evaluated in Horner form padded with zeros
//!   (`c + w·0 = c` exactly for finite `w`), so the two rational approximations of `erff` below
//!   1.25 share one evaluation, and those above 1.25 another;
//! * `expf`'s reduction `k = 0` (for |x| ≤ ½ln2) is its general reduction with `k = 0`
//!   (`x − 0·ln2 = x`), and its result is scaled by `2^k` with one multiplication, which is what
//!   `scalbnf` does for the exponents that occur here.
//!
//! `expf` of x ≤ −103.97 (masked attention scores) is +0, as in `libm`. Inputs in rare ranges
//! (NaN, `expf` of x ≥ 87.34 or of −103.97 < x ≤ −87.34, where the result leaves the normal
//! range, `erff` of |x| < 2⁻²⁸ or |x| ≥ 6) are handed to `libm` itself, lane by lane.
//! `tests/elementwise.rs` compares every function with `libm` on every `f32` pattern of a
//! stride through the whole bit space, at every vector width that runs on the machine; the
//! exhaustive comparison (all 2³² inputs) is the ignored test of the same file.

use pulp::{Simd, WithSimd, bytemuck};

/// An element-wise function of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    /// `libm::expf`.
    Exp,
    /// `libm::erff`.
    Erf,
    /// GELU with the exact error function: `0.5·x·(1 + erf(x / √2))`, as burn-flex spells it.
    Gelu,
    /// The logistic sigmoid as burn-flex spells it: `1 / (1 + exp(−x))` for `x ≥ 0`, else
    /// `e / (1 + e)` with `e = exp(x)`.
    Sigmoid,
}

impl Unary {
    /// Replace every element of `x` with the function's value, on the widest vectors this CPU
    /// has (the bits do not depend on the width).
    pub fn apply(self, x: &mut [f32]) {
        pulp::Arch::new().dispatch(UnaryTask { f: self, x });
    }

    /// [`Unary::apply`] on the instruction set `simd`; the tests use it to run each width.
    pub fn apply_on<S: Simd>(self, simd: S, x: &mut [f32]) {
        simd.vectorize(UnaryTask { f: self, x });
    }

    /// The function of one element, from `libm` (the definition the vectors reproduce).
    pub fn scalar(self, x: f32) -> f32 {
        match self {
            Unary::Exp => libm::expf(x),
            Unary::Erf => libm::erff(x),
            Unary::Gelu => 0.5 * x * (1.0 + libm::erff(x / core::f32::consts::SQRT_2)),
            Unary::Sigmoid => {
                if x >= 0.0 {
                    1.0 / (1.0 + libm::expf(-x))
                } else {
                    let e = libm::expf(x);
                    e / (1.0 + e)
                }
            }
        }
    }

    #[inline(always)]
    fn vector<S: Simd>(self, s: S, x: S::f32s) -> (S::f32s, S::m32s) {
        match self {
            Unary::Exp => (exp(s, x), exp_outside(s, x)),
            Unary::Erf => (erf(s, x), erf_outside(s, x)),
            Unary::Gelu => {
                let e = s.div_f32s(x, s.splat_f32s(core::f32::consts::SQRT_2));
                let y = s.mul_f32s(
                    s.mul_f32s(s.splat_f32s(0.5), x),
                    s.add_f32s(s.splat_f32s(1.0), erf(s, e)),
                );
                (y, erf_outside(s, e))
            }
            Unary::Sigmoid => {
                // exp(−|x|) is exp(−x) for x ≥ 0 and exp(x) below.
                let e = s.neg_f32s(s.abs_f32s(x));
                let ex = exp(s, e);
                let one_plus = s.add_f32s(s.splat_f32s(1.0), ex);
                let y = s.select_f32s(
                    s.greater_than_or_equal_f32s(x, s.splat_f32s(0.0)),
                    s.div_f32s(s.splat_f32s(1.0), one_plus),
                    s.div_f32s(ex, one_plus),
                );
                (y, exp_outside(s, e))
            }
        }
    }
}

/// The derivative of [`Unary::Gelu`] times an incoming gradient, as burn-flex spells it:
/// `g · (cdf + x·pdf)` with `cdf = 0.5·(1 + erf(x / √2))` and
/// `pdf = (1 / √(2π)) · exp(−0.5·x·x)`. Writes the result over `g`.
///
/// # Panics
/// When `x` and `g` differ in length.
pub fn gelu_backward(x: &[f32], g: &mut [f32]) {
    pulp::Arch::new().dispatch(GeluBackward { x, g });
}

/// [`gelu_backward`] on the instruction set `simd`.
pub fn gelu_backward_on<S: Simd>(simd: S, x: &[f32], g: &mut [f32]) {
    simd.vectorize(GeluBackward { x, g });
}

/// [`gelu_backward`] of one element, from `libm`.
pub fn gelu_backward_scalar(x: f32, g: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(x / core::f32::consts::SQRT_2));
    let pdf = inv_sqrt_2pi() * libm::expf(-0.5 * x * x);
    g * (cdf + x * pdf)
}

/// `1 / √(2π)` as burn-flex computes it (at run time, in `f32`).
#[inline(always)]
fn inv_sqrt_2pi() -> f32 {
    1.0 / (2.0 * core::f32::consts::PI).sqrt()
}

struct UnaryTask<'a> {
    f: Unary,
    x: &'a mut [f32],
}

impl WithSimd for UnaryTask<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let UnaryTask { f, x } = self;
        let (head, tail) = S::as_mut_simd_f32s(x);
        for v in head {
            *v = unary_vector(s, f, *v);
        }
        if !tail.is_empty() {
            let y = unary_vector(s, f, s.partial_load_f32s(tail));
            s.partial_store_f32s(tail, y);
        }
    }
}

struct GeluBackward<'a> {
    x: &'a [f32],
    g: &'a mut [f32],
}

impl WithSimd for GeluBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let GeluBackward { x, g } = self;
        assert_eq!(
            x.len(),
            g.len(),
            "gelu_backward: {} inputs, {} gradients",
            x.len(),
            g.len()
        );
        let (xh, xt) = S::as_simd_f32s(x);
        let (gh, gt) = S::as_mut_simd_f32s(g);
        for (g, x) in gh.iter_mut().zip(xh) {
            *g = gelu_backward_vector(s, *x, *g);
        }
        if !gt.is_empty() {
            let y = gelu_backward_vector(s, s.partial_load_f32s(xt), s.partial_load_f32s(gt));
            s.partial_store_f32s(gt, y);
        }
    }
}

/// [`Unary`] of one vector, the rare lanes from `libm`.
#[inline(always)]
fn unary_vector<S: Simd>(s: S, f: Unary, v: S::f32s) -> S::f32s {
    let (y, outside) = f.vector(s, v);
    patch(s, y, outside, |i| f.scalar(lanes::<S>(&v)[i]))
}

/// [`gelu_backward`] of one vector, the rare lanes from `libm`.
#[inline(always)]
fn gelu_backward_vector<S: Simd>(s: S, x: S::f32s, g: S::f32s) -> S::f32s {
    let e = s.div_f32s(x, s.splat_f32s(core::f32::consts::SQRT_2));
    let cdf = s.mul_f32s(s.splat_f32s(0.5), s.add_f32s(s.splat_f32s(1.0), erf(s, e)));
    let a = s.mul_f32s(s.mul_f32s(s.splat_f32s(-0.5), x), x);
    let pdf = s.mul_f32s(s.splat_f32s(inv_sqrt_2pi()), exp(s, a));
    let y = s.mul_f32s(g, s.add_f32s(cdf, s.mul_f32s(x, pdf)));
    let outside = s.or_m32s(erf_outside(s, e), exp_outside(s, a));
    patch(s, y, outside, |i| {
        gelu_backward_scalar(lanes::<S>(&x)[i], lanes::<S>(&g)[i])
    })
}

/// The lanes of a vector.
#[inline(always)]
fn lanes<S: Simd>(v: &S::f32s) -> &[f32] {
    bytemuck::cast_slice(core::slice::from_ref(v))
}

/// `y` with the lanes flagged in `outside` recomputed by `redo(lane)`.
#[inline(always)]
fn patch<S: Simd>(s: S, mut y: S::f32s, outside: S::m32s, redo: impl Fn(usize) -> f32) -> S::f32s {
    if s.first_true_m32s(outside) == S::F32_LANES {
        return y;
    }
    let flags = s.select_u32s(outside, s.splat_u32s(1), s.splat_u32s(0));
    let flags: &[u32] = bytemuck::cast_slice(core::slice::from_ref(&flags));
    let out: &mut [f32] = bytemuck::cast_slice_mut(core::slice::from_mut(&mut y));
    for (i, (y, &flag)) in out.iter_mut().zip(flags).enumerate() {
        if flag != 0 {
            *y = redo(i);
        }
    }
    y
}

/// `f32::from_bits` for constants.
const fn f(bits: u32) -> f32 {
    f32::from_bits(bits)
}

// `expf` (libm's src/math/expf.rs, from FreeBSD's e_expf.c); constants by their bits, as the
// source's comments give them.
const EXP_LN2_HI: f32 = f(0x3f317200);
const EXP_LN2_LO: f32 = f(0x35bfbe8e);
const EXP_INV_LN2: f32 = f(0x3fb8aa3b);
const EXP_P1: f32 = f(0x3e2aaa8f);
const EXP_P2: f32 = f(0xbb355215);
/// |x| from which `expf` leaves its main path (overflow, underflow, NaN): 87.33655.
const EXP_LIMIT: f32 = f(0x42aeac50);
/// |x| above which the reduction uses `k = trunc(x/ln2 ± 0.5)`: 1.5·ln2.
const EXP_K_ROUNDED: f32 = f(0x3f851592);
/// |x| above which `k = ±1`: 0.5·ln2.
const EXP_K_ONE: f32 = f(0x3eb17218);
/// |x| up to which `expf(x) = 1 + x`: 2⁻¹⁴.
const EXP_TINY: f32 = f(0x39000000);

/// x at or below which `expf` is +0: −103.972084 (−∞ included).
const EXP_ZERO: f32 = -f(0x42cff1b5);

/// Lanes where [`exp`] is not `expf`: 87.33655 ≤ |x| except where x ≤ −103.972084, or NaN.
#[inline(always)]
fn exp_outside<S: Simd>(s: S, x: S::f32s) -> S::m32s {
    s.not_m32s(s.or_m32s(
        s.less_than_f32s(s.abs_f32s(x), s.splat_f32s(EXP_LIMIT)),
        s.less_than_or_equal_f32s(x, s.splat_f32s(EXP_ZERO)),
    ))
}

/// `libm::expf` in every lane where [`exp_outside`] is false (masked attention scores, far
/// below zero, included).
#[inline(always)]
fn exp<S: Simd>(s: S, x: S::f32s) -> S::f32s {
    let ax = s.abs_f32s(x);
    let negative = s.less_than_f32s(x, s.splat_f32s(0.0));
    let zero = s.splat_f32s(0.0);
    let one = s.splat_f32s(1.0);
    // k = (INV_LN2·x + (x < 0 ? −0.5 : 0.5)) as i32 (truncation), here below 2⁸ in magnitude.
    let t = s.add_f32s(
        s.mul_f32s(s.splat_f32s(EXP_INV_LN2), x),
        s.select_f32s(negative, s.splat_f32s(-0.5), s.splat_f32s(0.5)),
    );
    let kf = s.select_f32s(
        s.greater_than_f32s(ax, s.splat_f32s(EXP_K_ROUNDED)),
        truncate(s, t),
        s.select_f32s(
            s.greater_than_f32s(ax, s.splat_f32s(EXP_K_ONE)),
            s.select_f32s(negative, s.splat_f32s(-1.0), one),
            zero,
        ),
    );
    let hi = s.sub_f32s(x, s.mul_f32s(kf, s.splat_f32s(EXP_LN2_HI)));
    let lo = s.mul_f32s(kf, s.splat_f32s(EXP_LN2_LO));
    let r = s.sub_f32s(hi, lo);
    let rr = s.mul_f32s(r, r);
    let c = s.sub_f32s(
        r,
        s.mul_f32s(
            rr,
            s.add_f32s(s.splat_f32s(EXP_P1), s.mul_f32s(rr, s.splat_f32s(EXP_P2))),
        ),
    );
    let q = s.div_f32s(s.mul_f32s(r, c), s.sub_f32s(s.splat_f32s(2.0), c));
    let y = s.add_f32s(one, s.add_f32s(s.sub_f32s(q, lo), hi));
    // scalbnf(y, k) for −126 ≤ k ≤ 127 is one multiplication by 2^k; 2^k's bits are
    // (k + 127)·2²³, and k + 127 is read from the bits of 2²³ + 127 + k (exact).
    let biased = s.transmute_u32s_f32s(s.add_f32s(kf, s.splat_f32s(8_388_735.0)));
    let exponent = s.sub_u32s(biased, s.splat_u32s(0x4b00_0000));
    let scale = s.transmute_f32s_u32s(s.mul_u32s(exponent, s.splat_u32s(1 << 23)));
    let y = s.mul_f32s(y, scale);
    let y = s.select_f32s(
        s.less_than_or_equal_f32s(ax, s.splat_f32s(EXP_TINY)),
        s.add_f32s(one, x),
        y,
    );
    s.select_f32s(
        s.less_than_or_equal_f32s(x, s.splat_f32s(EXP_ZERO)),
        zero,
        y,
    )
}

/// `t as i32 as f32` (truncation towards zero) for |t| < 2²².
#[inline(always)]
fn truncate<S: Simd>(s: S, t: S::f32s) -> S::f32s {
    let at = s.abs_f32s(t);
    let big = s.splat_f32s(8_388_608.0);
    // Round to the nearest integer (exact: |t| < 2²²), then step down where that went up.
    let nearest = s.sub_f32s(s.add_f32s(at, big), big);
    let floor = s.select_f32s(
        s.greater_than_f32s(nearest, at),
        s.sub_f32s(nearest, s.splat_f32s(1.0)),
        nearest,
    );
    s.select_f32s(
        s.less_than_f32s(t, s.splat_f32s(0.0)),
        s.neg_f32s(floor),
        floor,
    )
}

// `erff` (libm's src/math/erff.rs, from FreeBSD's s_erff.c); constants by their bits, as the
// source's comments give them.
const ERF_ONE_MINUS_ERX: f32 = 1.0 - f(0x3f58560b);
/// Numerator and denominator coefficients below 0.84375 (in x²), padded with zeros.
const ERF_PP: [f32; 7] = [
    f(0x3e0375d4),
    f(0xbea66beb),
    f(0xbce9528f),
    f(0xbbbd1489),
    f(0xb7c756b1),
    0.0,
    0.0,
];
const ERF_QQ: [f32; 6] = [
    f(0x3ecbbbce),
    f(0x3d852a63),
    f(0x3ba68116),
    f(0x390aee49),
    f(0xb684e21a),
    0.0,
];
/// The same in [0.84375, 1.25) (in |x| − 1).
const ERF_PA: [f32; 7] = [
    f(0xbb1acdc6),
    f(0x3ed46805),
    f(0xbebe9208),
    f(0x3ea2fe54),
    f(0xbde31cc2),
    f(0x3d1151b3),
    f(0xbb0df9c0),
];
const ERF_QA: [f32; 6] = [
    f(0x3dd9f331),
    f(0x3f0a5785),
    f(0x3d931ae7),
    f(0x3e013307),
    f(0x3c5f6e13),
    f(0x3c445aa3),
];
/// erfc's coefficients in [1.25, 1/0.35) (in 1/x²).
const ERF_RA: [f32; 8] = [
    f(0xbc21a093),
    f(0xbf31a0b7),
    f(0xc128f022),
    f(0xc2798057),
    f(0xc322658c),
    f(0xc3389ae7),
    f(0xc2a2932b),
    f(0xc11d077e),
];
const ERF_SA: [f32; 8] = [
    f(0x419d35ce),
    f(0x4309a863),
    f(0x43d9486f),
    f(0x442158c9),
    f(0x43d6810b),
    f(0x42d9451f),
    f(0x40d23f7c),
    f(0xbd777f97),
];
/// The same in [1/0.35, 6), padded with zeros.
const ERF_RB: [f32; 8] = [
    f(0xbc21a092),
    f(0xbf4c9dd4),
    f(0xc18e104b),
    f(0xc320a2ea),
    f(0xc41f6441),
    f(0xc480230b),
    f(0xc3f1c275),
    0.0,
];
const ERF_SB: [f32; 8] = [
    f(0x41f2b459),
    f(0x43a2e571),
    f(0x44c01759),
    f(0x4547fdbb),
    f(0x451f90ce),
    f(0x43ed43a7),
    f(0xc1b38712),
    0.0,
];
/// |x| below which `erff` uses its first rational approximation: 0.84375.
const ERF_SMALL: f32 = f(0x3f580000);
/// |x| below which it uses its second: 1.25.
const ERF_MIDDLE: f32 = f(0x3fa00000);
/// |x| below which erfc uses its first approximation: 1/0.35.
const ERF_LARGE: f32 = f(0x4036db6d);
/// |x| from which `erff` is ±(1 − 2⁻¹²⁰): 6.
const ERF_LIMIT: f32 = f(0x40c00000);
/// |x| below which `erff` is linear: 2⁻²⁸.
const ERF_TINY: f32 = f(0x31800000);

/// Lanes where [`erf`] is not `erff`: |x| < 2⁻²⁸, |x| ≥ 6, or NaN.
#[inline(always)]
fn erf_outside<S: Simd>(s: S, x: S::f32s) -> S::m32s {
    let ax = s.abs_f32s(x);
    s.not_m32s(s.and_m32s(
        s.greater_than_or_equal_f32s(ax, s.splat_f32s(ERF_TINY)),
        s.less_than_f32s(ax, s.splat_f32s(ERF_LIMIT)),
    ))
}

/// `c[0] + w·(c[1] + w·(… + w·c[n−1]))`, the coefficients chosen per lane.
#[inline(always)]
fn horner<S: Simd, const N: usize>(
    s: S,
    w: S::f32s,
    pick: S::m32s,
    if_true: &[f32; N],
    if_false: &[f32; N],
) -> S::f32s {
    let mut acc = s.select_f32s(
        pick,
        s.splat_f32s(if_true[N - 1]),
        s.splat_f32s(if_false[N - 1]),
    );
    for i in (0..N - 1).rev() {
        let c = s.select_f32s(pick, s.splat_f32s(if_true[i]), s.splat_f32s(if_false[i]));
        acc = s.add_f32s(c, s.mul_f32s(w, acc));
    }
    acc
}

/// `libm::erff` in every lane where [`erf_outside`] is false.
#[inline(always)]
fn erf<S: Simd>(s: S, x: S::f32s) -> S::f32s {
    let one = s.splat_f32s(1.0);
    let ax = s.abs_f32s(x);
    let small = s.less_than_f32s(ax, s.splat_f32s(ERF_SMALL));
    // Below 1.25: a rational function of x² (below 0.84375) or of |x| − 1.
    let w = s.select_f32s(small, s.mul_f32s(x, x), s.sub_f32s(ax, one));
    let p = horner(s, w, small, &ERF_PP, &ERF_PA);
    let q = s.add_f32s(one, s.mul_f32s(w, horner(s, w, small, &ERF_QQ, &ERF_QA)));
    let pq = s.div_f32s(p, q);
    let below_small = s.add_f32s(x, s.mul_f32s(x, pq));
    let erfc_middle = s.sub_f32s(s.splat_f32s(ERF_ONE_MINUS_ERX), pq);
    // From 1.25: erfc = exp(−z² − 0.5625)·exp((z − |x|)(z + |x|) + R/S) / |x|, z = |x| with
    // the low 13 bits of its significand cleared.
    let v = s.div_f32s(one, s.mul_f32s(ax, ax));
    let below_large = s.less_than_f32s(ax, s.splat_f32s(ERF_LARGE));
    let r = horner(s, v, below_large, &ERF_RA, &ERF_RB);
    let big_s = s.add_f32s(
        one,
        s.mul_f32s(v, horner(s, v, below_large, &ERF_SA, &ERF_SB)),
    );
    let z = s.transmute_f32s_u32s(s.and_u32s(s.transmute_u32s_f32s(ax), s.splat_u32s(0xffff_e000)));
    let e1 = exp(
        s,
        s.sub_f32s(s.mul_f32s(s.neg_f32s(z), z), s.splat_f32s(0.5625)),
    );
    let e2 = exp(
        s,
        s.add_f32s(
            s.mul_f32s(s.sub_f32s(z, ax), s.add_f32s(z, ax)),
            s.div_f32s(r, big_s),
        ),
    );
    let erfc_large = s.div_f32s(s.mul_f32s(e1, e2), ax);
    let erfc = s.select_f32s(
        s.less_than_f32s(ax, s.splat_f32s(ERF_MIDDLE)),
        erfc_middle,
        erfc_large,
    );
    let y = s.sub_f32s(one, erfc);
    let signed = s.select_f32s(s.less_than_f32s(x, s.splat_f32s(0.0)), s.neg_f32s(y), y);
    s.select_f32s(small, below_small, signed)
}
