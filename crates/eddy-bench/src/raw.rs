//! A lean AMQP 0-9-1 load client: frames are prebuilt templates written many per `write`, and
//! deliveries are parsed by hand, so the broker — not the client — is what gets measured.
//! It speaks plain AMQP 0-9-1 and runs unchanged against RabbitMQ.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, channel, confirm, connection, queue, AMQPClass};
use amq_protocol::types::{FieldTable, LongString};
use amq_protocol::uri::AMQPUri;
use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::{hist, redact, AmqpBenchArgs, Shared};

const FRAME_END: u8 = 0xCE;

fn encode(f: &AMQPFrame) -> Vec<u8> {
    match gen_frame(f)(WriteContext::from(Vec::new())) {
        Ok(ctx) => ctx.write,
        Err(e) => panic!("encoding a constant frame failed: {e:?}"),
    }
}

/// An open connection with channel 1.
pub struct RawConn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: Vec<u8>,
    pub frame_max: u32,
}

/// A frame as read: type, channel, payload.
struct Frame {
    kind: u8,
    payload: Vec<u8>,
}

impl RawConn {
    pub async fn connect(uri: &str) -> Result<RawConn> {
        let u: AMQPUri = uri
            .parse()
            .map_err(|e| anyhow!("invalid AMQP URI {}: {e}", redact(uri)))?;
        let addr = format!("{}:{}", u.authority.host, u.authority.port);
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr))
            .await
            .with_context(|| format!("timed out connecting to {addr}"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut c = RawConn {
            rd,
            wr,
            buf: Vec::with_capacity(1 << 20),
            frame_max: 131072,
        };
        c.wr.write_all(b"AMQP\x00\x00\x09\x01").await?;
        c.expect_method(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::Start(_))))
            .await?;
        let resp = format!(
            "\0{}\0{}",
            u.authority.userinfo.username, u.authority.userinfo.password
        );
        c.send(
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from(resp.into_bytes()),
                locale: "en_US".into(),
            })),
            0,
        )
        .await?;
        let tune = c
            .expect_method(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::Tune(_))))
            .await?;
        if let AMQPClass::Connection(connection::AMQPMethod::Tune(t)) = tune {
            c.frame_max = if t.frame_max == 0 {
                131072
            } else {
                t.frame_max.min(131072)
            };
            c.send(
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                    channel_max: t.channel_max,
                    frame_max: c.frame_max,
                    heartbeat: 0,
                })),
                0,
            )
            .await?;
        }
        c.send(
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: u.vhost.as_str().into(),
            })),
            0,
        )
        .await?;
        c.expect_method(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))))
            .await?;
        c.send(
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            1,
        )
        .await?;
        c.expect_method(|m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))))
            .await?;
        Ok(c)
    }

    async fn send(&mut self, m: AMQPClass, ch: u16) -> Result<()> {
        self.wr
            .write_all(&encode(&AMQPFrame::Method(ch, m)))
            .await?;
        Ok(())
    }

    async fn read_frame(&mut self) -> Result<Frame> {
        loop {
            if self.buf.len() >= 7 {
                let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]])
                    as usize;
                if size > 16 << 20 {
                    bail!("server sent a frame of {size} bytes");
                }
                if self.buf.len() >= size + 8 {
                    let kind = self.buf[0];
                    let payload = self.buf[7..7 + size].to_vec();
                    self.buf.drain(..size + 8);
                    return Ok(Frame { kind, payload });
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.rd.read(&mut chunk).await?;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn expect_method(&mut self, want: impl Fn(&AMQPClass) -> bool) -> Result<AMQPClass> {
        loop {
            let f = self.read_frame().await?;
            if f.kind != 1 {
                continue;
            }
            let mut framed = vec![1u8, 0, 0];
            framed.extend_from_slice(&(f.payload.len() as u32).to_be_bytes());
            framed.extend_from_slice(&f.payload);
            framed.push(FRAME_END);
            let m = match parse_frame(&framed[..]) {
                Ok((_, AMQPFrame::Method(_, m))) => m,
                _ => bail!("unparseable method frame"),
            };
            match &m {
                AMQPClass::Connection(connection::AMQPMethod::Close(c)) => bail!(
                    "server closed the connection: {} {}",
                    c.reply_code,
                    c.reply_text.as_str()
                ),
                AMQPClass::Channel(channel::AMQPMethod::Close(c)) => bail!(
                    "server closed the channel: {} {}",
                    c.reply_code,
                    c.reply_text.as_str()
                ),
                _ => {}
            }
            if want(&m) {
                return Ok(m);
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .send(
                AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                    reply_code: 200,
                    reply_text: "bye".into(),
                    class_id: 0,
                    method_id: 0,
                })),
                0,
            )
            .await;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.expect_method(|m| {
                matches!(m, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))
            }),
        )
        .await;
    }
}

