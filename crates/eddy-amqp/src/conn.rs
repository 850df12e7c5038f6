//! One AMQP 0-9-1 connection: negotiation, channels, and the mapping of every method onto the
//! broker. A reader task (this) handles frames; a writer task flushes the outbound buffer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, parse_class, queue, tx, AMQPClass,
};
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::{Bytes, BytesMut};
use eddy_broker::{Access, Alarms, Broker, BrokerError, Message, PublishOutcome, Queue, VHost};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};

use crate::channel::{ChannelConsumer, ChannelShared, Outbound, Unacked, READ_PAUSE_LIMIT};
use crate::codec::{
    self, split_frame, FrameError, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
    PROTOCOL_HEADER,
};
use crate::AmqpConfig;

// reply codes
const NO_ROUTE: u16 = 312;
const CONNECTION_FORCED: u16 = 320;
const ACCESS_REFUSED: u16 = 403;
const NOT_FOUND: u16 = 404;
const RESOURCE_LOCKED: u16 = 405;
const PRECONDITION_FAILED: u16 = 406;
const FRAME_ERROR: u16 = 501;
const SYNTAX_ERROR: u16 = 502;
const COMMAND_INVALID: u16 = 503;
const CHANNEL_ERROR: u16 = 504;
const UNEXPECTED_FRAME: u16 = 505;
const RESOURCE_ERROR: u16 = 506;
const NOT_ALLOWED: u16 = 530;
const NOT_IMPLEMENTED: u16 = 540;
const INTERNAL_ERROR: u16 = 541;

/// An AMQP error to report: which level, code, text, and the method that caused it.
#[derive(Debug)]
struct AmqpError {
    connection: bool,
    code: u16,
    text: String,
    class_id: u16,
    method_id: u16,
}

