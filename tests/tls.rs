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
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
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
    let tls = Tls::load(files, ClientAuth::default()).map_err(|e| e.to_string())?;
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
    // TLS without a certificate, or with one another CA signed: refused.
    let anonymous = TlsFiles {
        ca: Some(pki.ca.clone()),
        ..TlsFiles::default()
    };
    let refused = status_over(&purl, &anonymous).await;
    assert!(refused.is_err(), "served without a certificate");
    let intruder = TlsFiles {
        cert: Some(rogue_cert.clone()),
        key: Some(rogue_key.clone()),
        ca: Some(pki.ca.clone()),
    };
    assert!(
        status_over(&purl, &intruder).await.is_err(),
        "served a certificate of another CA"
    );
    // Trusting another CA: the node's certificate is refused.
    let misled = TlsFiles {
        cert: Some(tool_cert.clone()),
        key: Some(tool_key.clone()),
        ca: Some(rogue.ca.clone()),
    };
    let err = status_over(&purl, &misled)
        .await
        .expect_err("a certificate the CA did not sign");
    assert!(err.contains("certificate"), "{err}");

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

    // A replica that trusts another CA: nothing applied, and its link
    // says why.
    let misled_flags = tls_flags(&node_cert, &node_key, &rogue.ca);
    let misled_replica = Server::start(
        &dir.path().join("m"),
        &[misled_flags, vec!["--replica-of", &purl]].concat(),
    );
    let murl = https(misled_replica.grpc);
    // It asks its callers for a certificate the rogue CA signed, and
    // serves the cluster CA's.
    let m = wait_status(&murl, &intruder, "the misled replica's link error", |s| {
        s.primary_link
            .as_ref()
            .is_some_and(|l| l.last_error.contains("certificate"))
    })
    .await;
    assert_eq!(m.applied_lsn, 0, "nothing reached the misled replica");
    drop(misled_replica);

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
    let intruder = TlsFiles {
        cert: Some(rogue_cert),
        key: Some(rogue_key),
        ca: Some(pki.ca.clone()),
    };
    let optional = Server::start(
        &dir.path().join("o"),
        &[
            tls_flags(&cert, &key, &pki.ca),
            vec!["--tls-auth-clients", "optional"],
        ]
        .concat(),
    );
    let url = https(optional.grpc);
    status_over(&url, &anonymous)
        .await
        .expect("no certificate, optional");
    assert!(
        status_over(&url, &intruder).await.is_err(),
        "a certificate of another CA, optional"
    );
    let open = Server::start(
        &dir.path().join("n"),
        &[
            tls_flags(&cert, &key, &pki.ca),
            vec!["--tls-auth-clients", "no"],
        ]
        .concat(),
    );
    let url = https(open.grpc);
    status_over(&url, &anonymous)
        .await
        .expect("no certificate, none asked");
    status_over(&url, &intruder)
        .await
        .expect("any certificate, none asked");
}

/// Bad TLS settings stop a node at start, naming the flag and the file.
#[test]
fn bad_tls_files_stop_a_node_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "cluster");
    let (cert, key) = pki.node("node");
    let other = Pki::new(dir.path(), "other");
    let (_, other_key) = other.node("other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--tls-cert-file".into(), s(&cert)],
            "--tls-cert-file and --tls-key-file go together",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                s(&missing),
                "--tls-key-file".into(),
                s(&key),
            ],
            "--tls-cert-file",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                s(&cert),
                "--tls-key-file".into(),
                s(&garbage),
            ],
            "no PEM private key",
        ),
        (
            vec!["--tls-ca-cert-file".into(), s(&garbage)],
            "no PEM certificate",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                s(&cert),
                "--tls-key-file".into(),
                s(&other_key),
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
