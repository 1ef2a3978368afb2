//! Read access to one benchmark's results, `bench-results/NAME.json` as `benches/src/lib.rs`
//! writes them: `{"benchmark", "context": {...}, "rows": [{"label", fields...}]}`. A missing
//! file, row or field is an error that names the file and the row's label, never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value};

/// Every `bench-results/*.json`, parsed, keyed by its path relative to the workspace root
/// (`bench-results/replay.json`), the way a block's marker names it.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    files: BTreeMap<String, Value>,
}

impl Sources {
    /// Read every `*.json` in `ROOT/bench-results`.
    pub fn load(root: &Path) -> Result<Self> {
        let dir = root.join("bench-results");
        let mut files = BTreeMap::new();
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let name = format!(
                    "bench-results/{}",
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .context("a file name that is not UTF-8")?
                );
                let text =
                    std::fs::read_to_string(&path).with_context(|| format!("reading {name}"))?;
                let json =
                    serde_json::from_str(&text).with_context(|| format!("parsing {name}"))?;
                files.insert(name, json);
            }
        }
        Ok(Sources { files })
    }

    /// The results in `file` (`bench-results/NAME.json`).
    pub fn get(&self, file: &str) -> Result<Bench<'_>> {
        let (file, json) = self
            .files
            .get_key_value(file)
            .ok_or_else(|| anyhow!("{file}: no such file"))?;
        Bench::new(file, json)
    }

    /// The parsed JSON of `file`, to change it (tests use this to show that a check can fail).
    pub fn json_mut(&mut self, file: &str) -> Option<&mut Value> {
        self.files.get_mut(file)
    }
}

/// One benchmark's results.
#[derive(Debug, Clone, Copy)]
pub struct Bench<'a> {
    file: &'a str,
    context: &'a Map<String, Value>,
    rows: &'a [Value],
}

impl<'a> Bench<'a> {
    fn new(file: &'a str, json: &'a Value) -> Result<Self> {
        let context = json
            .get("context")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("{file}: no \"context\" object"))?;
        let rows = json
            .get("rows")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("{file}: no \"rows\" array"))?;
        Ok(Bench {
            file,
            context,
            rows,
        })
    }

    /// The file's path, `bench-results/NAME.json`.
    pub fn file(&self) -> &'a str {
        self.file
    }

    /// The benchmark's context (threads, model, data sizes…), in the file's order.
    pub fn context(&self) -> &'a Map<String, Value> {
        self.context
    }

    /// A context value that is a string.
    pub fn context_str(&self, key: &str) -> Result<&'a str> {
        self.context
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{}: no string \"{key}\" in \"context\"", self.file))
    }

    /// A context value that is a number.
    pub fn context_num(&self, key: &str) -> Result<f64> {
        self.context
            .get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow!("{}: no number \"{key}\" in \"context\"", self.file))
    }

    /// Every row, in the file's order.
    pub fn all_rows(&self) -> Result<Vec<Row<'a>>> {
        self.rows
            .iter()
            .enumerate()
            .map(|(i, v)| Row::new(self.file, i, v))
            .collect()
    }

    /// The rows whose label matches `pattern` (`*` stands for any text), in the file's order;
    /// at least one.
    pub fn rows(&self, pattern: &str) -> Result<Vec<Row<'a>>> {
        let rows: Vec<Row<'a>> = self
            .all_rows()?
            .into_iter()
            .filter(|r| glob(pattern, r.label))
            .collect();
        if rows.is_empty() {
            bail!("{}: no row labelled \"{pattern}\"", self.file);
        }
        Ok(rows)
    }

    /// The one row whose label matches `pattern` (`*` stands for any text).
    pub fn row(&self, pattern: &str) -> Result<Row<'a>> {
        let rows = self.rows(pattern)?;
        match rows.as_slice() {
            [row] => Ok(*row),
            _ => bail!(
                "{}: {} rows labelled \"{pattern}\" where one was expected",
                self.file,
                rows.len()
            ),
        }
    }

    /// The rows that follow `parent` and are indented under it (`"  of which: …"` rows break a
    /// measurement down).
    pub fn children(&self, parent: &Row<'a>) -> Result<Vec<Row<'a>>> {
        Ok(self
            .all_rows()?
            .into_iter()
            .skip(parent.index + 1)
            .take_while(|r| r.label.starts_with(' '))
            .collect())
    }

    /// The nearest row before `row` whose label matches `pattern` (`*` stands for any text).
    pub fn preceding(&self, row: &Row<'a>, pattern: &str) -> Result<Row<'a>> {
        self.all_rows()?
            .into_iter()
            .take(row.index)
            .rev()
            .find(|r| glob(pattern, r.label))
            .ok_or_else(|| {
                anyhow!(
                    "{}: no row labelled \"{pattern}\" before \"{}\"",
                    self.file,
                    row.label
                )
            })
    }
}

/// One row of a benchmark's results.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    file: &'a str,
    index: usize,
    /// The row's label.
    pub label: &'a str,
    fields: &'a Map<String, Value>,
}

