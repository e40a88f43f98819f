//! Variable interpolation (`$VAR`, `${VAR:-default}`, `${VAR:?err}`, `$$`, ...) and `.env` parsing.

use std::collections::BTreeMap;

/// Where interpolation looks variables up: the caller's environment first, then `.env`.
pub struct Vars<'a> {
    pub env: &'a BTreeMap<String, String>,
    pub dotenv: BTreeMap<String, String>,
}

impl Vars<'_> {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .or_else(|| self.dotenv.get(name))
            .map(String::as_str)
    }
}

/// An interpolation failure (the caller attaches the location).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpError {
    pub message: String,
    pub hint: String,
}

/// The result of interpolating one string: the value and the names of unset variables that
/// defaulted to an empty string.
pub struct Interpolated {
    pub value: String,
    pub unset: Vec<String>,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Interpolate `s` against `vars`.
pub fn interpolate(s: &str, vars: &Vars<'_>) -> Result<Interpolated, InterpError> {
    let mut out = Interpolated {
        value: String::with_capacity(s.len()),
        unset: Vec::new(),
    };
    run(s, vars, &mut out, 0)?;
    Ok(out)
}

const MAX_DEPTH: usize = 16;

fn run(s: &str, vars: &Vars<'_>, out: &mut Interpolated, depth: usize) -> Result<(), InterpError> {
    if depth > MAX_DEPTH {
        return Err(InterpError {
            message: "interpolation is nested too deeply".into(),
            hint: "simplify the nested ${...} defaults".into(),
        });
    }
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.value.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.value.push('$');
                i += 2;
            }
            Some('{') => {
                // Find the matching close brace, allowing nested ${...} in the operand.
                let start = i + 2;
                let mut level = 1;
                let mut j = start;
                while j < chars.len() {
                    match chars[j] {
                        '$' if chars.get(j + 1) == Some(&'{') => {
                            level += 1;
                            j += 2;
                            continue;
                        }
                        '}' => {
                            level -= 1;
                            if level == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(InterpError {
                        message: format!("invalid interpolation in {s:?}: missing closing \"}}\""),
                        hint:
                            "close the variable reference with \"}\", or write $$ for a literal $"
                                .into(),
                    });
                }
                let inner: String = chars[start..j].iter().collect();
                braced(&inner, s, vars, out, depth)?;
                i = j + 1;
            }
            Some(&n) if is_name_start(n) => {
                let mut j = i + 1;
                while j < chars.len() && is_name_char(chars[j]) {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                match vars.get(&name) {
                    Some(v) => out.value.push_str(v),
                    None => out.unset.push(name),
                }
                i = j;
            }
            _ => {
                // A lone `$` is kept as written.
                out.value.push('$');
                i += 1;
            }
        }
    }
    Ok(())
}

fn braced(
    inner: &str,
    whole: &str,
    vars: &Vars<'_>,
    out: &mut Interpolated,
    depth: usize,
) -> Result<(), InterpError> {
    let name_len = inner
        .char_indices()
        .find(|&(_, c)| !is_name_char(c))
        .map_or(inner.len(), |(i, _)| i);
    let name = &inner[..name_len];
    let rest = &inner[name_len..];
    let bad = || {
        InterpError {
        message: format!("invalid interpolation format in {whole:?}: \"${{{inner}}}\""),
        hint: "use ${NAME}, ${NAME:-default}, ${NAME:?error} or ${NAME:+alternative}; write $$ for a literal $"
            .into(),
    }
    };
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(bad());
    }
    let value = vars.get(name);
    let set = value.is_some();
    let non_empty = value.is_some_and(|v| !v.is_empty());
    // The two-character operators first: `:-` is not `:` followed by `-`.
    let (op, operand) = if rest.is_empty() {
        ("", "")
    } else {
        let found = [":-", ":?", ":+", "-", "?", "+"]
            .into_iter()
            .find_map(|op| rest.strip_prefix(op).map(|r| (op, r)));
        found.ok_or_else(bad)?
    };
    let use_operand = match op {
        "" => {
            match value {
                Some(v) => out.value.push_str(v),
                None => out.unset.push(name.to_string()),
            }
            return Ok(());
        }
        ":-" => !non_empty,
        "-" => !set,
        ":+" => non_empty,
        "+" => set,
        _ => {
            // ":?" and "?"
            let failed = if op == ":?" { !non_empty } else { !set };
            if failed {
                let mut msg = Interpolated {
                    value: String::new(),
                    unset: Vec::new(),
                };
                run(operand, vars, &mut msg, depth + 1)?;
                let what = if set { "is empty" } else { "is not set" };
                let message = if msg.value.is_empty() {
                    format!("required variable {name} {what}")
                } else {
                    format!("required variable {name} {what}: {}", msg.value)
                };
                return Err(InterpError {
                    message,
                    hint: format!("export {name}=... or add it to .env"),
                });
            }
            false
        }
    };
    if use_operand {
        run(operand, vars, out, depth + 1)
    } else {
        if matches!(op, ":-" | "-" | ":?" | "?") {
            out.value.push_str(value.unwrap_or_default());
        }
        Ok(())
    }
}

