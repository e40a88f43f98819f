//! A located YAML tree built from the `granit-parser` event stream (through `serde-saphyr`).
//!
//! Every node and every mapping key keeps its line and column, anchors and aliases are resolved
//! (with a budget against alias bombs), and `<<` merge keys are applied.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{self, Event, Options, Parser, ScalarStyle, Span, StrInput};

/// Largest accepted document, in bytes.
pub const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;
/// Deepest accepted nesting of collections (Compose files need less than 20).
pub const MAX_DEPTH: usize = 64;
/// Largest number of nodes after alias expansion.
pub const MAX_NODES: usize = 500_000;

/// A 1-based line and column, and the file they are in: an index into the table of the files a
/// stack was composed of (`compose::Source`), 0 for the first (and for a lone document).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
    pub file: u32,
}

impl Pos {
    /// Line 1, column 1 of the first file.
    pub const START: Pos = Pos {
        line: 1,
        col: 1,
        file: 0,
    };
}

#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Quoted, block or `!!str`-tagged: never a null, a boolean or a number.
    pub quoted: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Map(Vec<(Key, Node)>),
    Seq(Vec<Node>),
    Scalar(Scalar),
}

/// How a node of a later file merges with the one it overrides (Compose's `!reset` and
/// `!override` tags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Tag {
    #[default]
    Merge,
    /// `!reset`: removes the value it overrides (and itself).
    Reset,
    /// `!override`: replaces the value it overrides instead of merging with it.
    Override,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: Kind,
    pub pos: Pos,
    pub tag: Tag,
}

/// A YAML-level error.
#[derive(Debug, Clone)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
    pub hint: &'static str,
}

const SYNTAX_HINT: &str = "check the YAML syntax near this position: indentation, quotes, colons";

impl Node {
    /// A node of the given kind at `pos`, untagged.
    pub fn new(kind: Kind, pos: Pos) -> Node {
        Node {
            kind,
            pos,
            tag: Tag::Merge,
        }
    }

    /// Put every node and key of the tree in file `file` (see [`Pos::file`]).
    pub fn set_file(&mut self, file: u32) {
        self.pos.file = file;
        match &mut self.kind {
            Kind::Map(entries) => {
                for (k, v) in entries {
                    k.pos.file = file;
                    v.set_file(file);
                }
            }
            Kind::Seq(items) => items.iter_mut().for_each(|v| v.set_file(file)),
            Kind::Scalar(_) => {}
        }
    }

    /// The value of `key` when this is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a scalar.
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    /// True for a plain `null`, `~` or empty scalar.
    pub fn is_null(&self) -> bool {
        match &self.kind {
            Kind::Scalar(s) => {
                !s.quoted && matches!(s.text.as_str(), "" | "~" | "null" | "Null" | "NULL")
            }
            _ => false,
        }
    }

    /// A short description for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Map(_) => "a mapping".to_string(),
            Kind::Seq(_) => "a sequence".to_string(),
            Kind::Scalar(s) => {
                if self.is_null() {
                    "null".to_string()
                } else if !s.quoted && plain_bool(&s.text).is_some() {
                    format!("boolean {}", s.text)
                } else if !s.quoted && looks_numeric(&s.text) {
                    format!("number {}", s.text)
                } else {
                    format!("string {:?}", s.text)
                }
            }
        }
    }
}

/// The YAML 1.2 core-schema booleans.
pub fn plain_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn looks_numeric(s: &str) -> bool {
    let t = s.strip_prefix(['-', '+']).unwrap_or(s);
    !t.is_empty()
        && (t
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '_' || c == 'e' || c == 'E')
            && t.chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '.')
            || matches!(t, ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN")
            || t.starts_with("0x")
            || t.starts_with("0o"))
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        col: span.start.col() + 1,
        file: 0,
    }
}

/// The merge tag of a node's YAML tag (`!reset`, `!override`), if any.
fn tag_of(tag: Option<&granit_parser::Tag>) -> Tag {
    match tag.map(|t| (t.handle(), t.suffix())) {
        Some(("!", "reset")) => Tag::Reset,
        Some(("!", "override")) => Tag::Override,
        _ => Tag::Merge,
    }
}

struct Builder<'a> {
    parser: Parser<'a, StrInput<'a>>,
    anchors: HashMap<usize, (Node, usize)>,
    count: usize,
    depth: usize,
    errors: Vec<YamlError>,
}

