//! `pub` items nothing names: a public function, type, trait, constant or static (at module
//! level or a method) whose name occurs nowhere in the workspace's Rust files but at its own
//! definition. Names are compared as identifiers (comments do not count; words inside string
//! literals do, for serde's `default = "…"` and the like), so a name shared with another item
//! hides an unused one: the rule finds the dead, it does not prove the living.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

use crate::Violation;
use crate::source::{Target, is_test_only};

/// How many times each identifier occurs in `files` (as a token, or a word of a string literal).
pub fn identifier_counts(files: &BTreeMap<PathBuf, String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for text in files.values() {
        if let Ok(tokens) = text.parse::<TokenStream>() {
            count(tokens, &mut counts);
        }
    }
    counts
}

fn count(tokens: TokenStream, counts: &mut HashMap<String, usize>) {
    for t in tokens {
        match t {
            TokenTree::Group(g) => count(g.stream(), counts),
            TokenTree::Ident(i) => {
                let s = i.to_string();
                let s = s.strip_prefix("r#").unwrap_or(&s).to_string();
                *counts.entry(s).or_default() += 1;
            }
            TokenTree::Literal(l) => {
                let s = l.to_string();
                if s.starts_with('"') || s.starts_with('r') {
                    for w in s.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                        if !w.is_empty() {
                            *counts.entry(w.to_string()).or_default() += 1;
                        }
                    }
                }
            }
            TokenTree::Punct(_) => {}
        }
    }
}

/// The `pub` items of the targets' non-test code whose name occurs once in all (`counts` from
/// `identifier_counts` over every Rust file of the workspace).
pub fn unused_pub(targets: &[Target], counts: &HashMap<String, usize>) -> Vec<Violation> {
    let mut out = Vec::new();
    for t in targets {
        for m in t.modules.iter().filter(|m| !m.test_only) {
            let mut v = PubItems::default();
            v.visit_file(&m.ast);
            for (kind, name, line) in v.found {
                if counts.get(&name).copied().unwrap_or(0) <= 1 {
                    out.push(Violation {
                        file: m.file.clone(),
                        line,
                        message: format!(
                            "pub {kind} `{name}` of {} is named nowhere else in the workspace; \
                             hint: remove it, or use it",
                            t.name
                        ),
                    });
                }
            }
        }
    }
    out
}

#[derive(Default)]
struct PubItems {
    found: Vec<(&'static str, String, usize)>,
}

impl PubItems {
    fn add(&mut self, vis: &syn::Visibility, kind: &'static str, ident: &syn::Ident) {
        if matches!(vis, syn::Visibility::Public(_)) {
            self.found
                .push((kind, ident.to_string(), ident.span().start().line));
        }
    }
}

impl<'ast> Visit<'ast> for PubItems {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        match item {
            syn::Item::Fn(i) if !is_test_only(&i.attrs) => self.add(&i.vis, "fn", &i.sig.ident),
            syn::Item::Struct(i) if !is_test_only(&i.attrs) => self.add(&i.vis, "struct", &i.ident),
            syn::Item::Enum(i) if !is_test_only(&i.attrs) => self.add(&i.vis, "enum", &i.ident),
            syn::Item::Trait(i) if !is_test_only(&i.attrs) => self.add(&i.vis, "trait", &i.ident),
            syn::Item::Const(i) if !is_test_only(&i.attrs) => self.add(&i.vis, "const", &i.ident),
            syn::Item::Static(i) if !is_test_only(&i.attrs) => self.add(&i.vis, "static", &i.ident),
            syn::Item::Type(i) if !is_test_only(&i.attrs) => self.add(&i.vis, "type", &i.ident),
            syn::Item::Mod(i) if is_test_only(&i.attrs) => return,
            syn::Item::Impl(i) if is_test_only(&i.attrs) || i.trait_.is_some() => return,
            _ => {}
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test_only(&f.attrs) {
            self.add(&f.vis, "fn", &f.sig.ident);
        }
    }
}
