//! The figures in README.md and docs/*.md are the ones in bench-results/, and their transcripts
//! the files of docs/transcripts/: the check that `cargo xtask readme --check` runs, on this
//! repository, and proof that it can fail.

use anyhow::{Context, Result};
use serde_json::Value;
use xtask::{Sources, Transcripts, blocks, generate, read_documents, workspace_root};

/// Each document's path and text.
type Documents = Vec<(String, String)>;

fn repository() -> Result<(Documents, Sources, Transcripts)> {
    let root = workspace_root();
    Ok((
        read_documents(&root)?,
        Sources::load(&root)?,
        Transcripts::load(&root)?,
    ))
}

/// The rows of `file`, to change them.
fn rows<'a>(sources: &'a mut Sources, file: &str) -> Result<&'a mut Vec<Value>> {
    sources
        .json_mut(file)
        .and_then(|j| j.get_mut("rows"))
        .and_then(Value::as_array_mut)
        .with_context(|| format!("{file} has no rows"))
}

fn row<'a>(rows: &'a mut [Value], label: &str) -> Result<&'a mut serde_json::Map<String, Value>> {
    rows.iter_mut()
        .filter_map(Value::as_object_mut)
        .find(|r| r.get("label").and_then(Value::as_str) == Some(label))
        .with_context(|| format!("no row {label}"))
}

#[test]
fn the_documents_say_what_bench_results_say() -> Result<()> {
    let (documents, sources, transcripts) = repository()?;
    let generated = generate(&documents, &sources, &transcripts)?;
    let stale: Vec<String> = generated.stale.iter().map(ToString::to_string).collect();
    assert!(
        stale.is_empty(),
        "out of date: run `cargo xtask readme` (scripts/readme.sh)\n{}",
        stale.join("\n")
    );
    Ok(())
}

#[test]
fn a_changed_figure_makes_the_check_fail_and_names_its_block() -> Result<()> {
    let (documents, mut sources, transcripts) = repository()?;
    let rows = rows(&mut sources, "bench-results/replay.json")?;
    row(rows, "segment 2: replay verify --segment 2")?
        .insert("ratio to training".into(), 7.777.into());
    let generated = generate(&documents, &sources, &transcripts)?;
    let stale: Vec<String> = generated
        .stale
        .iter()
        .map(|s| format!("{}: {}", s.doc, s.block))
        .collect();
    assert_eq!(stale, ["README.md: bench-results/replay.json#verify"]);
    let diff = &generated.stale[0].diff;
    assert!(
        diff.lines()
            .any(|l| l.starts_with("- | segment 2: replay verify")),
        "{diff}"
    );
    assert!(
        diff.lines()
            .any(|l| l.starts_with("+ | segment 2: replay verify") && l.ends_with("| 7.777× |")),
        "{diff}"
    );
    let message = generated.stale[0].to_string();
    assert!(message.starts_with("README.md:"), "{message}");
    assert!(
        message.contains("block bench-results/replay.json#verify differs"),
        "{message}"
    );
    // Regenerating writes the new figure, after which the check passes.
    let again = generate(&generated.documents, &sources, &transcripts)?;
    assert!(again.stale.is_empty());
    assert!(again.documents[0].1.contains("| 7.777× |"));
    Ok(())
}

#[test]
fn a_hand_edited_figure_makes_the_check_fail() -> Result<()> {
    let (mut documents, sources, transcripts) = repository()?;
    let readme = &mut documents[0].1;
    let marker = blocks::begin_marker("bench-results/versus_pytorch.json", "table");
    let start = readme.find(&marker).context("no versus_pytorch block")?;
    let row = start
        + readme[start..]
            .find("| this engine")
            .context("no engine row")?;
    let digit = row
        + readme[row..]
            .find(|c: char| c.is_ascii_digit())
            .context("no figure")?;
    let edited = if &readme[digit..=digit] == "9" {
        "1"
    } else {
        "9"
    };
    readme.replace_range(digit..=digit, edited);
    let stale: Vec<String> = generate(&documents, &sources, &transcripts)?
        .stale
        .iter()
        .map(|s| s.block.to_string())
        .collect();
    assert_eq!(stale, ["bench-results/versus_pytorch.json#table"]);
    Ok(())
}

