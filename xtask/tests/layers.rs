//! Each crate's modules are layers: no module reaches itself through the modules it uses.

use std::collections::{BTreeMap, BTreeSet};

use xtask::layers::{cycles, module_graph, workspace_cycles};

#[test]
fn no_crate_has_modules_that_use_each_other() {
    let found = workspace_cycles(&xtask::workspace_root()).expect("read the crates");
    assert!(
        found.is_empty(),
        "modules that use each other:\n{}",
        found.join("\n")
    );
}

/// The check can fail: two files that name each other are found, as is a loop of three; a
/// `use` group and `super::` are read, and what does not count is left out (comments, tests, a
/// parent declaring a child).
#[test]
fn cycles_are_found_in_files_as_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path();
    let write = |name: &str, text: &str| {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, text).expect("write");
    };
    write("lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\nmod e;\n");
    write("a.rs", "use crate::b::Thing;\n");
    write("b.rs", "pub fn f() { crate::a::g() }\n");
    write("c.rs", "use crate::{d, e::X};\n");
    write("d.rs", "mod inner;\n");
    write("d/inner.rs", "use super::Z;\n");
    write(
        "e.rs",
        "use crate::d::inner::Y;\n// crate::c is only mentioned\n#[cfg(test)]\nmod tests { use crate::c; }\n",
    );
    let graph = module_graph(src).expect("graph");
    assert_eq!(graph["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(
        graph["c"],
        BTreeSet::from(["d".to_string(), "e".to_string()])
    );
    assert_eq!(graph["e"], BTreeSet::from(["d::inner".to_string()]));
    assert!(graph["d"].is_empty(), "declaring a child is not a use");
    let found = cycles(&graph);
    assert_eq!(found, vec![vec!["a".to_string(), "b".to_string()]]);
    assert_eq!(graph["d::inner"], BTreeSet::from(["d".to_string()]));
    let mut loop3: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in [("x", "y"), ("y", "z"), ("z", "x")] {
        loop3.entry(from.into()).or_default().insert(to.into());
    }
    assert_eq!(cycles(&loop3).len(), 1);
}
