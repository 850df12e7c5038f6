//! The in-process fixture for the AMQP front end's tests: a broker on a temporary directory,
//! the AMQP handler serving in-memory connections, and a small client that speaks frames to
//! it (every read has a deadline; nothing waits by sleeping).

#![allow(dead_code)] // each test file uses a different part of it

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, queue, tx, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use eddy_amqp::{Amqp, AmqpConfig};
use eddy_broker::{Broker, BrokerConfig};
use eddy_net::Handler;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Read the next frame on `$channel` and match it against a pattern, or panic naming both.
macro_rules! expect {
    ($client:expr, $channel:expr, $pat:pat => $out:expr) => {{
        let ch: u16 = $channel;
        match $client.recv().await {
            amq_protocol::frame::AMQPFrame::Method(got, m) if got == ch => match m {
                $pat => $out,
                other => panic!(
                    "expected {} on channel {ch}, got {other:?}",
                    stringify!($pat)
                ),
            },
            other => panic!(
                "expected {} on channel {ch}, got {other:?}",
                stringify!($pat)
            ),
        }
    }};
}

/// Longest wait for any one frame (or for the end of a connection).
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The frame_max the client asks for (the server's default).
pub const FRAME_MAX: u32 = 131072;

/// A broker on a temporary directory with the AMQP front end over it.
pub struct Fixture {
    pub broker: Broker,
    pub amqp: Arc<Amqp>,
    shutdown: watch::Sender<bool>,
    handlers: Vec<JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_config(AmqpConfig::default())
    }

    pub fn with_config(config: AmqpConfig) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Broker::open(BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .expect("broker opens");
        let amqp = Amqp::new(broker.clone(), config);
        let (shutdown, _) = watch::channel(false);
        Fixture {
            broker,
            amqp,
            shutdown,
            handlers: Vec::new(),
            dir,
        }
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A new in-memory connection served by the handler; nothing sent yet.
    pub fn connect_raw(&mut self) -> Client {
        self.connect_raw_from(None)
    }

    /// As [`Fixture::connect_raw`], from another peer address than loopback.
    pub fn connect_raw_from(&mut self, peer: Option<SocketAddr>) -> Client {
        let (mut conn, io) = eddy_net::Conn::in_memory(self.shutdown.subscribe());
        if let Some(peer) = peer {
            conn.peer = peer;
        }
        self.handlers
            .push(tokio::spawn(self.amqp.clone().handle(conn)));
        Client::new(io)
    }

    /// A new in-memory connection whose handshake must be done within `within`.
    pub fn connect_raw_with_deadline(&mut self, within: std::time::Duration) -> Client {
        let (mut conn, io) = eddy_net::Conn::in_memory(self.shutdown.subscribe());
        conn.handshake_deadline = std::time::Instant::now() + within;
        self.handlers
            .push(tokio::spawn(self.amqp.clone().handle(conn)));
        Client::new(io)
    }

    /// A connection opened on vhost `/` as guest, with channel 1 open.
    pub async fn connect(&mut self) -> Client {
        let mut c = self.connect_as("guest", "guest", "/").await;
        c.open_channel(1).await;
        c
    }

    /// A connection through the whole handshake as `user`, opened on `vhost`.
    pub async fn connect_as(&mut self, user: &str, pass: &str, vhost: &str) -> Client {
        let mut c = self.connect_raw();
        c.start().await;
        c.start_ok_plain(user, pass).await;
        c.expect_tune().await;
        c.tune_ok(0, FRAME_MAX, 0).await;
        c.method(0, open(vhost)).await;
        expect!(c, 0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => ());
        c
    }

    /// Tell every connection the broker shuts down.
    pub fn signal_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// End of a test: every connection's handler must have returned (the test closed its
    /// clients), without panicking, within the deadline; then the broker shuts down cleanly.
    pub async fn finish(self) {
        for h in self.handlers {
            match tokio::time::timeout(DEADLINE, h).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("a connection handler failed: {e}"),
                Err(_) => panic!("a connection handler still runs {DEADLINE:?} after the test"),
            }
        }
        let broker = self.broker.clone();
        tokio::task::spawn_blocking(move || broker.shutdown())
            .await
            .expect("broker shutdown");
    }
}

/// A connection.close or channel.close as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

/// The client end of one in-memory connection.
pub struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
}

impl Client {
    fn new(io: DuplexStream) -> Client {
        Client {
            io,
            buf: Vec::new(),
        }
    }

