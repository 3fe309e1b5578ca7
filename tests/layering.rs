//! The layering rule, checked on the source: a module may use its own level or
//! lower ones, never a higher one; level-0 modules import no tokio and do no
//! IO; and no two parts of the crate import each other, directly or around a
//! circle. The level map below is the one place the levels are written;
//! `docs/architecture.md` explains them.

// A test crate: a failed expectation or an unreadable source file is a
// failed test, which is what it should be.
#![allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every part of the crate and its level, most specific first where parts
/// nest (`health::state` is pure while the rest of `health` runs tasks). A
/// module belongs to the longest entry its path starts with.
const LEVELS: &[(&str, u8)] = &[
    // 0: pure, no tokio, no IO.
    ("vocabulary", 0),
    ("config", 0),
    ("balance", 0),
    ("health::state", 0),
    ("mysql", 0),
    ("metrics", 0),
    ("net", 0),
    ("dns", 0),
    ("args", 0),
    ("replication::gtid", 0),
    ("replication::plan", 0),
    ("replication::report", 0),
    ("handover::format", 0),
    // 1: shared state: atomics, one ArcSwap, channels.
    ("cluster", 1),
    ("inbox", 1),
    // 2: tasks and IO.
    ("config::load", 2),
    ("config::watch", 2),
    ("config::resolve", 2),
    ("config::discover", 2),
    ("health", 2),
    ("proxy", 2),
    ("admin", 2),
    ("logging", 2),
    ("workers", 2),
    ("systemd", 2),
    ("replication", 2),
    ("handover", 2),
    // 3: wiring.
    ("control", 3),
    ("app", 3),
    ("service", 3),
    ("upgrade", 3),
];

/// What level-0 code must not name: the async runtime and the ways to reach
/// files, sockets, processes and the environment.
const IO: &[&str] = &[
    "tokio",
    "std::fs",
    "std::net::Tcp",
    "std::net::Udp",
    "to_socket_addrs",
    "std::process",
    "std::thread",
    "std::env",
    "std::io::stdin",
    "std::io::stdout",
    "rustix",
    "rlimit",
];

