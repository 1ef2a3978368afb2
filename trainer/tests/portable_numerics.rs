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

/// The matrix multiply's k-blocking is fixed, whatever the L1 cache of this machine.
#[test]
fn matmul_k_blocking_does_not_depend_on_the_cache() {
    assert_eq!(gemm_common::cache::PORTABLE_KC, 512);
    for (k, kc) in [(100, 100), (512, 512), (1024, 512), (1500, 500)] {
        let p = gemm_common::cache::kernel_params(64, 64, k, 16, 6, 4);
        assert_eq!(p.kc, kc, "k = {k}");
    }
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
