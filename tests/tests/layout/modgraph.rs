//! The workspace's module graph, read from the source with `syn`: one node per
//! module (a file, or an inline `mod x { … }`), an edge A → B when A names an
//! item that B defines (through `use`, or a `crate::`/`super::`/`self::` path in
//! code). Re-exports and imports are followed to the module that defines the
//! item, so `use super::Thing` where the parent only re-exports `Thing` from a
//! sibling is an edge to the sibling, not to the parent.
//!
//! Paths into other crates are left out: cargo already keeps crates acyclic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// One module of a crate.
#[derive(Debug)]
pub struct Module {
    /// Crate-relative path (`["event_log", "redis"]`); empty for the root.
    pub path: Vec<String>,
    /// The file it is written in (an inline module shares its parent's).
    pub file: PathBuf,
    /// Whether this module is `#[cfg(test)]` (or inside one).
    pub test_only: bool,
    children: BTreeMap<String, usize>,
    /// Names this module defines (types, functions, consts, traits, macros).
    defines: BTreeSet<String>,
    /// `use` entries, by the name they bring into scope: absolute targets.
    imports: HashMap<String, Vec<String>>,
    /// `use x::*` targets (absolute module paths).
    globs: Vec<Vec<String>>,
    /// Every path this module names, relative as written, with where.
    refs: Vec<(Vec<String>, usize)>,
}

/// An edge of the graph, with the line it was seen on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub line: usize,
}

#[derive(Debug)]
pub struct CrateGraph {
    pub name: String,
    pub modules: Vec<Module>,
    pub edges: Vec<Edge>,
}

impl CrateGraph {
    /// Reads the crate whose root file is `root` (`src/lib.rs` or `src/main.rs`).
    pub fn read(name: &str, root: &Path) -> Result<Self, String> {
        let mut graph = CrateGraph {
            name: name.to_string(),
            modules: Vec::new(),
            edges: Vec::new(),
        };
        let root_dir = root.parent().ok_or("root has no folder")?.to_path_buf();
        graph.load_file(root, root_dir, Vec::new(), None, false)?;
        graph.link();
        Ok(graph)
    }

    /// The module's name as `crate::a::b` (`<name>` for the root).
    pub fn label(&self, id: usize) -> String {
        let m = &self.modules[id];
        if m.path.is_empty() {
            format!("{} (crate root)", self.name)
        } else {
            m.path.join("::")
        }
    }

