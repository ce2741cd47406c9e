//! Connections under abuse: slow and idle clients are cut off, one IP cannot hold every
//! socket, running out of descriptors neither stops nor spins the server, and a shutdown ends
//! open streams and exits. Real sockets on loopback; every wait is bounded.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use common::{Backend, TestApp, access_token};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

backend_tests! {
    a_client_that_never_finishes_its_headers_is_disconnected,
    an_idle_keep_alive_connection_is_closed,
    a_body_that_never_arrives_is_answered_408,
    one_ip_cannot_hold_more_connections_than_its_cap,
    a_shutdown_ends_open_streams_with_a_reason_and_stops,
}

/// A bound for "eventually", far above the timeouts under test (not a performance claim).
const EVENTUALLY: Duration = Duration::from_secs(30);

fn addr(app: &TestApp) -> SocketAddr {
    app.url.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(EVENTUALLY, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open; it sent {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(Ok(0) | Err(_)) => return String::from_utf8_lossy(&seen).into_owned(),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    socket.connect(to).await
}

fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(ip))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn health_from(app: &TestApp, ip: Ipv4Addr) -> Result<StatusCode, reqwest::Error> {
    client_from(ip)
        .get(format!("{}/health", app.url))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status())
}

async fn a_client_that_never_finishes_its_headers_is_disconnected(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.header_timeout_seconds = 1).await;
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "closed, or told 408: {answer:?}"
    );
    // And a client that opens a socket and sends nothing at all.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    let answer = read_until_closed(&mut silent).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(
        health_from(&app, Ipv4Addr::LOCALHOST).await.unwrap(),
        StatusCode::OK
    );
}

async fn an_idle_keep_alive_connection_is_closed(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.header_timeout_seconds = 1).await;
    let mut client = TcpStream::connect(addr(&app)).await.unwrap();
    client
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut client).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "served first: {answer:?}"
    );
    assert!(answer.contains("lockstep-cloud"), "{answer:?}");
}

async fn a_body_that_never_arrives_is_answered_408(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.body_timeout_seconds = 1).await;
    let mut client = TcpStream::connect(addr(&app)).await.unwrap();
    let head = format!(
        "POST /auth/v1/signup HTTP/1.1\r\nHost: x\r\napikey: {}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"email\":",
        app.anon_key
    );
    client.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut client).await;
    let status: u16 = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {answer:?}"));
    assert_eq!(status, 408, "{answer}");
    assert!(
        app.raw_rows("SELECT id FROM users").await.is_empty(),
        "nothing half-done"
    );
}

async fn one_ip_cannot_hold_more_connections_than_its_cap(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.max_connections_per_ip = 5;
        c.header_timeout_seconds = 60;
    })
    .await;
    let attacker = Ipv4Addr::new(127, 0, 0, 3);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from(attacker, addr(&app)).await.unwrap());
    }
    // The sixth from that IP is closed at once; another IP is served meanwhile.
    let mut sixth = connect_from(attacker, addr(&app)).await.unwrap();
    let _ = sixth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answer = read_until_closed(&mut sixth).await;
    assert!(answer.is_empty(), "refused without an answer: {answer:?}");
    assert_eq!(
        health_from(&app, Ipv4Addr::new(127, 0, 0, 4))
            .await
            .unwrap(),
        StatusCode::OK
    );
    // Once the held connections close, the IP is served again.
    drop(held);
    let mut tries = 0;
    loop {
        if let Ok(StatusCode::OK) = health_from(&app, attacker).await {
            break;
        }
        tries += 1;
        assert!(tries < 100, "the IP's slots were never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_shutdown_ends_open_streams_with_a_reason_and_stops(backend: Backend) {
    let mut app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let mut feed = app.stream(access_token(&session), None).await;
    let head = feed.ready().await;
    app.shut_down().await;
    let end = feed.next_of("session").await;
    let data: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(data, json!({ "reason": "server_shutdown" }));
    assert_eq!(end.id, head.to_string(), "resumable with Last-Event-ID");
    assert!(feed.next().await.is_none(), "the stream ended");
    assert!(
        TcpStream::connect(addr(&app)).await.is_err(),
        "no longer listening"
    );
}

/// The real binary with a descriptor limit far below what an attacker opens: while it is out
/// of descriptors it neither exits nor spins, and it serves again once sockets close. Then
/// SIGTERM ends its open stream with `server_shutdown` and the process exits.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_server_survives_running_out_of_descriptors_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let mut server = std::process::Command::new("prlimit")
        .arg("--nofile=96:96")
        .arg(env!("CARGO_BIN_EXE_lockstep-cloud"))
        .args([
            "--bind",
            &bind,
            "--mailer-autoconfirm",
            "--header-timeout-seconds=120",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("prlimit (util-linux) runs the server");
    let pid = server.id();
    let url = format!("http://{bind}");
    let http = reqwest::Client::new();
    let mut tries = 0;
    while http.get(format!("{url}/health")).send().await.is_err() {
        tries += 1;
        assert!(tries < 300, "the server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secrets: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("secrets.json")).unwrap())
            .unwrap();
    let anon_key = secrets["anon_key"].as_str().unwrap().to_owned();

    // Hold far more sockets than the server has descriptors.
    let mut held = Vec::new();
    for _ in 0..150 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&bind)).await
        {
            held.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks() - before;
    // A loop retrying accept() at once would burn ~all of two seconds (≈200 ticks).
    assert!(
        spent < 100,
        "the accept loop spins while out of descriptors: {spent} ticks in 2 s"
    );
    assert!(server.try_wait().unwrap().is_none(), "still running");
    drop(held);
    let mut tries = 0;
    let session: Value = loop {
        let reply = http
            .post(format!("{url}/auth/v1/signup"))
            .header("apikey", &anon_key)
            .json(&json!({ "email": "ada@example.com", "password": common::PASSWORD }))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(reply) = reply {
            assert_eq!(reply.status(), StatusCode::OK);
            break reply.json().await.unwrap();
        }
        tries += 1;
        assert!(tries < 100, "the server never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let response = http
        .get(format!("{url}/realtime/v1/sse"))
        .header("apikey", &anon_key)
        .bearer_auth(access_token(&session))
        .send()
        .await
        .unwrap();
    let mut feed = common::Feed::open(response);
    feed.ready().await;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let end = feed.next_of("session").await;
    assert!(end.data.contains("server_shutdown"), "{}", end.data);
    let mut tries = 0;
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        tries += 1;
        assert!(tries < 600, "the server did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "a clean exit: {status}");
}
