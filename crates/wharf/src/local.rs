//! The in-process links of `wharf up`: the agent reports straight into the master's hub, and the
//! master asks the agent for logs, execs and stats by direct calls. A cluster replaces these with the agent stream.

use std::sync::Arc;

use futures::StreamExt;
use wharf_agent::{Agent, ControlPlane};
use wharf_master::hub::NodeLogLines;
use wharf_master::{Master, NodeLink};
use wharf_types::{LogQuery, NodeReport};

pub struct LocalControl {
    master: Master,
    node: String,
}

/// How often the node tells the hub it is alive: a reconciliation pass can take longer than the
/// node timeout on a busy engine, and a store write can be slow, and neither must make this very
/// node look dead (as the agent stream's beat in `wharf-agent/src/link.rs`).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(200);

impl LocalControl {
    /// The control plane of node `node`, with its heartbeat running for as long as it lives.
    pub fn start(master: Master, node: String) -> Arc<LocalControl> {
        let control = Arc::new(LocalControl { master, node });
        let weak = Arc::downgrade(&control);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(control) = weak.upgrade() else {
                    return;
                };
                control.master.hub.alive(&control.node);
            }
        });
        control
    }
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
    async fn logs(&self, instance: &str, q: LogQuery) -> Result<NodeLogLines, String> {
        let lines = self.0.logs(instance, q).await?;
        Ok(lines.map(|r| r.map_err(|e| e.describe())).boxed())
    }

    async fn exec(
        &self,
        instance: &str,
        spec: wharf_types::ExecSpec,
    ) -> Result<wharf_master::hub::NodeExec, String> {
        let io = self.0.exec(instance, &spec).await?;
        Ok(wharf_master::hub::NodeExec {
            input: io.input,
            output: io.output,
        })
    }

    async fn stats(&self) -> Result<Vec<wharf_types::InstanceStats>, String> {
        Ok(self.0.stats().await)
    }

    async fn inventory(&self, image: &str) -> Result<(wharf_types::Inventory, String), String> {
        self.0.inventory(image).await
    }
}

/// The registry mirror's source in `wharf up`: the master in this process, read directly.
pub struct LocalRegistry(pub Master);

#[async_trait::async_trait]
impl wharf_agent::mirror::Source for LocalRegistry {
    async fn fetch(
        &self,
        req: &wharf_types::FetchRequest,
    ) -> Result<wharf_agent::mirror::Content, wharf_agent::mirror::FetchError> {
        use tokio::io::AsyncReadExt;
        use wharf_agent::mirror::{Content, FetchError};
        use wharf_master::registry::fetch::Fetched;
        use wharf_types::FetchAnswer;
        match self.0.registry_fetch(req, None).await {
            Fetched::Content {
                media_type,
                digest,
                size,
                file,
            } => Ok(Content {
                media_type,
                digest,
                size,
                body: Box::new(file.take(size)),
            }),
            Fetched::Not(FetchAnswer::Missing { message }) => Err(FetchError::Missing(message)),
            Fetched::Not(other) => Err(FetchError::Failed(format!("{other:?}"))),
        }
    }
}
