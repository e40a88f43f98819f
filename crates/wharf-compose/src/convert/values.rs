//! Typed readers of YAML values (strings, numbers, booleans, durations, lists, key=value maps,
//! commands): each reports a located error and yields `None` when the value is not what is asked.

use std::collections::BTreeMap;

use crate::units;
use crate::yaml::{Kind, Node, Pos, plain_bool};

use super::{Cx, Entries, items, join, suggest};

/// Split a command line like a POSIX shell would (quotes and backslashes; no expansion).
pub(super) fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(format!("unterminated double quote in {s:?}")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated double quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => cur.push(c),
                    None => return Err(format!("trailing backslash in {s:?}")),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

impl Cx<'_> {
    /// A string that must be one of `table`'s names: the value it names; otherwise a located
    /// error (`{path}: {what} "{value}"`) whose hint comes from the table: the closest name
    /// (did you mean), or all of them.
    pub(super) fn one_of<T: Copy>(
        &mut self,
        n: &Node,
        path: &str,
        what: &str,
        table: &[(&str, T)],
    ) -> Option<T> {
        let s = self.string(n, path)?;
        if let Some((_, value)) = table.iter().find(|(name, _)| *name == s) {
            return Some(*value);
        }
        let names: Vec<&str> = table.iter().map(|(name, _)| *name).collect();
        let hint = match suggest(&s, &names) {
            Some(close) => format!("did you mean {close:?}?"),
            None => format!("use {}", or_list(&names)),
        };
        self.error(n.pos, format!("{path}: {what} {s:?}"), hint);
        None
    }

    pub(super) fn map<'n>(&mut self, n: &'n Node, path: &str) -> Option<&'n Entries> {
        match &n.kind {
            Kind::Map(e) => Some(e),
            _ if n.is_null() => Some(&[]),
            _ => {
                self.type_error(
                    n,
                    path,
                    "a mapping",
                    "write it as indented `key: value` lines",
                );
                None
            }
        }
    }

    /// The items of a list; otherwise a located error (`{path}: expected {what}`) with `hint`.
    pub(super) fn seq<'n>(
        &mut self,
        n: &'n Node,
        path: &str,
        what: &str,
        hint: &str,
    ) -> Option<&'n [Node]> {
        match &n.kind {
            Kind::Seq(items) => Some(items),
            _ => {
                self.type_error(n, path, what, hint);
                None
            }
        }
    }

    /// A list read item by item: `each` gets every item with its path (`path[i]`) and adds what
    /// it reads to the result. Not a list: a located error (`{path}: expected a list`) with
    /// `hint`, and nothing read.
    pub(super) fn list<T>(
        &mut self,
        n: &Node,
        path: &str,
        hint: &str,
        mut each: impl FnMut(&mut Self, &Node, &str, &mut Vec<T>),
    ) -> Vec<T> {
        let mut out = Vec::new();
        if let Some(list) = self.seq(n, path, "a list", hint) {
            for (it, ip) in items(list, path) {
                each(self, it, &ip, &mut out);
            }
        }
        out
    }

    pub(super) fn string(&mut self, n: &Node, path: &str) -> Option<String> {
        match &n.kind {
            Kind::Scalar(s) if !n.is_null() => Some(s.text.clone()),
            _ => {
                self.type_error(
                    n,
                    path,
                    "a string",
                    "write a single value, quoted if needed",
                );
                None
            }
        }
    }

    pub(super) fn uint(&mut self, n: &Node, path: &str) -> Option<u64> {
        if let Kind::Scalar(s) = &n.kind
            && !n.is_null()
            && let Ok(v) = s.text.trim().parse::<u64>()
        {
            return Some(v);
        }
        self.type_error(n, path, "an integer", "write a whole number, e.g. 3");
        None
    }

    pub(super) fn u32(&mut self, n: &Node, path: &str) -> Option<u32> {
        let v = self.uint(n, path)?;
        match u32::try_from(v) {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(
                    n.pos,
                    format!("{path}: {v} is too large"),
                    "use a smaller number",
                );
                None
            }
        }
    }

    pub(super) fn bool(&mut self, n: &Node, path: &str) -> Option<bool> {
        if let Kind::Scalar(s) = &n.kind
            && let Some(b) = plain_bool(&s.text)
        {
            return Some(b);
        }
        self.type_error(n, path, "a boolean", "write true or false");
        None
    }

    pub(super) fn duration(&mut self, n: &Node, path: &str) -> Option<u64> {
        let s = self.string(n, path)?;
        match units::parse_duration_ms(&s) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(
                    n.pos,
                    format!("{path}: {e}"),
                    "write a duration such as 10s, 1m30s, 500ms or 2h",
                );
                None
            }
        }
    }

    /// A size: a number of bytes or a string with a unit (`512m`, `1g`).
    pub(super) fn size(&mut self, n: &Node, path: &str) -> Option<u64> {
        let s = self.string(n, path)?;
        match units::parse_size(&s) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(
                    n.pos,
                    format!("{path}: {e}"),
                    "write a size such as 512m, 1g, 64k or a number of bytes",
                );
                None
            }
        }
    }

    /// A string or a list of strings (`dns: 8.8.8.8` or `dns: [8.8.8.8, 1.1.1.1]`).
    pub(super) fn str_or_list(&mut self, n: &Node, path: &str) -> Vec<String> {
        match &n.kind {
            Kind::Scalar(s) => vec![s.text.clone()],
            _ => self.str_list(n, path).unwrap_or_default(),
        }
    }

    pub(super) fn str_list(&mut self, n: &Node, path: &str) -> Option<Vec<String>> {
        let list = self.seq(
            n,
            path,
            "a list",
            "write a YAML list: [a, b] or `- a` lines",
        )?;
        let mut out = Vec::new();
        for (it, ip) in items(list, path) {
            if let Some(s) = self.string(it, &ip) {
                out.push(s);
            }
        }
        Some(out)
    }

    /// A string (split shell-like) or a list of strings.
    pub(super) fn command(&mut self, n: &Node, path: &str) -> Option<Vec<String>> {
        match &n.kind {
            Kind::Seq(_) => self.str_list(n, path),
            Kind::Scalar(s) => match shell_split(&s.text) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.error(
                        n.pos,
                        format!("{path}: {e}"),
                        "balance the quotes, or write the command as a list",
                    );
                    None
                }
            },
            Kind::Map(_) => {
                self.type_error(
                    n,
                    path,
                    "a string or a list",
                    "write a command line or a list",
                );
                None
            }
        }
    }

    /// A `KEY: value` mapping or a `KEY=value` list; `None` values are `KEY` without a value.
    pub(super) fn key_values(
        &mut self,
        n: &Node,
        path: &str,
    ) -> Vec<(String, Option<String>, Pos)> {
        let mut out = Vec::new();
        match &n.kind {
            Kind::Map(entries) => {
                for (k, v) in entries {
                    let val = match &v.kind {
                        _ if v.is_null() => None,
                        Kind::Scalar(s) => Some(s.text.clone()),
                        _ => {
                            self.type_error(
                                v,
                                &join(path, &k.name),
                                "a string, number, boolean or null",
                                "write a single value, quoted if needed",
                            );
                            continue;
                        }
                    };
                    out.push((k.name.clone(), val, k.pos));
                }
            }
            Kind::Seq(items) => {
                for (i, it) in items.iter().enumerate() {
                    let Some(s) = self.string(it, &format!("{path}[{i}]")) else {
                        continue;
                    };
                    match s.split_once('=') {
                        Some((k, v)) => out.push((k.to_string(), Some(v.to_string()), it.pos)),
                        None => out.push((s, None, it.pos)),
                    }
                }
            }
            _ if n.is_null() => {}
            _ => self.type_error(
                n,
                path,
                "a mapping or a list",
                "write `KEY: value` lines or a list of KEY=value",
            ),
        }
        for (k, _, pos) in &out {
            if k.is_empty() || k.chars().any(char::is_whitespace) {
                let msg = format!("{path}: invalid name {k:?}");
                self.error(*pos, msg, "names cannot be empty or contain spaces");
            }
        }
        out
    }

    /// Labels and similar string maps: `KEY` alone means an empty value.
    pub(super) fn labels(&mut self, n: &Node, path: &str) -> BTreeMap<String, String> {
        self.key_values(n, path)
            .into_iter()
            .map(|(k, v, _)| (k, v.unwrap_or_default()))
            .collect()
    }

    /// Environment-like maps: `KEY` alone (or a null value) takes the value from the caller's
    /// environment and is omitted when unset.
    pub(super) fn env_values(&mut self, n: &Node, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v, _) in self.key_values(n, path) {
            let v = v.or_else(|| self.vars.get(&k).map(str::to_string));
            if let Some(v) = v {
                out.insert(k, v);
            }
        }
        out
    }

    // ---------------------------------------------------------------- top level
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}
