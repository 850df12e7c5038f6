//! `eddy-http`: the management API (RabbitMQ's paths and JSON shapes), Prometheus `/metrics`
//! with the queueing view of every queue, and the web console (plain HTML/JS/CSS embedded in
//! the binary).
//!
//! Shaping decision: a small HTTP/1.1 server of our own ([`server`]) instead of a framework —
//! the API is a few dozen JSON routes, and the server runs over any byte stream, so TLS wraps
//! the socket. Handlers are plain blocking functions over the broker ([`api::handle`]), run
//! off the async workers, since declares and deletes may wait for metadata fsyncs.

pub mod api;
pub mod metrics;
pub mod server;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use api::Api;
use server::{read_request, write_response, ReadError, Request, Response};

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/style.css");

/// How long a keep-alive connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(120);

async fn route(api: &Arc<Api>, req: Request) -> Response {
    let path = req.path.as_str();
    match (req.method.as_str(), path) {
        ("GET" | "HEAD", "/" | "/index.html") => {
            Response::new(200, "text/html; charset=utf-8", INDEX)
        }
        ("GET" | "HEAD", "/app.js") => {
            Response::new(200, "application/javascript; charset=utf-8", APP_JS)
        }
        ("GET" | "HEAD", "/style.css") => Response::new(200, "text/css; charset=utf-8", STYLE),
        ("GET" | "HEAD", "/favicon.ico") => Response::empty(204),
        ("GET" | "HEAD", "/metrics") => {
            let api = api.clone();
            match tokio::task::spawn_blocking(move || metrics::render(&api)).await {
                Ok(text) => Response::new(200, "text/plain; version=0.0.4; charset=utf-8", text),
                Err(_) => api::ApiError {
                    status: 500,
                    error: "internal_error",
                    reason: "rendering the metrics failed".into(),
                }
                .response(),
            }
        }
        _ if path == "/api" || path.starts_with("/api/") => {
            let user = match api::authenticate(api, &req) {
                Ok(u) => u,
                Err(e) => {
                    let mut r = e.response();
                    if req.header("x-requested-with").is_some() {
                        // a page's own login form asks: no browser password pop-up
                        r.headers.retain(|(n, _)| *n != "WWW-Authenticate");
                    }
                    return r;
                }
            };
            let api = api.clone();
            let r = tokio::task::spawn_blocking(move || api::handle(&api, &req, &user)).await;
            match r {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => e.response(),
                Err(_) => api::ApiError {
                    status: 500,
                    error: "internal_error",
                    reason: "the request failed inside the server (see its log)".into(),
                }
                .response(),
            }
        }
        _ => api::ApiError {
            status: 404,
            error: "not_found",
            reason: format!("no such page: {path}"),
        }
        .response(),
    }
}

/// Serve one connection (plain or TLS) until the client closes it.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    api: Arc<Api>,
    stream: S,
    peer: SocketAddr,
) {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    loop {
        let req = match tokio::time::timeout(IDLE, read_request(&mut rd, peer)).await {
            Err(_) | Ok(Ok(None)) | Ok(Err(ReadError::Closed)) => return,
            Ok(Err(ReadError::Bad(status, why))) => {
                let r = api::ApiError {
                    status,
                    error: "bad_request",
                    reason: why,
                }
                .response();
                let _ = write_response(&mut wr, &r, false, true).await;
                return;
            }
            Ok(Ok(Some(r))) => r,
        };
        let close = req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let head = req.method == "HEAD";
        let resp = route(&api, req).await;
        if write_response(&mut wr, &resp, head, close).await.is_err() || close {
            return;
        }
    }
}

/// Accept connections (plain, and HTTPS on `tls`) until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    api: Arc<Api>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut conns = tokio::task::JoinSet::new();
    let accept_tls = async |tls: &Option<(TcpListener, tokio_rustls::TlsAcceptor)>| match tls {
        Some((l, _)) => l.accept().await,
        None => std::future::pending().await,
    };
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_connection(api.clone(), stream, peer));
                }
                Err(e) => {
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            r = accept_tls(&tls) => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let acceptor = tls.as_ref().expect("accepted on it").1.clone();
                    let api = api.clone();
                    conns.spawn(async move {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(s)) => serve_connection(api, s, peer).await,
                            Ok(Err(e)) => tracing::warn!(%peer, "HTTPS: TLS handshake failed: {e}"),
                            Err(_) => tracing::warn!(%peer, "HTTPS: no TLS handshake within 10 s"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("HTTPS accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    Ok(())
}