#[test]
fn a_missing_row_or_field_is_an_error_naming_the_file_and_the_label() -> Result<()> {
    let (documents, sources, transcripts) = repository()?;

    let mut missing_row = sources.clone();
    rows(&mut missing_row, "bench-results/replay.json")?.retain(|r| {
        r.get("label").and_then(Value::as_str) != Some("raw checkpoints: replay check")
    });
    let err = generate(&documents, &missing_row, &transcripts)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        err.contains(
            "bench-results/replay.json: no row labelled \"raw checkpoints: replay check\""
        ),
        "{err}"
    );
    assert!(err.starts_with("README.md:"), "{err}");

    let mut missing_field = sources.clone();
    let rows = rows(&mut missing_field, "bench-results/versus_pytorch.json")?;
    row(rows, "engine (portable numerics), 2 thread(s)")?.remove("ms/step");
    let err = generate(&documents, &missing_field, &transcripts)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        err.contains(
            "bench-results/versus_pytorch.json, row \"engine (portable numerics), 2 thread(s)\": \
             no number \"ms/step\""
        ),
        "{err}"
    );
    Ok(())
}

/// Whether `word` reads as a measured figure: `1.29×`, `65.7`, `40%`, `2,334`, `±15%`.
fn is_figure(word: &str) -> bool {
    let w = word.trim_matches(|c: char| "()[],;:.*_`".contains(c));
    let w = w.trim_start_matches(['±', '−', '-', '~', '≈']);
    let (w, unit) = match w.strip_suffix(['×', '%']) {
        Some(n) => (n, true),
        None => (w, false),
    };
    let (int, frac) = w.split_once('.').unwrap_or((w, ""));
    let int_ok = !int.is_empty()
        && int.split(',').enumerate().all(|(i, g)| {
            !g.is_empty()
                && g.len() <= 3
                && (i == 0 || g.len() == 3)
                && g.chars().all(|c| c.is_ascii_digit())
        });
    let frac_ok = frac.chars().all(|c| c.is_ascii_digit());
    int_ok && frac_ok && (unit || !frac.is_empty() || int.contains(','))
}

#[test]
fn figures_outside_generated_blocks_are_caught() -> Result<()> {
    for figure in [
        "1.06×",
        "(65.7",
        "40%",
        "2,334",
        "±15%",
        "0.98×)",
        "−5%",
        "**0.69×**",
    ] {
        assert!(is_figure(figure), "{figure}");
    }
    for word in [
        "2", "8th", "256", "§3.3.2", "0.5.4", "zstd-3", "BLAKE3", "100`", "rank-8",
    ] {
        assert!(!is_figure(word), "{word}");
    }
    let (documents, _, _) = repository()?;
    for (doc, text) in &documents {
        // Outside the generated blocks, in the documents' parts about figures (the README's
        // Measured figures, all of docs/figures.md; the guide quotes measurements in prose).
        let (bare, _) = blocks::regenerate(doc, text, |_| Ok(String::new()))?;
        let section = match doc.as_str() {
            "README.md" => {
                let start = bare
                    .find("\n## Measured figures\n")
                    .context("no Measured figures")?;
                let end = bare[start + 1..]
                    .find("\n## ")
                    .map_or(bare.len(), |e| start + 1 + e);
                &bare[start..end]
            }
            "docs/figures.md" => bare.as_str(),
            _ => continue,
        };
        let mut fenced = false;
        for line in section.lines() {
            fenced ^= line.trim_start().starts_with("```");
            let figures: Vec<&str> = line.split_whitespace().filter(|w| is_figure(w)).collect();
            assert!(
                fenced || figures.is_empty(),
                "{doc}: {figures:?} outside a generated block, in \"{line}\": move it into a template"
            );
        }
    }
    Ok(())
}

#[test]
fn every_table_renders_as_one() -> Result<()> {
    use pulldown_cmark::{Event, Options, Parser, Tag};
    let (documents, _, _) = repository()?;
    let mut all = 0;
    for (doc, text) in &documents {
        let delimiters = text
            .lines()
            .filter(|l| l.trim_start().starts_with("|---"))
            .count();
        let tables = Parser::new_ext(text, Options::ENABLE_TABLES)
            .filter(|e| matches!(e, Event::Start(Tag::Table(_))))
            .count();
        assert_eq!(tables, delimiters, "{doc}: a table does not render as one");
        all += tables;
    }
    assert!(all > 0, "no tables at all");
    Ok(())
}

