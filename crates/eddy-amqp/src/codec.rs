//! Frame splitting and the hand-encoded hot-path frames (deliver, content header, body).
//! Every other method is encoded and decoded by `amq-protocol`.

use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::AMQPClass;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// A raw frame borrowed from the read buffer.
pub struct RawFrame<'a> {
    pub kind: u8,
    pub channel: u16,
    #[allow(dead_code)] // read by tests; the connection slices the payload itself
    pub payload: &'a [u8],
}

/// Why a frame could not be split off the buffer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Declared size beyond the negotiated frame_max.
    #[error("frame size {size} exceeds frame_max {max}")]
    TooLarge { size: u32, max: u32 },
    /// Missing 0xCE frame-end octet.
    #[error("frame end octet missing (found 0x{0:02x})")]
    BadEnd(u8),
}

/// Split one frame from `buf` if complete. Returns the frame and the bytes it used.
pub fn split_frame(
    buf: &[u8],
    frame_max: u32,
) -> Result<Option<(RawFrame<'_>, usize)>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    // frame_max counts the whole frame including the 8 bytes of header and end
    if size.saturating_add(8) > frame_max {
        return Err(FrameError::TooLarge {
            size,
            max: frame_max,
        });
    }
    let total = 7 + size as usize + 1;
    if buf.len() < total {
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(FrameError::BadEnd(buf[total - 1]));
    }
    Ok(Some((
        RawFrame {
            kind,
            channel,
            payload: &buf[7..total - 1],
        },
        total,
    )))
}

/// Append a method frame (on an encoding failure, which would be a bug, nothing is appended
/// and the frames already in `out` stay).
pub fn put_method(out: &mut Vec<u8>, channel: u16, method: AMQPClass) {
    let frame = AMQPFrame::Method(channel, method);
    let res = gen_frame(&frame)(WriteContext::from(Vec::new()));
    match res {
        Ok(ctx) => out.extend_from_slice(&ctx.write),
        Err(e) => tracing::error!("failed to encode {frame}: {e:?}"),
    }
}

/// Deepest nesting of field tables and arrays accepted. RabbitMQ's own headers need 4
/// (headers → x-death array → table → routing-keys array); the codec parses nesting by
/// recursion, so unbounded depth from the network would overflow the stack.
pub const MAX_TABLE_DEPTH: usize = 32;

/// A field table nested deeper than [`MAX_TABLE_DEPTH`].
#[derive(Debug, thiserror::Error)]
#[error("field table nesting deeper than {MAX_TABLE_DEPTH} levels")]
pub struct TooDeep;

/// Check the nesting depth of every field table in a method frame's payload before it is
/// decoded. Only the methods that carry tables are inspected; anything malformed is left for
/// the decoder to report (it meets the same structure in the same order, so it cannot get
/// deeper than this scan did).
pub fn check_method_nesting(payload: &[u8]) -> Result<(), TooDeep> {
    if payload.len() < 4 {
        return Ok(());
    }
    let class = u16::from_be_bytes([payload[0], payload[1]]);
    let method = u16::from_be_bytes([payload[2], payload[3]]);
    let mut r = Reader {
        buf: payload,
        pos: 4,
    };
    // the arguments before the table: s = short string, 2 = u16, 1 = octet (bits)
    let layout: &[u8] = match (class, method) {
        (10, 10) => b"11",               // connection.start: version major, minor
        (10, 11) => b"",                 // connection.start-ok: client-properties first
        (40, 10) => b"2ss1",             // exchange.declare
        (40, 30) | (40, 40) => b"2sss1", // exchange.bind / unbind
        (50, 10) => b"2s1",              // queue.declare
        (50, 20) => b"2sss1",            // queue.bind
        (50, 50) => b"2sss",             // queue.unbind
        (60, 20) => b"2ss1",             // basic.consume
        _ => return Ok(()),
    };
    for f in layout {
        let ok = match f {
            b's' => r.short_str(),
            b'2' => r.skip(2),
            _ => r.skip(1),
        };
        if !ok {
            return Ok(());
        }
    }
    r.table(1)
}

/// Check the headers table of a basic content header (payload: class, weight, body size,
/// property flags, properties).
pub fn check_header_nesting(payload: &[u8]) -> Result<(), TooDeep> {
    if payload.len() < 14 {
        return Ok(());
    }
    let flags = u16::from_be_bytes([payload[12], payload[13]]);
    const CONTENT_TYPE: u16 = 1 << 15;
    const CONTENT_ENCODING: u16 = 1 << 14;
    const HEADERS: u16 = 1 << 13;
    if flags & HEADERS == 0 {
        return Ok(());
    }
    let mut r = Reader {
        buf: payload,
        pos: 14,
    };
    if flags & CONTENT_TYPE != 0 && !r.short_str() {
        return Ok(());
    }
    if flags & CONTENT_ENCODING != 0 && !r.short_str() {
        return Ok(());
    }
    r.table(1)
}