/// Parse one YAML document into a located tree. `Ok(None)` for an empty stream.
/// Structural problems that do not stop parsing (duplicate keys, bad merges) are returned
/// alongside the tree.
pub fn parse(src: &str) -> Result<(Option<Node>, Vec<YamlError>), YamlError> {
    if src.len() > MAX_INPUT_BYTES {
        return Err(YamlError {
            pos: Pos::START,
            message: format!(
                "the document is {} bytes, more than the limit of {} bytes",
                src.len(),
                MAX_INPUT_BYTES
            ),
            hint: "split the stack into smaller files",
        });
    }
    let mut options = Options::default();
    options.set_emit_comments(false);
    options.flow_nesting_limit = MAX_DEPTH;
    options.block_nesting_limit = MAX_DEPTH;
    let mut b = Builder {
        parser: Parser::new_from_str_with_options(src, options),
        anchors: HashMap::new(),
        count: 0,
        depth: 0,
        errors: Vec::new(),
    };
    let mut root = None;
    let mut docs = 0;
    while let Some((ev, span)) = b.next()? {
        match ev {
            Event::StreamStart | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            Event::DocumentStart(..) => {
                docs += 1;
                if docs > 1 {
                    return Err(YamlError {
                        pos: pos_of(&span),
                        message: "multiple YAML documents in one stack file are not supported"
                            .into(),
                        hint: "keep a single document: remove the extra `---` separator",
                    });
                }
            }
            ev if ev.is_node() => {
                let node = b.node(ev, span)?;
                root = Some(node);
            }
            _ => {}
        }
    }
    Ok((root, b.errors))
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<Option<(Event<'a>, Span)>, YamlError> {
        match self.parser.next_event() {
            None => Ok(None),
            Some(Ok(x)) => Ok(Some(x)),
            Some(Err(e)) => {
                let m = e.marker();
                let info = e.info();
                Err(YamlError {
                    pos: Pos {
                        line: m.line().max(1),
                        col: m.col() + 1,
                        file: 0,
                    },
                    message: if info.is_empty() {
                        "invalid YAML".to_string()
                    } else {
                        format!("invalid YAML: {info}")
                    },
                    hint: SYNTAX_HINT,
                })
            }
        }
    }

    /// The next event that is a node or a collection end.
    fn next_item(&mut self) -> Result<(Event<'a>, Span), YamlError> {
        loop {
            match self.next()? {
                None => {
                    return Err(YamlError {
                        pos: Pos::START,
                        message: "unexpected end of the YAML document".into(),
                        hint: SYNTAX_HINT,
                    });
                }
                Some((ev, span)) => {
                    if ev.is_node() || matches!(ev, Event::MappingEnd | Event::SequenceEnd) {
                        return Ok((ev, span));
                    }
                }
            }
        }
    }

    fn bump(&mut self, n: usize, pos: Pos) -> Result<(), YamlError> {
        self.count = self.count.saturating_add(n);
        if self.count > MAX_NODES {
            return Err(YamlError {
                pos,
                message: format!("the document expands to more than {MAX_NODES} nodes"),
                hint: "reduce the use of aliases (`*name`), which copy whole subtrees",
            });
        }
        Ok(())
    }

    fn node(&mut self, ev: Event<'a>, span: Span) -> Result<Node, YamlError> {
        let pos = pos_of(&span);
        if self.depth >= MAX_DEPTH {
            return Err(YamlError {
                pos,
                message: format!("the document is nested more than {MAX_DEPTH} levels deep"),
                hint: "flatten the structure",
            });
        }
        self.depth += 1;
        let r = self.node_inner(ev, span, pos);
        self.depth -= 1;
        r
    }

    fn node_inner(&mut self, ev: Event<'a>, span: Span, pos: Pos) -> Result<Node, YamlError> {
        let before = self.count;
        self.bump(1, pos)?;
        let (node, anchor) = match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let tagged_str = tag
                    .as_deref()
                    .is_some_and(|t| t.is_yaml_core_schema_tag("str"));
                let quoted = style != ScalarStyle::Plain || tagged_str;
                let scalar = Kind::Scalar(Scalar {
                    text: text.into_owned(),
                    quoted,
                });
                let tag = tag_of(tag.as_deref());
                (
                    Node {
                        kind: scalar,
                        pos,
                        tag,
                    },
                    anchor,
                )
            }
            Event::SequenceStart(_, anchor, tag) => {
                let mut items = Vec::new();
                while let Some((ev, span)) = self.next_in(true)? {
                    items.push(self.node(ev, span)?);
                }
                let tag = tag_of(tag.as_deref());
                let kind = Kind::Seq(items);
                (Node { kind, pos, tag }, anchor)
            }
            Event::MappingStart(_, anchor, tag) => {
                let mut node = self.mapping(pos)?;
                node.tag = tag_of(tag.as_deref());
                (node, anchor)
            }
            Event::Alias(id) => {
                let Some((node, size)) = self.anchors.get(&id).cloned() else {
                    return Err(YamlError {
                        pos,
                        message:
                            "alias refers to an anchor that is not defined yet (recursive alias)"
                                .into(),
                        hint: "an alias can only refer to a complete node defined before it",
                    });
                };
                self.bump(size, pos)?;
                (node, 0)
            }
            Event::UnresolvedAlias(name) => {
                return Err(YamlError {
                    pos,
                    message: format!("unknown anchor {name:?}"),
                    hint: "define the anchor with `&name` before using `*name`",
                });
            }
            _ => return Err(self.unexpected(&span)),
        };
        if anchor != 0 {
            let size = self.count - before;
            self.anchors.insert(anchor, (node.clone(), size));
        }
        Ok(node)
    }

    /// The next node of the sequence (`in_seq`) or mapping being read; `None` at its end. The
    /// end of the other kind of collection there is an error.
    fn next_in(&mut self, in_seq: bool) -> Result<Option<(Event<'a>, Span)>, YamlError> {
        let (ev, span) = self.next_item()?;
        match ev {
            Event::SequenceEnd if in_seq => Ok(None),
            Event::MappingEnd if !in_seq => Ok(None),
            Event::SequenceEnd | Event::MappingEnd => Err(self.unexpected(&span)),
            _ => Ok(Some((ev, span))),
        }
    }

    fn unexpected(&self, span: &Span) -> YamlError {
        YamlError {
            pos: pos_of(span),
            message: "unexpected YAML structure".into(),
            hint: SYNTAX_HINT,
        }
    }

    fn mapping(&mut self, pos: Pos) -> Result<Node, YamlError> {
        let mut entries: Vec<(Key, Node)> = Vec::new();
        let mut merges: Vec<Node> = Vec::new();
        while let Some((ev, span)) = self.next_in(false)? {
            let key_node = self.node(ev, span)?;
            let (vev, vspan) = self.next_item()?;
            if matches!(vev, Event::MappingEnd | Event::SequenceEnd) {
                return Err(self.unexpected(&vspan));
            }
            let value = self.node(vev, vspan)?;
            let key = match &key_node.kind {
                Kind::Scalar(s) => {
                    if !s.quoted && s.text == "<<" {
                        merges.push(value);
                        continue;
                    }
                    Key {
                        name: s.text.clone(),
                        pos: key_node.pos,
                    }
                }
                _ => {
                    self.errors.push(YamlError {
                        pos: key_node.pos,
                        message: format!(
                            "mapping keys must be scalars, found {}",
                            key_node.describe()
                        ),
                        hint: "use a plain string as the key",
                    });
                    continue;
                }
            };
            if entries.iter().any(|(k, _)| k.name == key.name) {
                self.errors.push(YamlError {
                    pos: key.pos,
                    message: format!("duplicate key {:?}", key.name),
                    hint: "each key may appear only once in a mapping; remove or rename one",
                });
                continue;
            }
            entries.push((key, value));
        }
        for m in merges {
            let sources = match m.kind {
                Kind::Map(_) => vec![m],
                Kind::Seq(items) => items,
                _ => {
                    self.errors.push(YamlError {
                        pos: m.pos,
                        message: format!(
                            "a merge key (<<) needs a mapping or a list of mappings, found {}",
                            m.describe()
                        ),
                        hint: "write `<<: *anchor` where the anchor names a mapping",
                    });
                    continue;
                }
            };
            for src in sources {
                match src.kind {
                    Kind::Map(items) => {
                        for (k, v) in items {
                            if !entries.iter().any(|(e, _)| e.name == k.name) {
                                entries.push((k, v));
                            }
                        }
                    }
                    _ => self.errors.push(YamlError {
                        pos: src.pos,
                        message: format!(
                            "a merge key (<<) needs a mapping or a list of mappings, found {}",
                            src.describe()
                        ),
                        hint: "write `<<: [*a, *b]` where each anchor names a mapping",
                    }),
                }
            }
        }
        Ok(Node::new(Kind::Map(entries), pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_merges() {
        let src = "base: &b\n  a: 1\n  b: 2\nx:\n  <<: *b\n  b: 3\n";
        let (root, errs) = parse(src).expect("parses");
        assert!(errs.is_empty());
        let Some(Node {
            kind: Kind::Map(top),
            ..
        }) = root
        else {
            panic!("map")
        };
        assert_eq!(top[1].0.name, "x");
        assert_eq!(
            top[1].0.pos,
            Pos {
                line: 4,
                col: 1,
                file: 0
            }
        );
        let Kind::Map(x) = &top[1].1.kind else {
            panic!("map")
        };
        let names: Vec<_> = x.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        let Kind::Scalar(s) = &x[0].1.kind else {
            panic!("scalar")
        };
        assert_eq!(s.text, "3");
    }

    #[test]
    fn deep_nesting_is_bounded_not_a_crash() {
        for depth in [200, 300, 5000] {
            let src = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let _ = parse(&src);
            let block: String = (0..depth)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect();
            let _ = parse(&block);
        }
    }

    #[test]
    fn alias_bomb_is_rejected() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse(&src).expect_err("budget");
        assert!(err.message.contains("expands"), "{}", err.message);
    }
}