    fn load_file(
        &mut self,
        file: &Path,
        child_dir: PathBuf,
        path: Vec<String>,
        parent: Option<usize>,
        test_only: bool,
    ) -> Result<usize, String> {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let ast = syn::parse_file(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let id = self.new_module(path, file.to_path_buf(), parent, test_only);
        self.load_items(id, &ast.items, &child_dir)?;
        Ok(id)
    }

    fn new_module(
        &mut self,
        path: Vec<String>,
        file: PathBuf,
        parent: Option<usize>,
        test_only: bool,
    ) -> usize {
        let id = self.modules.len();
        self.modules.push(Module {
            path,
            file,
            test_only,
            children: BTreeMap::new(),
            defines: BTreeSet::new(),
            imports: HashMap::new(),
            globs: Vec::new(),
            refs: Vec::new(),
        });
        if let Some(p) = parent {
            let name = self.modules[id].path.last().cloned().unwrap_or_default();
            self.modules[p].children.insert(name, id);
        }
        id
    }

    fn load_items(
        &mut self,
        id: usize,
        items: &[syn::Item],
        child_dir: &Path,
    ) -> Result<(), String> {
        for item in items {
            match item {
                syn::Item::Mod(m) => {
                    let name = m.ident.to_string();
                    let mut path = self.modules[id].path.clone();
                    path.push(name.clone());
                    let test_only = self.modules[id].test_only || is_cfg_test(&m.attrs);
                    if let Some((_, content)) = &m.content {
                        let file = self.modules[id].file.clone();
                        let child = self.new_module(path, file, Some(id), test_only);
                        self.load_items(child, content, &child_dir.join(&name))?;
                    } else {
                        let explicit = path_attr(&m.attrs);
                        let (file, dir) = match explicit {
                            Some(p) => {
                                let f = child_dir.parent().unwrap_or(child_dir).join(p);
                                let d = f.with_extension("");
                                (f, d)
                            }
                            None => {
                                let flat = child_dir.join(format!("{name}.rs"));
                                if flat.exists() {
                                    (flat, child_dir.join(&name))
                                } else {
                                    let nested = child_dir.join(&name).join("mod.rs");
                                    (nested, child_dir.join(&name))
                                }
                            }
                        };
                        self.load_file(&file, dir, path, Some(id), test_only)?;
                    }
                }
                syn::Item::Use(u) => {
                    let mut out = Vec::new();
                    flatten_use(&u.tree, Vec::new(), &mut out);
                    let line = line_of(u.use_token.span);
                    for (segs, alias) in out {
                        let Some(abs) = self.absolute(id, &segs) else {
                            continue;
                        };
                        match alias {
                            Some(name) => {
                                self.modules[id].imports.insert(name, abs.clone());
                            }
                            None => self.modules[id].globs.push(abs.clone()),
                        }
                        self.modules[id].refs.push((abs, line));
                    }
                }
                other => {
                    if let Some(name) = item_name(other) {
                        self.modules[id].defines.insert(name);
                    }
                    let mut collector = PathCollector { found: Vec::new() };
                    collector.visit_item(other);
                    for (segs, line) in collector.found {
                        if let Some(abs) = self.absolute(id, &segs) {
                            self.modules[id].refs.push((abs, line));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes a path as written in module `id` absolute within the crate, or
    /// `None` when it names something outside it (another crate, std, a local).
    fn absolute(&self, id: usize, segs: &[String]) -> Option<Vec<String>> {
        let first = segs.first()?;
        let mut base: Vec<String>;
        let mut rest = segs;
        match first.as_str() {
            "crate" => {
                base = Vec::new();
                rest = &segs[1..];
            }
            "self" | "super" => {
                base = self.modules[id].path.clone();
                while let Some(s) = rest.first() {
                    match s.as_str() {
                        "self" => rest = &rest[1..],
                        "super" => {
                            base.pop();
                            rest = &rest[1..];
                        }
                        _ => break,
                    }
                }
            }
            name => {
                // A child module (declared before or after) or an imported
                // module named without a prefix; anything else is external.
                if let Some(&child) = self.modules[id].children.get(name) {
                    base = self.modules[child].path.clone();
                    rest = &segs[1..];
                } else if let Some(target) = self.modules[id].imports.get(name) {
                    base = target.clone();
                    rest = &segs[1..];
                } else {
                    return None;
                }
            }
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn module_at(&self, path: &[String]) -> Option<usize> {
        let mut id = 0;
        for seg in path {
            id = *self.modules[id].children.get(seg)?;
        }
        Some(id)
    }

    /// The module that defines what `abs` names, following imports.
    fn resolve(&self, abs: &[String], depth: usize) -> Option<usize> {
        if depth > 16 {
            return None;
        }
        let mut id = 0;
        for (i, seg) in abs.iter().enumerate() {
            if let Some(&child) = self.modules[id].children.get(seg) {
                id = child;
                continue;
            }
            let m = &self.modules[id];
            if m.defines.contains(seg) {
                return Some(id);
            }
            if let Some(target) = m.imports.get(seg) {
                let mut next = target.clone();
                next.extend(abs[i + 1..].iter().cloned());
                return self.resolve(&next, depth + 1).or(Some(id));
            }
            for glob in &m.globs {
                let mut next = glob.clone();
                next.push(seg.clone());
                if let Some(found) = self.resolve_defined(&next, depth + 1) {
                    return Some(found);
                }
            }
            return Some(id);
        }
        Some(id)
    }

    /// Like [`resolve`], but only when the name is really found.
    fn resolve_defined(&self, abs: &[String], depth: usize) -> Option<usize> {
        let (last, head) = abs.split_last()?;
        let m = self.module_at(head)?;
        let module = &self.modules[m];
        if module.children.contains_key(last) {
            return self.module_at(abs);
        }
        if module.defines.contains(last) {
            return Some(m);
        }
        if module.imports.contains_key(last) {
            return self.resolve(abs, depth);
        }
        None
    }

    fn link(&mut self) {
        let mut edges = BTreeSet::new();
        for (from, m) in self.modules.iter().enumerate() {
            for (abs, line) in &m.refs {
                if let Some(to) = self.resolve(abs, 0)
                    && to != from
                {
                    edges.insert(Edge {
                        from,
                        to,
                        line: *line,
                    });
                }
            }
        }
        // One edge per pair: the first line it is seen on.
        let mut seen = BTreeSet::new();
        self.edges = edges
            .into_iter()
            .filter(|e| seen.insert((e.from, e.to)))
            .collect();
    }

    /// Strongly connected components of more than one module: the cycles.
    pub fn cycles(&self) -> Vec<Vec<usize>> {
        let n = self.modules.len();
        let mut adj = vec![Vec::new(); n];
        for e in &self.edges {
            adj[e.from].push(e.to);
        }
        tarjan(&adj).into_iter().filter(|c| c.len() > 1).collect()
    }

    /// A readable description of a cycle: each edge within it and its line.
    pub fn describe(&self, cycle: &[usize]) -> String {
        let members: BTreeSet<usize> = cycle.iter().copied().collect();
        let mut out = String::new();
        for e in &self.edges {
            if members.contains(&e.from) && members.contains(&e.to) {
                out.push_str(&format!(
                    "    {} → {}   ({}:{})\n",
                    self.label(e.from),
                    self.label(e.to),
                    self.modules[e.from].file.display(),
                    e.line
                ));
            }
        }
        out
    }

    /// Whether module `id` is `prefix` or inside it.
    pub fn within(&self, id: usize, prefix: &[&str]) -> bool {
        let p = &self.modules[id].path;
        p.len() >= prefix.len() && p.iter().zip(prefix).all(|(a, b)| a == b)
    }
}

fn tarjan(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        adj: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn strong(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for i in 0..s.adj[v].len() {
            let w = s.adj[v][i];
            match s.index[w] {
                None => {
                    strong(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            s.out.push(comp);
        }
    }
    let n = adj.len();
    let mut s = State {
        adj,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            strong(&mut s, v);
        }
    }
    s.out
}

fn flatten_use(
    tree: &syn::UseTree,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    match tree {
        syn::UseTree::Path(p) => {
            let mut next = prefix;
            next.push(p.ident.to_string());
            flatten_use(&p.tree, next, out);
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            if name == "self" {
                let alias = prefix.last().cloned();
                out.push((prefix, alias));
            } else {
                let mut full = prefix;
                full.push(name.clone());
                out.push((full, Some(name)));
            }
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix;
            let name = r.ident.to_string();
            if name != "self" {
                full.push(name);
            }
            out.push((full, Some(r.rename.to_string())));
        }
        syn::UseTree::Glob(_) => out.push((prefix, None)),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix.clone(), out);
            }
        }
    }
}

fn item_name(item: &syn::Item) -> Option<String> {
    Some(match item {
        syn::Item::Const(i) => i.ident.to_string(),
        syn::Item::Enum(i) => i.ident.to_string(),
        syn::Item::Fn(i) => i.sig.ident.to_string(),
        syn::Item::Macro(i) => i.ident.as_ref()?.to_string(),
        syn::Item::Static(i) => i.ident.to_string(),
        syn::Item::Struct(i) => i.ident.to_string(),
        syn::Item::Trait(i) => i.ident.to_string(),
        syn::Item::TraitAlias(i) => i.ident.to_string(),
        syn::Item::Type(i) => i.ident.to_string(),
        syn::Item::Union(i) => i.ident.to_string(),
        _ => return None,
    })
}

pub fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .map(|l| {
                    l.tokens
                        .to_string()
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .any(|t| t == "test")
                })
                .unwrap_or(false)
    })
}

fn path_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| {
        if !a.path().is_ident("path") {
            return None;
        }
        match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        }
    })
}

fn line_of(span: proc_macro2::Span) -> usize {
    span.start().line
}

/// Collects every multi-segment path in an item (`a::b`, `crate::x::f()`),
/// without descending into nested modules (they are modules of their own).
struct PathCollector {
    found: Vec<(Vec<String>, usize)>,
}

impl<'ast> Visit<'ast> for PathCollector {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() && path.segments.len() > 1 {
            let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            let line = path
                .segments
                .first()
                .map(|s| line_of(s.ident.span()))
                .unwrap_or(0);
            self.found.push((segs, line));
        }
        syn::visit::visit_path(self, path);
    }
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {}
    /// `#[serde(with = "crate::x::y")]` and its kin name a path in a string.
    fn visit_attribute(&mut self, attr: &'ast syn::Attribute) {
        if attr.path().is_ident("serde") {
            let _ = attr.parse_nested_meta(|meta| {
                let key = meta
                    .path
                    .get_ident()
                    .map(|i| i.to_string())
                    .unwrap_or_default();
                if let Ok(value) = meta.value() {
                    let lit: syn::LitStr = value.parse()?;
                    let named = [
                        "with",
                        "deserialize_with",
                        "serialize_with",
                        "default",
                        "serialize",
                        "deserialize",
                        "bound",
                        "getter",
                    ];
                    if named.contains(&key.as_str())
                        && let Ok(path) = lit.parse::<syn::Path>()
                    {
                        self.visit_path(&path);
                    }
                }
                Ok(())
            });
        }
    }
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut out = Vec::new();
        flatten_use(&u.tree, Vec::new(), &mut out);
        let line = line_of(u.use_token.span);
        for (segs, _) in out {
            self.found.push((segs, line));
        }
    }
}
