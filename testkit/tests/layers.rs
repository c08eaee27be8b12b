//! The layout's rule (issue 13): in each library crate the top-level modules form layers —
//! every module imports only from modules below it, never in a cycle — and so do the modules
//! of each folder among themselves. The test reads the sources: a path `crate::m::…` (or
//! `super::m::…` from a top-level module) in module `a` is an edge from `a` to `m`; test
//! modules (`#[cfg(test)] mod tests`) and comments are skipped. A folder's `mod.rs` and its
//! modules may refer to each other (quinn-proto's `connection/` is built the same way).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates whose layering is checked. `sim` is not among them: its world drives every
/// simulated part and each part reports to it, by design of a test harness.
const CRATES: &[&str] = &["proto", "sdk", "node", "testkit", "bench-peers"];

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The module directly inside `folder` (a path of modules, empty for the crate root) that a
/// source file belongs to, or `None` for the folder's own file, binaries and other folders.
fn module_in(src: &Path, folder: &[&str], file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("a file under src");
    let parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|first| first == "bin") || parts.len() <= folder.len() {
        return None;
    }
    if parts.iter().zip(folder).any(|(part, want)| part != want) {
        return None;
    }
    let name = parts[folder.len()].trim_end_matches(".rs");
    if ["lib", "main", "mod"].contains(&name) {
        return None;
    }
    Some(name.to_owned())
}

/// The file's code without comments and without its test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment after each occurrence of `prefix` (`crate::` or `super::`).
fn segments_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + prefix.len()..];
        if preceded_by_ident {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 {
            found.push(&rest[..end]);
        }
    }
    found
}

/// The edges between the modules of `folder` (a path of modules from the crate root at `src`;
/// empty: the top-level modules).
fn module_graph(src: &Path, folder: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|file| module_in(src, folder, file))
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|module| (module.clone(), BTreeSet::new()))
        .collect();
    let prefix: String = folder.iter().map(|m| format!("{m}::")).collect();
    for file in &files {
        let Some(from) = module_in(src, folder, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("a readable source file");
        let code = code(&text);
        let mut targets = segments_after(&code, &format!("crate::{prefix}"));
        // In the file of a module directly inside the folder, `super::` is the folder.
        let depth = file
            .strip_prefix(src)
            .expect("under src")
            .components()
            .count();
        let own_file =
            depth == folder.len() + 1 || (depth == folder.len() + 2 && file.ends_with("mod.rs"));
        if own_file {
            targets.extend(segments_after(&code, "super::"));
        }
        for to in targets {
            if to != from && modules.contains(to) {
                graph
                    .get_mut(&from)
                    .expect("a module")
                    .insert(to.to_owned());
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::Open);
        path.push(node.to_owned());
        for next in &graph[node] {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let start = path.iter().position(|m| m == next).expect("on the path");
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if !marks.contains_key(node) {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

/// Every folder (a module with modules of their own) under `dir`, as paths of modules from
/// the crate root, binaries left out.
fn folders(src: &Path, dir: &Path, out: &mut Vec<Vec<String>>) {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("a source directory")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_dir() && !(dir == src && path.ends_with("bin")))
        .collect();
    found.sort();
    for path in found {
        let folder = path
            .strip_prefix(src)
            .expect("under src")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        out.push(folder);
        folders(src, &path, out);
    }
}

#[test]
fn modules_import_in_layers_without_cycles() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in CRATES {
        let src = workspace.join(krate).join("src");
        let graph = module_graph(&src, &[]);
        assert!(graph.len() > 1, "{krate}: found no modules");
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "{krate}: modules import each other in a cycle: {}",
                cycle.join(" → ")
            );
        }
        let mut inside = Vec::new();
        folders(&src, &src, &mut inside);
        for folder in inside {
            let path: Vec<&str> = folder.iter().map(String::as_str).collect();
            if let Some(cycle) = find_cycle(&module_graph(&src, &path)) {
                panic!(
                    "{krate}/{}: modules import each other in a cycle: {}",
                    folder.join("/"),
                    cycle.join(" → ")
                );
            }
        }
    }
}

/// The check itself finds a cycle, and the edges it reads are the real ones.
#[test]
fn the_check_sees_imports_and_cycles() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/src");
    let graph = module_graph(&sdk, &[]);
    // The node handle sits above the runtime, which sits above the tables.
    assert!(graph["node"].contains("runtime"), "{:?}", graph["node"]);
    assert!(
        graph["runtime"].contains("registry"),
        "{:?}",
        graph["runtime"]
    );
    assert!(!graph["registry"].contains("runtime"));
    let mut cyclic = graph.clone();
    cyclic
        .get_mut("registry")
        .expect("the registry module")
        .insert("node".into());
    let cycle = find_cycle(&cyclic).expect("a cycle through registry and node");
    assert!(cycle.contains(&"registry".to_owned()) && cycle.contains(&"node".to_owned()));
    // Inside net/: hole punching sits above dialing, which sits above connections.
    let net = module_graph(&sdk, &["net"]);
    assert!(
        net["hole_punch"].contains("dial"),
        "{:?}",
        net["hole_punch"]
    );
    assert!(net["dial"].contains("connection"), "{:?}", net["dial"]);
    assert!(
        !net["connection"].contains("dial"),
        "{:?}",
        net["connection"]
    );
    assert_eq!(
        segments_after("use crate::a::b; xcrate::c; crate::D", "crate::"),
        ["a"]
    );
    assert_eq!(
        code("x\n// crate::a\n#[cfg(test)]\nmod tests { crate::b }"),
        "x"
    );
}
