//! Talking to a node's metrics listener as a Prometheus scraper does.

use crate::common::Server;

/// One HTTP/1.1 exchange on `stream`: the request as given, then the
/// response's status line, headers and body (read up to Content-Length).
pub fn http(stream: &mut std::net::TcpStream, request: &str) -> (u16, Vec<String>, String) {
    use std::io::{BufRead, BufReader, Read, Write};
    stream.write_all(request.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
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

pub fn scrape(server: &Server) -> std::collections::HashMap<String, f64> {
    let addr = server.metrics.expect("a metrics address");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let (status, headers, body) = http(
        &mut stream,
        "GET /metrics HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n",
    );
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
