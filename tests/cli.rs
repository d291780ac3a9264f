//! The `ferry` binary starts and describes itself.

use std::process::Command;

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

#[test]
fn version_and_help_print_and_exit_zero() {
    let out = ferry().arg("--version").output().expect("run ferry");
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with("ferry "), "{version}");

    let out = ferry().arg("--help").output().expect("run ferry");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Redis-protocol cache"));
}

#[test]
fn an_unknown_argument_is_refused() {
    let out = ferry().arg("--no-such-flag").output().expect("run ferry");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn serving_needs_at_least_one_worker_thread() {
    let out = ferry()
        .args([
            "serve",
            "--data-dir",
            "/nonexistent",
            "--worker-threads",
            "0",
        ])
        .output()
        .expect("run ferry");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--worker-threads"), "{stderr}");
}

#[test]
fn an_announced_address_must_be_host_and_port() {
    for bad in [
        "localhost",
        "http://h:1",
        ":7379",
        "h:port",
        "h:70000",
        "::1:7379",
    ] {
        let out = ferry()
            .args([
                "serve",
                "--data-dir",
                "/nonexistent",
                "--announce-grpc-addr",
                bad,
            ])
            .output()
            .expect("run ferry");
        assert!(!out.status.success(), "{bad} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("expected host:port"), "{bad}: {stderr}");
    }
}

/// A flag's value that CONFIG SET would refuse (or a number of seconds
/// past what the clock holds, or a primary without a port) stops the node
/// at start with the flag named, rather than start a node no client can
/// use or one that fails later.
#[test]
fn values_a_node_could_not_work_with_are_refused_at_start() {
    for (flag, value) in [
        ("--maxclients", "0"),
        ("--proto-max-bulk-len", "0"),
        ("--proto-max-multibulk-len", "0"),
        ("--shutdown-timeout", "18446744073709551615"),
        ("--min-replicas-max-lag", "18446744073709551615"),
        ("--slowlog-log-slower-than", "-5"),
        ("--repl-timeout", "0"),
        ("--repl-timeout", "18446744073709551615"),
        ("--failover-after", "18446744073709551615"),
        ("--wal-segment-bytes", "1"),
        ("--replica-of", "http://127.0.0.1:99999"),
        ("--replica-of", "http://127.0.0.1"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = ferry()
            .args([
                "serve",
                "--data-dir",
                dir.path().join("n").to_str().expect("utf-8"),
                "--resp-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
                flag,
                value,
            ])
            .env_remove("RUST_BACKTRACE")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ferry");
        // A node that started instead runs until it is killed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while child.try_wait().expect("wait").is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(flag.trim_start_matches('-')) || stderr.contains(value),
            "{flag} {value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{flag} {value}: {stderr}");
    }
}

/// `ferry switchover --timeout 0` is refused: the call's 0 means the
/// default wait, not none.
#[test]
fn a_switchover_needs_a_timeout_of_a_second_at_least() {
    let out = ferry()
        .args(["switchover", "--timeout", "0"])
        .output()
        .expect("run ferry");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--timeout"), "{stderr}");
}

/// A real log of 100 records, one frame each, in a temporary directory.
fn write_log(dir: &std::path::Path) {
    let wal = ferry_wal::Wal::open(dir, ferry_wal::WalOptions::default()).expect("open");
    for i in 0..100 {
        wal.append_blocking(vec![format!("record {i}").into()])
            .expect("append");
    }
}

#[test]
fn wal_verify_passes_an_intact_log_and_names_the_place_of_a_flipped_bit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    write_log(&dir);
    let out = ferry()
        .args(["wal", "verify"])
        .arg(&dir)
        .output()
        .expect("run ferry");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("lsn 1..=100") && stdout.contains("intact"),
        "{stdout}"
    );

    let segment = dir.join("00000000000000000001.wal");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&segment, &bytes).expect("write segment");
    let out = ferry()
        .args(["wal", "verify"])
        .arg(&dir)
        .output()
        .expect("run ferry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("00000000000000000001.wal") && stderr.contains("at byte"),
        "{stderr}"
    );
}
