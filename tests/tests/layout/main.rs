//! The layout rules a newcomer relies on, checked on the source itself
//! (docs/ARCHITECTURE.md "Layout"):
//!
//! - no import cycle between modules, in any crate of the workspace;
//! - only the binary assembles the HTTP API: no module of `connectors`
//!   outside `http_api` imports it;
//! - `metrics` imports no component (components register their labels);
//! - `main.rs` stays thin, `serve` reads in short steps, no source file grows
//!   past 1,200 lines before its tests;
//! - no `Result<_, String>` outside tests: errors are typed and classified.
//!
//! The module graph is read with `syn` ([`modgraph`]); a failure names each
//! offending edge with its file and line.

mod modgraph;

use modgraph::CrateGraph;
use std::path::{Path, PathBuf};
use syn::visit::Visit;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// Every crate root of the workspace: (name, root file).
fn crate_roots() -> Vec<(&'static str, PathBuf)> {
    let root = root();
    vec![
        ("schemas", root.join("schemas/src/lib.rs")),
        ("connectors", root.join("connectors/src/lib.rs")),
        ("pipeline", root.join("pipeline/src/lib.rs")),
        ("inkstream (binary)", root.join("pipeline/src/main.rs")),
        ("tests", root.join("tests/src/lib.rs")),
    ]
}

fn graph(name: &str, file: &Path) -> CrateGraph {
    CrateGraph::read(name, file).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let mut report = String::new();
    for (name, file) in crate_roots() {
        let g = graph(name, &file);
        assert!(g.modules.len() > 1 || name.contains("binary") || name == "tests");
        for cycle in g.cycles() {
            let mut names: Vec<String> = cycle.iter().map(|&m| g.label(m)).collect();
            names.sort();
            report.push_str(&format!(
                "{name}: cycle between {}\n{}",
                names.join(", "),
                g.describe(&cycle)
            ));
        }
    }
    assert!(report.is_empty(), "import cycles:\n{report}");
}

/// The edges of connectors' graph that `bad` picks, one line each.
fn connectors_edges(bad: impl Fn(&CrateGraph, &modgraph::Edge) -> bool) -> Vec<String> {
    let g = graph("connectors", &root().join("connectors/src/lib.rs"));
    assert!(
        g.modules.iter().any(|m| m.path == ["http_api"]),
        "connectors has no http_api module"
    );
    g.edges
        .iter()
        .filter(|e| bad(&g, e))
        .map(|e| {
            format!(
                "  {} → {} ({}:{})",
                g.label(e.from),
                g.label(e.to),
                g.modules[e.from].file.display(),
                e.line
            )
        })
        .collect()
}

#[test]
fn only_the_binary_assembles_the_http_api() {
    let offending =
        connectors_edges(|g, e| g.within(e.to, &["http_api"]) && !g.within(e.from, &["http_api"]));
    assert!(
        offending.is_empty(),
        "components must not reach into the HTTP API (it depends on them):\n{}",
        offending.join("\n")
    );
}

#[test]
fn metrics_imports_no_component() {
    let offending =
        connectors_edges(|g, e| g.within(e.from, &["metrics"]) && !g.within(e.to, &["metrics"]));
    assert!(
        offending.is_empty(),
        "metrics must not import components (they register their own label values):\n{}",
        offending.join("\n")
    );
}

