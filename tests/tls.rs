//! TLS on the gRPC channel of real `ferry serve` nodes: the replication
//! stream, status and admin calls, the tools, a switchover; certificates
//! from a test CA made here, and from a second CA a node must not trust.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;
use ferry_proto::tls::{ClientAuth, Tls, TlsFiles};
use ferry_proto::v1::{GetStatusRequest, GetStatusResponse};
use tokio_rustls::rustls;

/// A CA and the certificates it signed, as PEM files in a directory.
struct Pki {
    ca: PathBuf,
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem()).expect("write the CA");
        Pki {
            ca,
            dir: dir.to_path_buf(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for loopback (`localhost`, 127.0.0.1), good for
    /// serving and for calling; its PEM files (certificate, key).
    fn node(&self, name: &str) -> (PathBuf, PathBuf) {
        self.node_named(name, true)
    }

    /// The files of a caller with a certificate of this CA, trusting it
    /// alone.
    fn caller(&self, name: &str) -> TlsFiles {
        let (cert, key) = self.node(name);
        TlsFiles {
            cert: Some(cert),
            key: Some(key),
            ca: Some(self.ca.clone()),
        }
    }

    /// As [`Pki::node`], with 127.0.0.1 among its names or not.
    fn node_named(&self, name: &str, with_ip: bool) -> (PathBuf, PathBuf) {
        self.node_with(name, with_ip, None)
    }

    /// As [`Pki::node`], valid until the start of `until_year` (rcgen's
    /// default is 4096).
    fn node_until(&self, name: &str, until_year: i32) -> (PathBuf, PathBuf) {
        self.node_with(name, true, Some(until_year))
    }

    fn node_with(&self, name: &str, with_ip: bool, until_year: Option<i32>) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        if let Some(year) = until_year {
            params.not_after = rcgen::date_time_ymd(year, 1, 1);
        }
        if with_ip {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
        (cert_path, key_path)
    }
}

/// One CA file holding the certificates of `cas`, for a caller that
/// trusts them all.
fn bundle(dir: &Path, cas: &[&Path]) -> PathBuf {
    let path = dir.join("bundle-ca.pem");
    let pem: Vec<u8> = cas
        .iter()
        .flat_map(|ca| std::fs::read(ca).expect("a CA"))
        .collect();
    std::fs::write(&path, pem).expect("write the bundle");
    path
}

/// `ferry serve` (and tool) flags for a certificate, its key and a CA.
fn tls_flags<'a>(cert: &'a Path, key: &'a Path, ca: &'a Path) -> Vec<&'a str> {
    vec![
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.to_str().unwrap(),
    ]
}

/// The status of the node at `url`, called with `files`.
async fn status_over(url: &str, files: &TlsFiles) -> Result<GetStatusResponse, String> {
    let tls = Tls::load(files, ClientAuth::default()).expect("the caller's TLS files");
    let channel = tls
        .endpoint(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| ferry_proto::tls::causes(&e))?;
    tokio::time::timeout(
        Duration::from_secs(10),
        ferry_proto::v1::status_client::StatusClient::new(channel).get_status(GetStatusRequest {}),
    )
    .await
    .map_err(|_| "no answer".to_string())?
    .map(tonic::Response::into_inner)
    .map_err(|s| format!("{s}"))
}

/// Whether a call's error says the node it called ended the handshake:
/// with TLS 1.3 the caller learns of a refused certificate from the alert,
/// or from the connection closing as it reads or writes, whichever comes
/// first.
fn refused_by_peer(err: &str) -> bool {
    ["received fatal alert", "connection closed", "broken pipe"]
        .iter()
        .any(|sign| err.contains(sign))
}

fn https(addr: SocketAddr) -> String {
    format!("https://{addr}")
}

