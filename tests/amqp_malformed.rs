//! Raw-socket protocol tests: malformed input gets the protocol's error while the server keeps
//! serving everyone else; the connection close handshake behaves as RabbitMQ's.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{FieldTable, LongString};
use common::Server;

fn connect(s: &Server) -> TcpStream {
    let t = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t
}

/// Read frames until one matches or the socket closes.
fn read_frames(t: &mut TcpStream) -> Vec<AMQPFrame> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut frames = Vec::new();
    loop {
        match t.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Ok((rest, f)) = parse_frame(&buf[..]) {
            let used = buf.len() - rest.len();
            buf.drain(..used);
            let stop = matches!(
                f,
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_)))
                    | AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(_)))
            );
            frames.push(f);
            if stop {
                return frames;
            }
        }
    }
    frames
}

fn send(t: &mut TcpStream, f: AMQPFrame) {
    let ctx = gen_frame(&f)(WriteContext::from(Vec::new())).unwrap();
    t.write_all(&ctx.write).unwrap();
}

fn close_code(frames: &[AMQPFrame]) -> Option<(u16, String)> {
    frames.iter().find_map(|f| match f {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
            Some((c.reply_code, c.reply_text.to_string()))
        }
        _ => None,
    })
}

fn handshake_to_tune(t: &mut TcpStream) {
    t.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    send(
        t,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from(b"\0guest\0guest".to_vec()),
                locale: "en_US".into(),
            })),
        ),
    );
    let frames = read_frames(t);
    assert!(
        frames.iter().any(|f| matches!(
            f,
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(_)))
        )),
        "{frames:?}"
    );
}

#[test]
fn wrong_protocol_header_gets_ours_back() {
    let s = Server::start(&[]);
    let mut t = connect(&s);
    t.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
    let mut buf = [0u8; 8];
    t.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"AMQP\x00\x00\x09\x01");
}

#[test]
fn oversized_frame_is_frame_error_and_server_survives() {
    let s = Server::start(&["--frame-max", "131072"]);
    let mut t = connect(&s);
    handshake_to_tune(&mut t);
    // a method frame announcing 1 GiB: must be refused before anything is allocated
    t.write_all(&[1, 0, 0, 0x40, 0, 0, 0]).unwrap();
    let frames = read_frames(&mut t);
    let (code, text) = close_code(&frames).expect("connection.close");
    assert_eq!(code, 501, "{text}");
    assert!(text.contains("frame_max"), "{text}");
    // another client is unaffected
    let mut t2 = connect(&s);
    handshake_to_tune(&mut t2);
}

#[test]
fn bad_frame_end_and_garbage_method_are_errors() {
    let s = Server::start(&[]);
    let mut t = connect(&s);
    handshake_to_tune(&mut t);
    t.write_all(&[1, 0, 0, 0, 0, 0, 4, 0, 10, 0, 11, 0x00])
        .unwrap();
    let (code, _) = close_code(&read_frames(&mut t)).expect("close");
    assert_eq!(code, 501);

    let mut t = connect(&s);
    handshake_to_tune(&mut t);
    // class 999 method 1: unknown method
    t.write_all(&[1, 0, 0, 0, 0, 0, 4, 0x03, 0xe7, 0, 1, 0xCE])
        .unwrap();
    let (code, text) = close_code(&read_frames(&mut t)).expect("close");
    assert_eq!(code, 502, "{text}");
}

#[test]
fn bad_credentials_are_access_refused() {
    let s = Server::start(&[]);
    let mut t = connect(&s);
    t.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    send(
        &mut t,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from(b"\0guest\0wrong".to_vec()),
                locale: "en_US".into(),
            })),
        ),
    );
    let (code, text) = close_code(&read_frames(&mut t)).expect("close");
    assert_eq!(code, 403, "{text}");
}

/// The rest of the handshake after connection.tune: tune-ok and open of vhost `/`.
fn open_connection(t: &mut TcpStream) {
    handshake_to_tune(t);
    send(
        t,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 16,
                frame_max: 131072,
                heartbeat: 0,
            })),
        ),
    );
    send(
        t,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ),
    );
}

#[test]
fn after_client_close_ok_the_client_closes_the_socket() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut t = connect(&s);
    open_connection(&mut t);
    send(
        &mut t,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        ),
    );
    // open-ok then close-ok, and no end of stream: RabbitMQ leaves closing the socket to the
    // client, and clients such as lapin report an early end of stream as a broken connection
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    t.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut close_ok = false;
    loop {
        match t.read(&mut chunk) {
            Ok(0) => panic!("server closed the socket after close-ok (close-ok seen: {close_ok})"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "{e}"
                );
                break;
            }
        }
        while let Ok((rest, f)) = parse_frame(&buf[..]) {
            close_ok |= matches!(
                f,
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))
            );
            buf.drain(..buf.len() - rest.len());
        }
    }
    assert!(close_ok, "no connection.close-ok");
    drop(t);
    // the server is fine and serves the next client
    let mut t2 = connect(&s);
    handshake_to_tune(&mut t2);
}

