//! The in-process fixture for the HTTP front end's tests: a real broker on a temp dir, the
//! `Http` handler serving connections made with `eddy_net::Conn::in_memory` (no socket, no
//! child process), and a client that writes raw requests and reads responses under a deadline.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use eddy_broker::{Broker, BrokerConfig, FsyncPolicy};
use eddy_http::{Api, Http};
use eddy_net::Handler as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long any one response (or the end of a connection) may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// A broker on a temp dir with the HTTP front end over it.
pub struct Fixture {
    pub broker: Broker,
    pub http: Arc<Http>,
    dir: tempfile::TempDir,
    /// Held so the connections' shutdown signal stays quiet until the fixture goes.
    shutdown: watch::Sender<bool>,
}

impl Fixture {
    /// guest/guest, an administrator (the connections come from 127.0.0.1).
    pub fn new() -> Fixture {
        Fixture::with(|_| {})
    }

    /// As [`Fixture::new`], with the broker's configuration changed by `tune`.
    pub fn with(tune: impl FnOnce(&mut BrokerConfig)) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = BrokerConfig {
            data_dir: dir.path().to_owned(),
            fsync: FsyncPolicy::Never,
            ..Default::default()
        };
        tune(&mut config);
        let broker = Broker::open(config).expect("broker opens");
        let api = Arc::new(Api {
            broker: broker.clone(),
            history: Default::default(),
            listeners: Vec::new(),
            jobs: Default::default(),
            cluster: None,
        });
        let (shutdown, _) = watch::channel(false);
        Fixture {
            broker,
            http: Http::new(api),
            dir,
            shutdown,
        }
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A new connection.
    pub fn connect(&self) -> Client {
        let (conn, io) = eddy_net::Conn::in_memory(self.shutdown.subscribe());
        let task = tokio::spawn(self.http.clone().handle(conn));
        Client {
            io,
            buf: Vec::new(),
            task,
        }
    }

    /// One request on a connection of its own; the response.
    pub async fn call(&self, raw: &[u8]) -> Response {
        let mut c = self.connect();
        c.send(raw).await;
        c.response().await.expect("a response")
    }

    /// A user with tags and, when given, full permissions on `vhost`.
    pub fn add_user(&self, name: &str, password: &str, tags: &[&str], vhost: Option<&str>) {
        self.broker
            .users()
            .put(
                name,
                Some(password),
                None,
                tags.iter().map(|t| t.to_string()).collect(),
            )
            .expect("user created");
        if let Some(vhost) = vhost {
            self.broker
                .users()
                .set_permission(eddy_broker::Permission {
                    user: name.into(),
                    vhost: vhost.into(),
                    configure: ".*".into(),
                    write: ".*".into(),
                    read: ".*".into(),
                })
                .expect("permission set");
        }
    }
}

/// `Authorization: Basic …` for `user:password`.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A request: method, path, extra header lines (each ending in CRLF), body with its length.
pub fn request(method: &str, path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:15672\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A JSON request as guest, the way the console and the CLI send one.
pub fn json_request(method: &str, path: &str, body: &str) -> Vec<u8> {
    request(
        method,
        path,
        &format!(
            "Authorization: {}\r\nContent-Type: application/json\r\n",
            basic("guest", "guest")
        ),
        body,
    )
}

/// A response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {}", self.text());
        })
    }

    /// The `reason` of an API error.
    pub fn reason(&self) -> String {
        self.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// One client connection, its server end served by the HTTP handler in a task.
pub struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
    task: JoinHandle<()>,
}

impl Client {
    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(DEADLINE, self.io.write_all(bytes))
            .await
            .expect("the server takes the request in time")
            .expect("written");
    }

    /// Read more bytes; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(DEADLINE, self.io.read(&mut chunk))
            .await
            .expect("the server answers (or closes) in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next response (by its Content-Length); None if the connection ended first.
    pub async fn response(&mut self) -> Option<Response> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).expect("a UTF-8 head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while self.buf.len() < end + 4 + len {
            if !self.fill().await {
                return None;
            }
        }
        let body = self.buf[end + 4..end + 4 + len].to_vec();
        self.buf.drain(..end + 4 + len);
        Some(Response {
            status,
            headers,
            body,
        })
    }

    /// The server ends the connection (within the deadline) with nothing more to say.
    pub async fn expect_closed(&mut self) {
        assert!(
            !self.fill().await,
            "the server sent more: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the connection's task ends")
            .expect("the connection's task did not panic");
    }
}
