//! TCP proxying: each accepted connection goes to one endpoint of the listener's pool (round
//! robin or least connections over serving, non-ejected endpoints; a connect failure moves on to
//! another endpoint), then bytes are copied both ways until either side closes.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::backend::{InFlight, Tried};
use crate::runtime::TcpRt;

pub(crate) async fn serve(route: Arc<TcpRt>, mut client: TcpStream, peer: SocketAddr) {
    let pool = &route.pool;
    let mut tried = Tried::default();
    let mut failures = 0;
    while let Some(i) = pool.pick(tried) {
        tried.add(i);
        let ep = &pool.endpoints[i];
        let _flight = InFlight::new(ep.clone());
        match ep.connect_tcp(route.connect_timeout).await {
            Ok(mut upstream) => {
                ep.connect_succeeded();
                let copied = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                tracing::debug!(%peer, backend = %pool.name, endpoint = %ep.id, ?copied, "tcp connection closed");
                return;
            }
            Err(e) => {
                ep.connect_failed(&pool.health, &e);
                failures += 1;
                if failures > pool.health.retries {
                    break;
                }
            }
        }
    }
    tracing::warn!(%peer, backend = %pool.name, "tcp connection dropped: no endpoint available");
}
