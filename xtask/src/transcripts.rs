//! The transcripts that documents quote, `docs/transcripts/NAME.txt`: the output of real runs of
//! the commands, each command line written as `$ command` before what it printed, as
//! `scripts/transcripts.sh` writes them. A document quotes one in a transcript block (see
//! [`crate::blocks`]); `cargo xtask readme` copies the file in, and its check fails when a
//! block and its file differ.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow};

use crate::blocks::TRANSCRIPTS_DIR;

/// Every `docs/transcripts/*.txt`, keyed by its path relative to the workspace root
/// (`docs/transcripts/demo.txt`), the way a block's marker names it.
#[derive(Debug, Clone, Default)]
pub struct Transcripts {
    files: BTreeMap<String, String>,
}

impl Transcripts {
    /// Read every `*.txt` in `ROOT/docs/transcripts` (none when the directory does not exist).
    pub fn load(root: &Path) -> Result<Self> {
        let dir = root.join(TRANSCRIPTS_DIR);
        let mut files = BTreeMap::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "txt") {
                let name = format!(
                    "{TRANSCRIPTS_DIR}/{}",
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .context("a file name that is not UTF-8")?
                );
                let text =
                    std::fs::read_to_string(&path).with_context(|| format!("reading {name}"))?;
                files.insert(name, text);
            }
        }
        Ok(Transcripts { files })
    }

    /// The transcript in `file` (`docs/transcripts/NAME.txt`).
    pub fn get(&self, file: &str) -> Result<&str> {
        self.files.get(file).map(String::as_str).ok_or_else(|| {
            anyhow!(
                "{file}: no such file (scripts/transcripts.sh writes the transcripts; there are {})",
                self.names().join(", ")
            )
        })
    }

    /// The transcripts' paths, in order.
    pub fn names(&self) -> Vec<&str> {
        self.files.keys().map(String::as_str).collect()
    }

    /// Set the transcript `file` to `text` (tests use this to show that a check can fail).
    pub fn insert(&mut self, file: &str, text: &str) {
        self.files.insert(file.to_string(), text.to_string());
    }

    /// Forget the transcript `file`, as if it did not exist; whether it did.
    pub fn remove(&mut self, file: &str) -> bool {
        self.files.remove(file).is_some()
    }
}