    /// Write bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write to the server");
    }

    /// Write bytes as they are; an error once the server has closed.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await
    }

    /// Write one frame.
    pub async fn send(&mut self, f: &AMQPFrame) {
        let bytes = encode(f);
        self.send_raw(&bytes).await;
    }

    /// Write a method frame.
    pub async fn method(&mut self, ch: u16, m: AMQPClass) {
        self.send(&AMQPFrame::Method(ch, m)).await;
    }

    /// The next frame (heartbeats skipped), or None at the end of the stream. Panics when
    /// nothing arrives within the deadline.
    pub async fn next_frame(&mut self) -> Option<AMQPFrame> {
        let read = async {
            loop {
                if let Some(f) = self.split_frame() {
                    if matches!(f, AMQPFrame::Heartbeat) {
                        continue;
                    }
                    return Some(f);
                }
                let mut chunk = [0u8; 16 * 1024];
                match self.io.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        assert!(
                            self.buf.is_empty(),
                            "stream ended inside a frame: {:?}",
                            self.buf
                        );
                        return None;
                    }
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        match tokio::time::timeout(DEADLINE, read).await {
            Ok(f) => f,
            Err(_) => panic!("no frame from the server within {DEADLINE:?}"),
        }
    }

    /// One complete frame off the buffer, if there is one.
    fn split_frame(&mut self) -> Option<AMQPFrame> {
        let total = if self.buf.first() == Some(&b'A') {
            8
        } else {
            if self.buf.len() < 7 {
                return None;
            }
            let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
            7 + size as usize + 1
        };
        if self.buf.len() < total {
            return None;
        }
        let frame: Vec<u8> = self.buf.drain(..total).collect();
        match parse_frame(&frame[..]) {
            Ok(([], f)) => Some(f),
            other => panic!("the server sent a frame the codec rejects: {frame:?} ({other:?})"),
        }
    }

    /// The next frame; panics at the end of the stream.
    pub async fn recv(&mut self) -> AMQPFrame {
        self.next_frame()
            .await
            .expect("the server closed the connection")
    }

    /// The next frame must be a method on `ch`.
    pub async fn recv_method(&mut self, ch: u16) -> AMQPClass {
        match self.recv().await {
            AMQPFrame::Method(got, m) if got == ch => m,
            other => panic!("expected a method on channel {ch}, got {other:?}"),
        }
    }

    /// The server must end the stream (within the deadline) without sending anything more.
    pub async fn expect_eof(&mut self) {
        if let Some(f) = self.next_frame().await {
            panic!("expected the end of the stream, got {f:?}");
        }
    }

    /// Send the protocol header; expect connection.start.
    pub async fn start(&mut self) -> connection::Start {
        self.send_raw(b"AMQP\x00\x00\x09\x01").await;
        expect!(self, 0, AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s)
    }

    /// connection.start-ok with a PLAIN response.
    pub async fn start_ok_plain(&mut self, user: &str, pass: &str) {
        let response = format!("\0{user}\0{pass}");
        self.start_ok("PLAIN", response.into_bytes()).await;
    }

    pub async fn start_ok(&mut self, mechanism: &str, response: Vec<u8>) {
        let mut props = FieldTable::default();
        props.insert("product".into(), AMQPValue::LongString("test".into()));
        self.start_ok_with(mechanism, response, props).await;
    }

    /// connection.start-ok with these client properties.
    pub async fn start_ok_with(&mut self, mechanism: &str, response: Vec<u8>, props: FieldTable) {
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: mechanism.into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            })),
        )
        .await;
    }

    pub async fn expect_tune(&mut self) -> connection::Tune {
        expect!(self, 0, AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t)
    }

    pub async fn tune_ok(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) {
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max,
                frame_max,
                heartbeat,
            })),
        )
        .await;
    }

    pub async fn open_channel(&mut self, ch: u16) {
        self.method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        expect!(self, ch, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => ());
    }

    /// Send a method and return the reply on the same channel.
    pub async fn rpc(&mut self, ch: u16, m: AMQPClass) -> AMQPClass {
        self.method(ch, m).await;
        self.recv_method(ch).await
    }

    /// basic.publish with its content header and body frames, in one write.
    pub async fn publish(
        &mut self,
        ch: u16,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) {
        let mut bytes = encode(&AMQPFrame::Method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory,
                immediate: false,
            })),
        ));
        bytes.extend(content(ch, body, properties));
        self.send_raw(&bytes).await;
    }

    /// The content (header and bodies) following a deliver, get-ok or return.
    pub async fn recv_content(&mut self, ch: u16) -> (BasicProperties, Vec<u8>) {
        let header = match self.recv().await {
            AMQPFrame::Header(got, h) if got == ch => h,
            other => panic!("expected a content header on channel {ch}, got {other:?}"),
        };
        assert_eq!(header.class_id, 60);
        let mut body = Vec::new();
        while (body.len() as u64) < header.body_size {
            match self.recv().await {
                AMQPFrame::Body(got, b) if got == ch => body.extend(b),
                other => panic!("expected a body frame on channel {ch}, got {other:?}"),
            }
        }
        assert_eq!(body.len() as u64, header.body_size);
        (header.properties, body)
    }

    /// The next frame must be channel.close on `ch`; answers close-ok.
    pub async fn expect_channel_close(&mut self, ch: u16) -> Close {
        let c = expect!(self, ch, AMQPClass::Channel(channel::AMQPMethod::Close(c)) => c);
        self.method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        )
        .await;
        Close {
            code: c.reply_code,
            text: c.reply_text.to_string(),
            class_id: c.class_id,
            method_id: c.method_id,
        }
    }

    /// The next frame must be connection.close; answers close-ok (the server may have
    /// closed its end already), and the server must end the stream.
    pub async fn expect_connection_close(&mut self) -> Close {
        let c = expect!(self, 0, AMQPClass::Connection(connection::AMQPMethod::Close(c)) => c);
        let close_ok = encode(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        ));
        let _ = self.io.write_all(&close_ok).await;
        self.expect_eof().await;
        Close {
            code: c.reply_code,
            text: c.reply_text.to_string(),
            class_id: c.class_id,
            method_id: c.method_id,
        }
    }

    /// A passive queue.declare: (ready messages, consumers).
    pub async fn queue_counts(&mut self, ch: u16, name: &str) -> (u32, u32) {
        let m = self
            .rpc(
                ch,
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    passive: true,
                    ..declare_queue(name)
                })),
            )
            .await;
        match m {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => {
                assert_eq!(ok.queue.as_str(), name);
                (ok.message_count, ok.consumer_count)
            }
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
    }

    /// The client closes the connection: close, close-ok, then the client drops its end.
    pub async fn close(mut self) {
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await;
        loop {
            // deliveries or confirms in flight may come first
            match self.recv().await {
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                    break
                }
                AMQPFrame::Method(0, m) => panic!("expected connection.close-ok, got {m:?}"),
                _ => {}
            }
        }
    }
}

