//! The modules of a crate and which import which: no module may reach itself through the
//! modules it uses (`cargo xtask layers`; a test runs it over every crate of the workspace).
//!
//! A module is a file (`lib.rs` and `main.rs` are the crate root, `x/mod.rs` is `x`). Module
//! `a` uses module `b` when code of `a` outside comments and outside its `#[cfg(test)]` part
//! names `crate::b…` (a path, or a `use crate::{…}` group) or `super::…` resolving to `b`; the
//! longest module path a name starts with is the module it names. A parent declaring a child
//! (`mod b;`) is not a use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The crates whose modules are checked.
pub const CRATES: [&str; 6] = [
    "snapshot-format",
    "run-store",
    "run-trust",
    "trainer",
    "replay",
    "xtask",
];

/// For each module of the crate whose sources are under `src`, the modules it uses.
pub fn module_graph(src: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut files = Vec::new();
    collect_files(src, &mut files)?;
    let mut names = BTreeMap::new();
    for path in &files {
        let rel = path.strip_prefix(src).unwrap_or(path).with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(
            parts.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            parts.pop();
        }
        names.insert(parts.join("::"), path.clone());
    }
    let known: BTreeSet<String> = names.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, path) in &names {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let uses = referenced_paths(module, &code_of(&text))
            .into_iter()
            .filter_map(|p| resolve(&known, &p))
            .filter(|m| m != module)
            .collect();
        graph.insert(module.clone(), uses);
    }
    Ok(graph)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let path = e.path();
        if e.file_type()?.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The code of a file that counts: its lines before `#[cfg(test)]`, comments left out.
fn code_of(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or("");
    before_tests
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module paths (relative to the crate root) that `code` of `module` names.
fn referenced_paths(module: &str, code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let path_chars = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let item = item.split_whitespace().next().unwrap_or("");
                if item.starts_with(|c: char| c.is_ascii_lowercase()) {
                    out.push(item.to_string());
                }
            }
        } else {
            let end = after.find(|c| !path_chars(c)).unwrap_or(after.len());
            out.push(after[..end].trim_end_matches(':').to_string());
        }
        rest = after;
    }
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let mut rest = code;
    while let Some(i) = rest.find("super::") {
        let before_ok = i == 0 || !rest[..i].ends_with(|c: char| path_chars(c));
        let after = &rest[i + "super::".len()..];
        let end = after.find(|c| !path_chars(c)).unwrap_or(after.len());
        if before_ok {
            let name = after[..end].trim_end_matches(':');
            out.push(if parent.is_empty() {
                name.to_string()
            } else {
                format!("{parent}::{name}")
            });
        }
        rest = after;
    }
    out
}

/// The longest known module that `path` starts with.
fn resolve(known: &BTreeSet<String>, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len())
        .rev()
        .map(|k| parts[..k].join("::"))
        .find(|candidate| known.contains(candidate))
}

/// The groups of two or more modules that reach each other through their uses (strongly
/// connected components), each sorted; none in a layered crate.
pub fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm, recursive: a crate has tens of modules.
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.graph.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.entry(v).or_insert(lw);
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.entry(v).or_insert(iw);
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// Every cycle of modules in the workspace's crates, as `crate: a -> b -> …` lines.
pub fn workspace_cycles(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for krate in CRATES {
        for component in cycles(&module_graph(&root.join(krate).join("src"))?) {
            out.push(format!("{krate}: {}", component.join(" <-> ")));
        }
    }
    Ok(out)
}
