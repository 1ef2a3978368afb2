//! Repository chores, run as `cargo xtask …` (an alias in `.cargo/config.toml`).
//!
//! `cargo xtask readme` regenerates every generated block of the documents (README.md and
//! docs/*.md, see [`document_paths`]): each figures block from the `bench-results/*.json` its
//! marker names, so that each figure the README quotes is formatted from the file that
//! `scripts/bench.sh` wrote, and each transcript block from the `docs/transcripts/*.txt` its
//! marker names, which `scripts/transcripts.sh` writes from real runs (see [`blocks`]).
//! `--check` changes nothing and fails, naming each block, when a document differs from what
//! would be generated.

pub mod bench;
pub mod blocks;
pub mod fmt;
pub mod layers;
mod templates;
pub mod transcripts;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

pub use bench::Sources;
pub use blocks::Stale;
pub use transcripts::Transcripts;

/// The directory of the documents besides README.md, relative to the workspace root.
pub const DOCS_DIR: &str = "docs";

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The documents whose blocks are generated, relative to `root`: README.md, then every
/// `docs/*.md` in name order.
pub fn document_paths(root: &Path) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    let dir = root.join(DOCS_DIR);
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "md") {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .context("a file name that is not UTF-8")?;
            docs.push(format!("{DOCS_DIR}/{name}"));
        }
    }
    docs.sort();
    docs.insert(0, "README.md".to_string());
    Ok(docs)
}

/// The documents with their blocks regenerated.
#[derive(Debug)]
pub struct Generated {
    /// Each document's path and regenerated text, in the order given.
    pub documents: Vec<(String, String)>,
    /// The blocks whose text changed.
    pub stale: Vec<Stale>,
}

/// Regenerate the blocks of `documents` (path, text): figures from `sources`, transcripts from
/// `transcripts`. Errors: a block whose template or file does not exist (naming it), a template
/// or a transcript file that no document uses, and any missing row or field (naming the file
/// and the row).
pub fn generate(
    documents: &[(String, String)],
    sources: &Sources,
    transcripts: &Transcripts,
) -> Result<Generated> {
    let mut out = Generated {
        documents: Vec::new(),
        stale: Vec::new(),
    };
    for (doc, text) in documents {
        let (text, stale) = blocks::regenerate(doc, text, |id| match id.kind {
            blocks::Kind::Figures => {
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
            }
            blocks::Kind::Transcript => {
                blocks::transcript_body(&id.file, transcripts.get(&id.file)?)
            }
        })?;
        out.documents.push((doc.clone(), text));
        out.stale.extend(stale);
    }
    let names: Vec<&str> = documents.iter().map(|(doc, _)| doc.as_str()).collect();
    let used: Vec<blocks::BlockId> = documents
        .iter()
        .flat_map(|(_, text)| blocks::ids(text))
        .collect();
    for t in templates::TEMPLATES {
        if !used
            .iter()
            .any(|id| id.kind == blocks::Kind::Figures && id.file == t.file && id.name == t.name)
        {
            bail!(
                "template {}#{} is used by none of {}: add its block or remove it",
                t.file,
                t.name,
                names.join(", ")
            );
        }
    }
    for file in transcripts.names() {
        if !used
            .iter()
            .any(|id| id.kind == blocks::Kind::Transcript && id.file == file)
        {
            bail!(
                "transcript {file} is quoted by none of {}: add its block ({}) or remove it \
                 (and its part of scripts/transcripts.sh)",
                names.join(", "),
                blocks::transcript_marker(file)
            );
        }
    }
    Ok(out)
}

/// Read the documents of [`document_paths`] under `root`.
pub fn read_documents(root: &Path) -> Result<Vec<(String, String)>> {
    document_paths(root)?
        .into_iter()
        .map(|doc| {
            let text = std::fs::read_to_string(root.join(&doc))
                .with_context(|| format!("reading {doc}"))?;
            Ok((doc, text))
        })
        .collect()
}

/// `cargo xtask readme`: regenerate the documents' blocks under `root`, or with `check`,
/// fail when any differs (each difference printed to standard error).
pub fn readme(root: &Path, check: bool) -> Result<()> {
    let generated = generate(
        &read_documents(root)?,
        &Sources::load(root)?,
        &Transcripts::load(root)?,
    )?;
    if check {
        for stale in &generated.stale {
            eprintln!("{stale}");
        }
        if !generated.stale.is_empty() {
            bail!(
                "{} generated block(s) differ from bench-results/ or docs/transcripts/: run \
                 `cargo xtask readme` (or scripts/readme.sh) and commit the result",
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