/// Declare the benchmark queue.
pub async fn declare(uri: &str, q: &str, durable: bool) -> Result<RawConn> {
    let mut c = RawConn::connect(uri).await?;
    c.send(
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: q.into(),
            passive: false,
            durable,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
        1,
    )
    .await?;
    c.expect_method(|m| matches!(m, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))))
        .await?;
    Ok(c)
}

/// Delete the benchmark queue.
pub async fn delete(mut c: RawConn, q: &str) -> Result<()> {
    c.send(
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: q.into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        })),
        1,
    )
    .await?;
    c.expect_method(|m| matches!(m, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))))
        .await?;
    c.close().await;
    Ok(())
}

/// Publish until the deadline; with confirms keep at most `confirm_window` unconfirmed.
pub async fn produce(
    uri: String,
    q: String,
    args: AmqpBenchArgs,
    shared: Arc<Shared>,
    deadline: Instant,
) -> Result<()> {
    let mut c = RawConn::connect(&uri).await?;
    if args.confirm {
        c.send(
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
            1,
        )
        .await?;
        c.expect_method(|m| matches!(m, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))))
            .await?;
    }
    // one message = publish method + content header + body frame(s); the timestamp is patched in
    let mut template = encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: q.as_str().into(),
            mandatory: false,
            immediate: false,
        })),
    ));
    let props = if args.persistent {
        basic::AMQPProperties::default().with_delivery_mode(2)
    } else {
        basic::AMQPProperties::default()
    };
    template.extend_from_slice(&encode(&AMQPFrame::Header(
        1,
        amq_protocol::frame::AMQPContentHeader {
            class_id: 60,
            body_size: args.size as u64,
            properties: props,
        },
    )));
    let body_at = template.len() + 7;
    let chunk = (c.frame_max as usize - 8).max(1);
    let mut body = vec![0u8; args.size];
    for part in body.chunks_mut(chunk) {
        template.push(3);
        template.extend_from_slice(&1u16.to_be_bytes());
        template.extend_from_slice(&(part.len() as u32).to_be_bytes());
        template.extend_from_slice(part);
        template.push(FRAME_END);
    }
    body.clear();
    let RawConn {
        mut rd,
        mut wr,
        buf,
        ..
    } = c;
    // confirms are read by a separate task
    let in_flight: Arc<parking_lot::Mutex<VecDeque<u64>>> = Default::default();
    let window = Arc::new(tokio::sync::Semaphore::new(if args.confirm {
        args.confirm_window
    } else {
        0
    }));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = if args.confirm {
        let in_flight = in_flight.clone();
        let done = done.clone();
        let window = window.clone();
        let shared = shared.clone();
        Some(tokio::spawn(async move {
            let mut buf = buf;
            let mut local = hist();
            let mut next_tag = 1u64; // delivery tags of confirms count publishes from 1
            let mut chunk = vec![0u8; 65536];
            loop {
                // parse all complete frames
                let mut pos = 0;
                while buf.len() - pos >= 7 {
                    let size = u32::from_be_bytes([
                        buf[pos + 3],
                        buf[pos + 4],
                        buf[pos + 5],
                        buf[pos + 6],
                    ]) as usize;
                    if buf.len() - pos < size + 8 {
                        break;
                    }
                    let p = &buf[pos + 7..pos + 7 + size];
                    if buf[pos] == 1
                        && p.len() >= 13
                        && p[0..2] == [0, 60]
                        && (p[2..4] == [0, 80] || p[2..4] == [0, 120])
                    {
                        let tag = u64::from_be_bytes(p[4..12].try_into().expect("8 bytes"));
                        let multiple = p[12] & 1 == 1;
                        let acked = p[2..4] == [0, 80];
                        // one channel, confirms in publish order: an ack for `tag` settles
                        // everything up to it whether or not `multiple` is set
                        let _ = multiple;
                        let upto = tag;
                        let now = shared.epoch.elapsed().as_nanos() as u64;
                        let mut q = in_flight.lock();
                        let mut n = 0;
                        // confirms arrive in order here (single channel), so pop up to `upto`
                        while next_tag <= upto {
                            if let Some(t0) = q.pop_front() {
                                let _ = local.record((now.saturating_sub(t0) / 1000).max(1));
                            }
                            next_tag += 1;
                            n += 1;
                        }
                        drop(q);
                        if acked {
                            shared.confirmed.fetch_add(n, Ordering::Relaxed);
                        }
                        window.add_permits(n as usize);
                    } else if buf[pos] == 1
                        && p.len() >= 4
                        && (p[0..4] == [0, 10, 0, 50] || p[0..4] == [0, 20, 0, 40])
                    {
                        return Err(anyhow!(
                            "server closed the producer's connection or channel"
                        ));
                    }
                    pos += size + 8;
                }
                buf.drain(..pos);
                if done.load(Ordering::Relaxed) && in_flight.lock().is_empty() {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(100), rd.read(&mut chunk)).await {
                    Ok(Ok(0)) => return Err(anyhow!("server closed the connection")),
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => {}
                }
            }
            shared.confirm_lat.lock().add(&local).ok();
            Ok::<_, anyhow::Error>(rd)
        }))
    } else {
        drop(rd);
        None
    };
    let batch = 64usize;
    let mut out = Vec::with_capacity(template.len() * batch);
    let start = Instant::now();
    let mut sent = 0u64;
    while Instant::now() < deadline {
        shared.throttle().await;
        let due = shared.pace(start, sent, batch).await;
        let n = if args.confirm {
            let permit = window.acquire_many(1).await?;
            permit.forget();
            // take as many as are free, up to what is due
            let extra = window.available_permits().min(due - 1);
            if extra > 0 {
                window.acquire_many(extra as u32).await?.forget();
            }
            1 + extra
        } else {
            due
        };
        sent += n as u64;
        out.clear();
        let t = shared.epoch.elapsed().as_nanos() as u64;
        {
            let mut q = if args.confirm {
                Some(in_flight.lock())
            } else {
                None
            };
            for _ in 0..n {
                let at = out.len() + body_at;
                out.extend_from_slice(&template);
                out[at..at + 8].copy_from_slice(&t.to_le_bytes());
                if let Some(q) = q.as_mut() {
                    q.push_back(t);
                }
            }
        }
        wr.write_all(&out).await?;
        shared.published.fetch_add(n as u64, Ordering::Relaxed);
    }
    done.store(true, Ordering::Relaxed);
    if let Some(r) = reader {
        r.await??;
    }
    let _ = wr.shutdown().await;
    Ok(())
}

