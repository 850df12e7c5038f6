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

use eddy_broker::Broker;

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

/// The AMQP 0-9-1 front end: the [`eddy_net::Handler`] every AMQP (and AMQPS) listener runs.
pub struct Amqp {
    broker: Broker,
    config: Arc<AmqpConfig>,
}

impl Amqp {
    /// A front end over `broker`.
    pub fn new(broker: Broker, config: AmqpConfig) -> Arc<Amqp> {
        Arc::new(Amqp {
            broker,
            config: Arc::new(config),
        })
    }
}

impl eddy_net::Handler for Amqp {
    fn protocol(&self) -> &'static str {
        "amqp"
    }

    /// Serve one connection until it closes. On shutdown it is closed with 320
    /// CONNECTION_FORCED, as RabbitMQ does.
    async fn handle(self: Arc<Self>, conn: eddy_net::Conn) {
        conn::handle(conn, self.broker.clone(), self.config.clone()).await
    }
}
