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

use std::sync::Arc;

use eddy_broker::Broker;
use tokio::net::TcpListener;

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

/// Accept connections until the listener fails; each connection runs in its own task.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    config: AmqpConfig,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(conn::handle(stream, peer, broker.clone(), config.clone()));
    }
}