/// The transcript `file` of `documents` as the document quotes it (the block's body).
fn quoted<'a>(documents: &'a [(String, String)], file: &str) -> Result<(&'a str, &'a str)> {
    let marker = blocks::transcript_marker(file);
    documents
        .iter()
        .find_map(|(doc, text)| {
            let start = text.find(&marker)? + marker.len();
            let end = start + text[start..].find("<!-- end transcript -->")?;
            Some((doc.as_str(), &text[start..end]))
        })
        .with_context(|| format!("no block quotes {file}"))
}

#[test]
fn every_transcript_is_quoted_exactly_in_a_text_code_block() -> Result<()> {
    let (documents, _, transcripts) = repository()?;
    let names = transcripts.names();
    assert!(names.len() >= 8, "{names:?}");
    for file in names {
        let (_, body) = quoted(&documents, file)?;
        let text = transcripts.get(file)?;
        assert_eq!(body, format!("\n\n```text\n{text}```\n\n"), "{file}");
        assert!(text.ends_with('\n') && !text.contains("\n\n\n"), "{file}");
    }
    Ok(())
}

#[test]
fn a_changed_transcript_makes_the_check_fail_and_names_its_block() -> Result<()> {
    let (documents, sources, mut transcripts) = repository()?;
    let file = "docs/transcripts/verify.txt";
    let text = transcripts
        .get(file)?
        .replace("verdict: ok (exit 0)", "verdict: ok (exit 7)");
    transcripts.insert(file, &text);
    let generated = generate(&documents, &sources, &transcripts)?;
    let stale: Vec<String> = generated
        .stale
        .iter()
        .map(|s| format!("{}: {}", s.doc, s.block))
        .collect();
    assert_eq!(stale, ["README.md: docs/transcripts/verify.txt"]);
    let diff = &generated.stale[0].diff;
    assert_eq!(
        diff, "- verdict: ok (exit 0)\n+ verdict: ok (exit 7)\n",
        "{diff}"
    );
    let message = generated.stale[0].to_string();
    assert!(
        message.starts_with("README.md:")
            && message.contains("transcript block docs/transcripts/verify.txt differs"),
        "{message}"
    );
    // Regenerating copies the new transcript in, after which the check passes.
    let again = generate(&generated.documents, &sources, &transcripts)?;
    assert!(again.stale.is_empty());
    assert!(again.documents[0].1.contains("verdict: ok (exit 7)"));
    Ok(())
}

#[test]
fn a_hand_edited_transcript_makes_the_check_fail() -> Result<()> {
    let (mut documents, sources, transcripts) = repository()?;
    let file = "docs/transcripts/rollback.txt";
    let (doc, body) = quoted(&documents, file)?;
    let (doc, body) = (doc.to_string(), body.to_string());
    let edited = body.replacen("verdict: verified", "verdict: ok", 1);
    assert_ne!(edited, body);
    let text = &mut documents
        .iter_mut()
        .find(|(d, _)| *d == doc)
        .context("no document")?
        .1;
    *text = text.replacen(&body, &edited, 1);
    let stale: Vec<String> = generate(&documents, &sources, &transcripts)?
        .stale
        .iter()
        .map(|s| format!("{}: {}", s.doc, s.block))
        .collect();
    assert_eq!(stale, [format!("{doc}: {file}")]);
    Ok(())
}

#[test]
fn a_missing_or_unquoted_transcript_file_is_an_error_naming_it() -> Result<()> {
    let (documents, sources, transcripts) = repository()?;

    let mut missing = transcripts.clone();
    assert!(missing.remove("docs/transcripts/demo.txt"));
    let err = generate(&documents, &sources, &missing)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.starts_with("README.md:"), "{err}");
    assert!(
        err.contains(
            "generating block docs/transcripts/demo.txt: docs/transcripts/demo.txt: no such file"
        ),
        "{err}"
    );

    let mut unquoted = transcripts.clone();
    unquoted.insert("docs/transcripts/unquoted.txt", "$ replay check\n");
    let err = generate(&documents, &sources, &unquoted)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        err.starts_with("transcript docs/transcripts/unquoted.txt is quoted by none of README.md"),
        "{err}"
    );
    Ok(())
}
