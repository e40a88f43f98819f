//! Placement constraints in Compose syntax (`node.labels.zone == a`): their typed form and parser,
//! shared by the Compose loader (which checks them) and the scheduler (which matches them).

use std::fmt;

/// Which node attribute a constraint or spread preference reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeAttr {
    Id,
    Hostname,
    Role,
    Label(String),
}

impl NodeAttr {
    /// Parses `node.id`, `node.hostname`, `node.role` or `node.labels.<name>`.
    pub fn parse(s: &str) -> Option<NodeAttr> {
        match s {
            "node.id" => Some(NodeAttr::Id),
            "node.hostname" => Some(NodeAttr::Hostname),
            "node.role" => Some(NodeAttr::Role),
            _ => s
                .strip_prefix("node.labels.")
                .filter(|l| !l.is_empty())
                .map(|l| NodeAttr::Label(l.to_string())),
        }
    }
}

impl fmt::Display for NodeAttr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeAttr::Id => write!(f, "node.id"),
            NodeAttr::Hostname => write!(f, "node.hostname"),
            NodeAttr::Role => write!(f, "node.role"),
            NodeAttr::Label(l) => write!(f, "node.labels.{l}"),
        }
    }
}

/// `==` or `!=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConstraintOp {
    Eq,
    Ne,
}

/// One parsed placement constraint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Constraint {
    pub attr: NodeAttr,
    pub op: ConstraintOp,
    pub value: String,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            ConstraintOp::Eq => "==",
            ConstraintOp::Ne => "!=",
        };
        write!(f, "{}{op}{}", self.attr, self.value)
    }
}

/// The forms `parse_constraint` accepts, for error hints.
pub const ACCEPTED_FORMS: &str = "node.hostname==<name>, node.id==<id>, node.role==manager|worker, \
     node.labels.<label>==<value>, each also with !=";

/// Parses a Compose placement constraint such as `node.labels.zone == a`.
pub fn parse_constraint(s: &str) -> Result<Constraint, String> {
    let fail = |what: String| Err(format!("{what}; accepted forms: {ACCEPTED_FORMS}"));
    let (lhs, op, rhs) = if let Some((l, r)) = s.split_once("==") {
        (l, ConstraintOp::Eq, r)
    } else if let Some((l, r)) = s.split_once("!=") {
        (l, ConstraintOp::Ne, r)
    } else {
        return fail(format!("constraint `{s}` has no `==` or `!=`"));
    };
    let (lhs, rhs) = (lhs.trim(), rhs.trim());
    if rhs.contains("==") || rhs.contains("!=") {
        return fail(format!("constraint `{s}` has more than one operator"));
    }
    let Some(attr) = NodeAttr::parse(lhs) else {
        return fail(format!(
            "constraint `{s}`: unknown attribute `{lhs}`{}",
            if lhs.starts_with("engine.") || lhs.starts_with("node.platform") {
                " (not supported by wharf)"
            } else {
                ""
            }
        ));
    };
    let value = rhs.trim_matches(|c| c == '"' || c == '\'');
    if value.is_empty() {
        return fail(format!("constraint `{s}` has an empty value"));
    }
    if attr == NodeAttr::Role && value != "manager" && value != "worker" {
        return fail(format!(
            "constraint `{s}`: node.role is `manager` or `worker`, not `{value}`"
        ));
    }
    Ok(Constraint {
        attr,
        op,
        value: value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<&str, &str>) {
        match (parse_constraint(input), expect) {
            (Ok(c), Ok(e)) => assert_eq!(c.to_string(), e, "{input}"),
            (Err(got), Err(e)) => assert!(
                got.contains(e) && got.contains("accepted forms"),
                "{input}: {got}"
            ),
            (got, e) => panic!("{input}: got {got:?}, expected {e:?}"),
        }
    }

    #[test]
    fn parse_cases() {
        check("node.labels.zone == a", Ok("node.labels.zone==a"));
        check("node.hostname!=h1", Ok("node.hostname!=h1"));
        check("node.role == manager", Ok("node.role==manager"));
        check("node.id == 'abc'", Ok("node.id==abc"));
        check("node.role == boss", Err("not `boss`"));
        check("node.labels.zone = a", Err("no `==` or `!=`"));
        check("node.labels. == a", Err("unknown attribute `node.labels.`"));
        check("engine.labels.x == a", Err("not supported"));
        check("node.labels.zone == ", Err("empty value"));
        check("node.labels.a == b == c", Err("more than one operator"));
    }
}