/// Consume and ack (multiple) every `ack_every` deliveries until told to stop.
pub async fn consume(
    uri: String,
    q: String,
    args: AmqpBenchArgs,
    shared: Arc<Shared>,
    tag: String,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    let mut c = RawConn::connect(&uri).await?;
    c.send(
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: args.prefetch,
            global: false,
        })),
        1,
    )
    .await?;
    c.expect_method(|m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))))
        .await?;
    c.send(
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: q.as_str().into(),
            consumer_tag: tag.as_str().into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
        1,
    )
    .await?;
    c.expect_method(|m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))))
        .await?;
    let _ = ready.send(());
    let ack_every = (args.prefetch as u64 / 4).max(1);
    let RawConn {
        mut rd,
        mut wr,
        mut buf,
        ..
    } = c;
    let mut local = hist();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut last_tag = 0u64;
    let mut unacked = 0u64;
    let mut body_pending: usize = 0; // body bytes still expected for the current delivery
    let mut ts_bytes: Vec<u8> = Vec::with_capacity(8);
    let mut count_local = 0u64;
    let mut acks = Vec::with_capacity(64);
    loop {
        let mut pos = 0;
        while buf.len() - pos >= 7 {
            let size = u32::from_be_bytes([buf[pos + 3], buf[pos + 4], buf[pos + 5], buf[pos + 6]])
                as usize;
            if buf.len() - pos < size + 8 {
                break;
            }
            let kind = buf[pos];
            let p = &buf[pos + 7..pos + 7 + size];
            match kind {
                1 if p.len() >= 4 && p[0..4] == [0, 60, 0, 60] => {
                    // basic.deliver: consumer tag, delivery tag
                    let tl = p[4] as usize;
                    if p.len() >= 5 + tl + 8 {
                        last_tag =
                            u64::from_be_bytes(p[5 + tl..5 + tl + 8].try_into().expect("8 bytes"));
                    }
                }
                1 if p.len() >= 4 && (p[0..4] == [0, 10, 0, 50] || p[0..4] == [0, 20, 0, 40]) => {
                    return Err(anyhow!(
                        "server closed the consumer's connection or channel"
                    ));
                }
                2 if p.len() >= 12 => {
                    body_pending =
                        u64::from_be_bytes(p[4..12].try_into().expect("8 bytes")) as usize;
                    ts_bytes.clear();
                    if body_pending == 0 {
                        count_local += 1;
                        unacked += 1;
                    }
                }
                3 => {
                    if ts_bytes.len() < 8 {
                        let take = (8 - ts_bytes.len()).min(p.len());
                        ts_bytes.extend_from_slice(&p[..take]);
                    }
                    body_pending = body_pending.saturating_sub(p.len());
                    if body_pending == 0 {
                        if ts_bytes.len() == 8 {
                            let t0 = u64::from_le_bytes(ts_bytes[..8].try_into().expect("8 bytes"));
                            let now = shared.epoch.elapsed().as_nanos() as u64;
                            let _ = local.record((now.saturating_sub(t0) / 1000).max(1));
                        }
                        count_local += 1;
                        unacked += 1;
                    }
                }
                _ => {}
            }
            pos += size + 8;
        }
        buf.drain(..pos);
        if count_local > 0 {
            shared.consumed.fetch_add(count_local, Ordering::Relaxed);
            count_local = 0;
        }
        if unacked >= ack_every {
            acks.clear();
            acks.extend_from_slice(&encode(&AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: last_tag,
                    multiple: true,
                })),
            )));
            wr.write_all(&acks).await?;
            unacked = 0;
        }
        match tokio::time::timeout(Duration::from_millis(50), rd.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err(anyhow!("server closed the connection")),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                if unacked > 0 {
                    wr.write_all(&encode(&AMQPFrame::Method(
                        1,
                        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                            delivery_tag: last_tag,
                            multiple: true,
                        })),
                    )))
                    .await?;
                    unacked = 0;
                }
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
    }
    shared.e2e.lock().add(&local).ok();
    let _ = wr.shutdown().await;
    Ok(())
}
