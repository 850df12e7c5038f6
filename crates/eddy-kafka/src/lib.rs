//! `eddy-kafka`: the Kafka wire-protocol front end. Requests and responses are decoded and
//! encoded by `kafka-protocol`; topics and partitions are the broker's, on `eddy-log`.
//!
//! Shaping decision: record batches are stored exactly as producers send them (compressed or
//! not) and served back byte for byte, with only the broker-owned base offset patched in (the
//! batch CRC does not cover it). A connection handles its requests one at a time, in order, as
//! a Kafka broker does; long-polling fetches wait on the broker's append signal.

mod api;
mod conn;
mod groups;
mod producers;
pub mod records;

use std::sync::Arc;
use std::time::Duration;

use eddy_broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Settings of the Kafka listener.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Host clients are told to connect to (Metadata).
    pub advertised_host: String,
    /// Port clients are told to connect to.
    pub advertised_port: u16,
    /// This broker's node id.
    pub node_id: i32,
    /// Largest request accepted (Kafka's `socket.request.max.bytes`).
    pub max_request_bytes: usize,
    /// Create a topic when a client asks for an unknown one (Kafka's
    /// `auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic (Kafka's `num.partitions`).
    pub default_partitions: usize,
    /// Cluster id reported in Metadata.
    pub cluster_id: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            node_id: 0,
            max_request_bytes: 100 << 20,
            auto_create_topics: true,
            default_partitions: 1,
            cluster_id: "eddy".into(),
        }
    }
}

/// A TLS listener (Kafka's SSL and SASL_SSL security protocols): clients that connect to it
/// are told (Metadata) to come back to it.
pub struct TlsListener {
    /// The socket.
    pub listener: TcpListener,
    /// The server's TLS configuration.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Host this listener's clients are told to connect to.
    pub advertised_host: String,
    /// Port this listener's clients are told to connect to.
    pub advertised_port: u16,
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Accept Kafka connections (plain, and TLS on `tls`) until `shutdown` turns true; each runs
/// in its own task, and this returns once they are gone (or after a grace period). Both
/// listeners share producers' state and consumer groups.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsListener>,
    broker: Broker,
    config: KafkaConfig,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let tls_config = tls.as_ref().map(|t| {
        Arc::new(KafkaConfig {
            advertised_host: t.advertised_host.clone(),
            advertised_port: t.advertised_port,
            ..config.clone()
        })
    });
    let config = Arc::new(config);
    let accept_tls = async |tls: &Option<TlsListener>| match tls {
        Some(t) => t.listener.accept().await,
        None => std::future::pending().await,
    };
    let shared = Arc::new(api::Shared {
        producers: Arc::new(producers::Producers::new()),
        groups: Arc::new(groups::Groups::default()),
    });
    // consumer-group sessions time out here
    let expiry = {
        let groups = Arc::downgrade(&shared.groups);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let Some(g) = groups.upgrade() else { break };
                g.expire();
            }
        })
    };
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    conns.spawn(conn::handle(stream, peer, broker.clone(), config.clone(), shared.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!("kafka accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            r = accept_tls(&tls) => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or(peer);
                    let acceptor = tls.as_ref().expect("accepted on it").acceptor.clone();
                    let cfg = tls_config.clone().expect("set with the listener");
                    let (b, sh, s) = (broker.clone(), shared.clone(), shutdown.clone());
                    conns.spawn(async move {
                        match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => conn::handle_tls(stream, peer, local, b, cfg, sh, s).await,
                            Ok(Err(e)) => tracing::warn!(%peer, "kafka TLS handshake failed: {e}"),
                            Err(_) => tracing::warn!(%peer, "kafka: no TLS handshake within 10 s"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("kafka TLS accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    drop(tls);
    expiry.abort();
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
    }
    Ok(())
}
