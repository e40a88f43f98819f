//! Function length: no function outside test code runs longer than a limit (120 lines, from
//! `fn` to its closing brace), except those on an allow-list, each with its reason.

use std::path::PathBuf;

use syn::spanned::Spanned;
use syn::visit::Visit;

use crate::Violation;
use crate::source::{Target, is_test_only};

/// A function's place and length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// `module::path::name` (methods: `module::Type::name`).
    pub name: String,
    pub file: PathBuf,
    pub line: usize,
    pub lines: usize,
}

/// Every function with a body in the target's non-test code.
pub fn functions(target: &Target) -> Vec<Function> {
    let mut out = Vec::new();
    for m in target.modules.iter().filter(|m| !m.test_only) {
        let mut v = Collector {
            here: m.path.clone(),
            owner: None,
            file: &m.file,
            out: &mut out,
        };
        v.visit_file(&m.ast);
    }
    out
}

/// Functions longer than `limit` lines that the allow-list (`(name, reason)`, names as in
/// `Function::name` prefixed with the target, `wharf-master::api::router`) does not excuse;
/// and allow-list entries that name no function over the limit (so the list only shrinks).
pub fn too_long(targets: &[Target], limit: usize, allowed: &[(&str, &str)]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut used = vec![false; allowed.len()];
    for t in targets {
        for f in functions(t) {
            if f.lines <= limit {
                continue;
            }
            let full = format!("{}::{}", t.name, f.name);
            if let Some(i) = allowed.iter().position(|(n, _)| *n == full) {
                used[i] = true;
                continue;
            }
            out.push(Violation {
                file: f.file,
                line: f.line,
                message: format!(
                    "`{full}` is {} lines long (limit {limit}); hint: split it into named steps, \
                     or allow it with a reason in tests/tidy.rs",
                    f.lines
                ),
            });
        }
    }
    for (i, (name, _)) in allowed.iter().enumerate() {
        if !used[i] {
            out.push(Violation {
                file: PathBuf::from("crates/wharf-tidy/tests/tidy.rs"),
                line: 0,
                message: format!(
                    "the allow-list names `{name}`, which is not a function over {limit} lines; \
                     hint: take it off the list"
                ),
            });
        }
    }
    out
}

struct Collector<'a> {
    here: Vec<String>,
    owner: Option<String>,
    file: &'a PathBuf,
    out: &'a mut Vec<Function>,
}

impl Collector<'_> {
    /// Records a function with a body unless it is test-only; whether to walk into it.
    fn function(
        &mut self,
        attrs: &[syn::Attribute],
        sig: &syn::Signature,
        body: &syn::Block,
    ) -> bool {
        let counted = !is_test_only(attrs);
        if counted {
            self.record(&sig.ident, sig.fn_token.span, body.span());
        }
        counted
    }

    fn record(&mut self, name: &syn::Ident, start: proc_macro2::Span, end: proc_macro2::Span) {
        let mut path = self.here.clone();
        if let Some(o) = &self.owner {
            path.push(o.clone());
        }
        path.push(name.to_string());
        let (a, b) = (start.start().line, end.end().line);
        self.out.push(Function {
            name: path.join("::"),
            file: self.file.clone(),
            line: a,
            lines: b + 1 - a,
        });
    }
}

fn type_name(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(p) => p
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default(),
        _ => "_".into(),
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if is_test_only(&m.attrs) {
            return;
        }
        if let Some((_, items)) = &m.content {
            self.here.push(m.ident.to_string());
            for i in items {
                self.visit_item(i);
            }
            self.here.pop();
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if self.function(&f.attrs, &f.sig, &f.block) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if is_test_only(&i.attrs) {
            return;
        }
        let before = self.owner.replace(type_name(&i.self_ty));
        syn::visit::visit_item_impl(self, i);
        self.owner = before;
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if self.function(&f.attrs, &f.sig, &f.block) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_trait(&mut self, t: &'ast syn::ItemTrait) {
        let before = self.owner.replace(t.ident.to_string());
        syn::visit::visit_item_trait(self, t);
        self.owner = before;
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(b) = &f.default {
            self.record(&f.sig.ident, f.sig.fn_token.span, b.span());
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}
