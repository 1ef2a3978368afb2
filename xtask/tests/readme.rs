//! The figures in README.md and docs/figures.md are the ones in bench-results/: the check that
//! `cargo xtask readme --check` runs, on this repository, and proof that it can fail.

use anyhow::{Context, Result};
use serde_json::Value;
use xtask::{Sources, blocks, generate, read_documents, workspace_root};

fn repository() -> Result<(Vec<(String, String)>, Sources)> {
    let root = workspace_root();
    Ok((read_documents(&root)?, Sources::load(&root)?))
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
    let (documents, sources) = repository()?;
    let generated = generate(&documents, &sources)?;
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
    let (documents, mut sources) = repository()?;
    let rows = rows(&mut sources, "bench-results/replay.json")?;
    row(rows, "segment 2: replay verify --segment 2")?
        .insert("ratio to training".into(), 7.777.into());
    let generated = generate(&documents, &sources)?;
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
    let again = generate(&generated.documents, &sources)?;
    assert!(again.stale.is_empty());
    assert!(again.documents[0].1.contains("| 7.777× |"));
    Ok(())
}

#[test]
fn a_hand_edited_figure_makes_the_check_fail() -> Result<()> {
    let (mut documents, sources) = repository()?;
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
    let stale: Vec<String> = generate(&documents, &sources)?
        .stale
        .iter()
        .map(|s| s.block.to_string())
        .collect();
    assert_eq!(stale, ["bench-results/versus_pytorch.json#table"]);
    Ok(())
}

#[test]
fn a_missing_row_or_field_is_an_error_naming_the_file_and_the_label() -> Result<()> {
    let (documents, sources) = repository()?;

    let mut missing_row = sources.clone();
    rows(&mut missing_row, "bench-results/replay.json")?.retain(|r| {
        r.get("label").and_then(Value::as_str) != Some("raw checkpoints: replay check")
    });
    let err = generate(&documents, &missing_row)
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
    let err = generate(&documents, &missing_field)
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
    let (documents, _) = repository()?;
    for (doc, text) in &documents {
        // Outside the generated blocks, in the part of the document about figures.
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
            _ => bare.as_str(),
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
    let (documents, _) = repository()?;
    for (doc, text) in &documents {
        let delimiters = text
            .lines()
            .filter(|l| l.trim_start().starts_with("|---"))
            .count();
        let tables = Parser::new_ext(text, Options::ENABLE_TABLES)
            .filter(|e| matches!(e, Event::Start(Tag::Table(_))))
            .count();
        assert!(delimiters > 0, "{doc} has no tables");
        assert_eq!(tables, delimiters, "{doc}: a table does not render as one");
    }
    Ok(())
}
