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

/// Append a method frame.
pub fn put_method(out: &mut Vec<u8>, channel: u16, method: AMQPClass) {
    let frame = AMQPFrame::Method(channel, method);
    let buf = std::mem::take(out);
    let res = gen_frame(&frame)(WriteContext::from(buf));
    match res {
        Ok(ctx) => *out = ctx.write,
        Err(e) => tracing::error!("failed to encode {frame}: {e:?}"),
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