/// Waits until `ok` holds for the status of the node at `url`.
async fn wait_status(
    url: &str,
    files: &TlsFiles,
    what: &str,
    mut ok: impl FnMut(&GetStatusResponse) -> bool,
) -> GetStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = status_over(url, files).await;
        if let Ok(s) = &status
            && ok(s)
        {
            return status.unwrap();
        }
        assert!(Instant::now() < deadline, "{what}: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// With a certificate, key and CA on every node: the replication stream
/// runs over TLS (nothing of it readable on the wire, where the same
/// stream without TLS shows the replica's node id), callers must present a
/// certificate the CA signed, a node trusting another CA gets nothing and
/// says why, the tools call with the flags or the variables, REPLICAOF
/// follows over TLS, and a switchover's calls go over TLS.
#[tokio::test]
async fn tls_guards_and_encrypts_the_grpc_channel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "cluster");
    let rogue = Pki::new(dir.path(), "rogue");
    let (node_cert, node_key) = pki.node("node");
    let (tool_cert, tool_key) = pki.node("tool");
    let (rogue_cert, rogue_key) = rogue.node("intruder");
    let flags = tls_flags(&node_cert, &node_key, &pki.ca);
    let tool = TlsFiles {
        cert: Some(tool_cert.clone()),
        key: Some(tool_key.clone()),
        ca: Some(pki.ca.clone()),
    };

    let primary = Server::start(&dir.path().join("p"), &flags);
    let purl = https(primary.grpc);
    {
        let c = &mut primary.client();
        for i in 0..20 {
            raw(c, &["SET", &format!("k{i}"), "secret-value"]);
        }
    }
    let last = status_over(&purl, &tool)
        .await
        .expect("status over TLS with a certificate")
        .wal
        .expect("wal")
        .last_lsn;
    assert_eq!(last, 20);

    // Plain gRPC to a TLS port gets nothing.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", primary.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            ferry_proto::v1::status_client::StatusClient::new(channel)
                .get_status(GetStatusRequest {}),
        )
        .await;
        assert!(
            !matches!(reply, Ok(Ok(_))),
            "a plaintext call was served: {reply:?}"
        );
    }
    // TLS without a certificate, or with one another CA signed (its
    // caller trusts both CAs): the primary closes the connection.
    let anonymous = TlsFiles {
        ca: Some(pki.ca.clone()),
        ..TlsFiles::default()
    };
    let err = status_over(&purl, &anonymous)
        .await
        .expect_err("served without a certificate");
    assert!(refused_by_peer(&err), "{err}");
    let both_cas = bundle(dir.path(), &[&pki.ca, &rogue.ca]);
    let intruder = TlsFiles {
        cert: Some(rogue_cert.clone()),
        key: Some(rogue_key.clone()),
        ca: Some(both_cas.clone()),
    };
    let err = status_over(&purl, &intruder)
        .await
        .expect_err("served a certificate of another CA");
    assert!(refused_by_peer(&err), "{err}");
    // Trusting only another CA: the primary's certificate is refused.
    let misled = TlsFiles {
        ca: Some(rogue.ca.clone()),
        ..TlsFiles::default()
    };
    let err = status_over(&purl, &misled)
        .await
        .expect_err("a certificate the CA did not sign");
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    // The name the address has must be in the certificate: a node whose
    // certificate names only localhost is refused at 127.0.0.1.
    let (named_cert, named_key) = pki.node_named("named", false);
    let named = Server::start(
        &dir.path().join("named"),
        &tls_flags(&named_cert, &named_key, &pki.ca),
    );
    let err = status_over(&https(named.grpc), &tool)
        .await
        .expect_err("an address the certificate does not name");
    assert!(err.contains("not valid for name"), "{err}");
    status_over(&format!("https://localhost:{}", named.grpc.port()), &tool)
        .await
        .expect("the name the certificate holds");
    drop(named);

    // A replica behind a proxy that keeps what passes: it follows over
    // TLS, and neither the values nor its node id show on the wire.
    let proxy = Proxy::start(primary.grpc);
    let via_proxy = https(proxy.addr());
    let replica_flags = [flags.clone(), vec!["--replica-of", &via_proxy]].concat();
    let replica = Server::start(&dir.path().join("r"), &replica_flags);
    let rurl = https(replica.grpc);
    let r = wait_status(&rurl, &tool, "the replica catching up", |s| {
        s.applied_lsn == last
    })
    .await;
    assert_eq!(digest(&primary), digest(&replica));
    assert!(proxy.captured_bytes() > 0);
    assert!(!proxy.saw(r.node_id.as_bytes()), "the node id in the clear");
    assert!(!proxy.saw(b"secret-value"), "a value in the clear");
    assert!(!proxy.saw(b"ferry.v1"), "a gRPC path in the clear");

    // The control: the same stream without TLS shows the node id.
    let plain_primary = Server::start(&dir.path().join("plain-p"), &[]);
    raw(&mut plain_primary.client(), &["SET", "k", "v"]);
    let plain_proxy = Proxy::start(plain_primary.grpc);
    let plain_replica = Server::replica(&dir.path().join("plain-r"), &plain_proxy.url(), &[]);
    let none = TlsFiles::default();
    let plain_id = wait_status(
        &format!("http://{}", plain_replica.grpc),
        &none,
        "the plaintext replica catching up",
        |s| s.applied_lsn == 1,
    )
    .await
    .node_id;
    assert!(
        plain_proxy.saw(plain_id.as_bytes()),
        "the plaintext stream shows the node id"
    );
    drop((plain_replica, plain_proxy, plain_primary));

    // A replica of another CA's cluster (its certificate and CA): it
    // refuses the primary's certificate, applies nothing, and its link
    // says why.
    let rogue_tool = TlsFiles {
        cert: Some(rogue_cert.clone()),
        key: Some(rogue_key.clone()),
        ca: Some(rogue.ca.clone()),
    };
    let misled_replica = Server::start(
        &dir.path().join("m"),
        &[
            tls_flags(&rogue_cert, &rogue_key, &rogue.ca),
            vec!["--replica-of", &purl],
        ]
        .concat(),
    );
    let m = wait_status(
        &https(misled_replica.grpc),
        &rogue_tool,
        "the misled replica's link error",
        |s| {
            s.primary_link
                .as_ref()
                .is_some_and(|l| l.last_error.contains("UnknownIssuer"))
        },
    )
    .await;
    assert_eq!(m.applied_lsn, 0, "nothing reached the misled replica");
    drop(misled_replica);
    // One that trusts both CAs, with a certificate of the other: the
    // primary refuses it, and its link says the handshake failed.
    let refused_replica = Server::start(
        &dir.path().join("x"),
        &[
            tls_flags(&rogue_cert, &rogue_key, &both_cas),
            vec!["--replica-of", &purl],
        ]
        .concat(),
    );
    let both_tool = TlsFiles {
        ca: Some(both_cas.clone()),
        ..intruder.clone()
    };
    let x = wait_status(
        &https(refused_replica.grpc),
        &both_tool,
        "the refused replica's link error",
        |s| {
            s.primary_link
                .as_ref()
                .is_some_and(|l| !l.last_error.is_empty())
        },
    )
    .await;
    let error = x.primary_link.expect("a link").last_error;
    assert!(
        refused_by_peer(&error) && error.contains("refuses this node's certificate"),
        "{error}"
    );
    assert_eq!(x.applied_lsn, 0, "nothing reached the refused replica");
    drop(refused_replica);

    // The tools: flags, variables, and clear refusals.
    let tool_flags = tls_flags(&tool_cert, &tool_key, &pki.ca);
    let out = run_ok(
        ferry()
            .args(["status", "--json", "--addr", &purl])
            .args(&tool_flags),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"role\": \"primary\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    run_ok(
        ferry()
            .args(["status", "--addr", &purl])
            .env("FERRY_TLS_CERT_FILE", &tool_cert)
            .env("FERRY_TLS_KEY_FILE", &tool_key)
            .env("FERRY_TLS_CA_CERT_FILE", &pki.ca),
    );
    let out = ferry().args(["status", "--addr", &purl]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("--tls-ca-cert-file"),
        "{}",
        stderr_of(&out)
    );
    let out = ferry()
        .args(["status", "--addr", &format!("http://{}", primary.grpc)])
        .args(&tool_flags)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("not encrypted"),
        "{}",
        stderr_of(&out)
    );

    // REPLICAOF host port on a TLS node follows over TLS.
    let third = Server::start(&dir.path().join("t"), &flags);
    let reply = raw(
        &mut third.client(),
        &["REPLICAOF", "127.0.0.1", &primary.grpc.port().to_string()],
    );
    assert_eq!(reply, redis::Value::Okay);
    let turl = https(third.grpc);
    let t = wait_status(&turl, &tool, "REPLICAOF over TLS", |s| {
        s.applied_lsn == last
    })
    .await;
    assert_eq!(
        t.primary_link.expect("a link").primary,
        format!("https://127.0.0.1:{}", primary.grpc.port())
    );
    drop(third);

    // A switchover: the primary calls the replica over TLS to promote it,
    // then follows it over TLS.
    run_ok(
        ferry()
            .args(["switchover", "--addr", &purl, "--timeout", "20"])
            .args(&tool_flags),
    );
    raw(&mut replica.client(), &["SET", "after", "switchover"]);
    let new_last = wait_status(&rurl, &tool, "the new primary", |s| s.role == "primary")
        .await
        .wal
        .expect("wal")
        .last_lsn;
    wait_status(&purl, &tool, "the old primary following", |s| {
        s.role == "replica" && s.applied_lsn == new_last
    })
    .await;
    assert_eq!(digest(&primary), digest(&replica));
}