impl AmqpError {
    fn channel(code: u16, text: impl Into<String>) -> Self {
        AmqpError {
            connection: false,
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }
    fn conn(code: u16, text: impl Into<String>) -> Self {
        AmqpError {
            connection: true,
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }
    fn at(mut self, m: &AMQPClass) -> Self {
        self.class_id = m.get_amqp_class_id();
        self.method_id = m.get_amqp_method_id();
        self
    }
}

/// The one place broker errors become AMQP reply codes.
impl From<BrokerError> for AmqpError {
    fn from(e: BrokerError) -> Self {
        let text = e.to_string();
        match e {
            BrokerError::NotFound(_) => {
                AmqpError::channel(NOT_FOUND, format!("NOT_FOUND - {text}"))
            }
            BrokerError::PreconditionFailed(_) => {
                AmqpError::channel(PRECONDITION_FAILED, format!("PRECONDITION_FAILED - {text}"))
            }
            BrokerError::AlreadyExists(_) => {
                AmqpError::channel(PRECONDITION_FAILED, format!("PRECONDITION_FAILED - {text}"))
            }
            BrokerError::ResourceLocked(_) => {
                AmqpError::channel(RESOURCE_LOCKED, format!("RESOURCE_LOCKED - {text}"))
            }
            BrokerError::AccessRefused(_) => {
                AmqpError::channel(ACCESS_REFUSED, format!("ACCESS_REFUSED - {text}"))
            }
            BrokerError::ResourceError(_) => {
                AmqpError::conn(RESOURCE_ERROR, format!("RESOURCE_ERROR - {text}"))
            }
            BrokerError::NotAllowed(_) => {
                AmqpError::conn(NOT_ALLOWED, format!("NOT_ALLOWED - {text}"))
            }
            BrokerError::CommandInvalid(_) => {
                AmqpError::conn(COMMAND_INVALID, format!("COMMAND_INVALID - {text}"))
            }
            BrokerError::NotImplemented(_) => {
                AmqpError::conn(NOT_IMPLEMENTED, format!("NOT_IMPLEMENTED - {text}"))
            }
            BrokerError::Storage(_) | BrokerError::Internal(_) => {
                AmqpError::conn(INTERNAL_ERROR, format!("INTERNAL_ERROR - {text}"))
            }
        }
    }
}

type AResult<T> = Result<T, AmqpError>;

/// A publish waiting for its content.
struct PendingPublish {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    header: Option<(eddy_broker::BasicProperties, Bytes, u64)>,
    body: BytesMut,
}

/// A publish whose content is complete.
struct CompletePublish {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    message: Arc<Message>,
}

/// The uncommitted work of a transactional channel. Its messages count toward the memory
/// watermark until it is committed (then the queues count them) or dropped.
struct TxBuffer {
    ops: Vec<TxOp>,
    bytes: i64,
    broker: Broker,
}

impl TxBuffer {
    fn new(broker: &Broker) -> Self {
        TxBuffer {
            ops: Vec::new(),
            bytes: 0,
            broker: broker.clone(),
        }
    }
    fn push(&mut self, op: TxOp) {
        if let TxOp::Publish(p) = &op {
            let n = p.message.memory_size() as i64;
            self.bytes += n;
            self.broker.track_memory(n);
        }
        self.ops.push(op);
    }
}

impl Drop for TxBuffer {
    fn drop(&mut self) {
        self.broker.track_memory(-self.bytes);
    }
}

enum TxOp {
    Publish(CompletePublish),
    Ack(u64, bool),
    Reject(u64, bool, bool),
}

/// A confirm to send once its writes are durable.
struct ConfirmItem {
    tag: u64,
    nack: bool,
    waits: Vec<(Arc<eddy_broker::Log>, u64)>,
}

struct Channel {
    shared: Arc<ChannelShared>,
    closing: bool,
    pending: Option<PendingPublish>,
    confirm: Option<(u64, mpsc::UnboundedSender<ConfirmItem>)>,
    tx: Option<TxBuffer>,
    consumers: HashMap<String, Arc<ChannelConsumer>>,
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Phase {
    Header,
    StartOk,
    TuneOk,
    Open,
    Running,
    Closing,
}

struct Conn {
    id: u64,
    broker: Broker,
    cfg: Arc<AmqpConfig>,
    peer: SocketAddr,
    out: Arc<Outbound>,
    phase: Phase,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    vhost: Option<Arc<VHost>>,
    user: String,
    channels: HashMap<u16, Channel>,
    client_caps: FieldTable,
    wake: Arc<Notify>,
    blocked_sent: bool,
    /// Turns true when the broker shuts down.
    shutdown: watch::Receiver<bool>,
    /// The client closed the connection: after close-ok, leave closing the socket to it (as
    /// RabbitMQ does; clients such as lapin report an early EOF as an error).
    linger: bool,
    alarms: watch::Receiver<Alarms>,
    /// The connection's entry in the broker's list (user, vhost, channels, bytes).
    info: eddy_broker::ConnectionHandle,
    /// The user may publish to every exchange (write `.*`, decided at connection.open): no
    /// check per publish. Otherwise the exchanges it was already allowed to publish to (a
    /// short list, cleared when it grows past 16).
    publish_anywhere: bool,
    may_publish: Vec<String>,
}

/// Serve one plain TCP connection until it closes.
pub async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Broker,
    cfg: Arc<AmqpConfig>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let (rd, wr) = stream.into_split();
    handle_io(rd, wr, peer, local, false, broker, cfg, shutdown).await
}

/// Serve one TLS connection (AMQPS) until it closes.
pub async fn handle_tls(
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    local: SocketAddr,
    broker: Broker,
    cfg: Arc<AmqpConfig>,
    shutdown: watch::Receiver<bool>,
) {
    let (rd, wr) = tokio::io::split(stream);
    handle_io(rd, wr, peer, local, true, broker, cfg, shutdown).await
}

#[allow(clippy::too_many_arguments)]
async fn handle_io<R, W>(
    mut rd: R,
    wr: W,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    broker: Broker,
    cfg: Arc<AmqpConfig>,
    shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let id = broker.next_connection_id();
    let info = broker.register_connection(id, "AMQP 0-9-1", peer, local, tls);
    let out = Outbound::new();
    let wake = Arc::new(Notify::new());
    let writer = tokio::spawn(writer_task(out.clone(), wr, wake.clone(), info.info()));
    /// If this task unwinds (a bug), the writer still stops and the socket closes, so the
    /// client learns it at once instead of waiting on a half-open connection.
    struct CloseOnUnwind(Arc<Outbound>);
    impl Drop for CloseOnUnwind {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.closed.store(true, Ordering::Relaxed);
                self.0.notify.notify_one();
            }
        }
    }
    let _unwind = CloseOnUnwind(out.clone());
    let counters = info.info();
    let mut conn = Conn {
        id,
        info,
        publish_anywhere: false,
        may_publish: Default::default(),
        alarms: broker.alarms(),
        broker,
        frame_max: cfg.frame_max,
        channel_max: cfg.channel_max,
        heartbeat: cfg.heartbeat,
        cfg,
        peer,
        out: out.clone(),
        phase: Phase::Header,
        vhost: None,
        user: String::new(),
        channels: HashMap::new(),
        client_caps: FieldTable::default(),
        wake: wake.clone(),
        blocked_sent: false,
        shutdown,
        linger: false,
    };
    let mut rbuf = BytesMut::with_capacity(128 * 1024);
    let mut hb_task: Option<tokio::task::JoinHandle<()>> = None;
    let result: Result<(), String> = async {
        loop {
            // frames already buffered first
            loop {
                match conn.process_buffer(&mut rbuf).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => return Err(e),
                }
            }
            if conn.phase == Phase::Running && hb_task.is_none() && conn.heartbeat > 0 {
                hb_task = Some(tokio::spawn(heartbeat_task(out.clone(), conn.heartbeat)));
            }
            if conn.phase != Phase::Closing && *conn.shutdown.borrow() {
                conn.on_shutdown();
            }
            if conn.phase == Phase::Closing && out.closed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let idle = if conn.heartbeat > 0 && conn.phase == Phase::Running {
                Duration::from_secs(conn.heartbeat as u64 * 2)
            } else if conn.phase == Phase::Running {
                Duration::from_secs(u64::MAX / 4)
            } else {
                Duration::from_secs(30) // handshake must finish
            };
            if out.closed.load(Ordering::Relaxed) && conn.phase != Phase::Closing {
                return Err("writing to the client failed".into());
            }
            if conn.phase != Phase::Closing && out.over_limit(READ_PAUSE_LIMIT) {
                // the client is not reading what we send: stop reading from it until the
                // writer catches up (bounded memory); give up when nothing at all reaches it
                // for two heartbeat intervals (10 minutes without heartbeats)
                let idle = Duration::from_secs(if conn.heartbeat > 0 { conn.heartbeat as u64 * 2 } else { 600 });
                let progress = out.written.load(Ordering::Relaxed);
                tokio::select! {
                    _ = wake.notified() => conn.on_wake(),
                    _ = conn.shutdown.changed() => conn.on_shutdown(),
                    _ = tokio::time::sleep(idle) => {
                        if out.written.load(Ordering::Relaxed) == progress {
                            return Err(format!("client read nothing for {}s while {} bytes waited for it", idle.as_secs(), out.buffered.load(Ordering::Relaxed)));
                        }
                    }
                }
                continue;
            }
            if rbuf.capacity() - rbuf.len() < 16 * 1024 {
                rbuf.reserve(64 * 1024);
            }
            tokio::select! {
                r = tokio::time::timeout(idle, rd.read_buf(&mut rbuf)) => match r {
                    Ok(Ok(0)) => return Err("client closed the socket".into()),
                    Ok(Ok(n)) => counters.received(n),
                    Ok(Err(e)) => return Err(format!("read error: {e}")),
                    Err(_) => return Err(format!("missed heartbeats from client, timeout: {}s", idle.as_secs())),
                },
                _ = wake.notified() => conn.on_wake(),
                _ = conn.alarms.changed() => conn.on_alarm(),
                _ = conn.shutdown.changed(), if conn.phase != Phase::Closing => conn.on_shutdown(),
                reason = counters.close_requested(), if conn.phase != Phase::Closing => {
                    tracing::info!(peer = %conn.peer, user = %conn.user, "closing the connection as asked: {reason}");
                    conn.close_connection(AmqpError::conn(
                        CONNECTION_FORCED,
                        format!("CONNECTION_FORCED - {reason}"),
                    ));
                }
            }
        }
    }
    .await;
    match &result {
        Ok(()) => tracing::debug!(peer = %conn.peer, "connection closed"),
        Err(e) => tracing::info!(peer = %conn.peer, user = %conn.user, "connection closed: {e}"),
    }
    if let Some(h) = hb_task {
        h.abort();
    }
    conn.cleanup();
    out.closed.store(true, Ordering::Relaxed);
    out.notify.notify_one();
    let wr = tokio::time::timeout(Duration::from_secs(5), writer).await;
    if let Ok(Ok(Some(mut wr))) = wr {
        if conn.linger && result.is_ok() {
            // close-ok is flushed; wait (bounded) for the client to close its end
            let wait = match conn.heartbeat {
                0 => CLOSING_TIMEOUT,
                h => CLOSING_TIMEOUT.min(Duration::from_secs(h as u64)),
            };
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(wait, async {
                while let Ok(n) = rd.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        let _ = wr.shutdown().await;
    }
}

/// Longest wait for a client to close its socket after connection.close-ok.
const CLOSING_TIMEOUT: Duration = Duration::from_secs(30);

/// Flush the outbound buffer until the connection is closed; hands the socket back once
/// everything is written (None after a write error).
async fn writer_task<W: AsyncWrite + Unpin>(
    out: Arc<Outbound>,
    mut wr: W,
    wake: Arc<Notify>,
    counters: Arc<eddy_broker::ConnectionInfo>,
) -> Option<W> {
    let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        {
            let mut b = out.buf.lock();
            if !b.is_empty() {
                std::mem::swap(&mut *b, &mut spare);
                out.buffered.store(0, Ordering::SeqCst);
            }
        }
        if spare.is_empty() {
            if out.closed.load(Ordering::Relaxed) {
                break;
            }
            out.notify.notified().await;
            continue;
        }
        if out.stalled.swap(false, Ordering::SeqCst) {
            wake.notify_one();
        }
        let mut at = 0;
        while at < spare.len() {
            match wr.write(&spare[at..]).await {
                Ok(n) if n > 0 => {
                    at += n;
                    out.written.fetch_add(n as u64, Ordering::Relaxed);
                    counters.sent(n);
                }
                _ => {
                    out.closed.store(true, Ordering::Relaxed);
                    wake.notify_one();
                    return None;
                }
            }
        }
        out.wrote_since_tick.store(true, Ordering::Relaxed);
        spare.clear();
        if spare.capacity() > (8 << 20) {
            spare = Vec::with_capacity(64 * 1024);
        }
    }
    Some(wr)
}

async fn heartbeat_task(out: Arc<Outbound>, heartbeat: u16) {
    let period = Duration::from_millis(heartbeat as u64 * 500);
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        if out.closed.load(Ordering::Relaxed) {
            break;
        }
        if !out.wrote_since_tick.swap(false, Ordering::Relaxed) {
            out.with(codec::put_heartbeat);
        }
    }
}