/// Lines of a file before its first `#[cfg(test)]`: its code, not its tests.
fn code_lines(text: &str) -> usize {
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .count()
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The files of every module that is not test-only (`#[cfg(test)] mod x;`
/// files are tests, however long).
fn source_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = crate_roots()
        .into_iter()
        .filter(|(name, _)| *name != "tests")
        .flat_map(|(name, file)| {
            graph(name, &file)
                .modules
                .into_iter()
                .filter(|m| !m.test_only)
                .map(|m| m.file)
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

#[test]
fn main_is_thin_and_no_source_file_is_a_big_room() {
    let main = std::fs::read_to_string(root().join("pipeline/src/main.rs")).expect("main.rs");
    let lines = main.lines().count();
    assert!(
        lines < 150,
        "pipeline/src/main.rs has {lines} lines: it parses the command line and calls one \
         function per subcommand (pipeline/src/commands/)"
    );
    let big: Vec<String> = source_files()
        .into_iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(&f).ok()?;
            let n = code_lines(&text);
            (n > 1200).then(|| format!("  {} ({n} lines before its tests)", f.display()))
        })
        .collect();
    assert!(
        big.is_empty(),
        "source files over 1,200 lines of code (split them along their seams):\n{}",
        big.join("\n")
    );
}

/// Every function (free or in an impl) and its length in lines.
struct FnLengths {
    found: Vec<(String, usize, usize)>,
}

impl<'ast> Visit<'ast> for FnLengths {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.record(&f.sig.ident, &f.block);
        syn::visit::visit_item_fn(self, f);
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.record(&f.sig.ident, &f.block);
        syn::visit::visit_impl_item_fn(self, f);
    }
}

impl FnLengths {
    fn record(&mut self, name: &syn::Ident, block: &syn::Block) {
        let start = name.span().start().line;
        let end = block.brace_token.span.close().end().line;
        self.found.push((name.to_string(), start, end + 1 - start));
    }
}

#[test]
fn serve_reads_in_short_named_steps() {
    let mut files = Vec::new();
    let dir = root().join("pipeline/src/commands");
    rust_files(&dir.join("serve"), &mut files);
    let single = dir.join("serve.rs");
    if single.exists() {
        files.push(single);
    }
    assert!(
        !files.is_empty(),
        "no serve command under {}",
        dir.display()
    );
    let mut long = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let ast = syn::parse_file(&text).expect("parses");
        let mut lengths = FnLengths { found: Vec::new() };
        lengths.visit_file(&ast);
        for (name, line, len) in lengths.found {
            if len > 120 {
                long.push(format!(
                    "  {}:{line} fn {name}: {len} lines",
                    file.display()
                ));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions of serve over 120 lines:\n{}",
        long.join("\n")
    );
}

/// `Result<_, String>` in a type: an error nobody can classify.
struct StringErrors {
    found: Vec<usize>,
}

impl<'ast> Visit<'ast> for StringErrors {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !modgraph::is_cfg_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !modgraph::is_cfg_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }
    fn visit_path_segment(&mut self, seg: &'ast syn::PathSegment) {
        if seg.ident == "Result"
            && let syn::PathArguments::AngleBracketed(args) = &seg.arguments
            && let Some(syn::GenericArgument::Type(syn::Type::Path(err))) = args.args.iter().nth(1)
            && err.path.is_ident("String")
        {
            self.found.push(seg.ident.span().start().line);
        }
        syn::visit::visit_path_segment(self, seg);
    }
}

#[test]
fn library_errors_are_typed_not_strings() {
    let mut found = Vec::new();
    for (name, file) in crate_roots() {
        if name == "tests" {
            continue;
        }
        let g = graph(name, &file);
        let files: std::collections::BTreeSet<&PathBuf> = g
            .modules
            .iter()
            .filter(|m| !m.test_only)
            .map(|m| &m.file)
            .collect();
        for f in files {
            let text = std::fs::read_to_string(f).expect("readable");
            let ast = syn::parse_file(&text).expect("parses");
            let mut v = StringErrors { found: Vec::new() };
            v.visit_file(&ast);
            found.extend(
                v.found
                    .into_iter()
                    .map(|l| format!("  {}:{l}", f.display())),
            );
        }
    }
    found.sort();
    found.dedup();
    assert!(
        found.is_empty(),
        "Result<_, String> outside tests (use a thiserror type implementing schemas::Classify):\n{}",
        found.join("\n")
    );
}

/// The checker itself: a cycle written on purpose is found, with its lines.
#[test]
fn the_checker_finds_a_cycle_through_a_re_export() {
    let dir = std::env::temp_dir().join(format!("inkstream-layout-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("a")).expect("temp dir");
    std::fs::write(
        src.join("lib.rs"),
        "pub mod a;\npub mod b;\npub use a::Thing;\n",
    )
    .expect("write");
    std::fs::write(
        src.join("a/mod.rs"),
        "mod inner;\npub use inner::Thing;\npub fn helper() {}\n",
    )
    .expect("write");
    // a::inner names b::f, b names crate::Thing (re-exported twice: inner).
    std::fs::write(
        src.join("a/inner.rs"),
        "pub struct Thing;\npub fn g() { crate::b::f() }\n",
    )
    .expect("write");
    std::fs::write(
        src.join("b.rs"),
        "use crate::Thing;\npub fn f() { let _ = Thing; }\n",
    )
    .expect("write");
    let g = graph("fixture", &src.join("lib.rs"));
    let cycles = g.cycles();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(cycles.len(), 1, "{:?}", g.edges);
    let mut names: Vec<String> = cycles[0].iter().map(|&m| g.label(m)).collect();
    names.sort();
    assert_eq!(
        names,
        ["a::inner", "b"],
        "re-exports are followed to the defining module"
    );
}