/// Check a field table given as its content (no length prefix), e.g. an AMQPLAIN response.
pub fn check_table_content_nesting(content: &[u8]) -> Result<(), TooDeep> {
    Reader {
        buf: content,
        pos: 0,
    }
    .entries(content.len(), 1)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn skip(&mut self, n: usize) -> bool {
        if self.buf.len() - self.pos < n {
            return false;
        }
        self.pos += n;
        true
    }
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn u32(&mut self) -> Option<usize> {
        let b = self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn short_str(&mut self) -> bool {
        match self.u8() {
            Some(n) => self.skip(n as usize),
            None => false,
        }
    }
    /// A length-prefixed table at `depth`; Ok when it is shallow enough or malformed.
    fn table(&mut self, depth: usize) -> Result<(), TooDeep> {
        let Some(len) = self.u32() else { return Ok(()) };
        self.entries(len, depth)
    }
    fn entries(&mut self, len: usize, depth: usize) -> Result<(), TooDeep> {
        if depth > MAX_TABLE_DEPTH {
            return Err(TooDeep);
        }
        let Some(end) = self.pos.checked_add(len).filter(|e| *e <= self.buf.len()) else {
            return Ok(());
        };
        while self.pos < end {
            if !self.short_str() {
                return Ok(());
            }
            if !self.value(end, depth)? {
                return Ok(());
            }
        }
        Ok(())
    }
    fn array(&mut self, depth: usize) -> Result<(), TooDeep> {
        if depth > MAX_TABLE_DEPTH {
            return Err(TooDeep);
        }
        let Some(len) = self.u32() else { return Ok(()) };
        let Some(end) = self.pos.checked_add(len).filter(|e| *e <= self.buf.len()) else {
            return Ok(());
        };
        while self.pos < end {
            if !self.value(end, depth)? {
                return Ok(());
            }
        }
        Ok(())
    }
    /// One typed value (type octet first) within `end`; Ok(false) when malformed.
    fn value(&mut self, end: usize, depth: usize) -> Result<bool, TooDeep> {
        let Some(t) = self.u8() else { return Ok(false) };
        let fixed = match t {
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'D' => 5,
            b'V' => 0,
            b'S' | b'x' => match self.u32() {
                Some(n) => n,
                None => return Ok(false),
            },
            b'F' => {
                self.table(depth + 1)?;
                return Ok(self.pos <= end);
            }
            b'A' => {
                self.array(depth + 1)?;
                return Ok(self.pos <= end);
            }
            _ => return Ok(false),
        };
        Ok(self.pos.checked_add(fixed).is_some_and(|e| e <= end) && self.skip(fixed))
    }
}

fn put_short_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(255)];
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

/// Append basic.deliver (hand-encoded: hot path).
pub fn put_deliver(
    out: &mut Vec<u8>,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let start = out.len();
    out.push(FRAME_METHOD);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&60u16.to_be_bytes());
    out.extend_from_slice(&60u16.to_be_bytes());
    put_short_str(out, consumer_tag);
    out.extend_from_slice(&delivery_tag.to_be_bytes());
    out.push(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    let size = (out.len() - start - 7) as u32;
    out[start + 3..start + 7].copy_from_slice(&size.to_be_bytes());
    out.push(FRAME_END);
}

/// Append a content header and the body frames.
pub fn put_content(
    out: &mut Vec<u8>,
    channel: u16,
    raw_properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    out.push(FRAME_HEADER);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&((12 + raw_properties.len()) as u32).to_be_bytes());
    out.extend_from_slice(&60u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(raw_properties);
    out.push(FRAME_END);
    let chunk = (frame_max as usize).saturating_sub(8).max(1);
    for part in body.chunks(chunk) {
        out.push(FRAME_BODY);
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
        out.push(FRAME_END);
    }
}

