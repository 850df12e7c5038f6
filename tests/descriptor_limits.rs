//! Idle sockets from one client cannot lock everyone else out: under a small descriptor limit
//! (256), 300 idle Kafka connections from one address take their share of the listener and no
//! more, and the AMQP and management listeners still serve (before, 1,010 idle Kafka sockets
//! under a 1,024-descriptor limit locked every AMQP and HTTP client out).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, wait_listening};

#[test]
fn idle_kafka_sockets_leave_amqp_and_http_served() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("eddy.log");
    let (amqp, kafka, http) = (free_port(), free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eddy"));
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--amqp", &format!("127.0.0.1:{amqp}")])
        .args(["--kafka", &format!("127.0.0.1:{kafka}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--max-connections-per-address", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    wait_listening(amqp, Duration::from_secs(30), &log);
    wait_listening(kafka, Duration::from_secs(30), &log);
    wait_listening(http, Duration::from_secs(30), &log);
    // an attacker's idle sockets: more than the process has descriptors for connections
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", kafka)).ok())
        .collect();
    assert!(idle.len() >= 100, "{} connected", idle.len());
    // the others are still served: AMQP answers connection.start, the console answers
    let mut a = TcpStream::connect(("127.0.0.1", amqp)).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    a.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut buf = [0u8; 512];
    let n = a.read(&mut buf).unwrap_or(0);
    assert!(n > 7 && buf[0] == 1, "AMQP got {:?}", &buf[..n]);
    let mut h = TcpStream::connect(("127.0.0.1", http)).unwrap();
    h.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    h.write_all(b"GET /favicon.ico HTTP/1.1\r\nHost: eddy\r\n\r\n")
        .unwrap();
    let n = h.read(&mut buf).unwrap_or(0);
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 204"),
        "HTTP got {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(idle);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("the cap per address"), "{text}");
    let _ = child.kill();
    let _ = child.wait();
}