/// The part of the crate a module path belongs to.
fn part(module: &str) -> Option<(&'static str, u8)> {
    LEVELS
        .iter()
        .filter(|(prefix, _)| {
            module == *prefix
                || module
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
        .max_by_key(|(prefix, _)| prefix.len())
        .copied()
}

/// A source file's module path: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without its tests: a file that is itself a test
/// module is skipped, and everything from the first `#[cfg(test)]` on.
fn code_of(file: &Path, text: &str) -> Option<String> {
    let name = file.file_stem()?.to_string_lossy();
    if name == "tests" || name.ends_with("_tests") {
        return None;
    }
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    // Comments name modules freely.
    let lines: Vec<&str> = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect();
    Some(lines.join("\n"))
}

/// The module paths `code` (in module `module`) refers to through
/// `crate::` and `super::`, braces of a `use` expanded one level.
fn references(module: &str, code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let is_mod = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let path_at = |rest: &str| -> Vec<String> {
        // `a::b::Item` -> [a, b]; stops at an item, a brace or a glob.
        let mut segments = Vec::new();
        let mut cursor = rest;
        loop {
            let end = cursor.find(|c: char| !is_mod(c)).unwrap_or(cursor.len());
            let (segment, after) = cursor.split_at(end);
            if segment.is_empty() || !segment.starts_with(|c: char| c.is_ascii_lowercase()) {
                break;
            }
            segments.push(segment.to_owned());
            match after.strip_prefix("::") {
                Some(next) => cursor = next,
                None => break,
            }
        }
        segments
    };
    let bases = |text: &str, key: &str| -> Vec<(usize, usize)> {
        text.match_indices(key)
            .filter(|(i, _)| {
                text[..*i]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'))
            })
            .map(|(i, k)| (i, i + k.len()))
            .collect()
    };
    let module_parts: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    for (key, up) in [("crate::", None), ("super::", Some(()))] {
        for (_, end) in bases(code, key) {
            let mut base: Vec<String> = match up {
                None => Vec::new(),
                Some(()) => module_parts
                    .iter()
                    .take(module_parts.len().saturating_sub(1))
                    .map(|s| (*s).to_owned())
                    .collect(),
            };
            let mut rest = &code[end..];
            while let Some(next) = rest.strip_prefix("super::") {
                base.pop();
                rest = next;
            }
            let mut paths = Vec::new();
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    paths.push(path_at(item.trim()));
                }
            } else {
                paths.push(path_at(rest));
            }
            for p in paths {
                let full: Vec<String> = base.iter().cloned().chain(p).collect();
                if !full.is_empty() {
                    out.insert(full.join("::"));
                }
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

struct Crate {
    /// Part -> the parts it uses, with one place each use is made.
    uses: BTreeMap<&'static str, BTreeMap<&'static str, String>>,
    problems: Vec<String>,
}

fn read_crate() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Crate {
        uses: BTreeMap::new(),
        problems: Vec::new(),
    };
    for file in files {
        let module = module_of(&src, &file);
        // The crate root and the binary only declare and drive.
        if module == "lib" || module == "main" {
            continue;
        }
        let shown = file
            .strip_prefix(&src)
            .unwrap_or(&file)
            .display()
            .to_string();
        let Some((from, level)) = part(&module) else {
            found.problems.push(format!(
                "src/{shown}: module {module} has no level; add it to LEVELS in tests/layering.rs"
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        let Some(code) = code_of(&file, &text) else {
            continue;
        };
        if level == 0 {
            for io in IO.iter().filter(|io| code.contains(*io)) {
                found.problems.push(format!(
                    "src/{shown}: level-0 module {module} names {io}; pure code takes the outside world as parameters"
                ));
            }
        }
        for target in references(&module, &code) {
            let Some((to, to_level)) = part(&target) else {
                continue;
            };
            if to_level > level {
                found.problems.push(format!(
                    "src/{shown}: {module} (level {level}) uses {target} (level {to_level}): an upward arrow"
                ));
            }
            if to != from {
                found
                    .uses
                    .entry(from)
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| format!("src/{shown} uses {target}"));
            }
        }
    }
    found
}

/// A circle of parts, if the graph has one.
fn circle(
    uses: &BTreeMap<&'static str, BTreeMap<&'static str, String>>,
) -> Option<Vec<&'static str>> {
    fn visit(
        node: &'static str,
        uses: &BTreeMap<&'static str, BTreeMap<&'static str, String>>,
        path: &mut Vec<&'static str>,
        done: &mut BTreeSet<&'static str>,
    ) -> Option<Vec<&'static str>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut found = path[at..].to_vec();
            found.push(node);
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for next in uses.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(found) = visit(next, uses, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    uses.keys()
        .find_map(|start| visit(start, uses, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_uses_a_higher_level_and_pure_code_does_no_io() {
    let found = read_crate();
    assert!(
        found.problems.is_empty(),
        "the layering is broken:\n  {}",
        found.problems.join("\n  ")
    );
}

#[test]
fn the_parts_of_the_crate_import_each_other_in_no_circle() {
    let found = read_crate();
    if let Some(circle) = circle(&found.uses) {
        let steps: Vec<String> = circle
            .windows(2)
            .map(|w| found.uses[w[0]][w[1]].clone())
            .collect();
        panic!(
            "a circle of imports: {}\n  {}",
            circle.join(" -> "),
            steps.join("\n  ")
        );
    }
}

#[test]
fn the_checker_finds_what_it_looks_for() {
    // The rule must be able to fail: an upward arrow, a relative one, a
    // group, and the absence of one where only a comment names a module.
    let refs = references(
        "balance::hold",
        "use crate::control::memory::Memory;\nuse super::super::proxy::Item;\nuse crate::{admin::Shared, net};\nlet x = crate::net::is_local_shortage(e);\n",
    );
    for expected in [
        "control::memory",
        "proxy",
        "admin",
        "net",
        "net::is_local_shortage",
    ] {
        assert!(refs.contains(expected), "{expected} missing from {refs:?}");
    }
    assert_eq!(part("health::state::tests"), Some(("health::state", 0)));
    assert_eq!(part("health::checker"), Some(("health", 2)));
    assert_eq!(
        part("configure"),
        None,
        "a prefix counts only at a boundary"
    );
    let mut uses = BTreeMap::new();
    uses.entry("a")
        .or_insert_with(BTreeMap::new)
        .insert("b", String::new());
    uses.entry("b")
        .or_insert_with(BTreeMap::new)
        .insert("a", String::new());
    assert_eq!(circle(&uses), Some(vec!["a", "b", "a"]));
    let code = code_of(
        Path::new("x.rs"),
        "// crate::control is named here only\nfn f() {}\n#[cfg(test)]\nmod tests { use crate::control; }\n",
    )
    .unwrap();
    assert!(references("balance", &code).is_empty(), "{code}");
}
