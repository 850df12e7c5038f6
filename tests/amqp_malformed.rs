//! Malformed input over a raw socket: the server answers with the protocol's error and keeps
//! serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{connection, AMQPClass};
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
