//! The gRPC status service of a real `ferry serve`, through the generated
//! client.

mod common;

use common::*;
use ferry_proto::v1::GetStatusRequest;
use ferry_proto::v1::status_client::StatusClient;

#[tokio::test]
async fn status_reports_the_wal_and_engine_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &["--fsync", "always"]);
    let mut c = server.client();
    for i in 0..10 {
        raw(&mut c, &["SET", &format!("k{i}"), "v"]);
    }
    raw(&mut c, &["GET", "k1"]);
    let mut client = StatusClient::connect(format!("http://{}", server.grpc))
        .await
        .expect("connect");
    let status = client
        .get_status(GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.role, "primary");
    let wal = status.wal.expect("wal position");
    assert_eq!(wal.first_retained_lsn, 1);
    assert_eq!(wal.last_lsn, 10, "one record per SET");
    assert_eq!(wal.durable_lsn, 10);
    assert_eq!(status.applied_lsn, 10);
    assert_eq!(status.node_id.len(), 40);
}

#[tokio::test]
async fn grpc_health_and_reflection_list_every_service() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &[]);
    let url = format!("http://{}", server.grpc);
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    for service in ["ferry.v1.Status", "ferry.v1.Admin", "ferry.v1.Replication"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "{service}");
    }
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = replies.message().await.expect("a reply").expect("one");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ferry.v1.Admin",
            "ferry.v1.Replication",
            "ferry.v1.Status",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection"
        ]
    );
}
