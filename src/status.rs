//! The gRPC server of a node: `ferry.v1.Status`, `ferry.v1.Admin`,
//! `ferry.v1.Replication` (the shipper), the standard health service, and
//! server reflection so `grpcurl` can list and call them.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::v1::admin_server::{Admin, AdminServer};
use ferry_proto::v1::status_server::{Status, StatusServer};
use ferry_proto::v1::{
    DisconnectReplicaRequest, DisconnectReplicaResponse, DropSlotRequest, DropSlotResponse,
    EpochStart, GetStatusRequest, GetStatusResponse, Lag, PrimaryLink, PromoteRequest,
    PromoteResponse, ReplicaOfRequest, ReplicaOfResponse, ReplicaRow, RetentionSlot, SnapshotSync,
    SwitchoverRequest, SwitchoverResponse, WalPosition,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::node::Node;

struct StatusService {
    node: Arc<Node>,
}

/// The status of `node`, as `GetStatus` answers it.
pub fn status(node: &Node) -> GetStatusResponse {
    let replicas = node
        .shipper
        .list()
        .into_iter()
        .map(|r| ReplicaRow {
            node_id: r.node_id,
            addr: r.addr,
            resp_addr: r.resp_addr,
            state: r.state.as_str().into(),
            sent_lsn: r.sent_lsn.0,
            written_lsn: r.written_lsn.0,
            flushed_lsn: r.flushed_lsn.0,
            applied_lsn: r.applied_lsn.0,
            lag: Some(Lag {
                records: r.lag.records,
                bytes: r.lag.bytes,
                ms: r.lag.ms,
            }),
            last_ack_age_ms: r.last_ack_age.as_millis() as u64,
            frames_sent: r.frames_sent,
            bytes_sent: r.bytes_sent,
        })
        .collect();
    let applied = node.engine.applied_lsn();
    let primary_link = node.link_status().map(|l| {
        let records = l.primary_durable_lsn.0.saturating_sub(applied.0);
        PrimaryLink {
            primary: l.primary,
            state: l.state.into(),
            link_up: l.link_up,
            down_since_seconds: l.down_since.map_or(0, |t| t.elapsed().as_secs()),
            last_io_age_ms: l.last_io.map_or(0, |t| t.elapsed().as_millis() as u64),
            primary_durable_lsn: l.primary_durable_lsn.0,
            lag: Some(Lag {
                records,
                bytes: if records == 0 { 0 } else { l.primary_lag_bytes },
                ms: if records == 0 { 0 } else { l.primary_lag_ms },
            }),
            last_refusal: l.last_refusal.unwrap_or_default(),
            last_error: l.last_error.unwrap_or_default(),
            connects: l.connects,
            frames_rejected: l.frames_rejected,
            frames_received: l.frames_received,
            bytes_received: l.bytes_received,
            sync: l.sync.map(|p| SnapshotSync {
                rate_bytes_per_sec: p.rate(),
                eta_ms: p.eta().map_or(0, |d| d.as_millis() as u64),
                elapsed_ms: p.started.elapsed().as_millis() as u64,
                snapshot_id: p.snapshot_id,
                lsn: p.lsn.0,
                total_bytes: p.total_bytes,
                done_bytes: p.done_bytes,
            }),
            bootstraps: l.bootstraps,
            snapshot_chunks_rejected: l.snapshot_chunks_rejected,
            snapshot_bytes_received: l.snapshot_bytes_received,
        }
    });
    let connected: Vec<String> = node.shipper.list().into_iter().map(|r| r.node_id).collect();
    let slots = node
        .shipper
        .slots()
        .into_iter()
        .map(|s| RetentionSlot {
            active: connected.contains(&s.node_id),
            node_id: s.node_id,
            lsn: s.lsn.0,
            retained_bytes: s.retained_bytes,
            wal_status: s.wal_status.as_str().into(),
            safe_bytes: s.safe_bytes,
        })
        .collect();
    let counters = &node.shipper.counters;
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    GetStatusResponse {
        role: if node.is_replica() {
            "replica"
        } else {
            "primary"
        }
        .into(),
        cluster_id: node.identity.cluster_id(),
        node_id: node.identity.node_id().to_string(),
        wal: Some(WalPosition {
            first_retained_lsn: node.wal.first_lsn().0,
            last_lsn: node.wal.last_lsn().0,
            durable_lsn: node.wal.durable_lsn().0,
            epoch: node.wal.epoch().0,
        }),
        applied_lsn: applied.0,
        replicas,
        primary_link,
        version: env!("CARGO_PKG_VERSION").into(),
        newer_epoch_seen: node.identity.newer_epoch_seen().unwrap_or(0),
        quarantined_records: node
            .quarantined_records
            .load(std::sync::atomic::Ordering::Relaxed),
        epoch_history: node
            .identity
            .history()
            .into_iter()
            .map(|(epoch, first_lsn)| EpochStart { epoch, first_lsn })
            .collect(),
        slots,
        wal_retention_max_bytes: node.shipper.retention.max_bytes(),
        persisted_lsn: node.engine.persisted_lsn().0,
        sync_full: count(&counters.sync_full),
        sync_partial_ok: count(&counters.sync_partial_ok),
        sync_partial_err: count(&counters.sync_partial_err),
        failover_state: node.failover_state(),
    }
}

#[tonic::async_trait]
impl Status for StatusService {
    async fn get_status(
        &self,
        _request: tonic::Request<GetStatusRequest>,
    ) -> Result<tonic::Response<GetStatusResponse>, tonic::Status> {
        Ok(tonic::Response::new(status(&self.node)))
    }
}

/// Runs a role change to its end in a task of its own: a caller that goes
/// away (a tool stopped, a connection cut) cancels the call, and must not
/// cut the change midway (the write path fenced, the link to the primary
/// stopped).
async fn to_the_end<T: Send + 'static>(
    change: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, tonic::Status> {
    tokio::spawn(change)
        .await
        .map_err(|e| tonic::Status::internal(format!("the role change failed: {e}")))
}

struct AdminService {
    node: Arc<Node>,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn replica_of(
        &self,
        request: tonic::Request<ReplicaOfRequest>,
    ) -> Result<tonic::Response<ReplicaOfResponse>, tonic::Status> {
        let primary = request.into_inner().primary;
        if primary.is_empty() {
            return Err(tonic::Status::invalid_argument(
                "name the primary's gRPC address",
            ));
        }
        let node = self.node.clone();
        match to_the_end(async move { node.replicate_from(primary).await }).await? {
            Ok(resume) => Ok(tonic::Response::new(ReplicaOfResponse {
                resume_lsn: resume.0,
            })),
            Err(e) => Err(tonic::Status::failed_precondition(format!("{e:#}"))),
        }
    }

    async fn promote(
        &self,
        request: tonic::Request<PromoteRequest>,
    ) -> Result<tonic::Response<PromoteResponse>, tonic::Status> {
        let r = request.into_inner();
        let node = self.node.clone();
        let wait = Duration::from_millis(r.wait_ms);
        match to_the_end(async move { node.promote(r.force, wait).await }).await? {
            Ok(p) => {
                let (lost_from, lost_to) = p.lost.map_or((1, 0), |(a, b)| (a.0, b.0));
                Ok(tonic::Response::new(PromoteResponse {
                    epoch: p.epoch,
                    first_lsn: p.first.0,
                    lost_from,
                    lost_to,
                }))
            }
            Err(e) => Err(tonic::Status::failed_precondition(format!("{e:#}"))),
        }
    }

    async fn switchover(
        &self,
        request: tonic::Request<SwitchoverRequest>,
    ) -> Result<tonic::Response<SwitchoverResponse>, tonic::Status> {
        let r = request.into_inner();
        let timeout = Duration::from_millis(if r.timeout_ms == 0 {
            crate::node::SWITCHOVER_TIMEOUT_DEFAULT.as_millis() as u64
        } else {
            r.timeout_ms
        });
        let node = self.node.clone();
        let switched = to_the_end(async move {
            let to = (!r.to_node_id.is_empty()).then_some(r.to_node_id.as_str());
            node.switchover(to, timeout).await
        });
        match switched.await? {
            Ok(done) => Ok(tonic::Response::new(SwitchoverResponse {
                new_primary: done.new_primary,
                node_id: done.node_id,
                epoch: done.epoch,
                first_lsn: done.first.0,
            })),
            Err(e) => Err(tonic::Status::failed_precondition(format!("{e:#}"))),
        }
    }

    async fn disconnect_replica(
        &self,
        request: tonic::Request<DisconnectReplicaRequest>,
    ) -> Result<tonic::Response<DisconnectReplicaResponse>, tonic::Status> {
        let node_id = request.into_inner().node_id;
        let disconnected = self.node.shipper.disconnect(&node_id) as u32;
        Ok(tonic::Response::new(DisconnectReplicaResponse {
            disconnected,
        }))
    }

    async fn drop_slot(
        &self,
        request: tonic::Request<DropSlotRequest>,
    ) -> Result<tonic::Response<DropSlotResponse>, tonic::Status> {
        let node_id = request.into_inner().node_id;
        if self
            .node
            .shipper
            .list()
            .iter()
            .any(|r| r.node_id == node_id)
        {
            return Err(tonic::Status::failed_precondition(format!(
                "replica {node_id} is connected: its slot is in use (stop the replica first)"
            )));
        }
        let dropped = self.node.shipper.retention.drop_slot(&node_id);
        if dropped {
            tracing::warn!(replica = %node_id, "retention slot dropped by an operator");
        }
        Ok(tonic::Response::new(DropSlotResponse { dropped }))
    }
}

/// How often HTTP/2 pings check that a gRPC peer is still there.
const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// TLS handshakes the gRPC listener runs at once; more connections wait
/// in the listen backlog. A silent one holds its slot for
/// [`crate::server::CLIENT_HELLO_TIMEOUT`] at most.
pub const GRPC_HANDSHAKES_MAX: usize = 1024;

/// The connections of `listener` once their TLS handshakes are done, each
/// with the node's certificate as it is when the connection comes (so a
/// reload reaches every new one). Handshakes run side by side, so a slow
/// or silent caller holds up no other. Accepting stops, and handshakes
/// under way are dropped, when `stop` turns true or the server drops the
/// stream.
fn tls_incoming(
    node: Arc<Node>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (done, incoming) = tokio::sync::mpsc::channel(GRPC_HANDSHAKES_MAX);
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(GRPC_HANDSHAKES_MAX));
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            while handshakes.try_join_next().is_some() {}
            let (slot, accepted) = tokio::select! {
                _ = stop.wait_for(|&s| s) => break,
                () = done.closed() => break,
                accepted = async {
                    let slot = slots.clone().acquire_owned().await.expect("never closed");
                    (slot, listener.accept().await)
                } => accepted,
            };
            let (socket, addr) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(crate::server::ACCEPT_RETRY_PAUSE).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let Some(config) = node.config.tls.grpc_config() else {
                tracing::error!("the gRPC listener has no TLS certificate: connection closed");
                continue;
            };
            let (node, done) = (node.clone(), done.clone());
            handshakes.spawn(async move {
                let addr = addr.to_string();
                if let Some(stream) =
                    crate::server::tls_handshake(&node, config, socket, &addr).await
                {
                    let _ = done.send(Ok(stream)).await;
                }
                // Held until the server has the connection: the slots
                // bound what waits for it too.
                drop(slot);
            });
        }
        handshakes.abort_all();
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// Serves every gRPC service on `listener` until `stop` turns true.
///
/// # Errors
///
/// The gRPC server failing.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<StatusServer<StatusService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    health
        .set_serving::<ferry_proto::v1::replication_server::ReplicationServer<ferry_shipper::ShipperService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Every service but health and reflection asks for the cluster token.
    let check = ferry_proto::auth::Check::new(node.config.cluster_token.as_deref())?;
    fn guarded<S>(
        service: S,
        check: &ferry_proto::auth::Check,
    ) -> tonic::service::interceptor::InterceptedService<S, ferry_proto::auth::Check> {
        tonic::service::interceptor::InterceptedService::new(service, check.clone())
    }
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(guarded(
            StatusServer::new(StatusService { node: node.clone() }),
            &check,
        ))
        .add_service(guarded(
            AdminServer::new(AdminService { node: node.clone() }),
            &check,
        ))
        .add_service(guarded(node.shipper.service(), &check));
    let accepting = stop.clone();
    let stopped = async move {
        let _ = stop.wait_for(|&s| s).await;
    };
    if node.config.tls.serves() {
        let incoming = tls_incoming(node.clone(), listener, accepting);
        router
            .serve_with_incoming_shutdown(incoming, stopped)
            .await?;
    } else {
        // tonic goes on to the next connection at once after a failed
        // accept: the pause keeps that from spinning.
        let incoming = TcpListenerStream::new(listener).then(|socket| async move {
            match &socket {
                Ok(socket) => {
                    let _ = socket.set_nodelay(true);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(crate::server::ACCEPT_RETRY_PAUSE).await;
                }
            }
            socket
        });
        router
            .serve_with_incoming_shutdown(incoming, stopped)
            .await?;
    }
    Ok(())
}
