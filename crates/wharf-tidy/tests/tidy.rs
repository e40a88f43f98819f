//! The tidy tests: the workspace's source tree obeys the rules of `wharf-tidy` (no import
//! circles, functions of at most 120 lines, a `//!` line on every module, crate roots that name
//! their modules, store keys in one place, a true ports table, no unused `pub` items), and each
//! rule, run on a small fixture tree that breaks it, fails.

use std::path::{Path, PathBuf};

use wharf_tidy::{Violation, circles, docs, fns, keys, ports, report, source, unused};

/// The longest a function may be, from `fn` to its closing brace.
const FN_LIMIT: usize = 120;

/// Functions allowed to be longer than `FN_LIMIT`, each with its reason. The list only
/// shrinks: an entry that no longer names a long function fails the test.
/// Entries are `("crate::module::Type::function", "why it stays long")`; none today.
const LONG_FNS: &[(&str, &str)] = &[];

/// Where the store's key prefixes are declared.
const KEYS_FILE: &str = "crates/wharf-master/src/model.rs";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

fn targets(root: &Path) -> Vec<source::Target> {
    source::workspace(root).unwrap_or_else(|e| panic!("reading the workspace: {e}"))
}

fn assert_clean(rule: &str, violations: &[Violation]) {
    if let Some(msg) = report(rule, violations) {
        panic!("{msg}");
    }
}

#[test]
fn no_import_circle_inside_any_crate() {
    let v: Vec<Violation> = targets(&workspace_root())
        .iter()
        .flat_map(circles::circles)
        .collect();
    assert_clean("no import circles", &v);
}

#[test]
fn no_function_outside_tests_is_longer_than_the_limit() {
    let v = fns::too_long(&targets(&workspace_root()), FN_LIMIT, LONG_FNS);
    assert_clean("function length", &v);
}

#[test]
fn every_module_starts_with_a_doc_line() {
    assert_clean(
        "module docs",
        &docs::missing_module_docs(&targets(&workspace_root())),
    );
}

#[test]
fn every_crate_root_names_its_modules() {
    assert_clean(
        "code map",
        &docs::code_map_gaps(&targets(&workspace_root())),
    );
}

#[test]
fn store_key_prefixes_are_declared_in_one_place() {
    let (prefixes, v) = keys::scattered_keys(&targets(&workspace_root()), Path::new(KEYS_FILE));
    assert!(
        prefixes.contains("/nodes/"),
        "no key prefixes found in {KEYS_FILE} (found {prefixes:?}): has the key layout moved?"
    );
    assert_clean("store keys in one place", &v);
}

#[test]
fn the_ports_table_matches_the_listen_flags() {
    let root = workspace_root();
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let t = targets(&root);
    assert!(
        ports::listeners(&t).iter().any(|l| l.flag == "--listen"),
        "no listen flag with a default address found: has the binary's flag syntax changed?"
    );
    assert_clean("ports table", &ports::mismatches(&t, &arch));
}

#[test]
fn no_pub_item_is_unused() {
    let root = workspace_root();
    let files = source::all_rust_files(&root).expect("the workspace's Rust files");
    let counts = unused::identifier_counts(&files);
    assert_clean(
        "unused pub items",
        &unused::unused_pub(&targets(&root), &counts),
    );
}

// ---- Each rule fails on a tree that breaks it. ----

/// A workspace of one crate `demo` with the given files under `crates/demo/src/`, and an
/// ARCHITECTURE.md.
fn fixture(files: &[(&str, &str)], architecture: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    let src = dir.path().join("crates/demo/src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        dir.path().join("crates/demo/Cargo.toml"),
        "[package]\nname = \"demo\"\n",
    )
    .unwrap();
    for (name, text) in files {
        let p = src.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    std::fs::write(dir.path().join("ARCHITECTURE.md"), architecture).unwrap();
    dir
}

#[test]
fn two_modules_naming_each_other_are_a_circle() {
    let lib = "//! Demo: `a`, `b`, `c`.\nmod a;\nmod b;\nmod c;\npub struct Root;\n";
    // a -> b through a `use`, b -> a through a path in a macro body: a circle. c -> a and c's
    // child naming its parent (`super`) and the root (`crate::Root`) are not.
    let a = "//! A.\nuse crate::b::B;\npub struct A(pub B);\n";
    let b = "//! B.\npub struct B;\npub fn f() { println!(\"{:?}\", crate::a::A::default); }\n";
    let c = "//! C.\nmod d { pub fn g() -> super::super::Root { crate::Root } }\nuse super::a;\n";
    let dir = fixture(
        &[("lib.rs", lib), ("a.rs", a), ("b.rs", b), ("c.rs", c)],
        "",
    );
    let t = targets(dir.path());
    let v = circles::circles(&t[0]);
    assert_eq!(v.len(), 1, "one circle (a <-> b): {v:?}");
    assert!(
        v[0].message.contains("`a`, `b`") && v[0].message.contains("a.rs:2"),
        "names the modules and the place: {}",
        v[0].message
    );
    // Broken along its seam (b no longer names a): no circle.
    let b = "//! B.\npub struct B;\n";
    let dir = fixture(
        &[("lib.rs", lib), ("a.rs", a), ("b.rs", b), ("c.rs", c)],
        "",
    );
    assert_eq!(circles::circles(&targets(dir.path())[0]), vec![]);
    // Code compiled only for tests does not count.
    let b = "//! B.\npub struct B;\n#[cfg(test)]\nmod tests { use crate::a::A; }\n";
    let dir = fixture(
        &[("lib.rs", lib), ("a.rs", a), ("b.rs", b), ("c.rs", c)],
        "",
    );
    assert_eq!(circles::circles(&targets(dir.path())[0]), vec![]);
}

#[test]
fn a_long_function_is_found_and_a_stale_allowance_too() {
    let body = "    let _x = 1;\n".repeat(FN_LIMIT);
    let lib = format!(
        "//! Demo.\npub fn long() {{\n{body}}}\npub struct S;\nimpl S {{\n    pub fn short(&self) {{}}\n}}\n#[cfg(test)]\nmod tests {{\n    fn long_test() {{\n{body}}}\n}}\n"
    );
    let dir = fixture(&[("lib.rs", &lib)], "");
    let t = targets(dir.path());
    let v = fns::too_long(&t, FN_LIMIT, &[]);
    assert_eq!(v.len(), 1, "only the non-test long function: {v:?}");
    assert!(
        v[0].message.contains("`demo::long` is 122 lines"),
        "{}",
        v[0]
    );
    assert_eq!(v[0].line, 2);
    assert_eq!(
        fns::too_long(&t, FN_LIMIT, &[("demo::long", "a reason")]),
        vec![]
    );
    let stale = fns::too_long(
        &t,
        FN_LIMIT,
        &[("demo::long", "r"), ("demo::S::short", "r")],
    );
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(
        stale[0].message.contains("`demo::S::short`"),
        "{}",
        stale[0]
    );
}

#[test]
fn a_module_without_a_doc_line_and_a_code_map_gap_are_found() {
    let lib = "//! Demo: `a` only.\nmod a;\nmod b;\n";
    let dir = fixture(
        &[("lib.rs", lib), ("a.rs", "//! A.\n"), ("b.rs", "// b\n")],
        "",
    );
    let t = targets(dir.path());
    let v = docs::missing_module_docs(&t);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].file.ends_with("crates/demo/src/b.rs"), "{}", v[0]);
    let v = docs::code_map_gaps(&t);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].message.contains("module `b`"), "{}", v[0]);
}

