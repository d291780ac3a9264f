//! The gRPC status service (`ferry.v1.Status`).

use std::sync::Arc;

use ferry_proto::v1::status_server::{Status, StatusServer};
use ferry_proto::v1::{GetStatusRequest, GetStatusResponse, WalPosition};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::node::Node;

struct StatusService {
    node: Arc<Node>,
}

#[tonic::async_trait]
impl Status for StatusService {
    async fn get_status(
        &self,
        _request: tonic::Request<GetStatusRequest>,
    ) -> Result<tonic::Response<GetStatusResponse>, tonic::Status> {
        let node = &self.node;
        Ok(tonic::Response::new(GetStatusResponse {
            role: "primary".into(),
            cluster_id: String::new(),
            node_id: node.run_id.clone(),
            wal: Some(WalPosition {
                first_retained_lsn: node.wal.first_lsn().0,
                last_lsn: node.wal.last_lsn().0,
                durable_lsn: node.wal.durable_lsn().0,
                epoch: node.wal.epoch().0,
            }),
            applied_lsn: node.engine.applied_lsn().0,
        }))
    }
}

/// Serves the status service on `listener` until `stop` turns true.
///
/// # Errors
///
/// The gRPC server failing.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(StatusServer::new(StatusService { node }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            let _ = stop.wait_for(|&s| s).await;
        })
        .await?;
    Ok(())
}
