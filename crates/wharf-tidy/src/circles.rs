//! Import circles: within each module, its child modules form a graph (A → B when code in A's
//! subtree names something in B's through `crate::`, `super::` or `self::`, in a `use` or in a
//! path anywhere, macro bodies included); a strongly connected set of two or more children is a
//! circle. A parent naming its children and children naming their parent are the ordinary shape
//! of a Rust crate and not counted; neither is code compiled only for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

use crate::Violation;
use crate::source::{Target, is_test_only};

/// Where one module names another: the module naming, the module named, and the place.
#[derive(Clone, Debug)]
pub struct Reference {
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub file: PathBuf,
    pub line: usize,
}

/// Every reference between modules of a target (test-only code left out), each resolved to the
/// deepest module of the target that its path names.
pub fn references(target: &Target) -> Vec<Reference> {
    let known: BTreeSet<Vec<String>> = target.modules.iter().map(|m| m.path.clone()).collect();
    let mut out = Vec::new();
    for m in target.modules.iter().filter(|m| !m.test_only) {
        let mut v = Collector {
            here: m.path.clone(),
            known: &known,
            file: &m.file,
            out: &mut out,
        };
        v.visit_file(&m.ast);
    }
    out
}

/// The circles of a target: for each set of sibling modules that name each other in a circle,
/// one violation listing them and one reference of each edge of the circle.
pub fn circles(target: &Target) -> Vec<Violation> {
    // parent -> child -> child it names -> first place it does.
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeMap<String, Reference>>> =
        BTreeMap::new();
    for r in references(target) {
        let common = r.from.iter().zip(&r.to).take_while(|(a, b)| a == b).count();
        if common >= r.from.len() || common >= r.to.len() {
            continue; // ancestor and descendant
        }
        let parent = r.from[..common].to_vec();
        let (a, b) = (r.from[common].clone(), r.to[common].clone());
        graphs
            .entry(parent)
            .or_default()
            .entry(a)
            .or_default()
            .entry(b)
            .or_insert(r);
    }
    let mut out = Vec::new();
    for (parent, edges) in &graphs {
        for scc in strongly_connected(edges) {
            if scc.len() < 2 {
                continue;
            }
            let within: Vec<&Reference> = scc
                .iter()
                .flat_map(|a| edges.get(a).into_iter().flatten())
                .filter(|(b, _)| scc.contains(*b))
                .map(|(_, r)| r)
                .collect();
            let first = within[0];
            let places: Vec<String> = within
                .iter()
                .map(|r| {
                    format!(
                        "{} → {} at {}:{}",
                        r.from.join("::"),
                        r.to.join("::"),
                        r.file.display(),
                        r.line
                    )
                })
                .collect();
            let under = if parent.is_empty() {
                "the crate root".to_string()
            } else {
                format!("`{}`", parent.join("::"))
            };
            out.push(Violation {
                file: first.file.clone(),
                line: first.line,
                message: format!(
                    "{}: modules {} under {under} import each other in a circle ({}); \
                     hint: move what both need into a lower module, so that the names run one way",
                    target.name,
                    scc.iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    places.join("; ")
                ),
            });
        }
    }
    out
}

/// Tarjan's strongly connected components, each sorted, in the order found.
fn strongly_connected<V>(edges: &BTreeMap<String, BTreeMap<String, V>>) -> Vec<BTreeSet<String>> {
    struct State<'a, V> {
        edges: &'a BTreeMap<String, BTreeMap<String, V>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a, V>(s: &mut State<'a, V>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        if let Some(next) = s.edges.get(v) {
            for w in next.keys() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if s.on.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                scc.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            s.out.push(scc);
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    let all: BTreeSet<&str> = edges
        .iter()
        .flat_map(|(a, bs)| std::iter::once(a.as_str()).chain(bs.keys().map(String::as_str)))
        .collect();
    for v in all {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

struct Collector<'a> {
    here: Vec<String>,
    known: &'a BTreeSet<Vec<String>>,
    file: &'a PathBuf,
    out: &'a mut Vec<Reference>,
}

impl Collector<'_> {
    /// Record a path given as its segments, if it starts at `crate`, `super` or `self`.
    fn path(&mut self, segments: &[String], line: usize) {
        let Some(first) = segments.first() else {
            return;
        };
        let mut abs = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.here.clone(),
            "super" => {
                let mut p = self.here.clone();
                p.pop();
                p
            }
            _ => return,
        };
        let mut rest = &segments[1..];
        while rest.first().is_some_and(|s| s == "super") {
            abs.pop();
            rest = &rest[1..];
        }
        abs.extend(rest.iter().cloned());
        // The deepest module the path names (the rest is an item inside it).
        while !abs.is_empty() && !self.known.contains(&abs) {
            abs.pop();
        }
        self.out.push(Reference {
            from: self.here.clone(),
            to: abs,
            file: self.file.clone(),
            line,
        });
    }

    fn tokens(&mut self, tokens: TokenStream) {
        let list: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < list.len() {
            match &list[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id)
                    if matches!(id.to_string().as_str(), "crate" | "super" | "self") =>
                {
                    let line = id.span().start().line;
                    let mut segs = vec![id.to_string()];
                    let mut j = i + 1;
                    while j < list.len() {
                        let colons = matches!(&list[j], TokenTree::Punct(p) if p.as_char() == ':')
                            && matches!(list.get(j + 1), Some(TokenTree::Punct(p)) if p.as_char() == ':');
                        match (colons, list.get(j + 2)) {
                            (true, Some(TokenTree::Ident(next))) => {
                                segs.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if segs.len() > 1 {
                        self.path(&segs, line);
                    }
                    i = j.max(i + 1);
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// The paths a `use` tree names, each as its segments (globs and renames end at the module).
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut p = prefix.clone();
            p.push(n.ident.to_string());
            out.push(p);
        }
        syn::UseTree::Rename(r) => {
            let mut p = prefix.clone();
            p.push(r.ident.to_string());
            out.push(p);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_paths(t, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            _ => &[],
        };
        if is_test_only(attrs) {
            return;
        }
        if let syn::Item::Mod(m) = item
            && let Some((_, items)) = &m.content
        {
            self.here.push(m.ident.to_string());
            for i in items {
                self.visit_item(i);
            }
            self.here.pop();
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut paths = Vec::new();
        use_paths(&u.tree, &mut Vec::new(), &mut paths);
        let line = u.use_token.span.start().line;
        for p in paths {
            self.path(&p, line);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        let line = p
            .segments
            .first()
            .map(|s| s.ident.span().start().line)
            .unwrap_or(0);
        self.path(&segs, line);
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}
