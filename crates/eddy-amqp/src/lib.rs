//! `eddy-amqp`: the AMQP 0-9-1 front end. It speaks the wire protocol (frames via
//! `amq-protocol`, with the delivery hot path hand-encoded) and maps every method onto the
//! broker core; it knows nothing of storage.
//!
//! Shaping decision: each connection has a reader task that handles frames in order and a
//! writer task that flushes one shared outbound buffer, so a queue delivers by appending frames
//! to that buffer under a short lock — many frames per `write`, no task hop per message.

mod channel;
mod codec;
mod conn;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use eddy_broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Protocol limits and identity advertised to clients.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Largest frame (pika and py-amqp negotiate 131072).
    pub frame_max: u32,
    /// Most channels per connection.
    pub channel_max: u16,
    /// Heartbeat interval proposed to clients, seconds (0 = off).
    pub heartbeat: u16,
    /// Largest message body accepted.
    pub max_message_size: u64,
    /// `product` in server properties.
    pub product: String,
    /// `version` in server properties.
    pub version: String,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            frame_max: 131072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 128 << 20,
            product: "Eddy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// An AMQPS listener: TLS on accept, then the same protocol.
pub struct TlsListener {
    /// The socket.
    pub listener: TcpListener,
    /// The server's TLS configuration.
    pub acceptor: tokio_rustls::TlsAcceptor,
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Accept connections (plain, and TLS on `tls`) until `shutdown` turns true; each connection
/// runs in its own task. On shutdown every connection is closed with 320 CONNECTION_FORCED (as
/// RabbitMQ does) and this returns once they are gone (or after a grace period).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsListener>,
    broker: Broker,
    config: AmqpConfig,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let mut conns = tokio::task::JoinSet::new();
    let accept_tls = async |tls: &Option<TlsListener>| match tls {
        Some(t) => t.listener.accept().await,
        None => std::future::pending().await,
    };
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    conns.spawn(conn::handle(stream, peer, broker.clone(), config.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            r = accept_tls(&tls) => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or(peer);
                    let acceptor = tls.as_ref().expect("accepted on it").acceptor.clone();
                    let (b, c, s) = (broker.clone(), config.clone(), shutdown.clone());
                    conns.spawn(async move {
                        match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => conn::handle_tls(stream, peer, local, b, c, s).await,
                            Ok(Err(e)) => tracing::warn!(%peer, "AMQPS: TLS handshake failed: {e}"),
                            Err(_) => tracing::warn!(%peer, "AMQPS: no TLS handshake within 10 s"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("AMQPS accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    drop(tls);
    if !conns.is_empty() {
        tracing::info!(connections = conns.len(), "closing AMQP connections");
    }
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
    }
    Ok(())
}
