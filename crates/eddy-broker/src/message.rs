//! Messages as the broker stores and routes them.
//!
//! Properties follow AMQP 0-9-1's basic-properties model, the richest of the protocols Eddy
//! speaks; other front ends map into it. The encoded form of the properties is kept beside the
//! parsed form so a delivery never re-encodes them.
//!
//! Encoding of a message in a queue log (all integers big endian):
//! `exchange_len u8 | exchange | routing_key_len u8 | routing_key | props_len u32 | props (AMQP
//! basic-properties wire encoding) | body (rest)`.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{gen_properties, parse_properties};
use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;

use crate::error::{BrokerError, Result};

/// A published message; shared (`Arc`) by every queue it was routed to.
#[derive(Debug, Clone)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Parsed properties.
    pub properties: BasicProperties,
    /// The same properties in AMQP wire encoding.
    pub raw_properties: Bytes,
    /// The body.
    pub body: Bytes,
}

/// Encode basic properties in AMQP wire form (flags then present fields).
pub fn encode_properties(props: &BasicProperties) -> Bytes {
    let ctx = WriteContext::from(Vec::with_capacity(32));
    match gen_properties(props)(ctx) {
        Ok(ctx) => Bytes::from(ctx.write),
        // Vec<u8> writes cannot fail; keep an empty property set rather than panic.
        Err(_) => Bytes::from_static(&[0, 0]),
    }
}

/// Decode basic properties from AMQP wire form.
pub fn decode_properties(raw: &[u8]) -> Result<BasicProperties> {
    match parse_properties(raw) {
        Ok(([], props)) => Ok(props),
        Ok((rest, _)) => Err(BrokerError::Internal(format!(
            "{} trailing bytes after message properties",
            rest.len()
        ))),
        Err(e) => Err(BrokerError::Internal(format!(
            "malformed message properties: {e}"
        ))),
    }
}

impl Message {
    /// A message from parsed properties (encodes them once).
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        properties: BasicProperties,
        body: Bytes,
    ) -> Self {
        let raw_properties = encode_properties(&properties);
        Message {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            properties,
            raw_properties,
            body,
        }
    }

    /// True when delivery_mode is 2 (persistent).
    pub fn persistent(&self) -> bool {
        *self.properties.delivery_mode() == Some(2)
    }

    /// The message priority (0 when absent).
    pub fn priority(&self) -> u8 {
        self.properties.priority().unwrap_or(0)
    }

    /// Per-message TTL from the `expiration` property, in milliseconds.
    /// `Err` when the property is present but not a non-negative integer.
    pub fn expiration_ms(&self) -> Result<Option<u64>> {
        match self.properties.expiration() {
            None => Ok(None),
            Some(s) => s.as_str().trim().parse::<u64>().map(Some).map_err(|_| {
                BrokerError::precondition(format!(
                    "invalid expiration '{}': must be a non-negative integer of milliseconds",
                    s.as_str()
                ))
            }),
        }
    }

    /// Message headers, if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.properties.headers().as_ref()
    }

    /// A header value by name.
    pub fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.headers().and_then(|h| h.inner().get(name))
    }

    /// Bytes this message holds in memory (for watermarks and max-length-bytes: body only,
    /// as RabbitMQ counts).
    pub fn body_size(&self) -> usize {
        self.body.len()
    }

    /// Memory footprint estimate.
    pub fn memory_size(&self) -> usize {
        self.body.len() + self.raw_properties.len() + self.routing_key.len() + 96
    }

    /// A copy with other properties (re-encoded), e.g. for dead-lettering.
    pub fn with_properties(&self, properties: BasicProperties) -> Message {
        Message::new(
            self.exchange.clone(),
            self.routing_key.clone(),
            properties,
            self.body.clone(),
        )
    }

    /// Append the log encoding of this message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let ex = truncate_255(&self.exchange);
        let rk = truncate_255(&self.routing_key);
        out.reserve(6 + ex.len() + rk.len() + self.raw_properties.len() + self.body.len());
        out.push(ex.len() as u8);
        out.extend_from_slice(ex);
        out.push(rk.len() as u8);
        out.extend_from_slice(rk);
        out.extend_from_slice(&(self.raw_properties.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.raw_properties);
        out.extend_from_slice(&self.body);
    }

    /// Decode a message written by [`Message::encode`].
    pub fn decode(buf: &[u8]) -> Result<Message> {
        let bad = |what: &str| BrokerError::Internal(format!("corrupt stored message: {what}"));
        let mut pos = 0usize;
        let take = |pos: &mut usize, n: usize| -> Result<&[u8]> {
            let end = pos.checked_add(n).filter(|&e| e <= buf.len());
            match end {
                Some(end) => {
                    let s = &buf[*pos..end];
                    *pos = end;
                    Ok(s)
                }
                None => Err(BrokerError::Internal(
                    "corrupt stored message: truncated".into(),
                )),
            }
        };
        let exl = take(&mut pos, 1)?[0] as usize;
        let exchange =
            String::from_utf8(take(&mut pos, exl)?.to_vec()).map_err(|_| bad("exchange"))?;
        let rkl = take(&mut pos, 1)?[0] as usize;
        let routing_key =
            String::from_utf8(take(&mut pos, rkl)?.to_vec()).map_err(|_| bad("routing key"))?;
        let pl =
            u32::from_be_bytes(take(&mut pos, 4)?.try_into().map_err(|_| bad("length"))?) as usize;
        let raw = take(&mut pos, pl)?;
        let properties = decode_properties(raw)?;
        let raw_properties = Bytes::copy_from_slice(raw);
        let body = Bytes::copy_from_slice(&buf[pos..]);
        Ok(Message {
            exchange,
            routing_key,
            properties,
            raw_properties,
            body,
        })
    }
}

fn truncate_255(s: &str) -> &[u8] {
    let b = s.as_bytes();
    &b[..b.len().min(255)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldTable, LongString};

    #[test]
    fn encode_decode_round_trip() {
        let mut headers = FieldTable::default();
        headers.insert("k".into(), AMQPValue::LongString(LongString::from("v")));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(3)
            .with_expiration("1500".into())
            .with_headers(headers);
        let m = Message::new("ex", "rk", props, Bytes::from_static(b"hello"));
        let mut buf = Vec::new();
        m.encode(&mut buf);
        let d = Message::decode(&buf).unwrap();
        assert_eq!(d.exchange, "ex");
        assert_eq!(d.routing_key, "rk");
        assert_eq!(d.body, Bytes::from_static(b"hello"));
        assert!(d.persistent());
        assert_eq!(d.priority(), 3);
        assert_eq!(d.expiration_ms().unwrap(), Some(1500));
        assert_eq!(d.properties, m.properties);
        assert!(Message::decode(&buf[..5]).is_err());
    }
}