/// A connection that has finished the handshake and opened channel 1.
fn open_channel(s: &Server) -> TcpStream {
    let mut t = connect(s);
    open_connection(&mut t);
    send(
        &mut t,
        AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
    );
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = t.read(&mut chunk).unwrap();
        assert!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
        while let Ok((rest, f)) = parse_frame(&buf[..]) {
            if matches!(
                f,
                AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))
            ) {
                return t;
            }
            buf.drain(..buf.len() - rest.len());
        }
    }
}

/// A field table value nested `depth` arrays deep, encoded by hand (the codec's own encoder
/// recurses too).
fn deep_array(depth: usize) -> Vec<u8> {
    let mut v = vec![b'V'];
    for _ in 0..depth {
        let mut outer = vec![b'A'];
        outer.extend_from_slice(&(v.len() as u32).to_be_bytes());
        outer.extend_from_slice(&v);
        v = outer;
    }
    v
}

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

#[test]
fn deeply_nested_tables_are_refused_not_a_crash() {
    let s = Server::start(&[]);
    // connection.start-ok whose client-properties nest 20,000 arrays deep (before login)
    let mut t = connect(&s);
    t.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut table = vec![1, b'k'];
    table.extend_from_slice(&deep_array(20_000));
    let mut p = vec![0, 10, 0, 11];
    p.extend_from_slice(&(table.len() as u32).to_be_bytes());
    p.extend_from_slice(&table);
    p.extend_from_slice(&[5, b'P', b'L', b'A', b'I', b'N', 0, 0, 0, 12]);
    p.extend_from_slice(b"\0guest\0guest");
    p.extend_from_slice(&[5, b'e', b'n', b'_', b'U', b'S']);
    t.write_all(&frame(1, 0, &p)).unwrap();
    let (code, text) = close_code(&read_frames(&mut t)).expect("connection.close");
    assert_eq!(code, 502, "{text}");
    assert!(text.contains("nesting"), "{text}");

    // a publish whose headers nest 20,000 deep
    let mut t = open_channel(&s);
    let mut publish = vec![0, 60, 0, 40, 0, 0, 0, 1, b'q', 0];
    t.write_all(&frame(1, 1, &publish)).unwrap();
    let mut headers = vec![1, b'h'];
    headers.extend_from_slice(&deep_array(20_000));
    let mut h = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x20, 0];
    h.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    h.extend_from_slice(&headers);
    t.write_all(&frame(2, 1, &h)).unwrap();
    let (code, text) = close_code(&read_frames(&mut t)).expect("connection.close");
    assert_eq!(code, 502, "{text}");

    // shallow nesting is fine, and the server still serves
    let mut t = open_channel(&s);
    publish.truncate(10);
    t.write_all(&frame(1, 1, &publish)).unwrap();
    let mut headers = vec![1, b'h'];
    headers.extend_from_slice(&deep_array(8));
    let mut h = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x20, 0];
    h.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    h.extend_from_slice(&headers);
    t.write_all(&frame(2, 1, &h)).unwrap();
    t.write_all(&frame(3, 1, b"x")).unwrap();
    t.write_all(&frame(1, 1, &[0, 20, 0, 40, 0, 200, 0, 0, 0, 0, 0]))
        .unwrap(); // channel.close
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    'read: loop {
        let n = t.read(&mut chunk).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
        while let Ok((rest, f)) = parse_frame(&buf[..]) {
            if matches!(
                f,
                AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)))
            ) {
                break 'read;
            }
            assert!(
                !matches!(
                    f,
                    AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_)))
                ),
                "{f:?}"
            );
            buf.drain(..buf.len() - rest.len());
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_client_that_does_not_read_cannot_make_the_server_buffer_without_bound() {
    let s = Server::start(&[]);
    let pid = s.child.as_ref().unwrap().id();
    let before = rss_kib(pid);
    let mut t = open_channel(&s);
    // mandatory publishes of 1 MiB that route nowhere: each comes back as basic.return,
    // which this client never reads
    let body = vec![7u8; 1 << 20];
    let publish = AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "no-such-queue".into(),
            mandatory: true,
            immediate: false,
        })),
    );
    let mut one = gen_frame(&publish)(WriteContext::from(Vec::new()))
        .unwrap()
        .write;
    let mut h = vec![0, 60, 0, 0];
    h.extend_from_slice(&(body.len() as u64).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    one.extend_from_slice(&frame(2, 1, &h));
    for part in body.chunks(131072 - 8) {
        one.extend_from_slice(&frame(3, 1, part));
    }
    t.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sent = 0usize;
    while sent < 600 {
        match t.write_all(&one) {
            Ok(()) => sent += 1,
            Err(_) => break, // the server stopped reading: what we want
        }
    }
    let grown_mib = rss_kib(pid).saturating_sub(before) / 1024;
    assert!(
        sent < 600 && grown_mib < 150,
        "sent {sent} MiB of returns-to-be while not reading; server grew {grown_mib} MiB"
    );
    // other clients are served meanwhile
    let mut t2 = connect(&s);
    handshake_to_tune(&mut t2);
}
