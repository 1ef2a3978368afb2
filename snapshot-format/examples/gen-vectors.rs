//! Regenerate the reference test vectors in `specs/vectors/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/vectors");
    std::fs::create_dir_all(&dir)?;
    for f in snapshot_format::vectors::generate()? {
        let path = dir.join(f.name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &f.bytes)?;
        println!(
            "wrote {} ({} bytes)",
            dir.join(f.name).display(),
            f.bytes.len()
        );
    }
    Ok(())
}
