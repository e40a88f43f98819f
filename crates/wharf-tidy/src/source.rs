//! The workspace as the rules see it: each crate's targets (library, binaries), every module of
//! each with its path (`["deployer", "plan"]`) and file, parsed with `syn`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// A module of a target: its path from the crate root and the file that holds it. Inline
/// modules (`mod tests { … }`) are part of their file's module and not listed.
pub struct Module {
    pub path: Vec<String>,
    /// Relative to the workspace root.
    pub file: PathBuf,
    pub text: String,
    pub ast: syn::File,
    /// Declared `#[cfg(test)]` (or inside such a module): compiled only for tests.
    pub test_only: bool,
}

/// A compilation target (a library or a binary) of a crate and its module tree.
pub struct Target {
    /// `wharf-master` or `wharf (bin)`.
    pub name: String,
    pub modules: Vec<Module>,
}

impl Target {
    /// The root module (`lib.rs` or `main.rs`).
    pub fn root(&self) -> &Module {
        &self.modules[0]
    }
}

/// Every target of every crate under `crates/`, in name order.
pub fn workspace(root: &Path) -> Result<Vec<Target>, String> {
    let crates = root.join("crates");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&crates)
        .map_err(|e| format!("{}: {e}", crates.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    let mut targets = Vec::new();
    for dir in dirs {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let src = dir.join("src");
        if src.join("lib.rs").is_file() {
            targets.push(target(root, name.clone(), &src.join("lib.rs"))?);
        }
        if src.join("main.rs").is_file() {
            targets.push(target(root, format!("{name} (bin)"), &src.join("main.rs"))?);
        }
    }
    Ok(targets)
}

/// The module tree from a root file, following `mod x;` to `x.rs` or `x/mod.rs`.
pub fn target(root: &Path, name: String, root_file: &Path) -> Result<Target, String> {
    let mut modules = Vec::new();
    let dir = root_file.parent().unwrap_or(Path::new("")).to_path_buf();
    load(root, Vec::new(), false, root_file, &dir, &mut modules)?;
    Ok(Target { name, modules })
}

fn load(
    root: &Path,
    path: Vec<String>,
    test_only: bool,
    file: &Path,
    children_dir: &Path,
    out: &mut Vec<Module>,
) -> Result<(), String> {
    let text = fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let ast = syn::parse_file(&text).map_err(|e| {
        let at = e.span().start();
        format!("{}:{}:{}: {e}", file.display(), at.line, at.column + 1)
    })?;
    let mut children = Vec::new();
    for item in &ast.items {
        if let syn::Item::Mod(m) = item
            && m.content.is_none()
        {
            children.push((m.ident.to_string(), test_only || is_test_only(&m.attrs)));
        }
    }
    let rel = file.strip_prefix(root).unwrap_or(file).to_path_buf();
    out.push(Module {
        path: path.clone(),
        file: rel,
        text,
        ast,
        test_only,
    });
    for (child, child_test_only) in children {
        let flat = children_dir.join(format!("{child}.rs"));
        let nested = children_dir.join(&child).join("mod.rs");
        let (file, dir) = if flat.is_file() {
            (flat, children_dir.join(&child))
        } else if nested.is_file() {
            (nested, children_dir.join(&child))
        } else {
            return Err(format!(
                "{}: `mod {child};` has neither {child}.rs nor {child}/mod.rs",
                file.display()
            ));
        };
        let mut p = path.clone();
        p.push(child);
        load(root, p, child_test_only, &file, &dir, out)?;
    }
    Ok(())
}

/// Whether an item is compiled only for tests (`#[cfg(test)]`, or a `cfg` naming `test` inside
/// `all(…)`).
pub fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && {
            let tokens = match &a.meta {
                syn::Meta::List(l) => l.tokens.to_string(),
                _ => String::new(),
            };
            tokens == "test" || (tokens.starts_with("all") && tokens.contains("test"))
        }
    })
}

/// Every `.rs` file under the workspace's crates (sources, tests, benches), with its text,
/// relative to the root, in path order.
pub fn all_rust_files(root: &Path) -> Result<BTreeMap<PathBuf, String>, String> {
    let mut out = BTreeMap::new();
    walk(root, &root.join("crates"), &mut out)?;
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target" || n == "fuzz") {
                continue;
            }
            walk(root, &p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            let text = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            out.insert(p.strip_prefix(root).unwrap_or(&p).to_path_buf(), text);
        }
    }
    Ok(())
}