/// A `.env` / `env_file` parse failure: 1-based line and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotenvError {
    pub line: usize,
    pub message: String,
}

/// One `env_file` or `.env` entry: `KEY=value`, or a bare `KEY` (value taken from the caller's
/// environment, `None` here).
pub type DotenvEntry = (String, Option<String>);

/// Parse a `.env` style file: `KEY=value`, `export KEY=value`, `# comments`, single- and
/// double-quoted values, bare `KEY`.
pub fn parse_dotenv(src: &str) -> Result<Vec<DotenvEntry>, DotenvError> {
    let mut out = Vec::new();
    let lines: Vec<&str> = src.lines().collect();
    let mut idx = 0;
    while idx < lines.len() {
        let lineno = idx + 1;
        let raw = lines[idx];
        idx += 1;
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim_start())),
            None => (line, None),
        };
        if key.is_empty() || key.chars().any(|c| c.is_whitespace()) {
            return Err(DotenvError {
                line: lineno,
                message: format!("invalid line {raw:?}: expected KEY=value"),
            });
        }
        let Some(value) = value else {
            out.push((key.to_string(), None));
            continue;
        };
        let parsed = if let Some(body) = value.strip_prefix('\'') {
            let mut text = body.to_string();
            // Single-quoted values may span lines.
            while !text.contains('\'') && idx < lines.len() {
                text.push('\n');
                text.push_str(lines[idx]);
                idx += 1;
            }
            match text.find('\'') {
                Some(end) => text[..end].to_string(),
                None => {
                    return Err(DotenvError {
                        line: lineno,
                        message: format!("unterminated single quote in value of {key}"),
                    });
                }
            }
        } else if let Some(body) = value.strip_prefix('"') {
            let mut text = body.to_string();
            loop {
                if let Some(v) = unescape_double(&text) {
                    break v;
                }
                if idx >= lines.len() {
                    return Err(DotenvError {
                        line: lineno,
                        message: format!("unterminated double quote in value of {key}"),
                    });
                }
                text.push('\n');
                text.push_str(lines[idx]);
                idx += 1;
            }
        } else {
            // Unquoted: a " #" starts a comment.
            let v = match value.find(" #") {
                Some(p) => &value[..p],
                None => value,
            };
            v.trim_end().to_string()
        };
        out.push((key.to_string(), Some(parsed)));
    }
    Ok(out)
}

/// The content of a double-quoted value up to its closing quote, escapes processed; `None`
/// when the closing quote is missing.
fn unescape_double(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        match c {
            '"' => return Some(out),
            '\\' => match it.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(o) => out.push(o),
                None => return None,
            },
            o => out.push(o),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_forms() {
        let src = "# c\nA=1\nexport B = two words # note\nC='x y'\nD=\"l1\\nl2\"\nE\n\nF=\n";
        let got = parse_dotenv(src).expect("parses");
        let want: Vec<DotenvEntry> = vec![
            ("A".into(), Some("1".into())),
            ("B".into(), Some("two words".into())),
            ("C".into(), Some("x y".into())),
            ("D".into(), Some("l1\nl2".into())),
            ("E".into(), None),
            ("F".into(), Some(String::new())),
        ];
        assert_eq!(got, want);
        assert_eq!(parse_dotenv("A B=1\n").expect_err("bad").line, 1);
        assert_eq!(parse_dotenv("X=1\nA=\"open\n").expect_err("bad").line, 2);
    }
}