/// `--tls-auth-clients optional` serves a caller without a certificate and
/// refuses one another CA signed; `no` asks for none.
#[tokio::test]
async fn client_certificates_can_be_optional_or_not_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "cluster");
    let rogue = Pki::new(dir.path(), "rogue");
    let (cert, key) = pki.node("node");
    let (rogue_cert, rogue_key) = rogue.node("intruder");
    let anonymous = TlsFiles {
        ca: Some(pki.ca.clone()),
        ..TlsFiles::default()
    };
    let both_cas = bundle(dir.path(), &[&pki.ca, &rogue.ca]);
    let intruder = TlsFiles {
        cert: Some(rogue_cert),
        key: Some(rogue_key),
        ca: Some(both_cas),
    };
    for (mode, any_certificate) in [("optional", false), ("no", true)] {
        let node = Server::start(
            &dir.path().join(mode),
            &[
                tls_flags(&cert, &key, &pki.ca),
                vec!["--tls-auth-clients", mode],
            ]
            .concat(),
        );
        let url = https(node.grpc);
        if let Err(e) = status_over(&url, &anonymous).await {
            panic!("no certificate, {mode}: {e}");
        }
        match status_over(&url, &intruder).await {
            Ok(_) => assert!(any_certificate, "a certificate of another CA, {mode}"),
            Err(err) => {
                assert!(
                    !any_certificate,
                    "a certificate of another CA, {mode}: {err}"
                );
                assert!(refused_by_peer(&err), "{err}");
            }
        }
    }
}

