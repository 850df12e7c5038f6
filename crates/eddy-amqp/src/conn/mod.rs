//! One AMQP 0-9-1 connection. This file holds its transport: the reader task (frames in,
//! handshake deadline, heartbeats, back-pressure, shutdown), the writer task that flushes the
//! outbound buffer, and the dispatch of each frame to the method family that handles it —
//! one file per family:
//!
//! | file | methods |
//! |---|---|
//! | `handshake.rs` | connection.* (start, tune, open, close, auth) |
//! | `state.rs` | the connection's state; channel.* (open, close, flow); closing and cleanup |
//! | `resources.rs` | exchange.* and queue.* (declare, bind, unbind, purge, delete) |
//! | `basic.rs` | basic.qos, consume, cancel, get, ack, nack, reject, recover |
//! | `publish.rs` | basic.publish, content assembly, confirm.select and publisher confirms |
//! | `tx.rs` | tx.select, commit, rollback |
//! | `error.rs` | reply codes; broker errors to AMQP codes (one place) |

mod basic;
mod error;
mod handshake;
mod publish;
mod resources;
mod state;
mod tx;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{parse_class, AMQPClass};
use amq_protocol::types::FieldTable;
use bytes::{Bytes, BytesMut};
use eddy_broker::Broker;
use eddy_net::{ReadHalf, WriteHalf};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::channel::{Outbound, READ_PAUSE_LIMIT};
use crate::codec::{
    self, split_frame, FrameError, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
    PROTOCOL_HEADER,
};
use crate::AmqpConfig;
use error::*;
use state::{Conn, Phase};

/// Serve one connection (plain or TLS, or in memory in tests) until it closes.
pub(crate) async fn handle(c: eddy_net::Conn, broker: Broker, cfg: Arc<AmqpConfig>) {
    let (rd, wr) = c.stream.into_split();
    handle_io(
        rd,
        wr,
        c.peer,
        c.local,
        c.tls,
        c.handshake_deadline,
        broker,
        cfg,
        c.shutdown,
        c.span,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn handle_io(
    mut rd: ReadHalf,
    wr: WriteHalf,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    handshake_deadline: Instant,
    broker: Broker,
    cfg: Arc<AmqpConfig>,
    shutdown: watch::Receiver<bool>,
    span: tracing::Span,
) {
    let id = broker.next_connection_id();
    span.record("id", id);
    let info = broker.register_connection(id, "AMQP 0-9-1", peer, local, tls);
    let out = Outbound::new();
    let wake = Arc::new(Notify::new());
    let writer =
        tokio::spawn(writer_task(out.clone(), wr, wake.clone(), info.info()).in_current_span());
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
        span,
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
                hb_task = Some(tokio::spawn(heartbeat_task(out.clone(), conn.heartbeat).in_current_span()));
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
                // the handshake must be done by an absolute deadline, however slowly bytes come
                handshake_deadline.saturating_duration_since(Instant::now())
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
                    Err(_) if conn.phase == Phase::Running => return Err(format!("missed heartbeats from client, timeout: {}s", idle.as_secs())),
                    Err(_) => return Err("no AMQP handshake by its deadline (handshake_timeout)".into()),
                },
                _ = wake.notified() => conn.on_wake(),
                _ = conn.alarms.changed() => conn.on_alarm(),
                _ = conn.shutdown.changed(), if conn.phase != Phase::Closing => conn.on_shutdown(),
                reason = counters.close_requested(), if conn.phase != Phase::Closing => {
                    tracing::info!("closing the connection as asked: {reason}");
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
        Ok(()) => tracing::debug!("connection closed"),
        Err(e) => tracing::info!("connection closed: {e}"),
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

impl Conn {
    /// Handle whatever complete frames are in `rbuf`. Ok(true): call again.
    pub(super) async fn process_buffer(&mut self, rbuf: &mut BytesMut) -> Result<bool, String> {
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
                // as the spec asks: connection.close, then wait (bounded, see
                // `close_connection`) for the client's close-ok, dropping what else comes;
                // the frames are still delimited, unlike after a framing error above
                self.close_connection(e);
                return Ok(true);
            }
            self.close_channel(channel, e);
        }
        // closed: the caller stops reading frames
        Ok(!(self.phase == Phase::Closing && self.out.closed.load(Ordering::Relaxed)))
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

    /// A method on a channel other than 0: to the file of its class.
    async fn handle_channel_method(&mut self, id: u16, m: AMQPClass) -> AResult<()> {
        let m = match m {
            AMQPClass::Channel(cm) => return self.handle_channel(id, cm),
            m => m,
        };
        if !self.takes_methods(id)? {
            return Ok(());
        }
        let vhost = self.vhost();
        match m {
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
            AMQPClass::Queue(qm) => eddy_broker::run_blocking(|| self.handle_queue(id, &vhost, qm)),
            AMQPClass::Basic(bm) => self.handle_basic(id, &vhost, bm).await,
            AMQPClass::Confirm(cm) => self.handle_confirm(id, cm),
            AMQPClass::Tx(t) => self.handle_tx(id, t).await,
            other => Err(AmqpError::conn(
                COMMAND_INVALID,
                format!("COMMAND_INVALID - unexpected method {other:?}"),
            )),
        }
    }
}