impl<'a> Row<'a> {
    fn new(file: &'a str, index: usize, value: &'a Value) -> Result<Self> {
        let fields = value
            .as_object()
            .ok_or_else(|| anyhow!("{file}: row {index} is not an object"))?;
        let label = fields
            .get("label")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{file}: row {index} has no \"label\""))?;
        Ok(Row {
            file,
            index,
            label,
            fields,
        })
    }

    /// Whether the row has a field named `field`.
    pub fn has(&self, field: &str) -> bool {
        self.fields.contains_key(field)
    }

    /// A numeric field.
    pub fn num(&self, field: &str) -> Result<f64> {
        self.fields
            .get(field)
            .and_then(Value::as_f64)
            .ok_or_else(|| {
                anyhow!(
                    "{}, row \"{}\": no number \"{field}\"",
                    self.file,
                    self.label
                )
            })
    }

    /// A text field.
    pub fn text(&self, field: &str) -> Result<&'a str> {
        self.fields
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{}, row \"{}\": no text \"{field}\"", self.file, self.label))
    }

    /// A yes/no field.
    pub fn flag(&self, field: &str) -> Result<bool> {
        self.fields
            .get(field)
            .and_then(Value::as_bool)
            .ok_or_else(|| {
                anyhow!(
                    "{}, row \"{}\": no true/false \"{field}\"",
                    self.file,
                    self.label
                )
            })
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any text (possibly none).
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(json: Value) -> Sources {
        let mut s = Sources::default();
        s.files.insert("bench-results/x.json".into(), json);
        s
    }

    #[test]
    fn glob_matches_stars_anywhere() {
        assert!(glob("a*c", "abc"));
        assert!(glob("a*c", "ac"));
        assert!(glob("*", ""));
        assert!(glob("x, * thread(s)", "x, 2 thread(s)"));
        assert!(!glob("a*c", "abd"));
        assert!(!glob("abc", "abcd"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("m-* last, full: Z*", "m-17 last, full: Z 0.5"));
    }

    #[test]
    fn a_missing_row_or_field_names_the_file_and_the_label() -> Result<()> {
        let s = sources(serde_json::json!({
            "benchmark": "x", "context": {"threads": 2},
            "rows": [{"label": "a", "s": 1.5}, {"label": "b", "ok": true}]
        }));
        let b = s.get("bench-results/x.json")?;
        assert_eq!(b.row("a")?.num("s")?, 1.5);
        assert!(b.row("b")?.flag("ok")?);
        let e = b.row("c").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("bench-results/x.json: no row labelled \"c\"")
        );
        let e = b.row("a")?.num("MB/s").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("bench-results/x.json, row \"a\": no number \"MB/s\"")
        );
        let e = b.row("*").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("bench-results/x.json: 2 rows labelled \"*\" where one was expected")
        );
        let e = b.context_str("model").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("bench-results/x.json: no string \"model\" in \"context\"")
        );
        let e = s.get("bench-results/y.json").err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("bench-results/y.json: no such file"));
        Ok(())
    }

    #[test]
    fn children_are_the_indented_rows_under_their_parent() -> Result<()> {
        let s = sources(serde_json::json!({
            "context": {},
            "rows": [
                {"label": "p", "ms": 1}, {"label": "  c", "ms": 2},
                {"label": "q", "ms": 3}, {"label": "  c", "ms": 4}, {"label": "  d", "ms": 5},
                {"label": "r"},
            ]
        }));
        let b = s.get("bench-results/x.json")?;
        let ms = |parent: &str| -> Result<Vec<f64>> {
            b.children(&b.row(parent)?)?
                .iter()
                .map(|c| c.num("ms"))
                .collect()
        };
        assert_eq!(ms("p")?, [2.0]);
        assert_eq!(ms("q")?, [4.0, 5.0]);
        assert_eq!(ms("r")?, Vec::<f64>::new());
        assert_eq!(b.preceding(&b.row("  d")?, "q")?.num("ms")?, 3.0);
        assert!(b.preceding(&b.row("p")?, "q").is_err());
        Ok(())
    }
}
