//! Module docs: every module's file starts with a `//!` line saying what it is for, and each
//! crate root's doc (its code map) names every module declared in it.

use crate::Violation;
use crate::source::Target;

/// Files whose first line is not a `//!` comment.
pub fn missing_module_docs(targets: &[Target]) -> Vec<Violation> {
    let mut out = Vec::new();
    for t in targets {
        for m in &t.modules {
            let first = m.text.lines().next().unwrap_or("");
            if !first.starts_with("//!") {
                out.push(Violation {
                    file: m.file.clone(),
                    line: 1,
                    message: format!(
                        "module `{}` of {} does not start with a `//!` line; hint: say in one \
                         line what the module is for",
                        display_path(&m.path),
                        t.name
                    ),
                });
            }
        }
    }
    out
}

/// Modules declared in a crate root that its doc does not name (as `` `name` ``, `` `name.rs` ``,
/// `` `name/` `` or `` `name::…` ``).
pub fn code_map_gaps(targets: &[Target]) -> Vec<Violation> {
    let mut out = Vec::new();
    for t in targets {
        let root = t.root();
        let doc: String = root
            .text
            .lines()
            .take_while(|l| l.starts_with("//!") || l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        for m in t.modules.iter().filter(|m| m.path.len() == 1) {
            let name = &m.path[0];
            let named = ["`", ".rs", "/", "::"]
                .iter()
                .any(|end| doc.contains(&format!("`{name}{end}")));
            if !named {
                out.push(Violation {
                    file: root.file.clone(),
                    line: 1,
                    message: format!(
                        "the code map of {} (the `//!` doc of {}) does not name module `{name}`; \
                         hint: add `{name}` and what it holds",
                        t.name,
                        root.file.display()
                    ),
                });
            }
        }
    }
    out
}

fn display_path(p: &[String]) -> String {
    if p.is_empty() {
        "crate root".into()
    } else {
        p.join("::")
    }
}
