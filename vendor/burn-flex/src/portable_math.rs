//! Transcendental functions from one implementation (training-replay-verifier patch).
//!
//! Upstream burn-flex calls `f32::exp` and friends, which compile to calls into the host's C
//! math library (glibc's `expf`, with per-ISA variants chosen at load time): their last bits
//! can differ between C libraries, versions and CPUs. A bit-exact replay on another machine
//! needs every element computed the same everywhere, so every transcendental function on the
//! tensor paths goes through the pure-Rust `libm` crate instead, which uses IEEE-754 basic
//! operations only (no FMA, no table that depends on the CPU). `sqrt` stays: it is correctly
//! rounded by IEEE-754 on every target.

/// Portable transcendental functions of a float type.
pub(crate) trait Portable: Copy {
    fn pexp(self) -> Self;
    fn pln(self) -> Self;
    fn pln_1p(self) -> Self;
    fn ptanh(self) -> Self;
    fn psin(self) -> Self;
    fn pcos(self) -> Self;
    fn ptan(self) -> Self;
    fn pcosh(self) -> Self;
    fn psinh(self) -> Self;
    fn pacos(self) -> Self;
    fn pacosh(self) -> Self;
    fn pasin(self) -> Self;
    fn pasinh(self) -> Self;
    fn patan(self) -> Self;
    fn patanh(self) -> Self;
    fn ppowf(self, y: Self) -> Self;
    fn patan2(self, y: Self) -> Self;
}

macro_rules! portable {
    ($t:ty, $exp:path, $ln:path, $ln_1p:path, $tanh:path, $sin:path, $cos:path, $tan:path,
     $cosh:path, $sinh:path, $acos:path, $acosh:path, $asin:path, $asinh:path, $atan:path,
     $atanh:path, $pow:path, $atan2:path) => {
        impl Portable for $t {
            #[inline]
            fn pexp(self) -> Self { $exp(self) }
            #[inline]
            fn pln(self) -> Self { $ln(self) }
            #[inline]
            fn pln_1p(self) -> Self { $ln_1p(self) }
            #[inline]
            fn ptanh(self) -> Self { $tanh(self) }
            #[inline]
            fn psin(self) -> Self { $sin(self) }
            #[inline]
            fn pcos(self) -> Self { $cos(self) }
            #[inline]
            fn ptan(self) -> Self { $tan(self) }
            #[inline]
            fn pcosh(self) -> Self { $cosh(self) }
            #[inline]
            fn psinh(self) -> Self { $sinh(self) }
            #[inline]
            fn pacos(self) -> Self { $acos(self) }
            #[inline]
            fn pacosh(self) -> Self { $acosh(self) }
            #[inline]
            fn pasin(self) -> Self { $asin(self) }
            #[inline]
            fn pasinh(self) -> Self { $asinh(self) }
            #[inline]
            fn patan(self) -> Self { $atan(self) }
            #[inline]
            fn patanh(self) -> Self { $atanh(self) }
            #[inline]
            fn ppowf(self, y: Self) -> Self { $pow(self, y) }
            #[inline]
            fn patan2(self, y: Self) -> Self { $atan2(self, y) }
        }
    };
}

portable!(
    f32,
    libm::expf,
    libm::logf,
    libm::log1pf,
    libm::tanhf,
    libm::sinf,
    libm::cosf,
    libm::tanf,
    libm::coshf,
    libm::sinhf,
    libm::acosf,
    libm::acoshf,
    libm::asinf,
    libm::asinhf,
    libm::atanf,
    libm::atanhf,
    libm::powf,
    libm::atan2f
);
portable!(
    f64,
    libm::exp,
    libm::log,
    libm::log1p,
    libm::tanh,
    libm::sin,
    libm::cos,
    libm::tan,
    libm::cosh,
    libm::sinh,
    libm::acos,
    libm::acosh,
    libm::asin,
    libm::asinh,
    libm::atan,
    libm::atanh,
    libm::pow,
    libm::atan2
);
