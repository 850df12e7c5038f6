//! Start a real `eddy serve` on a free loopback port in a temp dir, and stop it; and what
//! the tests that talk to it share (a Kafka request's bytes, the server's resident memory).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Option<Child>,
    pub port: u16,
    pub kafka_port: u16,
    pub http_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    extra: Vec<String>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let log = tmp.path().join("eddy.log");
        let mut s = Server {
            child: None,
            port: free_port(),
            kafka_port: free_port(),
            http_port: free_port(),
            data_dir,
            log,
            _tmp: Some(tmp),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn_first();
        s
    }

    /// The first start: a port picked free may be taken before eddy binds it (by another
    /// test's outgoing connection); then new ports are picked and eddy started again.
    fn spawn_first(&mut self) {
        for _ in 0..5 {
            let before = self.log_text().len();
            self.spawn_only();
            if self.wait_up() {
                return;
            }
            let tail = self.log_text()[before..].to_string();
            if !tail.contains("Address already in use") {
                break;
            }
            self.kill9();
            self.port = free_port();
            self.kafka_port = free_port();
            self.http_port = free_port();
        }
        panic!("eddy did not start; log:\n{}", self.log_text());
    }

    /// Whether eddy listens on its AMQP and Kafka ports (false: it exited or did not within
    /// 30 s).
    fn wait_up(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [self.port, self.kafka_port] {
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                let exited = self
                    .child
                    .as_mut()
                    .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
                if exited || Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        true
    }

    fn spawn(&mut self) {
        self.spawn_only();
        wait_listening(self.port, Duration::from_secs(30), &self.log);
        wait_listening(self.kafka_port, Duration::from_secs(30), &self.log);
    }

    fn spawn_only(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_eddy"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--amqp")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--kafka")
            .arg(format!("127.0.0.1:{}", self.kafka_port))
            .arg("--http")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn eddy");
        self.child = Some(child);
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// SIGKILL the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Start again on the same port and data dir.
    pub fn restart(&mut self) {
        self.kill9();
        // the management port is not used across restarts: a fresh one cannot have been
        // taken meanwhile as the local port of an outgoing connection
        self.http_port = free_port();
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_sigterm(c.id());
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

pub fn wait_listening(port: u16, timeout: Duration, log: &Path) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "eddy did not listen on {port}; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A Kafka request's bytes: size, header (client id `eddy-test`), body.
pub fn kafka_request<R: kafka_protocol::protocol::Encodable>(
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    corr: i32,
    req: &R,
) -> Vec<u8> {
    use bytes::BufMut;
    use kafka_protocol::protocol::Encodable;
    let mut out = bytes::BytesMut::new();
    out.put_i32(0);
    let mut h = kafka_protocol::messages::RequestHeader::default();
    h.request_api_key = key as i16;
    h.request_api_version = version;
    h.correlation_id = corr;
    h.client_id = Some(kafka_protocol::protocol::StrBytes::from_static_str(
        "eddy-test",
    ));
    h.encode(&mut out, key.request_header_version(version))
        .unwrap();
    req.encode(&mut out, version).unwrap();
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.to_vec()
}

/// A process's resident memory, bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}
