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

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

/// A TLS server configuration ready to accept connections (rustls, ring provider).
pub use rustls_pki_types::ServerName;
pub use stream::{ReadHalf, Stream, WriteHalf};
pub use tls::{tls_acceptor, tls_peer_connector, TlsError};
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The limits every listener applies, whatever its protocol. A connection over a cap is
/// accepted and closed at once (the handler may say why first: [`Handler::refuse`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections open at once on one listener (TLS handshakes in progress count).
    pub max_connections: usize,
    /// Most connections open at once on one listener from one client address.
    pub max_connections_per_address: usize,
    /// The process's descriptors that this listener's connections draw from, shared with the
    /// other listeners given the same budget (None: not counted — the management listener, so
    /// that operators get in while clients hold every descriptor the budget allows).
    pub descriptors: Option<Arc<Descriptors>>,
    /// How long a client may take over its TLS handshake, from the accept.
    pub tls_handshake: Duration,
    /// How long a client may take, from the accept, over its protocol's handshake (AMQP:
    /// until connection.open-ok; HTTP: a request's head) — absolute, however the bytes trickle
    /// in: [`Conn::handshake_deadline`].
    pub handshake: Duration,
    /// On shutdown, how long connections get to finish (each protocol says goodbye its own
    /// way) before they are aborted.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_address: 1024,
            descriptors: None,
            tls_handshake: Duration::from_secs(10),
            // RabbitMQ's handshake_timeout
            handshake: Duration::from_secs(10),
            drain: Duration::from_secs(5),
        }
    }
}

/// Descriptors connections may hold, shared by the listeners that draw from it.
#[derive(Debug)]
pub struct Descriptors {
    limit: usize,
    open: std::sync::atomic::AtomicUsize,
}

impl Descriptors {
    /// A budget of `limit` connections.
    pub fn new(limit: usize) -> Arc<Descriptors> {
        Arc::new(Descriptors {
            limit,
            open: Default::default(),
        })
    }

    /// The process's descriptor limit less `reserve` (for logs, metadata and the listeners
    /// that draw from no budget), after raising the soft limit to the hard one as far as the
    /// system allows.
    pub fn of_process(reserve: usize) -> Arc<Descriptors> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a properly sized out-parameter.
        let soft = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                1024
            } else {
                if lim.rlim_cur < lim.rlim_max {
                    let raised = libc::rlimit {
                        rlim_cur: lim.rlim_max,
                        rlim_max: lim.rlim_max,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                        lim.rlim_cur = lim.rlim_max;
                    }
                }
                lim.rlim_cur as usize
            }
        };
        let limit = if soft > reserve * 2 {
            soft - reserve
        } else {
            soft / 2
        };
        Descriptors::new(limit)
    }

    /// The budget.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections holding a descriptor of the budget now.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take(self: &Arc<Self>) -> Option<Taken> {
        use std::sync::atomic::Ordering;
        let mut n = self.open.load(Ordering::Relaxed);
        loop {
            if n >= self.limit {
                return None;
            }
            match self
                .open
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(Taken(self.clone())),
                Err(now) => n = now,
            }
        }
    }
}

/// One connection's share of a [`Descriptors`] budget, given back on drop.
struct Taken(Arc<Descriptors>);

impl Drop for Taken {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// One connection's place in its listener's count per address, given back on drop.
struct AddressSlot {
    counts: Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>,
    addr: IpAddr,
}

impl AddressSlot {
    fn take(
        counts: &Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>,
        addr: IpAddr,
        max: usize,
    ) -> Option<AddressSlot> {
        let mut c = counts.lock();
        let n = c.entry(addr).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: counts.clone(),
            addr,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        if let Some(n) = c.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.addr);
            }
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
    /// When the protocol's handshake must be done by ([`Limits::handshake`] after the accept):
    /// the handler closes a connection still in its handshake then, however slowly bytes
    /// arrive.
    pub handshake_deadline: Instant,
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
            handshake_deadline: Instant::now() + Limits::default().handshake,
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
    let per_address = Arc::new(parking_lot::Mutex::new(HashMap::new()));
    let mut refused = Throttled::new();
    let mut failed = Throttled::new();
    loop {
        tokio::select! {
            r = tcp.accept() => match r {
                Ok((stream, peer)) => {
                    // connections that ended count no longer, reaped or not
                    while conns.try_join_next().is_some() {}
                    let over = if conns.len() >= limits.max_connections {
                        Some(format!("{} connections open, the listener's cap", limits.max_connections))
                    } else {
                        None
                    };
                    let slot = match over {
                        Some(_) => None,
                        None => AddressSlot::take(&per_address, peer.ip(), limits.max_connections_per_address),
                    };
                    let over = over.or_else(|| slot.is_none().then(|| format!("{} connections open from {}, the cap per address", limits.max_connections_per_address, peer.ip())));
                    let taken = match (&over, &limits.descriptors) {
                        (None, Some(d)) => match d.take() {
                            Some(t) => Some(t),
                            None => {
                                drop(slot);
                                if let Some(skipped) = refused.ready() {
                                    tracing::warn!(listener = %name, %peer, skipped, "{} connections hold the descriptors the listeners may use: closing a new one", d.limit());
                                }
                                if tls.is_none() {
                                    handler.refuse(&stream);
                                }
                                continue;
                            }
                        },
                        _ => None,
                    };
                    if let Some(why) = over {
                        if let Some(skipped) = refused.ready() {
                            tracing::warn!(listener = %name, %peer, skipped, "{why}: closing a new one");
                        }
                        if tls.is_none() {
                            handler.refuse(&stream);
                        }
                        continue;
                    }
                    let handshake_deadline = Instant::now() + limits.handshake;
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or(peer);
                    let span = conn_span(handler.protocol(), &name, peer);
                    let shutdown = shutdown.clone();
                    let handler = handler.clone();
                    match &tls {
                        None => {
                            let conn = Conn { stream: Stream::Tcp(stream), peer, local, tls: false, handshake_deadline, shutdown, span: span.clone() };
                            conns.spawn(async move {
                                // the connection's places in the counts go with it
                                let _held = (slot, taken);
                                handler.handle(conn).await
                            }.instrument(span));
                        }
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            let deadline = limits.tls_handshake;
                            conns.spawn(async move {
                                let _held = (slot, taken);
                                match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                                    Ok(Ok(s)) => {
                                        let conn = Conn { stream: Stream::Tls(Box::new(s)), peer, local, tls: true, handshake_deadline, shutdown, span: tracing::Span::current() };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_warnings_are_logged_at_most_once_a_second() {
        let mut t = Throttled::new();
        assert_eq!(t.ready(), Some(0));
        // a storm of accept errors (EMFILE every 50 ms, or faster): one line a second
        let logged = (0..1000).filter(|_| t.ready().is_some()).count();
        assert_eq!(logged, 0);
        t.last = Some(Instant::now() - Duration::from_secs(1));
        assert_eq!(
            t.ready(),
            Some(1000),
            "the next line says how many were left out"
        );
    }
}
