//! Regenerate the reference test vectors in `snapshot-format/tests/vectors/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    std::fs::create_dir_all(&dir)?;
    for f in snapshot_format::vectors::generate()? {
        std::fs::write(dir.join(f.name), &f.bytes)?;
        println!(
            "wrote {} ({} bytes)",
            dir.join(f.name).display(),
            f.bytes.len()
        );
    }
    Ok(())
}