/// Append a heartbeat frame.
pub fn put_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::parse_frame;
    use amq_protocol::protocol::basic;

    fn nested(depth: usize) -> amq_protocol::types::FieldTable {
        use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
        let mut v = AMQPValue::LongString("leaf".into());
        for i in 0..depth.saturating_sub(1) {
            v = if i % 2 == 0 {
                AMQPValue::FieldArray(FieldArray::from(vec![v]))
            } else {
                let mut t = FieldTable::default();
                t.insert("k".into(), v);
                AMQPValue::FieldTable(t)
            };
        }
        let mut t = FieldTable::default();
        t.insert("x-nested".into(), v);
        t.insert("after".into(), AMQPValue::LongLongInt(7));
        t
    }

    fn method_payload(m: AMQPClass) -> Vec<u8> {
        let mut out = Vec::new();
        put_method(&mut out, 1, m);
        out[7..out.len() - 1].to_vec()
    }

    #[test]
    fn table_nesting_is_bounded_in_methods_and_headers() {
        use amq_protocol::protocol::{connection, exchange, queue};
        for (depth, ok) in [
            (1, true),
            (4, true),
            (MAX_TABLE_DEPTH, true),
            (MAX_TABLE_DEPTH + 1, false),
            (500, false),
        ] {
            let declare = method_payload(AMQPClass::Queue(queue::AMQPMethod::Declare(
                queue::Declare {
                    queue: "q".into(),
                    passive: false,
                    durable: true,
                    exclusive: false,
                    auto_delete: false,
                    nowait: false,
                    arguments: nested(depth),
                },
            )));
            assert_eq!(
                check_method_nesting(&declare).is_ok(),
                ok,
                "queue.declare depth {depth}"
            );
            let bind = method_payload(AMQPClass::Exchange(exchange::AMQPMethod::Bind(
                exchange::Bind {
                    destination: "d".into(),
                    source: "s".into(),
                    routing_key: "rk".into(),
                    nowait: false,
                    arguments: nested(depth),
                },
            )));
            assert_eq!(
                check_method_nesting(&bind).is_ok(),
                ok,
                "exchange.bind depth {depth}"
            );
            let unbind =
                method_payload(AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                    queue: "q".into(),
                    exchange: "e".into(),
                    routing_key: "rk".into(),
                    arguments: nested(depth),
                })));
            assert_eq!(
                check_method_nesting(&unbind).is_ok(),
                ok,
                "queue.unbind depth {depth}"
            );
            let start_ok = method_payload(AMQPClass::Connection(connection::AMQPMethod::StartOk(
                connection::StartOk {
                    client_properties: nested(depth),
                    mechanism: "PLAIN".into(),
                    response: "\0a\0b".into(),
                    locale: "en_US".into(),
                },
            )));
            assert_eq!(
                check_method_nesting(&start_ok).is_ok(),
                ok,
                "start-ok depth {depth}"
            );
            let mut header = Vec::new();
            let props = basic::AMQPProperties::default()
                .with_content_type("text/plain".into())
                .with_headers(nested(depth));
            let f = AMQPFrame::Header(
                1,
                amq_protocol::frame::AMQPContentHeader {
                    class_id: 60,
                    body_size: 3,
                    properties: props,
                },
            );
            header.extend_from_slice(&gen_frame(&f)(WriteContext::from(Vec::new())).unwrap().write);
            assert_eq!(
                check_header_nesting(&header[7..header.len() - 1]).is_ok(),
                ok,
                "header depth {depth}"
            );
        }
        // garbage and truncation are left to the decoder, never a false alarm or a panic
        assert!(check_method_nesting(&[0, 50, 0, 10, 0, 0, 200]).is_ok());
        assert!(check_header_nesting(&[0; 14]).is_ok());
        assert!(check_table_content_nesting(&[5, b'a']).is_ok());
    }

    #[test]
    fn deliver_matches_codec() {
        let mut out = Vec::new();
        put_deliver(&mut out, 3, "ctag", 42, true, "ex", "rk");
        let (rest, f) = parse_frame(&out[..]).unwrap();
        assert!(rest.is_empty());
        match f {
            AMQPFrame::Method(3, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
                assert_eq!(d.consumer_tag.as_str(), "ctag");
                assert_eq!(d.delivery_tag, 42);
                assert!(d.redelivered);
                assert_eq!(d.exchange.as_str(), "ex");
                assert_eq!(d.routing_key.as_str(), "rk");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn content_frames_parse() {
        let props = eddy_broker::message::encode_properties(
            &eddy_broker::BasicProperties::default().with_delivery_mode(2),
        );
        let body = vec![7u8; 300];
        let mut out = Vec::new();
        put_content(&mut out, 1, &props, &body, 136);
        let (rest, f) = parse_frame(&out[..]).unwrap();
        match f {
            AMQPFrame::Header(1, h) => {
                assert_eq!(h.body_size, 300);
                assert_eq!(*h.properties.delivery_mode(), Some(2));
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut got = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            let (r, f) = split_frame(rest, 136)
                .unwrap()
                .map(|(f, n)| (&rest[n..], f))
                .unwrap();
            assert_eq!(f.kind, FRAME_BODY);
            got.extend_from_slice(f.payload);
            rest = r;
        }
        assert_eq!(got, body);
    }

    #[test]
    fn oversized_and_bad_end_frames_are_errors() {
        let mut f = vec![1u8, 0, 1, 0, 0, 1, 0];
        f.extend(vec![0; 256]);
        f.push(FRAME_END);
        assert!(matches!(split_frame(&f, 131072), Ok(Some(_))));
        assert!(matches!(
            split_frame(&f, 100),
            Err(FrameError::TooLarge { .. })
        ));
        let n = f.len();
        f[n - 1] = 0;
        assert!(matches!(
            split_frame(&f, 131072),
            Err(FrameError::BadEnd(0))
        ));
        assert!(matches!(split_frame(&f[..5], 131072), Ok(None)));
    }
}
