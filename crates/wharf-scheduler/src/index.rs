//! Indexes that make `Cluster::place` fast. Placeholder: always defers to the reference scan.

use crate::{NodeView, Request, Resources};

#[derive(Clone, Debug, Default)]
pub(crate) struct Index {}

impl Index {
    pub(crate) fn new(_nodes: &[NodeView]) -> Index {
        Index {}
    }
    pub(crate) fn place(
        &mut self,
        _nodes: &[NodeView],
        _req: &Request,
        _total: Resources,
    ) -> Option<u32> {
        None
    }
    pub(crate) fn remove_node(&mut self, _node: &NodeView, _idx: u32) {}
    pub(crate) fn insert_node(&mut self, _node: &NodeView, _idx: u32) {}
    pub(crate) fn count(&mut self, _service: &str, _idx: u32, _add: bool) {}
}
