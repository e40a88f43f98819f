//! The ports table: each listen flag of the binary with a default address (`#[arg(long, …,
//! default_value = "HOST:PORT")]` on a field) has a row in ARCHITECTURE.md's `## Ports` table
//! that names the flag and starts with that port, and each row naming a flag matches one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use syn::visit::Visit;

use crate::Violation;
use crate::source::Target;

/// A listen flag of the binary: `--listen` with its default port, and where it is declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub flag: String,
    pub port: u16,
    pub file: PathBuf,
    pub line: usize,
}

/// The flags with a `HOST:PORT` default in the targets' non-test code.
pub fn listeners(targets: &[Target]) -> Vec<Listener> {
    let mut out = Vec::new();
    for t in targets {
        for m in t.modules.iter().filter(|m| !m.test_only) {
            let mut v = Flags {
                file: &m.file,
                out: &mut out,
            };
            v.visit_file(&m.ast);
        }
    }
    out
}

/// The rows of the `## Ports` table of `architecture` (the markdown text) that name a flag:
/// flag -> (port at the start of the row, line).
pub fn table(architecture: &str) -> BTreeMap<String, (String, usize)> {
    let mut rows = BTreeMap::new();
    let mut inside = false;
    for (i, line) in architecture.lines().enumerate() {
        if line.starts_with("## ") {
            inside = line.trim() == "## Ports";
            continue;
        }
        if !inside || !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(port), Some(what)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        for flag in what.split('`').skip(1).step_by(2) {
            if flag.starts_with("--") {
                rows.insert(flag.to_string(), (port.to_string(), i + 1));
            }
        }
    }
    rows
}

/// Listeners missing from the table or with another port there, and rows naming a flag with no
/// such listener.
pub fn mismatches(targets: &[Target], architecture: &str) -> Vec<Violation> {
    let code = listeners(targets);
    let rows = table(architecture);
    let mut out = Vec::new();
    for l in &code {
        match rows.get(&l.flag) {
            None => out.push(Violation {
                file: l.file.clone(),
                line: l.line,
                message: format!(
                    "`{}` listens on port {} by default but ARCHITECTURE.md's ports table has no \
                     row naming it; hint: add `| {}/tcp | what (`{}`) | who binds it |`",
                    l.flag, l.port, l.port, l.flag
                ),
            }),
            Some((port, line)) if !port.starts_with(&l.port.to_string()) => out.push(Violation {
                file: PathBuf::from("ARCHITECTURE.md"),
                line: *line,
                message: format!(
                    "the ports table gives `{}` port {port:?}, the code's default is {} \
                         ({}:{}); hint: make them agree",
                    l.flag,
                    l.port,
                    l.file.display(),
                    l.line
                ),
            }),
            Some(_) => {}
        }
    }
    for (flag, (_, line)) in &rows {
        if !code.iter().any(|l| &l.flag == flag) {
            out.push(Violation {
                file: PathBuf::from("ARCHITECTURE.md"),
                line: *line,
                message: format!(
                    "the ports table names `{flag}`, which no flag of the binary declares with a \
                     default address; hint: take the row out or fix the flag's name"
                ),
            });
        }
    }
    out
}

struct Flags<'a> {
    file: &'a PathBuf,
    out: &'a mut Vec<Listener>,
}

impl<'ast> Visit<'ast> for Flags<'_> {
    fn visit_field(&mut self, f: &'ast syn::Field) {
        let Some(ident) = &f.ident else {
            return;
        };
        for a in f.attrs.iter().filter(|a| a.path().is_ident("arg")) {
            let syn::Meta::List(list) = &a.meta else {
                continue;
            };
            let tokens = list.tokens.to_string();
            if !tokens.split(',').any(|t| t.trim() == "long") {
                continue;
            }
            let Some(default) = tokens.split("default_value =").nth(1) else {
                continue;
            };
            let value = default.trim().split('"').nth(1).unwrap_or("");
            let Some(port) = value
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
            else {
                continue;
            };
            self.out.push(Listener {
                flag: format!("--{}", ident.to_string().replace('_', "-")),
                port,
                file: self.file.clone(),
                line: ident.span().start().line,
            });
        }
    }
}
