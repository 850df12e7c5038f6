//! One client holding connections open cannot take more than `--max-connections` on any
//! listener: AMQP, Kafka and HTTP all close the next one at once (HTTP answers 503 first),
//! while the held connections keep being served — the same limit under every protocol.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Server;

/// Whether the server answers a first request on this connection (it was accepted and is
/// being served), reading with a deadline.
fn served(s: &mut TcpStream, proto: &str) -> bool {
    let hello: &[u8] = match proto {
        "amqp" => b"AMQP\x00\x00\x09\x01",
        // ApiVersions v0, correlation id 1, no client id
        "kafka" => &[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff],
        _ => b"GET /favicon.ico HTTP/1.1\r\nHost: eddy\r\n\r\n",
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(hello).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            if proto == "http" {
                // a refused HTTP connection is told 503 before it closes
                !buf[..n].starts_with(b"HTTP/1.1 503")
            } else {
                true
            }
        }
    }
}

/// A connection the server serves, retrying while it still counts one that just closed.
fn held(port: u16, proto: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        if served(&mut s, proto) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{proto}: no connection was served"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_listener_closes_connections_past_its_cap() {
    let server = Server::start(&["--max-connections", "3"]);
    for (proto, port) in [
        ("amqp", server.port),
        ("kafka", server.kafka_port),
        ("http", server.http_port),
    ] {
        let mut conns: Vec<TcpStream> = (0..3).map(|_| held(port, proto)).collect();
        // one more: closed at once (HTTP: after a 503)
        let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let _ = extra.read_to_end(&mut got);
        if proto == "http" {
            assert!(
                got.starts_with(b"HTTP/1.1 503"),
                "{proto}: {:?}",
                String::from_utf8_lossy(&got)
            );
        } else {
            assert!(got.is_empty(), "{proto}: the fourth connection got {got:?}");
        }
        // the three held are still served: HTTP and Kafka answer another request
        if proto != "amqp" {
            for c in &mut conns {
                assert!(
                    served(c, proto),
                    "{proto}: a held connection stopped being served"
                );
            }
        }
        // a slot freed is taken again
        drop(conns.pop());
        let again = held(port, proto);
        drop(again);
        drop(conns);
    }
    let log = server.log_text();
    assert!(log.contains("the listener's cap"), "{log}");
}
