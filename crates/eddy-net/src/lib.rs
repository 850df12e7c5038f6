//! `eddy-net`: the one listener under every protocol. It owns the sockets: plain and TLS
//! accept, the TLS handshake deadline, the per-listener connection cap, the back-off when the
//! process runs out of descriptors, and the drain on shutdown — the same for AMQP, Kafka, HTTP
//! and whatever protocol comes next.
//!
//! Shaping decision: a protocol front end is a [`Handler`] — a function from one accepted
//! connection ([`Conn`]: a [`Stream`], its addresses, a shutdown signal and a tracing span) to
//! the end of that connection. Front ends never open, accept or wrap a socket; a new protocol
//! is a new handler, never a new accept loop.
//!
//! ```no_run
//! use std::sync::Arc;
//! use eddy_net::{Conn, Handler, Limits, Listener};
//! use tokio::io::AsyncWriteExt;
//!
//! struct Hello;
//! impl Handler for Hello {
//!     fn protocol(&self) -> &'static str { "hello" }
//!     async fn handle(self: Arc<Self>, conn: Conn) {
//!         let (_rd, mut wr) = conn.stream.into_split();
//!         let _ = wr.write_all(b"hello\n").await;
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let (_stop, stopped) = tokio::sync::watch::channel(false);
//! let listener = Listener::bind("hello", "127.0.0.1:7000".parse().unwrap(), None).await?;
//! eddy_net::serve(listener, Arc::new(Hello), Limits::default(), stopped).await;
//! # Ok(()) }
//! ```

mod stream;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

pub use stream::{ReadHalf, Stream, WriteHalf};
pub use tls::{tls_acceptor, TlsError};
/// A TLS server configuration ready to accept connections (rustls, ring provider).
pub use tokio_rustls::TlsAcceptor;

/// The limits every listener applies, whatever its protocol.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections open at once on one listener (TLS handshakes in progress count). One
    /// more is accepted and closed at once (the handler may say why first: [`Handler::refuse`]).
    pub max_connections: usize,
    /// How long a client may take over its TLS handshake, from the accept.
    pub tls_handshake: Duration,
    /// On shutdown, how long connections get to finish (each protocol says goodbye its own
    /// way) before they are aborted.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            tls_handshake: Duration::from_secs(10),
            drain: Duration::from_secs(5),
        }
    }
}

/// One accepted connection, handed to a protocol's [`Handler`].
pub struct Conn {
    /// The byte stream (plain TCP, TLS after its handshake, or in memory in tests).
    pub stream: Stream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address it connected to.
    pub local: SocketAddr,
    /// Whether the stream is TLS.
    pub tls: bool,
    /// Turns true when the server shuts down: the handler closes the connection its
    /// protocol's way and returns (within [`Limits::drain`]).
    pub shutdown: watch::Receiver<bool>,
    /// The connection's span (`conn{proto, listener, peer, id, user, vhost}`), entered by the
    /// task that runs the handler. The handler records `id`, `user` and `vhost` when it knows
    /// them, and instruments the tasks it spawns with it (`.in_current_span()`), so every log
    /// line of the connection carries them.
    pub span: tracing::Span,
}

impl Conn {
    /// A connection over an in-memory stream (a test drives a handler without a socket):
    /// returns it and the client's end.
    pub fn in_memory(shutdown: watch::Receiver<bool>) -> (Conn, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(256 * 1024);
        let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
        let local: SocketAddr = ([127, 0, 0, 1], 2).into();
        let conn = Conn {
            stream: Stream::Memory(server),
            peer,
            local,
            tls: false,
            span: conn_span("memory", "memory", peer),
            shutdown,
        };
        (conn, client)
    }
}

