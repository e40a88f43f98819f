//! Matching placement constraints (typed and parsed in `wharf_types::constraint`) against nodes.

use wharf_types::constraint::{Constraint, ConstraintOp, NodeAttr};

use crate::NodeView;

/// The node's value for a node attribute; `None` for a missing label.
pub fn attr_value<'a>(attr: &NodeAttr, node: &'a NodeView) -> Option<&'a str> {
    match attr {
        NodeAttr::Id => Some(&node.id),
        NodeAttr::Hostname => Some(&node.hostname),
        NodeAttr::Role => Some(&node.role),
        NodeAttr::Label(l) => node.labels.get(l).map(String::as_str),
    }
}

/// Whether `node` satisfies the constraint. A missing label never equals any value, so
/// `node.labels.x == v` fails and `node.labels.x != v` holds on a node without `x`.
pub fn matches(c: &Constraint, node: &NodeView) -> bool {
    let equal = attr_value(&c.attr, node) == Some(c.value.as_str());
    match c.op {
        ConstraintOp::Eq => equal,
        ConstraintOp::Ne => !equal,
    }
}
