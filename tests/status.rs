//! The gRPC status service of a real `ferry serve`, through the generated
//! client.

mod common;

use common::metrics::{http, scrape};
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

/// `ferry serve --metrics-addr` answers Prometheus scrapes with what INFO and
/// the status service report, on a primary and on its replica.
#[test]
fn prometheus_metrics_report_the_node_its_writes_and_its_replicas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = ["--metrics-addr", "127.0.0.1:0", "--fsync", "always"];
    let primary = Server::start(&dir.path().join("primary"), &metrics);
    let replica = Server::replica(&dir.path().join("replica"), &primary.grpc_url(), &metrics);
    let mut c = primary.client();
    for i in 0..20 {
        raw(&mut c, &["SET", &format!("k{i}"), "v"]);
    }
    for i in 0..5 {
        raw(&mut c, &["SET", &format!("e{i}"), "v", "EX", "1000"]);
    }
    raw(&mut c, &["GET", "k1"]);
    raw(&mut c, &["GET", "nothing"]);
    assert!(error(&mut c, &["GET"]).starts_with("ERR wrong number"));
    assert!(error(&mut c, &["SET", "k1", "v", "EX", "x"]).starts_with("ERR value is not"));
    assert!(wait_until(
        std::time::Duration::from_secs(30),
        || caught_up(&primary, &replica)
    ));
    let p = scrape(&primary);
    let get = |m: &std::collections::HashMap<String, f64>, series: &str| -> f64 {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in {m:?}"))
    };
    assert_eq!(get(&p, "ferry_role{role=\"primary\"}"), 1.0);
    assert_eq!(get(&p, "ferry_keys"), 25.0);
    assert_eq!(get(&p, "ferry_keys_with_expiry"), 5.0);
    assert_eq!(get(&p, "ferry_wal_last_lsn"), 25.0);
    assert_eq!(get(&p, "ferry_wal_durable_lsn"), 25.0);
    assert_eq!(get(&p, "ferry_engine_applied_lsn"), 25.0);
    assert_eq!(get(&p, "ferry_wal_failed"), 0.0);
    assert_eq!(get(&p, "ferry_keyspace_hits_total"), 1.0);
    assert_eq!(get(&p, "ferry_keyspace_misses_total"), 1.0);
    assert!(get(&p, "ferry_commands_processed_total") >= 29.0);
    // As INFO commandstats and errorstats.
    assert_eq!(get(&p, "ferry_command_calls_total{cmd=\"set\"}"), 26.0);
    assert_eq!(
        get(&p, "ferry_command_failed_calls_total{cmd=\"set\"}"),
        1.0
    );
    assert_eq!(get(&p, "ferry_command_calls_total{cmd=\"get\"}"), 2.0);
    assert_eq!(
        get(&p, "ferry_command_rejected_calls_total{cmd=\"get\"}"),
        1.0
    );
    assert!(get(&p, "ferry_command_duration_seconds_total{cmd=\"set\"}") > 0.0);
    assert_eq!(get(&p, "ferry_errors_total{code=\"ERR\"}"), 2.0);
    let (p50, p999) = (
        get(
            &p,
            "ferry_command_latency_seconds{cmd=\"set\",quantile=\"0.5\"}",
        ),
        get(
            &p,
            "ferry_command_latency_seconds{cmd=\"set\",quantile=\"0.999\"}",
        ),
    );
    assert!(0.0 < p50 && p50 <= p999 && p999 < 1.0, "{p50} {p999}");
    assert!(get(&p, "ferry_wal_records_written_total") >= 25.0);
    assert!(get(&p, "ferry_wal_bytes") > 0.0);
    // Nothing flushed to the engine's files yet, but the figure is there.
    assert_eq!(get(&p, "ferry_engine_disk_bytes"), 0.0);
    // RocksDB's figures: what was written is in the memtable, none of it
    // flushed yet; nothing is stalled, and no FLUSHALL's compaction runs.
    assert!(get(&p, "ferry_rocksdb_memtable_bytes") > 0.0);
    assert_eq!(get(&p, "ferry_rocksdb_level0_files"), 0.0);
    assert_eq!(get(&p, "ferry_rocksdb_writes_stopped"), 0.0);
    assert_eq!(get(&p, "ferry_rocksdb_delayed_write_rate_bytes"), 0.0);
    assert_eq!(get(&p, "ferry_flushall_compaction_running"), 0.0);
    for series in [
        "ferry_rocksdb_pending_compaction_bytes",
        "ferry_rocksdb_running_compactions",
        "ferry_rocksdb_running_flushes",
        "ferry_rocksdb_block_cache_bytes",
    ] {
        get(&p, series);
    }
    assert!(get(&p, "process_resident_memory_bytes") > 0.0);
    assert_eq!(get(&p, "ferry_connected_replicas"), 1.0);
    let replica_id = status(replica.grpc).node_id;
    let row = |m: &std::collections::HashMap<String, f64>, name: &str| {
        m.iter()
            .find(|(series, _)| series.starts_with(&format!("{name}{{node_id=\"{replica_id}\"")))
            .map(|(_, v)| *v)
    };
    // The replica's acknowledgements reach the primary after its apply.
    assert!(wait_until(std::time::Duration::from_secs(30), || row(
        &scrape(&primary),
        "ferry_replica_applied_lsn"
    ) == Some(
        25.0
    )));
    let p = scrape(&primary);
    assert_eq!(row(&p, "ferry_replica_flushed_lsn"), Some(25.0));
    assert_eq!(row(&p, "ferry_replica_lag_records"), Some(0.0));
    assert!(row(&p, "ferry_replica_sent_bytes_total").is_some_and(|b| b > 0.0));
    assert!(p.contains_key(&format!(
        "ferry_replica_info{{node_id=\"{replica_id}\",state=\"streaming\",addr=\"{}\"}}",
        replica.resp
    )));
    let r = scrape(&replica);
    assert_eq!(get(&r, "ferry_role{role=\"replica\"}"), 1.0);
    assert_eq!(get(&r, "ferry_link_up"), 1.0);
    assert_eq!(get(&r, "ferry_link_lag_records"), 0.0);
    assert_eq!(get(&r, "ferry_keys"), 25.0);
    assert_eq!(get(&r, "ferry_keys_with_expiry"), 5.0);
    assert_eq!(get(&r, "ferry_engine_applied_lsn"), 25.0);
    assert!(get(&r, "ferry_link_frames_received_total") >= 1.0);
    assert!(!r.contains_key("ferry_connected_replicas{}"));

    // HTTP as a scraper and a stray client use it.
    let addr = primary.metrics.unwrap();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // Kept alive: two scrapes on one connection, a HEAD between them.
    let (status_code, _, first) = http(&mut stream, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status_code, 200);
    assert!(first.contains("# TYPE ferry_keys gauge"));
    let (status_code, headers, body) = http(&mut stream, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((status_code, body.as_str()), (200, ""));
    assert!(headers.iter().any(|h| h.starts_with("Content-Length: ")));
    let (status_code, _, _) = http(&mut stream, "GET /metrics?name=x HTTP/1.1\r\n\r\n");
    assert_eq!(status_code, 200);
    let (status_code, _, _) = http(&mut stream, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status_code, 404);
    let (status_code, headers, _) = http(&mut stream, "DELETE /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status_code, 405);
    assert!(headers.contains(&"Allow: GET, HEAD".into()));
    assert!(headers.contains(&"Connection: close".into()));
    // A head past the limit, garbage, and HTTP/1.0 each end their
    // connection after the answer.
    for (request, expected) in [
        (
            format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000)),
            431,
        ),
        ("\x16\x03\x01 hello\r\n\r\n".to_string(), 400),
        ("GET /metrics HTTP/1.0\r\n\r\n".to_string(), 200),
    ] {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let (status_code, headers, _) = http(&mut stream, &request);
        assert_eq!(status_code, expected, "{request:.40}");
        assert!(headers.contains(&"Connection: close".into()));
        let mut rest = Vec::new();
        use std::io::Read;
        assert_eq!(stream.read_to_end(&mut rest).expect("closed"), 0);
    }
    // The node still serves scrapes and clients.
    assert_eq!(get(&scrape(&primary), "ferry_keys"), 25.0);
}

