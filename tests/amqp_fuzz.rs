//! Mutated AMQP traffic against a live server: a valid session (handshake, declares, binds,
//! publishes with headers, consume, qos, acks, tx, confirms) is mutated at random — bytes
//! flipped, lengths changed, frames cut, repeated or spliced — and sent on many connections.
//! Whatever arrives, the server must stay up, never panic, and keep serving a well-behaved
//! client. Deterministic: the seed of a failing case is printed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, tx, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use common::Server;

fn enc(f: AMQPFrame) -> Vec<u8> {
    gen_frame(&f)(WriteContext::from(Vec::new())).unwrap().write
}

/// The frames of a valid session, each encoded separately.
fn session() -> Vec<Vec<u8>> {
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(60000));
    args.insert("x-max-length".into(), AMQPValue::LongInt(100));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("fz-x".into()),
    );
    let mut headers = FieldTable::default();
    let mut inner = FieldTable::default();
    inner.insert("count".into(), AMQPValue::LongLongInt(1));
    inner.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString("a".into())])),
    );
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(inner)])),
    );
    headers.insert("n".into(), AMQPValue::ShortShortInt(-3));
    let m = |ch: u16, c: AMQPClass| enc(AMQPFrame::Method(ch, c));
    let mut out = vec![b"AMQP\x00\x00\x09\x01".to_vec()];
    out.push(m(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: headers.clone(),
            mechanism: "PLAIN".into(),
            response: LongString::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        })),
    ));
    out.push(m(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 8,
            frame_max: 131072,
            heartbeat: 0,
        })),
    ));
    out.push(m(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    ));
    for ch in [1u16, 2] {
        out.push(m(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ));
    }
    out.push(m(
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: "fz-x".into(),
            kind: "topic".into(),
            passive: false,
            durable: false,
            auto_delete: true,
            internal: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ));
    out.push(m(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "fz-q".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: true,
            nowait: false,
            arguments: args,
        })),
    ));
    out.push(m(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: "fz-q".into(),
            exchange: "fz-x".into(),
            routing_key: "a.#.*".into(),
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ));
    out.push(m(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 5,
            global: false,
        })),
    ));
    out.push(m(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    ));
    out.push(m(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "fz-q".into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ));
    for (i, rk) in ["a.b.c", "fz-q", "zz"].iter().enumerate() {
        let ex = if i == 1 { "" } else { "fz-x" };
        out.push(m(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: ex.into(),
                routing_key: (*rk).into(),
                mandatory: true,
                immediate: false,
            })),
        ));
        let body = vec![b'b'; 300];
        out.push(enc(AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: basic::AMQPProperties::default()
                    .with_delivery_mode(2)
                    .with_expiration("5000".into())
                    .with_priority(3)
                    .with_headers(headers.clone()),
            },
        )));
        out.push(enc(AMQPFrame::Body(1, body[..200].to_vec())));
        out.push(enc(AMQPFrame::Body(1, body[200..].to_vec())));
    }
    out.push(m(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 1,
            multiple: true,
        })),
    ));
    out.push(m(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: 0,
            multiple: true,
            requeue: true,
        })),
    ));
    out.push(m(2, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {}))));
    out.push(m(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "fz-q".into(),
            no_ack: false,
        })),
    ));
    out.push(m(2, AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {}))));
    out.push(m(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: "c".into(),
            nowait: false,
        })),
    ));
    out.push(m(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    ));
    out
}

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(frames: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut frames: Vec<Vec<u8>> = frames.to_vec();
    // keep the handshake intact more often than not, so the deeper states are reached
    let protect = if rng.below(4) == 0 { 1 } else { 4 };
    for _ in 0..1 + rng.below(4) {
        let i = protect + rng.below(frames.len() - protect);
        match rng.below(7) {
            0 => {
                // flip bytes
                let f = &mut frames[i];
                for _ in 0..(1 + rng.below(3)) * usize::from(!f.is_empty()) {
                    let at = rng.below(f.len());
                    f[at] ^= 1 << rng.below(8);
                }
            }
            1 => {
                // a length field (frame size or an inner u32) set to something wild
                let f = &mut frames[i];
                if f.len() > 8 {
                    let at = rng.below(f.len() - 4);
                    let v: u32 = match rng.below(4) {
                        0 => u32::MAX,
                        1 => 0,
                        2 => 0x7fff_ffff,
                        _ => rng.next() as u32,
                    };
                    f[at..at + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
            2 => {
                let cut = rng.below(frames[i].len());
                frames[i].truncate(cut);
            }
            3 => {
                let dup = frames[i].clone();
                frames.insert(i, dup);
            }
            4 => {
                frames.remove(i);
                if frames.len() <= protect + 1 {
                    break;
                }
            }
            5 => {
                // a random channel number
                let f = &mut frames[i];
                if f.len() > 3 {
                    let ch = rng.below(5) as u16;
                    f[1..3].copy_from_slice(&ch.to_be_bytes());
                }
            }
            _ => {
                let n = 1 + rng.below(64);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                frames.insert(i, junk);
            }
        }
    }
    frames.concat()
}

/// Run the unmutated session: everything but the closing frame, then (once the publisher
/// confirms are in, or after 10 s) connection.close; what the server answered.
fn valid_session(port: u16, frames: &[Vec<u8>]) -> Vec<u8> {
    let (last, body) = frames.split_last().expect("a session");
    let mut t = TcpStream::connect(("127.0.0.1", port)).unwrap();
    t.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
    t.write_all(&body.concat()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let mut read_for =
        |t: &mut TcpStream, got: &mut Vec<u8>, wait: Duration, done: &dyn Fn(&[u8]) -> bool| {
            let until = Instant::now() + wait;
            while Instant::now() < until && !done(got) {
                match t.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
        };
    // three publishes, all confirmed (acks may be coalesced: the last one names tag 3)
    let confirmed = |got: &[u8]| {
        let mut rest = got;
        while let Ok((r, f)) = amq_protocol::frame::parse_frame(rest) {
            if let AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) = &f {
                if a.delivery_tag == 3 {
                    return true;
                }
            }
            rest = r;
        }
        false
    };
    read_for(&mut t, &mut got, Duration::from_secs(10), &confirmed);
    t.write_all(last).unwrap();
    read_for(&mut t, &mut got, Duration::from_secs(2), &|_| false);
    got
}

/// Send `bytes` on a fresh connection and return what the server answered (briefly).
fn run_case(port: u16, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let Ok(mut t) = TcpStream::connect(("127.0.0.1", port)) else {
        return got;
    };
    t.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
    t.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = t.write_all(bytes);
    let mut buf = [0u8; 65536];
    let until = Instant::now() + wait;
    while Instant::now() < until {
        match t.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    got
}

#[test]
fn mutated_sessions_never_take_the_server_down() {
    let mut s = Server::start(&["--heartbeat", "0"]);
    let frames = session();
    // the unmutated session is valid: it reaches every state the mutations start from. The
    // confirms wait for an fsync, which a connection.close right behind the publishes may
    // overtake (the channel's pending confirms are dropped then, as RabbitMQ does): the close
    // goes once the acks are in
    let answer = valid_session(s.port, &frames);
    let mut rest = &answer[..];
    let mut seen = Vec::new();
    while let Ok((r, f)) = amq_protocol::frame::parse_frame(rest) {
        if let AMQPFrame::Method(_, m) = &f {
            seen.push(format!(
                "{}.{}",
                m.get_amqp_class_id(),
                m.get_amqp_method_id()
            ));
        }
        rest = r;
    }
    for (what, id) in [
        ("consume-ok", "60.21"),
        ("deliver", "60.60"),
        ("confirm ack", "60.80"),
        ("tx.commit-ok", "90.21"),
        ("close-ok", "10.51"),
    ] {
        assert!(
            seen.iter().any(|s| s == id),
            "valid session got no {what}: {seen:?}"
        );
    }
    let cases: u64 = std::env::var("EDDY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let threads = 4u64;
    std::thread::scope(|scope| {
        for w in 0..threads {
            let frames = &frames;
            let port = s.port;
            scope.spawn(move || {
                for c in (w..cases).step_by(threads as usize) {
                    let seed = 0x9E37_79B9_7F4A_7C15u64 ^ (c + 1).wrapping_mul(0x1000_0000_01B3);
                    let mut rng = Rng(seed);
                    let bytes = mutate(frames, &mut rng);
                    run_case(port, &bytes, Duration::from_millis(60));
                }
            });
        }
    });
    let alive = s.child.as_mut().unwrap().try_wait().unwrap().is_none();
    let log = s.log_text();
    assert!(alive, "the server died; log:\n{log}");
    assert!(!log.contains("panicked"), "a task panicked; log:\n{log}");
    // and it still serves a well-behaved client end to end
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use lapin::options::*;
        let conn = lapin::Connection::connect(&s.uri(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        ch.basic_publish(
            "".into(),
            q.name().clone(),
            BasicPublishOptions::default(),
            b"still here",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap();
        let got = ch
            .basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the message");
        assert_eq!(got.delivery.data, b"still here");
    });
}