/// The wire bytes of a frame.
pub fn encode(f: &AMQPFrame) -> Vec<u8> {
    gen_frame(f)(WriteContext::from(Vec::new()))
        .expect("encode a frame")
        .write
}

/// A content header and the body frames (none for an empty body), each within
/// [`FRAME_MAX`].
pub fn content(ch: u16, body: &[u8], properties: BasicProperties) -> Vec<u8> {
    let mut bytes = encode(&AMQPFrame::Header(
        ch,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties,
        },
    ));
    for part in body.chunks(FRAME_MAX as usize - 8) {
        bytes.extend(encode(&AMQPFrame::Body(ch, part.to_vec())));
    }
    bytes
}

/// A method frame from raw payload bytes (class and method ids included).
pub fn raw_method(ch: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![1u8];
    f.extend_from_slice(&ch.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

// Methods with the defaults the tests start from.

pub fn open(vhost: &str) -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
        virtual_host: vhost.into(),
    }))
}

pub fn declare_queue(name: &str) -> queue::Declare {
    queue::Declare {
        queue: name.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }
}

pub fn queue_declare(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(declare_queue(name)))
}

pub fn declare_exchange(name: &str, kind: &str) -> exchange::Declare {
    exchange::Declare {
        exchange: name.into(),
        kind: kind.into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: FieldTable::default(),
    }
}

pub fn exchange_declare(name: &str, kind: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Declare(declare_exchange(name, kind)))
}

pub fn queue_bind(queue: &str, exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

pub fn queue_unbind(queue: &str, exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        arguments: FieldTable::default(),
    }))
}

pub fn consume(queue: &str, tag: &str, no_ack: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: queue.into(),
        consumer_tag: tag.into(),
        no_local: false,
        no_ack,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

pub fn get(queue: &str, no_ack: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
        queue: queue.into(),
        no_ack,
    }))
}

pub fn ack(delivery_tag: u64, multiple: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
        delivery_tag,
        multiple,
    }))
}

pub fn nack(delivery_tag: u64, multiple: bool, requeue: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
        delivery_tag,
        multiple,
        requeue,
    }))
}

pub fn reject(delivery_tag: u64, requeue: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
        delivery_tag,
        requeue,
    }))
}

pub fn qos(prefetch_count: u16, global: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
        prefetch_count,
        global,
    }))
}

pub fn confirm_select() -> AMQPClass {
    AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
        nowait: false,
    }))
}

pub fn tx_select() -> AMQPClass {
    AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {}))
}

pub fn tx_commit() -> AMQPClass {
    AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {}))
}

pub fn tx_rollback() -> AMQPClass {
    AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {}))
}

pub fn channel_close() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: 200,
        reply_text: "ok".into(),
        class_id: 0,
        method_id: 0,
    }))
}

/// A field table from string values.
pub fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

pub fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}
