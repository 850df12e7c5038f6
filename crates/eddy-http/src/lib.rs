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

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use api::Api;
use server::{read_body, read_request, write_response, ReadError, Request, Response};

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/style.css");

/// How long a keep-alive connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(120);
/// How long a request's head, and then its body, may take to arrive once begun, and a
/// response to be taken by the client.
const TRANSFER: Duration = Duration::from_secs(30);
/// Most connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 512;

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
            // the metrics name every vhost, queue, topic and group: scrapers log in (Basic,
            // any management tag), as to the rest of the API
            if let Err(e) = api::authenticate(api, &req) {
                return e.response();
            }
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
            let mut req = req;
            if req.method == "HEAD" {
                req.method = "GET".into();
            }
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
        // the first byte may take IDLE; the rest of the head, TRANSFER
        match tokio::time::timeout(IDLE, rd.fill_buf()).await {
            Ok(Ok(b)) if !b.is_empty() => {}
            _ => return,
        }
        let bad = |status: u16, why: String| {
            api::ApiError {
                status,
                error: "bad_request",
                reason: why,
            }
            .response()
        };
        let mut req = match tokio::time::timeout(TRANSFER, read_request(&mut rd, peer)).await {
            Err(_) | Ok(Ok(None)) | Ok(Err(ReadError::Closed)) => return,
            Ok(Err(ReadError::Bad(status, why))) => {
                let _ = write_response(&mut wr, &bad(status, why), false, true).await;
                return;
            }
            Ok(Ok(Some(r))) => r,
        };
        // credentials are checked before a body is read: no one without them makes the
        // server hold a large body
        if req.path.starts_with("/api") && req.body_framing != server::Framing::Length(0) {
            if let Err(e) = api::authenticate(&api, &req) {
                let _ = write_response(&mut wr, &e.response(), false, true).await;
                return;
            }
        }
        if req
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
            && wr
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        match tokio::time::timeout(TRANSFER, read_body(&mut rd, &mut req)).await {
            Err(_) | Ok(Err(ReadError::Closed)) => return,
            Ok(Err(ReadError::Bad(status, why))) => {
                let _ = write_response(&mut wr, &bad(status, why), false, true).await;
                return;
            }
            Ok(Ok(())) => {}
        }
        let close = req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let head = req.method == "HEAD";
        let resp = route(&api, req).await;
        let written =
            tokio::time::timeout(TRANSFER, write_response(&mut wr, &resp, head, close)).await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
        if close {
            // over TLS this sends close_notify, so the client sees a clean end
            let _ = tokio::time::timeout(TRANSFER, wr.shutdown()).await;
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
                    if conns.len() >= MAX_CONNECTIONS {
                        tracing::warn!(%peer, "HTTP: {MAX_CONNECTIONS} connections open; refusing one more");
                        let _ = stream.try_write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        continue;
                    }
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
                    if conns.len() >= MAX_CONNECTIONS {
                        tracing::warn!(%peer, "HTTPS: {MAX_CONNECTIONS} connections open; refusing one more");
                        continue;
                    }
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
