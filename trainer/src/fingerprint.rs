//! The environment fingerprint of this process: what a run's bits may depend on.

use snapshot_format::manifest::{EnvironmentFingerprint, GpuFingerprint};

use crate::config::NUMERICS_VERSION;

/// The burn version the engine is built against (pinned in the workspace manifest; a test
/// checks it against `Cargo.lock`).
pub const BURN_VERSION: &str = "0.21.0";

/// Instruction-set features that select kernels in the CPU backend and its matrix multiply,
/// as detected at run time.
pub fn cpu_features() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {
                $( if std::arch::is_x86_feature_detected!($f) { out.push($f.to_string()); } )*
            };
        }
        probe!(
            "sse2", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma", "f16c", "bmi1",
            "bmi2", "lzcnt", "movbe", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {
                $( if std::arch::is_aarch64_feature_detected!($f) { out.push($f.to_string()); } )*
            };
        }
        probe!("neon", "fp16", "sve", "sve2");
    }
    out.sort();
    out
}

/// The instruction-set level the CPU backend's kernels run at. On x86-64 it is what the SIMD
/// layer (macerator) dispatches on: `x86-64-v3` when the CPU has AVX2, FMA and their companions
/// (AVX-512 CPUs run the same reductions, `vendor/README.md`, and the matrix kernel at 16 lanes,
/// whose bits do not depend on the width), `x86-64-v2` with SSE4.2 only, `x86-64` below.
pub fn isa_level() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! all {
            ($($f:tt),*) => { true $(&& std::arch::is_x86_feature_detected!($f))* };
        }
        let v2 = all!("sse3", "ssse3", "sse4.1", "sse4.2", "popcnt");
        let v3 = v2 && all!("avx", "avx2", "bmi1", "bmi2", "fma", "lzcnt", "f16c");
        if v3 {
            return "x86-64-v3".into();
        }
        if v2 {
            return "x86-64-v2".into();
        }
        "x86-64".into()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

fn first_line_of_command(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8(text)
        .ok()?
        .lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

/// The C library and its version (recorded; no numerics come from it).
pub fn libc_version() -> String {
    if cfg!(target_env = "musl") {
        return "musl".into();
    }
    first_line_of_command("getconf", &["GNU_LIBC_VERSION"])
        .or_else(|| first_line_of_command("ldd", &["--version"]))
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn os() -> String {
    let pretty = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        });
    match pretty {
        Some(p) => format!("{} ({})", std::env::consts::OS, p),
        None => std::env::consts::OS.to_string(),
    }
}

/// The fingerprint of this process for `backend` on `device`.
pub fn current(backend: &str, device: &str, gpu: Option<GpuFingerprint>) -> EnvironmentFingerprint {
    EnvironmentFingerprint {
        backend: backend.to_string(),
        device: device.to_string(),
        burn_version: BURN_VERSION.to_string(),
        engine_build: engine_build(backend),
        target: env!("TRAINER_TARGET").to_string(),
        libc: libc_version(),
        isa_level: isa_level(),
        cpu_features: cpu_features(),
        cpu_model: cpu_model(),
        threads: rayon::current_num_threads() as u64,
        workers: 1,
        os: os(),
        rustc: env!("TRAINER_RUSTC_VERSION").to_string(),
        gpu,
    }
}

/// Numerics version and the compiled features of the backend.
pub fn engine_build(backend: &str) -> String {
    let features = match backend {
        "flex" => "simd, rayon; portable: 8-lane reductions, fixed-order matmul (KC 512), libm",
        "cuda" => "cubecl-cuda, no autotune",
        _ => "",
    };
    format!("numerics {NUMERICS_VERSION}; {backend} ({features})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_version_matches_the_lock_file() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
            .expect("Cargo.lock");
        let found: Vec<&str> = lock
            .split("[[package]]")
            .filter(|p| p.contains("\nname = \"burn\"\n"))
            .filter_map(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .collect();
        assert_eq!(found, [format!("\"{BURN_VERSION}\"")]);
    }

    #[test]
    fn fingerprint_is_stable_within_a_process_and_class_holds_what_changes_bits() {
        let a = current("flex", "cpu", None);
        let mut b = a.clone();
        // Threads, data-parallel workers, the CPU's model and extra features (AVX-512) and the C library change no
        // bit: the class ignores them.
        b.threads += 7;
        b.workers = 4;
        b.cpu_model = "another".into();
        b.cpu_features.push("avx512f".into());
        b.libc = "glibc 9.99".into();
        assert_eq!(a.class(), b.class());
        b.isa_level = "x86-64-v2".into();
        assert_ne!(a.class(), b.class());
        assert!(!a.cpu_features.is_empty());
        assert!(a.rustc.starts_with("rustc "));
    }
}
