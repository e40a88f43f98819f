//! The in-process links of `wharf up`: the agent reports straight into the master's hub, and the
//! master asks the agent for logs by a direct call. A cluster replaces these with the agent stream.

use std::sync::Arc;

use futures::StreamExt;
use wharf_agent::{Agent, ControlPlane};
use wharf_master::hub::NodeLogLines;
use wharf_master::{Master, NodeLink};
use wharf_types::NodeReport;

pub struct LocalControl {
    pub master: Master,
    pub node: String,
}

#[async_trait::async_trait]
impl ControlPlane for LocalControl {
    async fn report(&self, report: NodeReport) -> Result<(), String> {
        self.master
            .hub
            .report(&self.node, report)
            .await
            .map_err(|e| e.to_string())
    }
}

pub struct LocalLink(pub Arc<Agent>);

#[async_trait::async_trait]
impl NodeLink for LocalLink {
    async fn logs(
        &self,
        instance: &str,
        follow: bool,
        tail: Option<u64>,
    ) -> Result<NodeLogLines, String> {
        let lines = self.0.logs(instance, follow, tail).await?;
        Ok(lines.map(|r| r.map_err(|e| e.describe())).boxed())
    }
}
