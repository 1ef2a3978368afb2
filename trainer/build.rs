//! Records the compiler and target in the binary, for the environment fingerprint.

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TRAINER_RUSTC_VERSION={version}");
    println!(
        "cargo:rustc-env=TRAINER_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    println!(
        "cargo:rustc-env=TRAINER_CUDARC_CUDA_VERSION={}",
        std::env::var("CUDARC_CUDA_VERSION").unwrap_or_else(|_| "unset".into())
    );
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-env-changed=CUDARC_CUDA_VERSION");
}