/// Bad TLS settings stop a node at start, naming the flag and the file.
#[test]
fn bad_tls_files_stop_a_node_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "cluster");
    let (cert, key) = pki.node("node");
    let other = Pki::new(dir.path(), "other");
    let (other_cert, other_key) = other.node("other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--tls-cert-file".into(), s(&cert)],
            "--tls-key-file, --tls-ca-cert-file missing",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                s(&missing),
                "--tls-key-file".into(),
                s(&key),
                "--tls-ca-cert-file".into(),
                s(&pki.ca),
            ],
            "No such file",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                s(&cert),
                "--tls-key-file".into(),
                s(&key),
            ],
            "--tls-ca-cert-file missing",
        ),
        (
            vec!["--tls-auth-clients".into(), "no".into()],
            "--tls-auth-clients needs TLS",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                s(&other_cert),
                "--tls-key-file".into(),
                s(&other_key),
                "--tls-ca-cert-file".into(),
                s(&pki.ca),
            ],
            "peers would refuse it",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                s(&cert),
                "--tls-key-file".into(),
                s(&garbage),
                "--tls-ca-cert-file".into(),
                s(&pki.ca),
            ],
            "no PEM private key",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                s(&cert),
                "--tls-key-file".into(),
                s(&key),
                "--tls-ca-cert-file".into(),
                s(&garbage),
            ],
            "no PEM certificate",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                s(&cert),
                "--tls-key-file".into(),
                s(&other_key),
                "--tls-ca-cert-file".into(),
                s(&pki.ca),
            ],
            "cannot serve TLS",
        ),
        (
            vec!["--tls-auth-clients".into(), "maybe".into()],
            "expected yes, optional or no",
        ),
    ];
    for (i, (args, expected)) in cases.into_iter().enumerate() {
        let err = match Server::try_start(
            &dir.path().join(format!("n{i}")),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ) {
            Ok(_) => panic!("{args:?} started"),
            Err(stderr) => stderr,
        };
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

/// A replica that followed its primary before TLS was turned on follows it
/// over TLS after a restart with the TLS files and no --replica-of: the
/// primary kept in its data directory is reached in the new scheme.
#[tokio::test]
async fn a_replica_keeps_following_when_tls_is_turned_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "cluster");
    let (cert, key) = pki.node("node");
    let flags = tls_flags(&cert, &key, &pki.ca);
    let (pdir, rdir) = (dir.path().join("p"), dir.path().join("r"));
    // The replica reaches its primary through a proxy, which stays where
    // it is while the primary restarts on another port.
    let primary = Server::start(&pdir, &[]);
    let proxy = Proxy::start(primary.grpc);
    raw(&mut primary.client(), &["SET", "before", "tls"]);
    let replica = Server::replica(&rdir, &proxy.url(), &[]);
    let none = TlsFiles::default();
    wait_status(
        &format!("http://{}", replica.grpc),
        &none,
        "the plaintext replica",
        |s| s.applied_lsn == 1,
    )
    .await;
    drop(replica);
    drop(primary);
    let primary = Server::start(&pdir, &flags);
    proxy.forward_to(primary.grpc);
    raw(&mut primary.client(), &["SET", "after", "tls"]);
    let replica = Server::start(&rdir, &flags);
    let tool = TlsFiles {
        cert: Some(cert.clone()),
        key: Some(key.clone()),
        ca: Some(pki.ca.clone()),
    };
    let r = wait_status(&https(replica.grpc), &tool, "the replica over TLS", |s| {
        s.applied_lsn == 2
    })
    .await;
    assert_eq!(r.primary_link.expect("a link").primary, https(proxy.addr()));
    assert_eq!(digest(&primary), digest(&replica));
}

/// A node with the TLS files and `--resp-tls-addr`, its CA, and a client
/// certificate and key the CA signed.
fn resp_over_tls(dir: &Path) -> (Pki, Server, (PathBuf, PathBuf)) {
    let pki = Pki::new(dir, "cluster");
    let (cert, key) = pki.node("node");
    let app = pki.node("app");
    let node = Server::start(
        &dir.join("n"),
        &[
            tls_flags(&cert, &key, &pki.ca),
            vec!["--resp-tls-addr", "127.0.0.1:0"],
        ]
        .concat(),
    );
    (pki, node, app)
}

/// A Redis client over TLS (`rediss://`) to `addr`, trusting `ca`, with a
/// certificate and key or none.
fn rediss(addr: SocketAddr, ca: &Path, identity: Option<(&Path, &Path)>) -> redis::Client {
    let read = |p: &Path| std::fs::read(p).expect("a PEM file");
    redis::Client::build_with_tls(
        format!("rediss://{addr}/"),
        redis::TlsCertificates {
            client_tls: identity.map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: read(cert),
                client_key: read(key),
            }),
            root_cert: Some(read(ca)),
        },
    )
    .expect("a TLS client")
}

/// `--resp-tls-addr`: the Redis protocol over TLS, for a real client
/// (redis-rs with rustls, `rediss://`): it reads and writes the keyspace
/// the plain port serves, presents a certificate the CA signed (one
/// without is refused), and nothing of what it sends shows on the wire.
#[test]
fn redis_clients_connect_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, node, (tool_cert, tool_key)) = resp_over_tls(dir.path());
    let tls_addr = node.resp_tls.expect("resp_tls= in the ready line");
    let proxy = Proxy::start(tls_addr);
    let client = |addr: SocketAddr, with_cert: bool| {
        rediss(
            addr,
            &pki.ca,
            with_cert.then_some((tool_cert.as_path(), tool_key.as_path())),
        )
    };
    let mut c = client(proxy.addr(), true)
        .get_connection_with_timeout(Duration::from_secs(10))
        .expect("connect over TLS");
    let secret = "secret-over-tls";
    let () = redis::cmd("SET")
        .arg("k")
        .arg(secret)
        .query(&mut c)
        .unwrap();
    let n: i64 = redis::cmd("INCR").arg("n").query(&mut c).unwrap();
    assert_eq!(n, 1);
    let got: String = redis::cmd("GET").arg("k").query(&mut c).unwrap();
    assert_eq!(got, secret);
    // The same keyspace on the plain port.
    assert_eq!(
        raw(&mut node.client(), &["GET", "k"]),
        redis::Value::BulkString(secret.into())
    );
    assert!(proxy.captured_bytes() > 0);
    assert!(!proxy.saw(secret.as_bytes()), "a value in the clear");
    assert!(!proxy.saw(b"INCR"), "a command in the clear");
    // The control: through the same kind of proxy to the plain port, the
    // value shows.
    let plain_proxy = Proxy::start(node.resp);
    let mut p = redis::Client::open(format!("redis://{}/", plain_proxy.addr()))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(10))
        .unwrap();
    let got: String = redis::cmd("GET").arg("k").query(&mut p).unwrap();
    assert_eq!(got, secret);
    assert!(
        plain_proxy.saw(secret.as_bytes()),
        "the plain port shows it"
    );
    // Without a certificate: refused, at the handshake or the first call.
    let refused = client(tls_addr, false)
        .get_connection_with_timeout(Duration::from_secs(10))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    assert!(
        refused.is_err(),
        "served without a certificate: {refused:?}"
    );
    // Plain RESP to the TLS port gets no reply.
    use std::io::{Read, Write};
    let mut plain = std::net::TcpStream::connect(tls_addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(
        !buf[..n].starts_with(b"+PONG"),
        "a plaintext PING was answered"
    );
    // INFO counts both ports' clients: this one, the plain one, and the
    // test's own below.
    let clients: String = redis::cmd("INFO").arg("clients").query(&mut c).unwrap();
    let connected: u64 = clients
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .expect("connected_clients")
        .trim()
        .parse()
        .unwrap();
    assert!(connected >= 2, "{clients}");
    // Large replies and a pipeline leave whole: TLS keeps what it has
    // encrypted until the connection flushes it.
    let large: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
    let () = redis::cmd("SET")
        .arg("large")
        .arg(&large)
        .query(&mut c)
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut pipe = redis::pipe();
    for _ in 0..3 {
        pipe.cmd("GET").arg("large");
    }
    let got: Vec<Vec<u8>> = pipe.query(&mut c).expect("three large replies over TLS");
    assert!(got.iter().all(|v| *v == large));

    // CLIENT KILL closes a client over TLS too.
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    assert_eq!(
        raw(
            &mut node.client(),
            &["CLIENT", "KILL", "ID", &id.to_string()]
        ),
        redis::Value::Int(1)
    );
    let after = redis::cmd("PING").query::<String>(&mut c);
    assert!(
        after
            .as_ref()
            .is_err_and(|e| e.is_io_error() || e.is_connection_dropped()),
        "{after:?}"
    );

    // Without the TLS files the flag is refused at start.
    let err = Server::try_start(&dir.path().join("x"), &["--resp-tls-addr", "127.0.0.1:0"])
        .err()
        .expect("started without TLS files");
    assert!(err.contains("--resp-tls-addr needs TLS"), "{err}");
}

