//! The worker's layers depend only on those above them (`pure` ← `cache` ← `clients` ←
//! `cluster` ← `runtime`): a `use` of a lower layer fails this test, naming the file.
use std::path::{Path, PathBuf};

const LAYERS: [&str; 5] = ["pure", "cache", "clients", "cluster", "runtime"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source folder") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file up to its first `#[cfg(test)]` item (tests may reach further).
fn code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

#[test]
fn each_layer_uses_only_the_layers_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (rank, layer) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        sources(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "no sources in {layer}");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a source file");
            for lower in &LAYERS[rank + 1..] {
                if code(&text).contains(&format!("crate::{lower}::")) {
                    wrong.push(format!("{} uses {lower}", file.display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// `layer/module` of a source file (`pure/builders` for `pure/builders/pooler.rs`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let parts: Vec<String> = relative
        .iter()
        .take(2)
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    parts.join("/")
}

#[test]
fn no_module_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for layer in LAYERS {
        sources(&src.join(layer), &mut files);
    }
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for file in &files {
        let from = module_of(&src, file);
        let text = std::fs::read_to_string(file).expect("a source file");
        let text = code(&text);
        for (at, _) in text.match_indices("crate::") {
            let path: String = text[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
            if parts.len() >= 2 && LAYERS.contains(&parts[0]) {
                let to = format!("{}/{}", parts[0], parts[1]);
                if to != from {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    // Depth-first search for a path back to where it started.
    fn cycle(
        edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        let last = path.last().expect("a start").clone();
        for next in edges.get(&last).into_iter().flatten() {
            if *next == path[0] {
                let mut found = path.clone();
                found.push(next.clone());
                return Some(found);
            }
            if !path.contains(next) && next > &path[0] {
                path.push(next.clone());
                if let Some(found) = cycle(edges, path) {
                    return Some(found);
                }
                path.pop();
            }
        }
        None
    }
    for start in edges.keys() {
        if let Some(found) = cycle(&edges, &mut vec![start.clone()]) {
            panic!("a module cycle: {}", found.join(" → "));
        }
    }
}
