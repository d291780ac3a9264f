//! Talking to a node's metrics listener as a Prometheus scraper does,
//! over plain HTTP or over TLS.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

use ferry_proto::tls::TlsFiles;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::common::Server;

/// A rustls client configuration from `files`: trusting their CA,
/// presenting their certificate if they have one.
pub fn client_config(files: &TlsFiles) -> Arc<rustls::ClientConfig> {
    client_config_speaking(files, rustls::DEFAULT_VERSIONS)
}

/// As [`client_config`], offering only the TLS `versions`.
pub fn client_config_speaking(
    files: &TlsFiles,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    client_config_offering(files, versions, None)
}

/// As [`client_config_speaking`], offering only the cipher `suites` if
/// given.
pub fn client_config_offering(
    files: &TlsFiles,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: Option<&[rustls::CipherSuite]>,
) -> Arc<rustls::ClientConfig> {
    let certs = |p: &Path| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(p)
            .expect("a PEM file")
            .collect::<Result<_, _>>()
            .expect("certificates")
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs(files.ca.as_deref().expect("a CA")));
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = suites {
        provider
            .cipher_suites
            .retain(|supported| suites.contains(&supported.suite()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("TLS versions")
        .with_root_certificates(roots);
    Arc::new(match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                certs(cert),
                PrivateKeyDer::from_pem_file(key).expect("a key"),
            )
            .expect("a client certificate"),
        _ => builder.with_no_client_auth(),
    })
}

/// One HTTP/1.1 exchange on `stream`: the request as given, then the
/// response's status line, headers and body (read up to Content-Length).
pub fn http(stream: &mut (impl Read + Write), request: &str) -> (u16, Vec<String>, String) {
    stream.write_all(request.as_bytes()).expect("send");
    stream.flush().expect("send");
    // Nothing follows the response before the next request.
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        headers.push(line);
    }
    let length: usize = headers
        .iter()
        .find_map(|h| h.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .expect("a length");
    let mut body = vec![
        0;
        if request.starts_with("HEAD") {
            0
        } else {
            length
        }
    ];
    reader.read_exact(&mut body).expect("body");
    (status, headers, String::from_utf8(body).expect("utf-8"))
}

/// The request of a scrape.
pub const SCRAPE: &str = "GET /metrics HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n";

/// The samples a plain HTTP scrape of `server` gets, by series.
pub fn scrape(server: &Server) -> std::collections::HashMap<String, f64> {
    let addr = server.metrics.expect("a metrics address");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    samples(http(&mut stream, SCRAPE))
}

/// A TLS connection to `server`'s metrics listener, as a caller with
/// `files`.
pub fn tls_to_metrics(
    server: &Server,
    files: &TlsFiles,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let addr = server.metrics.expect("a metrics address");
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("a timeout");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let connection =
        rustls::ClientConnection::new(client_config(files), name).expect("a TLS client");
    rustls::StreamOwned::new(connection, tcp)
}

/// The samples a scrape of `server` over TLS gets, as a caller with
/// `files`.
pub fn scrape_over_tls(
    server: &Server,
    files: &TlsFiles,
) -> std::collections::HashMap<String, f64> {
    samples(http(&mut tls_to_metrics(server, files), SCRAPE))
}

/// The samples of a scrape's response, checked as Prometheus reads them.
fn samples(
    (status, headers, body): (u16, Vec<String>, String),
) -> std::collections::HashMap<String, f64> {
    assert_eq!(status, 200);
    assert!(headers.contains(&"Content-Type: text/plain; version=0.0.4; charset=utf-8".into()));
    let mut samples = std::collections::HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("name and type");
            assert!(kind == "gauge" || kind == "counter", "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample");
        let name = series.split('{').next().unwrap();
        assert!(typed.contains(name), "{name} has no # TYPE before it");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{line} twice"
        );
    }
    samples
}