/// The status of the node at `grpc`, asked with `token` (or none).
async fn status_with(
    grpc: std::net::SocketAddr,
    token: Option<&str>,
) -> Result<ferry_proto::v1::GetStatusResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let attach = ferry_proto::auth::Attach::new(token).expect("a valid token");
    ferry_proto::v1::status_client::StatusClient::with_interceptor(channel, attach)
        .get_status(ferry_proto::v1::GetStatusRequest {})
        .await
        .map(tonic::Response::into_inner)
}

/// `--cluster-token`: every gRPC call to a node but the health checks must
/// carry it; a replica with the right one follows its primary, one with a
/// wrong one gets nothing and says why; the tools take it too.
/// `--metrics-token` guards the metrics listener the same way.
#[tokio::test]
async fn tokens_guard_the_grpc_services_and_the_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(
        &dir.path().join("p"),
        &[
            "--cluster-token",
            "s3cret",
            "--metrics-addr",
            "127.0.0.1:0",
            "--metrics-token",
            "m3trics",
        ],
    );
    let refused = status_with(primary.grpc, None).await.expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused.message().contains("cluster token"),
        "{}",
        refused.message()
    );
    let wrong = status_with(primary.grpc, Some("s3cres"))
        .await
        .expect_err("a wrong token");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(
        wrong.message().starts_with("wrong cluster token"),
        "{}",
        wrong.message()
    );
    status_with(primary.grpc, Some("s3cret"))
        .await
        .expect("the token");
    // Health checks stay open, for load balancers.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", primary.grpc))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ferry.v1.Status".into(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");

    {
        let c = &mut primary.client();
        for i in 0..20 {
            raw(c, &["SET", &format!("k{i}"), "v"]);
        }
    }
    let last = status_with(primary.grpc, Some("s3cret"))
        .await
        .unwrap()
        .wal
        .unwrap()
        .last_lsn;
    // The right token: it follows.
    let good = Server::replica(
        &dir.path().join("good"),
        &primary.grpc_url(),
        &["--cluster-token", "s3cret"],
    );
    // A wrong one: refused, and its link says why.
    let bad = Server::replica(
        &dir.path().join("bad"),
        &primary.grpc_url(),
        &["--cluster-token", "guess"],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let g = status_with(good.grpc, Some("s3cret")).await.unwrap();
        let b = status_with(bad.grpc, Some("guess")).await.unwrap();
        let error = b
            .primary_link
            .as_ref()
            .map(|l| l.last_error.clone())
            .unwrap_or_default();
        if g.applied_lsn == last && error.contains("cluster token") {
            assert_eq!(b.applied_lsn, 0, "nothing reached the refused replica");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "good at {} of {last}; bad's link: {error:?}",
            g.applied_lsn
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(digest(&primary), digest(&good));

    // The tools: refused without it, served with the flag or the variable.
    let addr = primary.grpc_url();
    let out = ferry().args(["status", "--addr", &addr]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cluster token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(ferry().args(["status", "--addr", &addr, "--cluster-token", "s3cret"]));
    run_ok(
        ferry()
            .args(["status", "--addr", &addr])
            .env("FERRY_CLUSTER_TOKEN", "s3cret"),
    );

    // Metrics: 401 without the bearer token or with a wrong one.
    let metrics = primary.metrics.expect("metrics");
    let mut stream = std::net::TcpStream::connect(metrics).expect("connect");
    let (code, headers, _) = http(&mut stream, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(code, 401);
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("WWW-Authenticate: Bearer")),
        "{headers:?}"
    );
    let (code, _, _) = http(
        &mut stream,
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n",
    );
    assert_eq!(code, 401);
    let (code, _, body) = http(
        &mut stream,
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer m3trics\r\n\r\n",
    );
    assert_eq!(code, 200);
    assert!(body.contains("ferry_keys 20"), "{body}");

    // A switchover: the primary's call to promote the replica, and its
    // stream from it afterwards, carry the token.
    drop(bad);
    run_ok(ferry().args([
        "switchover",
        "--addr",
        &addr,
        "--cluster-token",
        "s3cret",
        "--timeout",
        "20",
    ]));
    raw(&mut good.client(), &["SET", "after", "switchover"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (g, p) = (
            status_with(good.grpc, Some("s3cret")).await.unwrap(),
            status_with(primary.grpc, Some("s3cret")).await.unwrap(),
        );
        if g.role == "primary" && p.role == "replica" && p.applied_lsn == g.applied_lsn {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the switchover: {} at {}, {} at {}",
            g.role,
            g.applied_lsn,
            p.role,
            p.applied_lsn
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(digest(&primary), digest(&good));

    // A token that cannot travel in a header is refused at start.
    let out = ferry()
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("x"))
        .args([
            "--cluster-token",
            "two words",
            "--resp-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cluster-token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Pub/Sub figures in the metrics: channels and patterns subscribed
/// to, messages queued for subscribers (one per subscriber).
#[test]
fn prometheus_metrics_report_pubsub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--metrics-addr", "127.0.0.1:0"]);
    let mut sub_con = server.client();
    let mut sub = sub_con.as_pubsub();
    sub.subscribe("news").expect("SUBSCRIBE");
    sub.psubscribe("n*").expect("PSUBSCRIBE");
    let mut c = server.client();
    for i in 0..3 {
        let delivered: i64 = redis::cmd("PUBLISH")
            .arg("news")
            .arg(i)
            .query(&mut c)
            .expect("PUBLISH");
        assert_eq!(delivered, 2);
    }
    let m = scrape(&server);
    let get = |series: &str| -> f64 {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in {m:?}"))
    };
    assert_eq!(get("ferry_pubsub_channels"), 1.0);
    assert_eq!(get("ferry_pubsub_patterns"), 1.0);
    assert_eq!(get("ferry_pubsub_shard_channels"), 0.0);
    assert_eq!(get("ferry_pubsub_messages_total"), 6.0);
    assert_eq!(get("ferry_pubsub_subscribers_closed_total"), 0.0);
}