/// A client that reads large replies slowly over TLS gets all of them:
/// the server's socket stays full, so TLS holds encrypted bytes back when
/// the write returns, and only a flush sends them.
#[tokio::test]
async fn a_slow_reader_over_tls_gets_the_whole_reply() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::ServerName;
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, node, (app_cert, app_key)) = resp_over_tls(dir.path());
    let large: String = (0..(8 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    assert_eq!(
        raw(&mut node.client(), &["SET", "large", &large]),
        redis::Value::Okay
    );
    let config = common::metrics::client_config(&TlsFiles {
        cert: Some(app_cert),
        key: Some(app_key),
        ca: Some(pki.ca.clone()),
    });
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(node.resp_tls.expect("resp_tls"))
        .await
        .unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("a TLS connection");
    // Without the flush, a reply's tail stays behind in about half of the
    // requests: three in a row.
    let header = format!("${}\r\n", large.len());
    let whole = header.len() + large.len() + 2;
    let mut buf = vec![0u8; 4096];
    for request in 0..3 {
        tls.write_all(b"*2\r\n$3\r\nGET\r\n$5\r\nlarge\r\n")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        let mut got = Vec::with_capacity(whole);
        while got.len() < whole {
            let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "request {request}: stuck after {} of {whole} bytes",
                        got.len()
                    )
                })
                .expect("read");
            assert!(n > 0, "closed after {} of {whole} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            // A slow reader: the server's socket stays full as it writes.
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        assert_eq!(got.len(), whole, "request {request}");
        assert!(got.starts_with(header.as_bytes()));
        assert_eq!(&got[header.len()..whole - 2], large.as_bytes());
    }
}