fn short(s: &str) -> ShortString {
    ShortString::from(s)
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn table_bool(t: &FieldTable, k: &str) -> bool {
    matches!(t.inner().get(k), Some(AMQPValue::Boolean(true)))
}

impl Conn {
    fn send(&self, ch: u16, m: AMQPClass) {
        self.out.with(|b| codec::put_method(b, ch, m));
    }

    /// Handle whatever complete frames are in `rbuf`. Ok(true): call again.
    async fn process_buffer(&mut self, rbuf: &mut BytesMut) -> Result<bool, String> {
        if self.phase == Phase::Header {
            if rbuf.len() < 8 {
                return Ok(false);
            }
            if &rbuf[..8] != PROTOCOL_HEADER {
                self.out.with(|b| b.extend_from_slice(PROTOCOL_HEADER));
                self.out.closed.store(true, Ordering::Relaxed);
                return Err(format!("bad protocol header {:?}", &rbuf[..8]));
            }
            let _ = rbuf.split_to(8);
            self.send_start();
            self.phase = Phase::StartOk;
            return Ok(true);
        }
        if self.out.over_limit(READ_PAUSE_LIMIT) {
            return Ok(false); // the caller waits for the writer before taking more frames
        }
        let (kind, channel, used) = match split_frame(rbuf, self.frame_max) {
            Ok(None) => return Ok(false),
            Ok(Some((f, used))) => (f.kind, f.channel, used),
            Err(e) => {
                let code = FRAME_ERROR;
                let text = match &e {
                    FrameError::TooLarge { .. } => format!("FRAME_ERROR - {e}"),
                    FrameError::BadEnd(_) => format!("FRAME_ERROR - {e}"),
                };
                self.close_connection(AmqpError::conn(code, text));
                return Err(format!("framing error: {e}"));
            }
        };
        let frame = rbuf.split_to(used).freeze();
        let payload = frame.slice(7..used - 1);
        let r = self.handle_frame(kind, channel, payload).await;
        if let Err(e) = r {
            if e.connection {
                let text = e.text.clone();
                self.close_connection(e);
                return Err(text);
            }
            self.close_channel(channel, e);
        }
        // closed: the caller stops reading frames
        Ok(!(self.phase == Phase::Closing && self.out.closed.load(Ordering::Relaxed)))
    }

    fn send_start(&self) {
        let mut caps = FieldTable::default();
        for c in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
        ] {
            caps.insert(c.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert("product".into(), long(&self.cfg.product));
        props.insert("version".into(), long(&self.cfg.version));
        props.insert("platform".into(), long("Rust"));
        props.insert("copyright".into(), long("Eddy contributors"));
        props.insert(
            "information".into(),
            long("Licensed under the Apache License 2.0"),
        );
        props.insert("cluster_name".into(), long("eddy@localhost"));
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: LongString::from("PLAIN AMQPLAIN"),
                locales: LongString::from("en_US"),
            })),
        );
    }

    fn close_connection(&mut self, e: AmqpError) {
        if self.phase == Phase::Closing {
            return;
        }
        tracing::info!(peer = %self.peer, code = e.code, "closing connection: {}", e.text);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: e.code,
                reply_text: ShortString::from(truncate(&e.text)),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        self.phase = Phase::Closing;
        self.cleanup();
        // close the socket after the client's close-ok or a short grace period (waking the
        // reader, which may be waiting for a close-ok that never comes)
        let out = self.out.clone();
        let wake = self.wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            out.closed.store(true, Ordering::Relaxed);
            out.notify.notify_one();
            wake.notify_one();
        });
    }

    fn close_channel(&mut self, id: u16, e: AmqpError) {
        tracing::debug!(peer = %self.peer, channel = id, code = e.code, "closing channel: {}", e.text);
        if let Some(ch) = self.channels.get_mut(&id) {
            if ch.closing {
                return;
            }
            ch.closing = true;
        }
        self.cleanup_channel(id, false);
        self.send(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: e.code,
                reply_text: ShortString::from(truncate(&e.text)),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
    }

    /// Requeue unacked messages and cancel consumers of a channel.
    fn cleanup_channel(&mut self, id: u16, remove: bool) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let consumers: Vec<_> = ch.consumers.drain().collect();
        ch.pending = None;
        ch.confirm = None;
        ch.tx = None;
        let shared = ch.shared.clone();
        for (tag, c) in consumers {
            c.stopped.store(true, Ordering::Relaxed);
            c.credit.notify_one();
            if c.queue.cancel(&tag) {
                if let Some(v) = &self.vhost {
                    eddy_broker::run_blocking(|| v.remove_queue(&c.queue));
                }
            }
        }
        shared.closed.store(true, Ordering::Relaxed);
        let unacked: Vec<Unacked> = {
            let mut st = shared.state.lock();
            std::mem::take(&mut st.unacked).into_values().collect()
        };
        requeue(unacked);
        if remove {
            self.channels.remove(&id);
            self.info.channel_closed(id);
        }
    }

    fn cleanup(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.cleanup_channel(id, true);
        }
        eddy_broker::run_blocking(|| self.broker.connection_closed(self.id));
    }

    /// The writer drained or a consumer was cancelled by the broker: resume deliveries and
    /// send cancel notifications.
    fn on_wake(&mut self) {
        let mut cancelled = Vec::new();
        for (id, ch) in &self.channels {
            for (tag, c) in &ch.consumers {
                if c.cancelled_by_broker.load(Ordering::Relaxed) {
                    c.stopped.store(true, Ordering::Relaxed);
                    c.credit.notify_one();
                    cancelled.push((*id, tag.clone()));
                } else if c.queue.stream().is_some() {
                    c.credit.notify_one();
                } else {
                    c.queue.dispatch();
                }
            }
        }
        let notify = table_bool(&self.client_caps, "consumer_cancel_notify");
        for (id, tag) in cancelled {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.consumers.remove(&tag);
                ch.shared
                    .consumer_count
                    .store(ch.consumers.len() as u32, Ordering::Relaxed);
            }
            if notify {
                self.send(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                        consumer_tag: short(&tag),
                        nowait: true,
                    })),
                );
            }
        }
    }

    fn on_alarm(&mut self) {
        let a = *self.alarms.borrow_and_update();
        if !a.blocked() && self.blocked_sent {
            self.blocked_sent = false;
            if table_bool(&self.client_caps, "connection.blocked") {
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Unblocked(
                        connection::Unblocked {},
                    )),
                );
            }
        }
    }

    fn on_shutdown(&mut self) {
        self.close_connection(AmqpError::conn(
            CONNECTION_FORCED,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
        ));
    }

    /// Block while a resource alarm is raised (RabbitMQ stops reading from publishers).
    /// Returns false when the broker is shutting down meanwhile (the publish is dropped
    /// unconfirmed; the connection is being closed).
    async fn wait_unblocked(&mut self) -> bool {
        loop {
            let a = *self.alarms.borrow_and_update();
            if !a.blocked() {
                // this wait consumed the change the select loop would have seen
                self.on_alarm();
                return true;
            }
            if !self.blocked_sent {
                self.blocked_sent = true;
                let reason = if a.memory {
                    "low on memory"
                } else {
                    "low on disk"
                };
                tracing::warn!(peer = %self.peer, "publisher blocked: {reason}");
                if table_bool(&self.client_caps, "connection.blocked") {
                    self.send(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::Blocked(
                            connection::Blocked {
                                reason: short(reason),
                            },
                        )),
                    );
                }
            }
            tokio::select! {
                r = self.alarms.changed() => if r.is_err() { return true },
                _ = self.shutdown.changed() => {}
            }
            if *self.shutdown.borrow() {
                return false;
            }
        }
    }

    async fn handle_frame(&mut self, kind: u8, ch: u16, payload: Bytes) -> AResult<()> {
        match kind {
            FRAME_HEARTBEAT => Ok(()),
            FRAME_METHOD => {
                if let Err(e) = codec::check_method_nesting(&payload) {
                    let mut e = AmqpError::conn(SYNTAX_ERROR, format!("SYNTAX_ERROR - {e}"));
                    if payload.len() >= 4 {
                        e.class_id = u16::from_be_bytes([payload[0], payload[1]]);
                        e.method_id = u16::from_be_bytes([payload[2], payload[3]]);
                    }
                    return Err(e);
                }
                // basic.qos: the codec drops prefetch_size, which RabbitMQ refuses unless 0
                if payload.len() >= 8 && payload[..4] == [0, 60, 0, 10] && payload[4..8] != [0; 4] {
                    let size = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    let mut e = AmqpError::conn(
                        NOT_IMPLEMENTED,
                        format!("NOT_IMPLEMENTED - prefetch_size!=0 ({size})"),
                    );
                    (e.class_id, e.method_id) = (60, 10);
                    return Err(e);
                }
                let method = match parse_class(&payload[..]) {
                    Ok(([], m)) => m,
                    Ok(_) | Err(_) => {
                        let (c, m) = if payload.len() >= 4 {
                            (
                                u16::from_be_bytes([payload[0], payload[1]]),
                                u16::from_be_bytes([payload[2], payload[3]]),
                            )
                        } else {
                            (0, 0)
                        };
                        let mut e = AmqpError::conn(SYNTAX_ERROR, format!("SYNTAX_ERROR - malformed or unknown method frame (class {c}, method {m})"));
                        e.class_id = c;
                        e.method_id = m;
                        return Err(e);
                    }
                };
                if ch == 0 {
                    self.handle_connection_method(method).await
                } else {
                    if self.phase != Phase::Running {
                        if self.phase == Phase::Closing {
                            return Ok(());
                        }
                        return Err(AmqpError::conn(
                            COMMAND_INVALID,
                            "COMMAND_INVALID - channel method before connection.open",
                        )
                        .at(&method));
                    }
                    let at = method.clone();
                    self.handle_channel_method(ch, method).await.map_err(|e| {
                        if e.class_id == 0 {
                            e.at(&at)
                        } else {
                            e
                        }
                    })
                }
            }
            FRAME_HEADER | FRAME_BODY => {
                if self.phase != Phase::Running {
                    return Ok(());
                }
                self.handle_content(kind, ch, payload).await
            }
            other => Err(AmqpError::conn(
                FRAME_ERROR,
                format!("FRAME_ERROR - unknown frame type {other}"),
            )),
        }
    }

    async fn handle_connection_method(&mut self, m: AMQPClass) -> AResult<()> {
        use connection::AMQPMethod as C;
        let AMQPClass::Connection(cm) = &m else {
            if self.phase == Phase::Closing {
                return Ok(());
            }
            return Err(AmqpError::conn(
                CHANNEL_ERROR,
                "CHANNEL_ERROR - expected a connection method on channel 0",
            )
            .at(&m));
        };
        match (self.phase, cm) {
            (Phase::Closing, C::CloseOk(_)) => {
                self.out.closed.store(true, Ordering::Relaxed);
                self.out.notify.notify_one();
                Ok(())
            }
            (Phase::Closing, C::Close(_)) => {
                self.send(0, AMQPClass::Connection(C::CloseOk(connection::CloseOk {})));
                self.out.closed.store(true, Ordering::Relaxed);
                Ok(())
            }
            (Phase::Closing, _) => Ok(()),
            (Phase::StartOk, C::StartOk(s)) => {
                if let Some(AMQPValue::FieldTable(caps)) =
                    s.client_properties.inner().get("capabilities")
                {
                    self.client_caps = caps.clone();
                }
                let (user, pass) = match s.mechanism.as_str() {
                    "PLAIN" => {
                        let parts: Vec<&[u8]> = s.response.as_bytes().split(|b| *b == 0).collect();
                        if parts.len() != 3 {
                            return Err(AmqpError::conn(
                                ACCESS_REFUSED,
                                "ACCESS_REFUSED - malformed PLAIN response",
                            )
                            .at(&m));
                        }
                        (
                            String::from_utf8_lossy(parts[1]).into_owned(),
                            String::from_utf8_lossy(parts[2]).into_owned(),
                        )
                    }
                    "AMQPLAIN" => {
                        let raw = s.response.as_bytes();
                        if let Err(e) = codec::check_table_content_nesting(raw) {
                            return Err(AmqpError::conn(
                                SYNTAX_ERROR,
                                format!("SYNTAX_ERROR - AMQPLAIN response: {e}"),
                            )
                            .at(&m));
                        }
                        let mut framed = (raw.len() as u32).to_be_bytes().to_vec();
                        framed.extend_from_slice(raw);
                        let t = parse_field_table(&framed[..])
                            .map(|(_, t)| t)
                            .map_err(|_| {
                                AmqpError::conn(
                                    ACCESS_REFUSED,
                                    "ACCESS_REFUSED - malformed AMQPLAIN response",
                                )
                                .at(&m)
                            })?;
                        let get = |k: &str| {
                            t.inner()
                                .get(k)
                                .and_then(eddy_broker::args::value_as_string)
                                .unwrap_or_default()
                        };
                        (get("LOGIN"), get("PASSWORD"))
                    }
                    other => {
                        return Err(AmqpError::conn(
                            ACCESS_REFUSED,
                            format!(
                                "ACCESS_REFUSED - unsupported authentication mechanism '{other}'"
                            ),
                        )
                        .at(&m));
                    }
                };
                let loopback = self.peer.ip().is_loopback();
                if let Err(e) = self.broker.authenticate(&user, &pass, loopback) {
                    tracing::warn!(peer = %self.peer, user = %user, "authentication failed: {e}");
                    return Err(AmqpError::conn(
                        ACCESS_REFUSED,
                        format!(
                            "ACCESS_REFUSED - Login was refused using authentication mechanism {}: {e}",
                            s.mechanism.as_str()
                        ),
                    )
                    .at(&m));
                }
                self.info.set_user(&user);
                self.user = user;
                self.send(
                    0,
                    AMQPClass::Connection(C::Tune(connection::Tune {
                        channel_max: self.cfg.channel_max,
                        frame_max: self.cfg.frame_max,
                        heartbeat: self.cfg.heartbeat,
                    })),
                );
                self.phase = Phase::TuneOk;
                Ok(())
            }
            (Phase::TuneOk, C::TuneOk(t)) => {
                if t.frame_max != 0 && t.frame_max < 4096 {
                    return Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!(
                            "NOT_ALLOWED - frame_max {} below the minimum 4096",
                            t.frame_max
                        ),
                    )
                    .at(&m));
                }
                if t.frame_max > self.cfg.frame_max {
                    return Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!(
                            "NOT_ALLOWED - frame_max {} above the server's {}",
                            t.frame_max, self.cfg.frame_max
                        ),
                    )
                    .at(&m));
                }
                if t.frame_max != 0 {
                    self.frame_max = t.frame_max;
                }
                self.channel_max = if t.channel_max == 0 {
                    self.cfg.channel_max
                } else {
                    t.channel_max.min(self.cfg.channel_max)
                };
                self.heartbeat = t.heartbeat;
                self.phase = Phase::Open;
                Ok(())
            }
            (Phase::Open, C::Open(o)) => {
                let name = o.virtual_host.as_str();
                if self.broker.vhost(name).is_some()
                    && !self.broker.users().can_access_vhost(&self.user, name)
                {
                    tracing::warn!(peer = %self.peer, user = %self.user, vhost = name, "vhost access refused");
                    return Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!(
                            "NOT_ALLOWED - access to vhost '{name}' refused for user '{}'",
                            self.user
                        ),
                    )
                    .at(&m));
                }
                match self.broker.vhost(name) {
                    Some(v) => {
                        self.info.set_vhost(name);
                        self.publish_anywhere =
                            self.broker
                                .users()
                                .allows_all(&self.user, name, Access::Write);
                        self.vhost = Some(v);
                        self.send(0, AMQPClass::Connection(C::OpenOk(connection::OpenOk {})));
                        self.phase = Phase::Running;
                        tracing::debug!(peer = %self.peer, user = %self.user, vhost = name, "connection opened");
                        Ok(())
                    }
                    None => Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!("NOT_ALLOWED - vhost '{name}' not found"),
                    )
                    .at(&m)),
                }
            }
            (Phase::Running, C::Close(c)) => {
                tracing::debug!(peer = %self.peer, code = c.reply_code, "client closed connection: {}", c.reply_text.as_str());
                self.cleanup();
                self.send(0, AMQPClass::Connection(C::CloseOk(connection::CloseOk {})));
                self.phase = Phase::Closing;
                self.linger = true;
                self.out.closed.store(true, Ordering::Relaxed);
                self.out.notify.notify_one();
                Ok(())
            }
            (Phase::Running, C::Blocked(_)) | (Phase::Running, C::Unblocked(_)) => Ok(()),
            (Phase::Running, C::UpdateSecret(_)) => {
                self.send(
                    0,
                    AMQPClass::Connection(C::UpdateSecretOk(connection::UpdateSecretOk {})),
                );
                Ok(())
            }
            _ => Err(AmqpError::conn(
                COMMAND_INVALID,
                "COMMAND_INVALID - unexpected connection method in this state",
            )
            .at(&m)),
        }
    }

    /// Whether the user may do `access` to the named resource in this connection's vhost
    /// (RabbitMQ's configure/write/read permissions; 403 ACCESS_REFUSED on the channel if not).
    fn allow(&self, access: Access, kind: &str, name: &str) -> AResult<()> {
        let vhost = self.vhost.as_ref().map_or("", |v| v.name.as_str());
        self.broker
            .users()
            .check(&self.user, vhost, access, kind, name)
            .map_err(AmqpError::from)
    }

    /// The checks for arguments that route elsewhere (dead-letter, alternate exchanges).
    fn allow_arguments(&self, kind: &str, name: &str, arguments: &FieldTable) -> AResult<()> {
        let vhost = self.vhost.as_ref().map_or("", |v| v.name.as_str());
        self.broker
            .users()
            .check_declare_arguments(&self.user, vhost, kind, name, arguments)
            .map_err(AmqpError::from)
    }

    fn vhost(&self) -> Arc<VHost> {
        self.vhost
            .clone()
            .expect("running connections have a vhost")
    }

    fn channel_mut(&mut self, id: u16) -> AResult<&mut Channel> {
        self.channels.get_mut(&id).ok_or_else(|| {
            AmqpError::conn(
                CHANNEL_ERROR,
                format!("CHANNEL_ERROR - expected 'channel.open' on channel {id}"),
            )
        })
    }

    async fn handle_channel_method(&mut self, id: u16, m: AMQPClass) -> AResult<()> {
        // channel lifecycle first
        if let AMQPClass::Channel(cm) = &m {
            match cm {
                channel::AMQPMethod::Open(_) => {
                    if self.channels.contains_key(&id) {
                        return Err(AmqpError::conn(
                            CHANNEL_ERROR,
                            format!("CHANNEL_ERROR - second 'channel.open' seen on channel {id}"),
                        ));
                    }
                    if id > self.channel_max {
                        return Err(AmqpError::conn(
                            NOT_ALLOWED,
                            format!(
                                "NOT_ALLOWED - channel {id} above channel_max {}",
                                self.channel_max
                            ),
                        ));
                    }
                    let shared = ChannelShared::new(id, self.out.clone(), self.frame_max);
                    self.info.channel_opened(id, shared.clone());
                    self.channels.insert(
                        id,
                        Channel {
                            shared,
                            closing: false,
                            pending: None,
                            confirm: None,
                            tx: None,
                            consumers: HashMap::new(),
                        },
                    );
                    self.send(
                        id,
                        AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                    );
                    return Ok(());
                }
                channel::AMQPMethod::Close(_) => {
                    self.channel_mut(id)?;
                    self.cleanup_channel(id, true);
                    self.send(
                        id,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    return Ok(());
                }
                channel::AMQPMethod::CloseOk(_) => {
                    if self.channels.get(&id).is_some_and(|c| c.closing) {
                        self.channels.remove(&id);
                        self.info.channel_closed(id);
                    }
                    return Ok(());
                }
                _ => {}
            }
        }
        let ch = self.channel_mut(id)?;
        if ch.closing {
            return Ok(()); // everything but close/close-ok is dropped while closing
        }
        if ch.pending.is_some() {
            return Err(AmqpError::conn(UNEXPECTED_FRAME, format!("UNEXPECTED_FRAME - expected content header for class 60, got a method on channel {id}")));
        }
        let vhost = self.vhost();
        let conn = self.id;
        match m {
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => {
                let ch = self.channel_mut(id)?;
                ch.shared.flow_active.store(f.active, Ordering::Relaxed);
                self.send(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: f.active,
                    })),
                );
                if f.active {
                    self.kick_channel(id);
                }
                Ok(())
            }
            AMQPClass::Channel(_) => Err(AmqpError::conn(
                COMMAND_INVALID,
                "COMMAND_INVALID - unexpected channel method",
            )),
            AMQPClass::Access(_) => {
                self.send(
                    id,
                    AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        amq_protocol::protocol::access::RequestOk {},
                    )),
                );
                Ok(())
            }
            // these may write metadata (fsynced) or remove queue logs: off the async workers
            AMQPClass::Exchange(em) => {
                eddy_broker::run_blocking(|| self.handle_exchange(id, &vhost, em))
            }
            AMQPClass::Queue(qm) => {
                eddy_broker::run_blocking(|| self.handle_queue(id, &vhost, conn, qm))
            }
            AMQPClass::Basic(bm) => self.handle_basic(id, &vhost, conn, bm).await,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                let out = self.out.clone();
                let ch = self.channel_mut(id)?;
                if ch.tx.is_some() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
                    ));
                }
                if ch.confirm.is_none() {
                    let (txs, rx) = mpsc::unbounded_channel();
                    tokio::spawn(confirm_task(rx, out, ch.shared.clone()));
                    ch.confirm = Some((0, txs));
                    ch.shared.confirm_mode.store(true, Ordering::Relaxed);
                }
                if !s.nowait {
                    self.send(
                        id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(t) => self.handle_tx(id, t).await,
            other => Err(AmqpError::conn(
                COMMAND_INVALID,
                format!("COMMAND_INVALID - unexpected method {other:?}"),
            )),
        }
    }

    fn ok(&self, id: u16, nowait: bool, m: AMQPClass) {
        if !nowait {
            self.send(id, m);
        }
    }

    fn handle_exchange(
        &mut self,
        id: u16,
        vhost: &Arc<VHost>,
        m: exchange::AMQPMethod,
    ) -> AResult<()> {
        use exchange::AMQPMethod as E;
        match m {
            E::Declare(d) => {
                if !d.passive {
                    self.allow(Access::Configure, "exchange", d.exchange.as_str())?;
                    self.allow_arguments("exchange", d.exchange.as_str(), &d.arguments)?;
                }
                vhost.declare_exchange(eddy_broker::ExchangeDeclare {
                    name: d.exchange.to_string(),
                    kind: d.kind.to_string(),
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                })?;
                self.ok(
                    id,
                    d.nowait,
                    AMQPClass::Exchange(E::DeclareOk(exchange::DeclareOk {})),
                );
            }
            E::Delete(d) => {
                self.allow(Access::Configure, "exchange", d.exchange.as_str())?;
                vhost.delete_exchange(d.exchange.as_str(), d.if_unused)?;
                self.ok(
                    id,
                    d.nowait,
                    AMQPClass::Exchange(E::DeleteOk(exchange::DeleteOk {})),
                );
            }
            E::Bind(b) => {
                self.allow(Access::Write, "exchange", b.destination.as_str())?;
                self.allow(Access::Read, "exchange", b.source.as_str())?;
                vhost.bind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                )?;
                self.ok(
                    id,
                    b.nowait,
                    AMQPClass::Exchange(E::BindOk(exchange::BindOk {})),
                );
            }
            E::Unbind(b) => {
                self.allow(Access::Write, "exchange", b.destination.as_str())?;
                self.allow(Access::Read, "exchange", b.source.as_str())?;
                vhost.unbind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                )?;
                self.ok(
                    id,
                    b.nowait,
                    AMQPClass::Exchange(E::UnbindOk(exchange::UnbindOk {})),
                );
            }
            _ => {
                return Err(AmqpError::conn(
                    COMMAND_INVALID,
                    "COMMAND_INVALID - server-side exchange method sent by client",
                ))
            }
        }
        Ok(())
    }

    fn handle_queue(
        &mut self,
        id: u16,
        vhost: &Arc<VHost>,
        conn: u64,
        m: queue::AMQPMethod,
    ) -> AResult<()> {
        use queue::AMQPMethod as Q;
        match m {
            Q::Declare(d) => {
                // a server-named queue gets its name first, and the checks see that name
                let server_named = d.queue.as_str().is_empty() && !d.passive;
                let name = if server_named {
                    eddy_broker::vhost::server_queue_name()
                } else {
                    d.queue.to_string()
                };
                if !d.passive {
                    self.allow(Access::Configure, "queue", &name)?;
                    self.allow_arguments("queue", &name, &d.arguments)?;
                }
                let r = vhost.declare_queue(
                    eddy_broker::QueueDeclare {
                        name,
                        server_named,
                        passive: d.passive,
                        durable: d.durable,
                        exclusive: d.exclusive,
                        auto_delete: d.auto_delete,
                        arguments: d.arguments,
                    },
                    conn,
                )?;
                self.ok(
                    id,
                    d.nowait,
                    AMQPClass::Queue(Q::DeclareOk(queue::DeclareOk {
                        queue: short(&r.name),
                        message_count: r.message_count,
                        consumer_count: r.consumer_count,
                    })),
                );
            }
            Q::Bind(b) => {
                self.allow(Access::Write, "queue", b.queue.as_str())?;
                self.allow(Access::Read, "exchange", b.exchange.as_str())?;
                vhost.bind_queue(
                    b.queue.as_str(),
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                    conn,
                )?;
                self.ok(id, b.nowait, AMQPClass::Queue(Q::BindOk(queue::BindOk {})));
            }
            Q::Unbind(b) => {
                self.allow(Access::Write, "queue", b.queue.as_str())?;
                self.allow(Access::Read, "exchange", b.exchange.as_str())?;
                vhost.unbind_queue(
                    b.queue.as_str(),
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                    conn,
                )?;
                self.send(id, AMQPClass::Queue(Q::UnbindOk(queue::UnbindOk {})));
            }
            Q::Purge(p) => {
                self.allow(Access::Read, "queue", p.queue.as_str())?;
                let n = vhost.purge_queue(p.queue.as_str(), conn)?;
                self.ok(
                    id,
                    p.nowait,
                    AMQPClass::Queue(Q::PurgeOk(queue::PurgeOk {
                        message_count: n as u32,
                    })),
                );
            }
            Q::Delete(d) => {
                self.allow(Access::Configure, "queue", d.queue.as_str())?;
                let n = vhost.delete_queue(d.queue.as_str(), d.if_unused, d.if_empty, conn)?;
                self.ok(
                    id,
                    d.nowait,
                    AMQPClass::Queue(Q::DeleteOk(queue::DeleteOk {
                        message_count: n as u32,
                    })),
                );
            }
            _ => {
                return Err(AmqpError::conn(
                    COMMAND_INVALID,
                    "COMMAND_INVALID - server-side queue method sent by client",
                ))
            }
        }
        Ok(())
    }

    async fn handle_basic(
        &mut self,
        id: u16,
        vhost: &Arc<VHost>,
        conn: u64,
        m: basic::AMQPMethod,
    ) -> AResult<()> {
        use basic::AMQPMethod as B;
        match m {
            B::Qos(q) => {
                let ch = self.channel_mut(id)?;
                if q.global {
                    ch.shared
                        .prefetch_channel
                        .store(q.prefetch_count as u32, Ordering::Relaxed);
                } else {
                    ch.shared
                        .prefetch_consumer
                        .store(q.prefetch_count as u32, Ordering::Relaxed);
                }
                self.send(id, AMQPClass::Basic(B::QosOk(basic::QosOk {})));
                self.kick_channel(id);
            }
            B::Consume(c) => {
                self.allow(Access::Read, "queue", c.queue.as_str())?;
                let q = vhost.queue_for(c.queue.as_str(), conn)?;
                // a stream consumer reads from an offset, needs a prefetch and acks manually
                let stream = match q.stream() {
                    None => None,
                    Some(p) => {
                        let ch = self.channel_mut(id)?;
                        let prefetch = ch.shared.prefetch_consumer.load(Ordering::Relaxed)
                            + ch.shared.prefetch_channel.load(Ordering::Relaxed);
                        if prefetch == 0 {
                            return Err(AmqpError::channel(PRECONDITION_FAILED, format!("PRECONDITION_FAILED - consumer prefetch count is not set for stream queue '{}'", q.name)));
                        }
                        if c.no_ack {
                            return Err(AmqpError::channel(PRECONDITION_FAILED, format!("PRECONDITION_FAILED - stream queue '{}' needs manual acknowledgements (no_ack=false)", q.name)));
                        }
                        let from = eddy_broker::stream::start_offset(
                            p,
                            c.arguments.inner().get("x-stream-offset"),
                        )?;
                        Some((p.clone(), from))
                    }
                };
                let tag = if c.consumer_tag.as_str().is_empty() {
                    format!("amq.ctag-{}", random_tag())
                } else {
                    c.consumer_tag.to_string()
                };
                let wake = self.wake.clone();
                let ch = self.channel_mut(id)?;
                if ch.consumers.contains_key(&tag) {
                    return Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!("NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"),
                    ));
                }
                let tag_arc: Arc<str> = Arc::from(tag.as_str());
                let consumer = Arc::new_cyclic(|me| ChannelConsumer {
                    tag: tag_arc.clone(),
                    channel: ch.shared.clone(),
                    no_ack: c.no_ack,
                    unacked: Default::default(),
                    queue: q.clone(),
                    cancelled_by_broker: Default::default(),
                    active: Default::default(),
                    credit: Notify::new(),
                    stopped: Default::default(),
                    wake,
                    me: me.clone(),
                });
                // registered inactive: consume-ok goes out only if the queue accepts the
                // consumer, and before any delivery
                q.consume(tag_arc, consumer.clone(), c.no_ack, c.exclusive)?;
                ch.consumers.insert(tag.clone(), consumer.clone());
                ch.shared
                    .consumer_count
                    .store(ch.consumers.len() as u32, Ordering::Relaxed);
                if !c.nowait {
                    self.send(
                        id,
                        AMQPClass::Basic(B::ConsumeOk(basic::ConsumeOk {
                            consumer_tag: short(&tag),
                        })),
                    );
                }
                consumer.active.store(true, Ordering::Release);
                match stream {
                    Some((partition, from)) => {
                        tokio::spawn(crate::stream::deliver(
                            consumer,
                            partition,
                            from,
                            self.broker.appends(),
                        ));
                    }
                    None => q.dispatch(),
                }
            }
            B::Cancel(c) => {
                let ch = self.channel_mut(id)?;
                let removed = ch.consumers.remove(c.consumer_tag.as_str());
                ch.shared
                    .consumer_count
                    .store(ch.consumers.len() as u32, Ordering::Relaxed);
                if let Some(consumer) = removed {
                    consumer.stopped.store(true, Ordering::Relaxed);
                    consumer.credit.notify_one();
                    if consumer.queue.cancel(c.consumer_tag.as_str()) {
                        eddy_broker::run_blocking(|| vhost.remove_queue(&consumer.queue));
                    }
                }
                if !c.nowait {
                    self.send(
                        id,
                        AMQPClass::Basic(B::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
            }
            B::Publish(p) => {
                if p.immediate {
                    return Err(AmqpError::conn(
                        NOT_IMPLEMENTED,
                        "NOT_IMPLEMENTED - immediate=true",
                    ));
                }
                if !self.publish_anywhere
                    && !self.may_publish.iter().any(|x| x == p.exchange.as_str())
                {
                    self.allow(Access::Write, "exchange", p.exchange.as_str())?;
                    if self.may_publish.len() >= 16 {
                        self.may_publish.clear();
                    }
                    self.may_publish.push(p.exchange.to_string());
                }
                let ch = self.channel_mut(id)?;
                ch.pending = Some(PendingPublish {
                    exchange: p.exchange.to_string(),
                    routing_key: p.routing_key.to_string(),
                    mandatory: p.mandatory,
                    header: None,
                    body: BytesMut::new(),
                });
            }
            B::Get(g) => {
                self.allow(Access::Read, "queue", g.queue.as_str())?;
                let q = vhost.queue_for(g.queue.as_str(), conn)?;
                if q.stream().is_some() {
                    return Err(AmqpError::conn(
                        NOT_IMPLEMENTED,
                        format!(
                            "NOT_IMPLEMENTED - basic.get not supported by stream queue '{}'",
                            q.name
                        ),
                    ));
                }
                let ch = self.channel_mut(id)?;
                match q.get(g.no_ack) {
                    None => self.send(id, AMQPClass::Basic(B::GetEmpty(basic::GetEmpty {}))),
                    Some(r) => {
                        let entry = if g.no_ack {
                            None
                        } else {
                            Some((q.clone(), r.message_id, None))
                        };
                        let m = &r.message;
                        ch.shared.send_content(entry, m, |buf, tag| {
                            codec::put_method(
                                buf,
                                id,
                                AMQPClass::Basic(B::GetOk(basic::GetOk {
                                    delivery_tag: tag,
                                    redelivered: r.redelivered,
                                    exchange: short(&m.exchange),
                                    routing_key: short(&m.routing_key),
                                    message_count: r.remaining as u32,
                                })),
                            )
                        });
                    }
                }
            }
            B::Ack(a) => {
                let ch = self.channel_mut(id)?;
                if let Some(tx) = &mut ch.tx {
                    tx.push(TxOp::Ack(a.delivery_tag, a.multiple));
                } else {
                    self.settle(id, a.delivery_tag, a.multiple, Settle::Ack)?;
                }
            }
            B::Nack(n) => {
                let ch = self.channel_mut(id)?;
                if let Some(tx) = &mut ch.tx {
                    tx.push(TxOp::Reject(n.delivery_tag, n.multiple, n.requeue));
                } else {
                    self.settle(id, n.delivery_tag, n.multiple, Settle::Reject(n.requeue))?;
                }
            }
            B::Reject(r) => {
                let ch = self.channel_mut(id)?;
                if let Some(tx) = &mut ch.tx {
                    tx.push(TxOp::Reject(r.delivery_tag, false, r.requeue));
                } else {
                    self.settle(id, r.delivery_tag, false, Settle::Reject(r.requeue))?;
                }
            }
            B::Recover(r) => {
                self.recover(id, r.requeue)?;
                self.send(id, AMQPClass::Basic(B::RecoverOk(basic::RecoverOk {})));
            }
            B::RecoverAsync(r) => self.recover(id, r.requeue)?,
            _ => {
                return Err(AmqpError::conn(
                    COMMAND_INVALID,
                    "COMMAND_INVALID - server-side basic method sent by client",
                ))
            }
        }
        Ok(())
    }

    fn recover(&mut self, id: u16, requeue_all: bool) -> AResult<()> {
        if !requeue_all {
            return Err(AmqpError::conn(
                NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - requeue=false",
            ));
        }
        let ch = self.channel_mut(id)?;
        let shared = ch.shared.clone();
        let all: Vec<Unacked> = std::mem::take(&mut shared.state.lock().unacked)
            .into_values()
            .collect();
        for u in &all {
            release_credit(&shared, u);
        }
        requeue(all);
        Ok(())
    }

    fn kick_channel(&self, id: u16) {
        if let Some(ch) = self.channels.get(&id) {
            for c in ch.consumers.values() {
                c.queue.dispatch();
            }
        }
    }

    fn settle(&mut self, id: u16, tag: u64, multiple: bool, how: Settle) -> AResult<()> {
        let ch = self.channel_mut(id)?;
        let shared = ch.shared.clone();
        let taken: Vec<Unacked> = {
            let mut st = shared.state.lock();
            if multiple {
                if tag == 0 {
                    std::mem::take(&mut st.unacked).into_values().collect()
                } else if !st.unacked.contains_key(&tag) {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
                    ));
                } else {
                    let rest = st.unacked.split_off(&(tag + 1));
                    let taken = std::mem::replace(&mut st.unacked, rest);
                    taken.into_values().collect()
                }
            } else {
                match st.unacked.remove(&tag) {
                    Some(u) => vec![u],
                    None => {
                        return Err(AmqpError::channel(
                            PRECONDITION_FAILED,
                            format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
                        ));
                    }
                }
            }
        };
        for u in &taken {
            release_credit(&shared, u);
        }
        // group per queue, keeping order
        let mut groups: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
        for u in taken {
            match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
                Some((_, ids)) => ids.push(u.message_id),
                None => groups.push((u.queue, vec![u.message_id])),
            }
        }
        for (q, ids) in &groups {
            match how {
                Settle::Ack => q.ack(ids),
                Settle::Reject(requeue) => q.reject(ids, requeue),
            }
        }
        // a channel-wide prefetch frees credit for consumers of other queues too
        if shared.prefetch_channel.load(Ordering::Relaxed) != 0 {
            self.kick_channel(id);
        }
        Ok(())
    }

    async fn handle_tx(&mut self, id: u16, t: tx::AMQPMethod) -> AResult<()> {
        use tx::AMQPMethod as T;
        match t {
            T::Select(_) => {
                let fresh = TxBuffer::new(&self.broker);
                let ch = self.channel_mut(id)?;
                if ch.confirm.is_some() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
                    ));
                }
                if ch.tx.is_none() {
                    ch.tx = Some(fresh);
                    ch.shared.tx_mode.store(true, Ordering::Relaxed);
                }
                self.send(id, AMQPClass::Tx(T::SelectOk(tx::SelectOk {})));
            }
            T::Commit(_) => {
                let fresh = TxBuffer::new(&self.broker);
                let ch = self.channel_mut(id)?;
                let Some(mut committed) = ch.tx.replace(fresh) else {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - channel is not transactional",
                    ));
                };
                let mut waits = Vec::new();
                for op in std::mem::take(&mut committed.ops) {
                    match op {
                        TxOp::Publish(p) => {
                            let outcome = self.do_publish(id, p).await?;
                            waits.extend(outcome.durable);
                        }
                        TxOp::Ack(tag, multiple) => self.settle(id, tag, multiple, Settle::Ack)?,
                        TxOp::Reject(tag, multiple, requeue) => {
                            self.settle(id, tag, multiple, Settle::Reject(requeue))?
                        }
                    }
                }
                for (log, off) in waits {
                    log.wait_durable(off)
                        .await
                        .map_err(|e| AmqpError::from(BrokerError::from(e)))?;
                }
                self.send(id, AMQPClass::Tx(T::CommitOk(tx::CommitOk {})));
            }
            T::Rollback(_) => {
                let fresh = TxBuffer::new(&self.broker);
                let ch = self.channel_mut(id)?;
                if ch.tx.is_none() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - channel is not transactional",
                    ));
                }
                ch.tx = Some(fresh);
                self.send(id, AMQPClass::Tx(T::RollbackOk(tx::RollbackOk {})));
            }
            _ => {
                return Err(AmqpError::conn(
                    COMMAND_INVALID,
                    "COMMAND_INVALID - server-side tx method sent by client",
                ))
            }
        }
        Ok(())
    }

    async fn handle_content(&mut self, kind: u8, id: u16, payload: Bytes) -> AResult<()> {
        let max_size = self.cfg.max_message_size;
        let frame_max = self.frame_max as usize;
        let ch = self.channel_mut(id)?;
        if ch.closing {
            return Ok(());
        }
        let Some(p) = ch.pending.as_mut() else {
            return Err(AmqpError::conn(UNEXPECTED_FRAME, format!("UNEXPECTED_FRAME - content frame on channel {id} without a preceding basic.publish")));
        };
        if kind == FRAME_HEADER {
            if p.header.is_some() {
                return Err(AmqpError::conn(
                    UNEXPECTED_FRAME,
                    format!("UNEXPECTED_FRAME - second content header on channel {id}"),
                ));
            }
            if let Err(e) = codec::check_header_nesting(&payload) {
                return Err(AmqpError::conn(
                    SYNTAX_ERROR,
                    format!("SYNTAX_ERROR - content header: {e}"),
                ));
            }
            let h = match parse_content_header(&payload[..]) {
                Ok(([], h)) => h,
                _ => {
                    return Err(AmqpError::conn(
                        FRAME_ERROR,
                        "FRAME_ERROR - malformed content header",
                    ))
                }
            };
            if h.class_id != 60 {
                return Err(AmqpError::conn(
                    FRAME_ERROR,
                    format!(
                        "FRAME_ERROR - content header for unknown class {}",
                        h.class_id
                    ),
                ));
            }
            if h.body_size > max_size {
                ch.pending = None;
                return Err(AmqpError::channel(PRECONDITION_FAILED, format!("PRECONDITION_FAILED - message size {} is larger than configured max size {max_size}", h.body_size)));
            }
            let raw = payload.slice(12..);
            // grow with the data that arrives, not with what the header claims
            p.body.reserve((h.body_size as usize).min(frame_max));
            p.header = Some((h.properties, raw, h.body_size));
        } else {
            let Some((_, _, size)) = &p.header else {
                return Err(AmqpError::conn(
                    UNEXPECTED_FRAME,
                    format!(
                        "UNEXPECTED_FRAME - body frame on channel {id} before the content header"
                    ),
                ));
            };
            if (p.body.len() + payload.len()) as u64 > *size {
                return Err(AmqpError::conn(
                    FRAME_ERROR,
                    format!("FRAME_ERROR - body exceeds declared size {size}"),
                ));
            }
            p.body.extend_from_slice(&payload);
        }
        let complete = matches!(&p.header, Some((_, _, size)) if p.body.len() as u64 == *size);
        if !complete {
            return Ok(());
        }
        let p = ch.pending.take().expect("checked above");
        let (props, raw, _) = p.header.expect("checked above");
        let message = Arc::new(Message {
            exchange: p.exchange.clone(),
            routing_key: p.routing_key.clone(),
            properties: props,
            raw_properties: raw,
            body: p.body.freeze(),
        });
        let cp = CompletePublish {
            exchange: p.exchange,
            routing_key: p.routing_key,
            mandatory: p.mandatory,
            message,
        };
        // an alarm holds transactional publishes too (they count toward memory)
        if self.alarms.borrow().blocked() && !self.wait_unblocked().await {
            return Ok(());
        }
        if let Some(tx) = &mut self.channel_mut(id)?.tx {
            tx.push(TxOp::Publish(cp));
            return Ok(());
        }
        let confirm_tag = match &mut self.channel_mut(id)?.confirm {
            Some((n, _)) => {
                *n += 1;
                Some(*n)
            }
            None => None,
        };
        let result = self.do_publish(id, cp).await;
        if let (Some(tag), Some(ch)) = (confirm_tag, self.channels.get(&id)) {
            if let Some((_, txs)) = &ch.confirm {
                let item = match &result {
                    Ok(o) => ConfirmItem {
                        tag,
                        // RabbitMQ: rejected by any queue (x-overflow reject-publish) → nack
                        nack: o.rejected,
                        waits: o.durable.clone(),
                    },
                    Err(_) => ConfirmItem {
                        tag,
                        nack: true,
                        waits: vec![],
                    },
                };
                let _ = txs.send(item);
            }
        }
        result.map(|_| ())
    }

    async fn do_publish(&mut self, id: u16, p: CompletePublish) -> AResult<PublishOutcome> {
        let vhost = self.vhost();
        if let Err(e) = p.message.expiration_ms() {
            return Err(e.into());
        }
        // as RabbitMQ: a message may not claim to be from another user
        if let Some(claimed) = p.message.properties.user_id() {
            if claimed.as_str() != self.user {
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - user_id property set to '{}' but authenticated user was '{}'",
                        claimed.as_str(),
                        self.user
                    ),
                ));
            }
        }
        let outcome = vhost.publish(&p.exchange, p.message.clone())?;
        if p.mandatory && !outcome.routed && !outcome.rejected {
            if let Some(ch) = self.channels.get(&id) {
                let m = &p.message;
                ch.shared.send_content(None, m, |buf, _| {
                    codec::put_method(
                        buf,
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                            reply_code: NO_ROUTE,
                            reply_text: short("NO_ROUTE"),
                            exchange: short(&p.exchange),
                            routing_key: short(&p.routing_key),
                        })),
                    )
                });
            }
        }
        Ok(outcome)
    }
}

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Reject(bool),
}