/// A protocol front end: what to do with one accepted connection.
pub trait Handler: Send + Sync + 'static {
    /// The protocol's name in logs and spans (`amqp`, `kafka`, `http`).
    fn protocol(&self) -> &'static str;

    /// Serve the connection until it ends.
    fn handle(self: Arc<Self>, conn: Conn) -> impl Future<Output = ()> + Send + 'static;

    /// A plain connection over the listener's cap is about to be closed: say so in the
    /// protocol if it has a way to, without blocking (the default says nothing). Not called
    /// for TLS listeners, where nothing can be said before a handshake.
    fn refuse(&self, stream: &TcpStream) {
        let _ = stream;
    }
}

/// A bound listening socket, plain or TLS.
pub struct Listener {
    name: Arc<str>,
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl Listener {
    /// Bind `addr`; with `tls`, every connection does a TLS handshake first. `name` labels
    /// the listener in logs and connection spans (`amqp`, `amqps`, `kafka`, `kafka-tls` …).
    pub async fn bind(
        name: &str,
        addr: SocketAddr,
        tls: Option<TlsAcceptor>,
    ) -> std::io::Result<Listener> {
        Ok(Listener {
            name: Arc::from(name),
            tcp: TcpListener::bind(addr).await?,
            tls,
        })
    }

    /// The bound address (the port, when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

fn conn_span(proto: &'static str, listener: &str, peer: SocketAddr) -> tracing::Span {
    tracing::info_span!(
        "conn",
        proto,
        %listener,
        id = tracing::field::Empty,
        %peer,
        user = tracing::field::Empty,
        vhost = tracing::field::Empty,
    )
}

/// Logs a repeated warning at most once a second, with how many were left out.
struct Throttled {
    last: Option<Instant>,
    skipped: u64,
}

impl Throttled {
    fn new() -> Self {
        Throttled {
            last: None,
            skipped: 0,
        }
    }

    /// Whether to log now; `Some(n)`: log, `n` earlier ones were left out.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// Accept connections on `listener` and run `handler` on each, in its own task, until
/// `shutdown` turns true; then stop accepting, give open connections [`Limits::drain`] to
/// finish, abort the rest and return.
pub async fn serve<H: Handler>(
    listener: Listener,
    handler: Arc<H>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let Listener { name, tcp, tls } = listener;
    let mut conns = tokio::task::JoinSet::new();
    let mut refused = Throttled::new();
    let mut failed = Throttled::new();
    loop {
        tokio::select! {
            r = tcp.accept() => match r {
                Ok((stream, peer)) => {
                    // connections that ended count no longer, reaped or not
                    while conns.try_join_next().is_some() {}
                    if conns.len() >= limits.max_connections {
                        if let Some(skipped) = refused.ready() {
                            tracing::warn!(listener = %name, %peer, skipped, "{} connections open, the listener's cap: closing a new one", limits.max_connections);
                        }
                        if tls.is_none() {
                            handler.refuse(&stream);
                        }
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or(peer);
                    let span = conn_span(handler.protocol(), &name, peer);
                    let shutdown = shutdown.clone();
                    let handler = handler.clone();
                    match &tls {
                        None => {
                            let conn = Conn { stream: Stream::Tcp(stream), peer, local, tls: false, shutdown, span: span.clone() };
                            conns.spawn(handler.handle(conn).instrument(span));
                        }
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            let deadline = limits.tls_handshake;
                            conns.spawn(async move {
                                match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                                    Ok(Ok(s)) => {
                                        let conn = Conn { stream: Stream::Tls(Box::new(s)), peer, local, tls: true, shutdown, span: tracing::Span::current() };
                                        handler.handle(conn).await
                                    }
                                    Ok(Err(e)) => tracing::warn!("TLS handshake failed: {e}"),
                                    Err(_) => tracing::warn!("no TLS handshake within {} s", deadline.as_secs()),
                                }
                            }.instrument(span));
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning
                    if let Some(skipped) = failed.ready() {
                        tracing::warn!(listener = %name, skipped, "accept failed: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(tcp);
    if !conns.is_empty() {
        tracing::info!(listener = %name, connections = conns.len(), "closing connections");
    }
    let drained = tokio::time::timeout(limits.drain, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(listener = %name, connections = conns.len(), "connections still open after {} ms: aborted", limits.drain.as_millis());
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}