/// `--tls-protocols`: a node told to serve TLSv1.3 only refuses a client
/// that offers TLSv1.2 alone, on the Redis protocol's listener and the
/// metrics', where a node left to the default takes it; a client that
/// offers TLSv1.3 is served, a real Redis client among them. A version
/// ferry does not serve, or the flag without TLS, stops the node at start.
#[test]
fn tls_protocols_limit_the_versions_served() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "cluster");
    let (cert, key) = pki.node("node");
    let files = pki.caller("app");
    let node_with = |name: &str, extra: &[&str]| {
        Server::start(
            &dir.path().join(name),
            &[
                tls_flags(&cert, &key, &pki.ca),
                vec!["--resp-tls-addr", "127.0.0.1:0"],
                vec!["--metrics-addr", "127.0.0.1:0"],
                extra.to_vec(),
            ]
            .concat(),
        )
    };
    // `request` over TLS to `addr`, offering `versions`: the first bytes
    // of the reply, as many as `expected` has, or why not.
    let exchange = |addr: SocketAddr,
                    versions: &[&'static rustls::SupportedProtocolVersion],
                    request: &[u8],
                    expected: &str| {
        let tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(
            common::metrics::client_config_speaking(&files, versions),
            name,
        )
        .unwrap();
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        tls.write_all(request)
            .and_then(|()| tls.flush())
            .map_err(|e| e.to_string())?;
        let mut reply = vec![0u8; expected.len()];
        tls.read_exact(&mut reply).map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&reply).into_owned())
    };
    let ping = |addr, versions: &[&'static rustls::SupportedProtocolVersion]| {
        exchange(addr, versions, b"*1\r\n$4\r\nPING\r\n", "+PONG\r\n")
    };
    let scrape = |addr, versions: &[&'static rustls::SupportedProtocolVersion]| {
        exchange(
            addr,
            versions,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "HTTP/1.1 200",
        )
    };
    let (v12, v13) = (
        &[&rustls::version::TLS12][..],
        &[&rustls::version::TLS13][..],
    );

    let default = node_with("default", &[]);
    let config = |node: &Server, name: &str| -> redis::Value {
        raw(&mut node.client(), &["CONFIG", "GET", name])
    };
    let pair = |name: &str, value: &str| {
        redis::Value::Array(vec![
            redis::Value::BulkString(name.into()),
            redis::Value::BulkString(value.into()),
        ])
    };
    assert_eq!(
        config(&default, "tls-protocols"),
        pair("tls-protocols", "TLSv1.2 TLSv1.3")
    );
    assert_eq!(
        config(&default, "tls-auth-clients"),
        pair("tls-auth-clients", "yes")
    );
    assert_eq!(
        config(&default, "tls-cert-file"),
        pair("tls-cert-file", &cert.display().to_string())
    );
    let resp = default.resp_tls.expect("resp_tls");
    assert_eq!(ping(resp, v12).as_deref(), Ok("+PONG\r\n"));
    assert_eq!(ping(resp, v13).as_deref(), Ok("+PONG\r\n"));
    let metrics = default.metrics.expect("metrics");
    assert_eq!(scrape(metrics, v12).as_deref(), Ok("HTTP/1.1 200"));

    let strict = node_with("strict", &["--tls-protocols", "TLSv1.3"]);
    assert_eq!(
        config(&strict, "tls-protocols"),
        pair("tls-protocols", "TLSv1.3")
    );
    let resp = strict.resp_tls.expect("resp_tls");
    let refused = ping(resp, v12).expect_err("TLSv1.2 served");
    assert!(refused.contains("ProtocolVersion"), "{refused}");
    assert_eq!(ping(resp, v13).as_deref(), Ok("+PONG\r\n"));
    let metrics = strict.metrics.expect("metrics");
    let refused = scrape(metrics, v12).expect_err("TLSv1.2 served on metrics");
    assert!(refused.contains("ProtocolVersion"), "{refused}");
    assert_eq!(scrape(metrics, v13).as_deref(), Ok("HTTP/1.1 200"));
    // A real Redis client.
    let mut c = rediss(resp, &pki.ca, Some((&cert, &key)))
        .get_connection()
        .expect("a TLSv1.3 client");
    assert_eq!(raw(&mut c, &["SET", "k", "v"]), redis::Value::Okay);

    for (value, expected) in [
        ("TLSv1.1", "ferry serves TLSv1.2 and TLSv1.3 only"),
        ("SSLv3", "expected TLSv1.2, TLSv1.3 or both"),
        ("", "no TLS version given"),
    ] {
        let err = Server::try_start(
            &dir.path().join("bad"),
            &[
                tls_flags(&cert, &key, &pki.ca),
                vec!["--tls-protocols", value],
            ]
            .concat(),
        )
        .err()
        .expect(value);
        assert!(err.contains(expected), "{value}: {err}");
    }
    let err = Server::try_start(&dir.path().join("plain"), &["--tls-protocols", "TLSv1.3"])
        .err()
        .expect("--tls-protocols without TLS");
    assert!(err.contains("--tls-protocols needs TLS"), "{err}");
}

/// `--tls-ciphers` (TLSv1.2) and `--tls-ciphersuites` (TLSv1.3), as
/// Redis's: a node told to serve one suite of each refuses a client that
/// offers only another, and serves one that offers it; CONFIG GET shows
/// them. A suite ferry lacks, one of the other version, or the flags
/// without TLS stop the node at start.
#[test]
fn tls_ciphers_limit_the_suites_served() {
    use rustls::CipherSuite as S;
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "cluster");
    let (cert, key) = pki.node("node");
    let files = pki.caller("app");
    let node = Server::start(
        &dir.path().join("node"),
        &[
            tls_flags(&cert, &key, &pki.ca),
            vec![
                "--resp-tls-addr",
                "127.0.0.1:0",
                "--tls-ciphers",
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "--tls-ciphersuites",
                "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
            ],
        ]
        .concat(),
    );
    let resp = node.resp_tls.expect("resp_tls");
    // A PING over TLS offering `suites` of `version` only.
    let ping = |version: &'static rustls::SupportedProtocolVersion, suites: &[S]| {
        let tcp = std::net::TcpStream::connect(resp).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let config = common::metrics::client_config_offering(&files, &[version], Some(suites));
        let mut tls =
            rustls::StreamOwned::new(rustls::ClientConnection::new(config, name).unwrap(), tcp);
        tls.write_all(b"*1\r\n$4\r\nPING\r\n")
            .and_then(|()| tls.flush())
            .map_err(|e| e.to_string())?;
        let mut reply = [0u8; 7];
        tls.read_exact(&mut reply).map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&reply).into_owned())
    };
    let v12 = &rustls::version::TLS12;
    let v13 = &rustls::version::TLS13;
    for (version, suite, served) in [
        (v13, S::TLS13_AES_256_GCM_SHA384, true),
        (v13, S::TLS13_CHACHA20_POLY1305_SHA256, true),
        (v13, S::TLS13_AES_128_GCM_SHA256, false),
        (v12, S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, true),
        (v12, S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, false),
        (v12, S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, false),
    ] {
        let got = ping(version, &[suite]);
        if served {
            assert_eq!(got.as_deref(), Ok("+PONG\r\n"), "{suite:?}");
        } else {
            let refused = got.expect_err("served");
            assert!(refused.contains("HandshakeFailure"), "{suite:?}: {refused}");
        }
    }
    let c = &mut node.client();
    for (name, value) in [
        ("tls-ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384"),
        (
            "tls-ciphersuites",
            "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
        ),
    ] {
        assert_eq!(
            raw(c, &["CONFIG", "GET", name]),
            redis::Value::Array(vec![
                redis::Value::BulkString(name.into()),
                redis::Value::BulkString(value.into()),
            ])
        );
    }

    for (flag, value, expected) in [
        (
            "--tls-ciphers",
            "RC4-MD5",
            "not a cipher suite ferry serves",
        ),
        (
            "--tls-ciphers",
            "TLS_AES_128_GCM_SHA256",
            "give it in --tls-ciphersuites",
        ),
        ("--tls-ciphersuites", ":", "no cipher suite given"),
    ] {
        let err = Server::try_start(
            &dir.path().join("bad"),
            &[tls_flags(&cert, &key, &pki.ca), vec![flag, value]].concat(),
        )
        .err()
        .expect(value);
        assert!(err.contains(expected), "{value}: {err}");
    }
    let err = Server::try_start(
        &dir.path().join("plain"),
        &["--tls-ciphersuites", "TLS_AES_256_GCM_SHA384"],
    )
    .err()
    .expect("--tls-ciphersuites without TLS");
    assert!(err.contains("--tls-ciphersuites needs TLS"), "{err}");
}