#[test]
fn a_key_prefix_declared_or_spelled_out_elsewhere_is_found() {
    let lib = "//! Demo: `model`, `other`.\nmod model;\nmod other;\n";
    let model = "//! Keys.\npub mod keys { pub const NODES: &str = \"/nodes/\"; }\n";
    let other = "//! Other.\npub const BLOCKS: &str = \"/netblocks/\";\npub const ROUTE: &str = \"/healthz\";\npub fn k(id: &str) -> String { format!(\"/nodes/{id}\") }\n#[cfg(test)]\nmod tests { const T: &str = \"/nodes/x\"; }\n";
    let dir = fixture(
        &[("lib.rs", lib), ("model.rs", model), ("other.rs", other)],
        "",
    );
    let (prefixes, v) =
        keys::scattered_keys(&targets(dir.path()), Path::new("crates/demo/src/model.rs"));
    assert_eq!(prefixes.into_iter().collect::<Vec<_>>(), vec!["/nodes/"]);
    assert_eq!(v.len(), 2, "BLOCKS and the format! literal: {v:?}");
    assert!(v[0].message.contains("`BLOCKS`"), "{}", v[0]);
    assert!(
        v[1].message.contains("\"/nodes/{id}\"") && v[1].line == 4,
        "{}",
        v[1]
    );
}

#[test]
fn a_listen_flag_missing_from_the_ports_table_or_a_stale_row_is_found() {
    let main = "//! Demo.\n#[derive(clap::Parser)]\nstruct Args {\n    #[arg(long, env = \"X\", default_value = \"127.0.0.1:7700\")]\n    listen: String,\n    #[arg(long, default_value = \"0.0.0.0:7701\")]\n    agent_listen: String,\n}\n";
    let table = "# A\n## Ports\n\n| port | what | bound by |\n| --- | --- | --- |\n| 7700/tcp | the API (`--listen`) | up |\n| 9000/tcp | metrics (`--metrics-listen`) | up |\n## Next\n";
    let dir = fixture(&[("main.rs", main)], table);
    let t = targets(dir.path());
    let l = ports::listeners(&t);
    assert_eq!(
        l.iter()
            .map(|l| (l.flag.as_str(), l.port))
            .collect::<Vec<_>>(),
        vec![("--listen", 7700), ("--agent-listen", 7701)]
    );
    let v = ports::mismatches(&t, table);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v[0].message
            .contains("`--agent-listen` listens on port 7701"),
        "{}",
        v[0]
    );
    assert!(v[1].message.contains("`--metrics-listen`"), "{}", v[1]);
    let wrong = table.replace("7700/tcp", "7800/tcp");
    assert!(
        ports::mismatches(&t, &wrong)
            .iter()
            .any(|v| v.message.contains("gives `--listen` port \"7800/tcp\"")),
        "a wrong port is found"
    );
}

#[test]
fn a_pub_item_named_nowhere_else_is_found() {
    let lib = "//! Demo.\npub fn used() {}\npub fn dead() {}\npub struct S;\nimpl S { pub fn method(&self) { used() } }\n#[derive(serde::Deserialize)]\npub struct C { #[serde(default = \"by_default\")] pub n: u32 }\npub fn by_default() -> u32 { 1 }\n";
    let dir = fixture(&[("lib.rs", lib)], "");
    let files = source::all_rust_files(dir.path()).unwrap();
    let counts = unused::identifier_counts(&files);
    let v = unused::unused_pub(&targets(dir.path()), &counts);
    let names: Vec<&str> = v
        .iter()
        .map(|v| v.message.split('`').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(names, vec!["dead", "method", "C"], "{v:?}");
}
