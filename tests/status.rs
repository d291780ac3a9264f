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
