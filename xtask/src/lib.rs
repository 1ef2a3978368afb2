//! Repository chores, run as `cargo xtask …` (an alias in `.cargo/config.toml`).
//!
//! `cargo xtask readme` regenerates every generated block of [`DOCUMENTS`] from the
//! `bench-results/*.json` its marker names (see [`blocks`]), so that each figure the README
//! quotes is formatted from the file that `scripts/bench.sh` wrote; `--check` changes nothing
//! and fails, naming each block, when a document differs from what would be generated.

pub mod bench;
pub mod blocks;
pub mod fmt;
mod templates;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

pub use bench::Sources;
pub use blocks::Stale;

/// The documents with generated blocks, relative to the workspace root.
pub const DOCUMENTS: &[&str] = &["README.md", "docs/figures.md"];

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The documents with their blocks regenerated.
#[derive(Debug)]
pub struct Generated {
    /// Each document's path and regenerated text, in the order given.
    pub documents: Vec<(String, String)>,
    /// The blocks whose text changed.
    pub stale: Vec<Stale>,
}

/// Regenerate the blocks of `documents` (path, text) from `sources`. Errors: a block whose
/// template or file does not exist, a template that no document uses, and any missing row or
/// field (naming the file and the row).
pub fn generate(documents: &[(String, String)], sources: &Sources) -> Result<Generated> {
    let mut out = Generated {
        documents: Vec::new(),
        stale: Vec::new(),
    };
    for (doc, text) in documents {
        let (text, stale) = blocks::regenerate(doc, text, |id| {
            let template = templates::TEMPLATES
                .iter()
                .find(|t| t.file == id.file && t.name == id.name)
                .ok_or_else(|| {
                    let names: Vec<String> = templates::TEMPLATES
                        .iter()
                        .map(|t| format!("{}#{}", t.file, t.name))
                        .collect();
                    anyhow!("no template {id}; there are {}", names.join(", "))
                })?;
            template.render(&sources.get(&id.file)?, doc)
        })?;
        out.documents.push((doc.clone(), text));
        out.stale.extend(stale);
    }
    for t in templates::TEMPLATES {
        let used = documents
            .iter()
            .flat_map(|(_, text)| blocks::ids(text))
            .any(|id| id.file == t.file && id.name == t.name);
        if !used {
            bail!(
                "template {}#{} is used by none of {}: add its block or remove it",
                t.file,
                t.name,
                DOCUMENTS.join(", ")
            );
        }
    }
    Ok(out)
}

/// Read [`DOCUMENTS`] under `root`.
pub fn read_documents(root: &Path) -> Result<Vec<(String, String)>> {
    DOCUMENTS
        .iter()
        .map(|doc| {
            let text = std::fs::read_to_string(root.join(doc))
                .with_context(|| format!("reading {doc}"))?;
            Ok((doc.to_string(), text))
        })
        .collect()
}

/// `cargo xtask readme`: regenerate the documents' blocks under `root`, or with `check`,
/// fail when any differs (each difference printed to standard error).
pub fn readme(root: &Path, check: bool) -> Result<()> {
    let generated = generate(&read_documents(root)?, &Sources::load(root)?)?;
    if check {
        for stale in &generated.stale {
            eprintln!("{stale}");
        }
        if !generated.stale.is_empty() {
            bail!(
                "{} generated block(s) differ from bench-results/: run `cargo xtask readme` \
                 (or scripts/readme.sh) and commit the result",
                generated.stale.len()
            );
        }
        return Ok(());
    }
    for (doc, text) in &generated.documents {
        let n = generated.stale.iter().filter(|s| &s.doc == doc).count();
        if n > 0 {
            std::fs::write(root.join(doc), text).with_context(|| format!("writing {doc}"))?;
        }
        println!("{doc}: {n} block(s) regenerated");
    }
    Ok(())
}