fn release_credit(shared: &ChannelShared, u: &Unacked) {
    shared.unacked_count.fetch_sub(1, Ordering::Relaxed);
    if let Some(c) = &u.consumer {
        c.unacked.fetch_sub(1, Ordering::Relaxed);
        if u.queue.stream().is_some() {
            c.credit.notify_one();
        }
    }
}

fn requeue(unacked: Vec<Unacked>) {
    let mut groups: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
    for u in unacked {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, ids)) => ids.push(u.message_id),
            None => groups.push((u.queue, vec![u.message_id])),
        }
    }
    for (q, ids) in groups {
        q.reject(&ids, true);
    }
}

/// Sends publisher confirms in order once each publish is durable, coalescing runs of acks
/// into one `multiple` ack.
/// Stops when the channel closes: a reopened channel with the same number must not receive
/// the old channel's confirms.
async fn confirm_task(
    mut rx: mpsc::UnboundedReceiver<ConfirmItem>,
    out: Arc<Outbound>,
    channel: Arc<ChannelShared>,
) {
    let ch = channel.id;
    let mut batch: Vec<ConfirmItem> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        let mut results: Vec<(u64, bool)> = Vec::with_capacity(batch.len());
        for item in batch.drain(..) {
            let mut nack = item.nack;
            for (log, off) in &item.waits {
                if let Err(e) = log.wait_durable(*off).await {
                    tracing::error!("publish not durable, sending basic.nack: {e}");
                    nack = true;
                }
            }
            results.push((item.tag, nack));
        }
        if out.closed.load(Ordering::Relaxed) {
            break;
        }
        let written = out.with(|buf| {
            // checked under the buffer lock: channel.close-ok is appended after `closed` is set
            if channel.closed.load(Ordering::Relaxed) {
                return false;
            }
            let mut i = 0;
            while i < results.len() {
                if results[i].1 {
                    codec::put_method(
                        buf,
                        ch,
                        AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                            delivery_tag: results[i].0,
                            multiple: false,
                            requeue: false,
                        })),
                    );
                    i += 1;
                    continue;
                }
                let mut j = i;
                while j + 1 < results.len() && !results[j + 1].1 {
                    j += 1;
                }
                let multiple = j > i;
                codec::put_method(
                    buf,
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: results[j].0,
                        multiple,
                    })),
                );
                i = j + 1;
            }
            true
        });
        if !written {
            break;
        }
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 255 {
        return s.to_owned();
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn random_tag() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", t as u64, n)
}
