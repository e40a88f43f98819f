//! Store keys in one place: the key prefixes are `&str` constants of one module (the master's
//! `model::keys`); no other non-test code declares a key-like constant or spells a prefix out.

use std::collections::BTreeSet;
use std::path::Path;

use syn::visit::Visit;

use crate::Violation;
use crate::source::{Target, is_test_only};

/// The prefixes declared in `keys_file` (its `const NAME: &str = "/…"` items, at any depth), and
/// the violations elsewhere in the targets: key-like `&str` constants (`"/word/"`,
/// `"/word/word"`) declared outside that file, and string literals that start with one of the
/// prefixes.
pub fn scattered_keys(targets: &[Target], keys_file: &Path) -> (BTreeSet<String>, Vec<Violation>) {
    let mut prefixes = BTreeSet::new();
    for t in targets {
        for m in t.modules.iter().filter(|m| m.file == keys_file) {
            let mut c = Consts::default();
            c.visit_file(&m.ast);
            prefixes.extend(c.found.into_iter().map(|(_, v, _)| v));
        }
    }
    let mut out = Vec::new();
    for t in targets {
        for m in t
            .modules
            .iter()
            .filter(|m| !m.test_only && m.file != keys_file)
        {
            let mut c = Consts::default();
            c.visit_file(&m.ast);
            for (name, value, line) in c.found {
                if key_like(&value) {
                    out.push(Violation {
                        file: m.file.clone(),
                        line,
                        message: format!(
                            "`{name}` = {value:?} looks like a store key prefix declared outside \
                             {}; hint: declare it there, beside the others",
                            keys_file.display()
                        ),
                    });
                }
            }
            for (value, line) in c.literals {
                if let Some(p) = prefixes.iter().find(|p| value.starts_with(p.as_str())) {
                    out.push(Violation {
                        file: m.file.clone(),
                        line,
                        message: format!(
                            "{value:?} spells out the store key prefix {p:?}; hint: use the \
                             constant or key function of {}",
                            keys_file.display()
                        ),
                    });
                }
            }
        }
    }
    (prefixes, out)
}

/// `/word/` or `/word/word`: the shape of the store's key prefixes and fixed keys.
fn key_like(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('/') else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let word = |p: &&str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    };
    match parts.as_slice() {
        [a, ""] => word(a),
        [a, b] => word(a) && word(b),
        _ => false,
    }
}

#[derive(Default)]
struct Consts {
    /// (name, value, line) of `const NAME: &str = "…"`.
    found: Vec<(String, String, usize)>,
    /// Other string literals with their lines.
    literals: Vec<(String, usize)>,
}

impl<'ast> Visit<'ast> for Consts {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_test_only(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test_only(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_item_const(&mut self, c: &'ast syn::ItemConst) {
        if let syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) = &*c.expr
        {
            self.found
                .push((c.ident.to_string(), s.value(), s.span().start().line));
            return;
        }
        syn::visit::visit_item_const(self, c);
    }

    fn visit_lit_str(&mut self, s: &'ast syn::LitStr) {
        self.literals.push((s.value(), s.span().start().line));
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // Literals inside macro calls (`format!("/nodes/{id}")`).
        for t in m.tokens.clone() {
            collect_literals(t, &mut self.literals);
        }
    }
}

fn collect_literals(t: proc_macro2::TokenTree, out: &mut Vec<(String, usize)>) {
    match t {
        proc_macro2::TokenTree::Group(g) => {
            for t in g.stream() {
                collect_literals(t, out);
            }
        }
        proc_macro2::TokenTree::Literal(l) => {
            if let Ok(syn::Lit::Str(s)) = syn::parse_str::<syn::Lit>(&l.to_string()) {
                out.push((s.value(), l.span().start().line));
            }
        }
        _ => {}
    }
}
