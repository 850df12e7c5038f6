//! `eddy-http`: the management API (RabbitMQ's paths and JSON shapes), Prometheus `/metrics`
//! with the queueing view of every queue, and the web console (plain HTML/JS/CSS embedded in
//! the binary).
//!
//! Shaping decision: a small HTTP/1.1 server of our own ([`server`]) instead of a framework —
//! the API is a few dozen JSON routes, and the server runs over any byte stream, so TLS wraps
//! the socket. The router (`router.rs`) matches paths; handlers (`api/`, a file per family)
//! are plain blocking functions over the broker, run off the async workers, since declares and
//! deletes may wait for metadata fsyncs.

pub mod api;
mod conn;
pub mod metrics;
mod router;
pub mod server;
pub mod stats;

use std::sync::Arc;

pub use api::Api;

/// The management API, console and `/metrics`: the [`eddy_net::Handler`] the HTTP (and
/// HTTPS) listeners run.
pub struct Http {
    api: Arc<Api>,
}

impl Http {
    /// A front end serving `api`.
    pub fn new(api: Arc<Api>) -> Arc<Http> {
        Arc::new(Http { api })
    }
}

impl eddy_net::Handler for Http {
    fn protocol(&self) -> &'static str {
        "http"
    }

    async fn handle(self: Arc<Self>, conn: eddy_net::Conn) {
        conn::serve_connection(self.api.clone(), conn).await
    }

    /// Over the listener's cap: 503, then the connection closes.
    fn refuse(&self, stream: &tokio::net::TcpStream) {
        let _ = stream.try_write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
}