/// Seconds since the Unix epoch at the start of `year`.
fn start_of_year(year: i32) -> u64 {
    let leap = |y: i32| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    (1970..year)
        .map(|y| if leap(y) { 366 } else { 365 })
        .sum::<u64>()
        * 86_400
}

/// The current year (UTC).
fn this_year() -> i32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (1970..).find(|&y| start_of_year(y + 1) > now).unwrap()
}

/// A connection to read and write, plain or over TLS.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// `kill -HUP`.
fn hang_up(node: &Server) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

/// Waits until the node's log says `line` `times` times.
fn wait_log(node: &Server, line: &str, times: usize) {
    assert!(
        wait_until(Duration::from_secs(20), || node
            .stderr()
            .matches(line)
            .count()
            >= times),
        "{line:?} not {times} times in the log:\n{}",
        node.stderr()
    );
}

const RELOADED: &str = "TLS files reloaded";

/// Copies a certificate and key over the files a node was started with.
fn replace(with: &(PathBuf, PathBuf), files: &(PathBuf, PathBuf)) {
    std::fs::copy(&with.0, &files.0).expect("copy the certificate");
    std::fs::copy(&with.1, &files.1).expect("copy the key");
}

/// SIGHUP reads the TLS files again, so a whole CA rotation runs without
/// a restart: every node trusts the old and the new CA, the primary and
/// the replica take certificates of the new one, then the old one is
/// dropped. Each step is used from the next connection on, on the gRPC
/// and the RESP listeners and by a replica's link, which reconnects
/// through each step (a proxy cuts it) and keeps replicating. Files that
/// fail the checks are refused with the old ones kept; a node without
/// TLS ignores SIGHUP.
#[tokio::test]
async fn sighup_rotates_certificates_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = Pki::new(dir.path(), "old");
    let new = Pki::new(dir.path(), "new");
    // The files the nodes are started with, rewritten in place.
    let trusted = dir.path().join("trusted.pem");
    std::fs::copy(&old.ca, &trusted).unwrap();
    let (p_files, r_files) = (old.node("p"), old.node("r"));
    let primary = Server::start(
        &dir.path().join("primary"),
        &[
            tls_flags(&p_files.0, &p_files.1, &trusted),
            vec!["--resp-tls-addr", "127.0.0.1:0"],
            vec!["--metrics-addr", "127.0.0.1:0"],
        ]
        .concat(),
    );
    let proxy = Proxy::start(primary.grpc);
    let replica = Server::replica(
        &dir.path().join("replica"),
        &https(proxy.addr()),
        &tls_flags(&r_files.0, &r_files.1, &trusted),
    );
    let purl = https(primary.grpc);
    let old_caller = old.caller("old-caller");
    let new_caller = new.caller("new-caller");
    let replicated = async |n: u64, via: &TlsFiles| {
        let c = &mut primary.client();
        raw(c, &["SET", &format!("k{n}"), "v"]);
        let lsn = status_over(&purl, via).await.unwrap().wal.unwrap().last_lsn;
        wait_status(&https(replica.grpc), via, "the replica", |s| {
            s.applied_lsn == lsn
        })
        .await;
    };
    replicated(1, &old_caller).await;
    // A caller with a certificate of the new CA, trusting both.
    let both = bundle(dir.path(), &[&old.ca, &new.ca]);
    let mixed_caller = TlsFiles {
        ca: Some(both.clone()),
        ..new_caller.clone()
    };
    let refused = status_over(&purl, &mixed_caller)
        .await
        .expect_err("a certificate of a CA the node does not trust");
    assert!(refused_by_peer(&refused), "{refused}");

    // 1. Both CAs trusted everywhere: the node takes the new CA's
    // certificates from the next connection on.
    std::fs::copy(&both, &trusted).unwrap();
    hang_up(&primary);
    hang_up(&replica);
    wait_log(&primary, RELOADED, 1);
    wait_log(&replica, RELOADED, 1);
    status_over(&purl, &mixed_caller)
        .await
        .expect("a certificate of the new CA, now trusted");
    let refused = status_over(&purl, &new_caller).await.expect_err("old CA");
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // 2. The primary serves a certificate of the new CA: a caller trusting
    // only the new CA gets in, one trusting only the old is refused; over
    // RESP too. The replica reconnects, checking it against its bundle.
    let expiry = |node: &Server| {
        let metrics = common::metrics::scrape_over_tls(node, &mixed_caller);
        (
            metrics[r#"ferry_tls_cert_expiry_timestamp_seconds{file="cert"}"#],
            metrics[r#"ferry_tls_cert_expiry_timestamp_seconds{file="ca"}"#],
        )
    };
    // rcgen's default: 4096-01-01.
    assert_eq!(expiry(&primary), (67_090_118_400.0, 67_090_118_400.0));
    // Valid until ten years from now (a fixed year would stop the node
    // from taking it once past).
    let year = this_year() + 10;
    replace(&new.node_until("p2", year), &p_files);
    hang_up(&primary);
    wait_log(&primary, RELOADED, 2);
    status_over(&purl, &new_caller)
        .await
        .expect("the new certificate, trusted by the new CA");
    // The new certificate's expiry, in the metrics and the log.
    assert_eq!(
        expiry(&primary),
        (start_of_year(year) as f64, 67_090_118_400.0)
    );
    wait_log(&primary, &format!("{year}-01-01T00:00:00.000Z"), 1);
    let refused = status_over(&purl, &old_caller).await.expect_err("new CA");
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    let resp_tls = primary.resp_tls.expect("resp_tls");
    let new_identity = (
        new_caller.cert.clone().unwrap(),
        new_caller.key.clone().unwrap(),
    );
    let mut c = rediss(resp_tls, &new.ca, Some((&new_identity.0, &new_identity.1)))
        .get_connection_with_timeout(Duration::from_secs(10))
        .expect("RESP over TLS with the new certificate");
    assert_eq!(
        raw(&mut c, &["GET", "k1"]),
        redis::Value::BulkString(b"v".to_vec())
    );
    let connections = proxy.connections();
    proxy.cut();
    replicated(2, &mixed_caller).await;
    assert!(
        proxy.connections() > connections,
        "the link did not reconnect"
    );

    // 3. The replica presents a certificate of the new CA, and the old CA
    // is dropped on the primary: the replica's next link is accepted only
    // if it presents the new one.
    replace(&new.node("r2"), &r_files);
    hang_up(&replica);
    wait_log(&replica, RELOADED, 2);
    std::fs::copy(&new.ca, &trusted).unwrap();
    hang_up(&primary);
    wait_log(&primary, RELOADED, 3);
    let connections = proxy.connections();
    proxy.cut();
    replicated(3, &mixed_caller).await;
    assert!(
        proxy.connections() > connections,
        "the link did not reconnect"
    );
    // A certificate of the old CA is refused now, by gRPC and RESP alike.
    let old_cert_caller = TlsFiles {
        ca: Some(both.clone()),
        ..old.caller("old-again")
    };
    let (old_cert, old_key) = (
        old_cert_caller.cert.clone().unwrap(),
        old_cert_caller.key.clone().unwrap(),
    );
    let refused = status_over(&purl, &old_cert_caller)
        .await
        .expect_err("a certificate of the dropped CA");
    assert!(refused_by_peer(&refused), "{refused}");
    let refused = rediss(resp_tls, &both, Some((&old_cert, &old_key)))
        .get_connection_with_timeout(Duration::from_secs(10))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    assert!(refused.is_err(), "RESP with the dropped CA's certificate");

    // Files that fail the checks: refused, the ones before kept.
    std::fs::write(&p_files.1, "not a key").unwrap();
    hang_up(&primary);
    wait_log(&primary, "TLS files not reloaded", 1);
    assert!(
        primary.stderr().contains("--tls-key-file"),
        "{}",
        primary.stderr()
    );
    status_over(&purl, &new_caller)
        .await
        .expect("served with the files read before");
    let metrics = common::metrics::scrape_over_tls(&primary, &new_caller);
    assert_eq!(metrics["ferry_tls_reloads_total"], 3.0);
    assert_eq!(metrics["ferry_tls_reload_failures_total"], 1.0);
    // The old caller's refused handshakes, at least.
    assert!(metrics["ferry_tls_handshake_failures_total"] >= 1.0);

    // The metrics listener serves TLS as the node does: plain HTTP gets
    // no answer, nor a caller without a certificate.
    let answered = |stream: &mut dyn ReadWrite| {
        let _ = stream.write_all(common::metrics::SCRAPE.as_bytes());
        let _ = stream.flush();
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .is_ok_and(|()| head.starts_with(b"HTTP/1.1 "))
    };
    let mut plain = std::net::TcpStream::connect(primary.metrics.unwrap()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(!answered(&mut plain), "plain HTTP answered");
    let anonymous = TlsFiles {
        cert: None,
        key: None,
        ca: Some(new.ca.clone()),
    };
    let mut refused = common::metrics::tls_to_metrics(&primary, &anonymous);
    assert!(!answered(&mut refused), "answered without a certificate");
    let mut allowed = common::metrics::tls_to_metrics(&primary, &new_caller);
    assert!(answered(&mut allowed), "the control: with a certificate");

    // A stop with connections that never begin a handshake, on every
    // listener: they hold up nothing.
    let _silent: Vec<std::net::TcpStream> = [primary.grpc, resp_tls, primary.metrics.unwrap()]
        .into_iter()
        .map(|addr| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    drop(replica);
    drop(proxy);
    let mut primary = primary;
    // Off the runtime, which closes this test's own gRPC connections when
    // the node asks them to.
    let (stopped, took, log) = tokio::task::spawn_blocking(move || {
        let stopping = Instant::now();
        let stopped = primary.terminate();
        (stopped, stopping.elapsed(), primary.stderr())
    })
    .await
    .unwrap();
    assert!(stopped.success(), "{log}");
    assert!(took < Duration::from_secs(5), "stopped in {took:?}: {log}");

    // Without TLS, SIGHUP changes nothing and stops nothing.
    let plain = Server::start(&dir.path().join("plain"), &[]);
    hang_up(&plain);
    wait_log(&plain, "no TLS files to reload", 1);
    assert_eq!(
        raw(&mut plain.client(), &["PING"]),
        redis::Value::SimpleString("PONG".into())
    );
}
