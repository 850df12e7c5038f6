//! One Kafka connection: size-prefixed requests read one at a time (the size bounded before
//! anything is allocated), answered in order.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use eddy_broker::Broker;
use eddy_net::{ReadHalf, WriteHalf};
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseHeader};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::Instrument;

use crate::api::{self, Handler, Reply, Shared};
use crate::KafkaConfig;

/// Why a connection was closed without an answer to its last request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("request size {0} outside 8..={1}")]
    Size(i32, usize),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("{api:?} version {version} is not supported (supported: {min}..={max})")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        min: i16,
        max: i16,
    },
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("encoding the {0:?} response failed: {1}")]
    Encode(ApiKey, String),
    #[error("a produce with acks=0 failed ({0}): closing, as the client gets no answer")]
    UnansweredProduceFailed(String),
}

/// A response on its way out, in request order: encoded once what it waits for is durable.
pub(crate) enum Outgoing {
    /// Already encoded.
    Bytes(BytesMut),
    /// A response to encode after its waits.
    Reply {
        correlation: i32,
        api: ApiKey,
        version: i16,
        reply: Box<Reply>,
    },
}

/// Serve one connection (plain or TLS, or in memory in tests) until it closes.
pub(crate) async fn handle(
    c: eddy_net::Conn,
    broker: Broker,
    cfg: Arc<KafkaConfig>,
    shared: Arc<Shared>,
) {
    let (rd, wr) = c.stream.into_split();
    handle_io(
        rd, wr, c.peer, c.local, c.tls, broker, cfg, shared, c.shutdown, c.span,
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
    broker: Broker,
    cfg: Arc<KafkaConfig>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    span: tracing::Span,
) {
    let id = broker.next_connection_id();
    span.record("id", id);
    let registered = broker.register_connection(id, "Kafka", peer, local, tls);
    let counters = registered.info();
    registered.set_vhost("/");
    let mut handler = Handler::new(broker, cfg.clone(), &shared, peer);
    handler.info = Some(counters.clone());
    span.record("vhost", "/");
    if let Some(u) = handler.anonymous_user() {
        span.record("user", u.as_str());
        registered.set_user(&u);
    }
    handler.span = span;
    // requests are handled in order; their responses go out in order from a writer task, so a
    // produce waiting for its fsync does not hold up reading (and appending) the next ones
    let (tx, rx) = tokio::sync::mpsc::channel::<Outgoing>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_responses(rx, wr, counters.clone()).in_current_span());
    let result: Result<(), String> = async {
        loop {
            let mut size = [0u8; 4];
            tokio::select! {
                r = rd.read_exact(&mut size) => match r {
                    Ok(_) => {}
                    Err(_) => return Ok(()),
                },
                _ = shutdown.changed() => return Ok(()),
                // Kafka has no way to tell the client why: the socket just closes
                reason = counters.close_requested() => return Err(format!("closed as asked: {reason}")),
            }
            let size = i32::from_be_bytes(size);
            let len = usize::try_from(size)
                .ok()
                .filter(|n| (8..=cfg.max_request_bytes).contains(n))
                .ok_or_else(|| ConnError::Size(size, cfg.max_request_bytes).to_string())?;
            let mut body = BytesMut::zeroed(len);
            rd.read_exact(&mut body)
                .await
                .map_err(|e| format!("reading a {len}-byte request: {e}"))?;
            counters.received(len + 4);
            let (outgoing, failure) = match prepare(&handler, body.freeze()).await {
                Ok(o) => (o, None),
                // what Kafka does too: a request it cannot parse closes the connection
                Err((e, answer)) => (answer.map(Outgoing::Bytes), Some(e.to_string())),
            };
            if let Some(o) = outgoing {
                let close = matches!(&o, Outgoing::Reply { reply, .. } if reply.close);
                if tx.send(o).await.is_err() {
                    return Err("writing to the client failed".into());
                }
                if close {
                    return Err("SASL authentication failed".into());
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }
    .await;
    match result {
        Ok(()) => tracing::debug!("connection closed"),
        Err(e) => tracing::info!("connection closed: {e}"),
    }
    drop(tx);
    // what was accepted is answered before the socket closes
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), writer).await;
}

/// Responses not yet written per connection before its reader waits.
const MAX_IN_FLIGHT: usize = 64;

async fn write_responses<W: AsyncWrite + Unpin>(
    mut rx: tokio::sync::mpsc::Receiver<Outgoing>,
    mut wr: W,
    counters: Arc<eddy_broker::ConnectionInfo>,
) {
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut next: Option<Outgoing> = None;
    loop {
        let o = match next.take() {
            Some(o) => o,
            None => match rx.recv().await {
                Some(o) => o,
                None => break,
            },
        };
        out.clear();
        if !encode(&mut out, o, true).await {
            return;
        }
        // put the responses already ready behind it into the same write
        while out.len() < (1 << 20) {
            match rx.try_recv() {
                Ok(o) if ready(&o) => {
                    if !encode(&mut out, o, false).await {
                        return;
                    }
                }
                Ok(o) => {
                    next = Some(o);
                    break;
                }
                Err(_) => break,
            }
        }
        if wr.write_all(&out).await.is_err() {
            return;
        }
        counters.sent(out.len());
    }
    let _ = wr.shutdown().await;
}

/// Whether a response needs no wait.
fn ready(o: &Outgoing) -> bool {
    match o {
        Outgoing::Bytes(_) => true,
        Outgoing::Reply { reply, .. } => reply
            .waits
            .iter()
            .all(|(log, end)| log.durable_offset() >= *end),
    }
}

/// Encode a response into `out`, first waiting (when `wait`) for what it must be durable
/// after. False: encoding failed (a bug; the connection closes).
async fn encode(out: &mut BytesMut, o: Outgoing, wait: bool) -> bool {
    match o {
        Outgoing::Bytes(b) => {
            out.extend_from_slice(&b);
            true
        }
        Outgoing::Reply {
            correlation,
            api,
            version,
            mut reply,
        } => {
            if wait {
                for (log, end) in &reply.waits {
                    if let Err(e) = log.wait_durable(*end).await {
                        tracing::error!("not durable, answering with an error: {e}");
                        api::fail_durability(&mut reply.response, &e.to_string());
                        break;
                    }
                }
            }
            let header_version = api.response_header_version(version);
            let response = &reply.response;
            match write_response(out, correlation, header_version, api, |b| {
                response.encode(b, version)
            }) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!("{e}");
                    false
                }
            }
        }
    }
}

/// Decode and handle one request. Ok(None): no response is due (produce with acks=0).
/// Err: the connection closes after the answer given, if any.
async fn prepare(
    handler: &Handler,
    mut body: Bytes,
) -> Result<Option<Outgoing>, (ConnError, Option<BytesMut>)> {
    let key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let api = ApiKey::try_from(key).map_err(|_| (ConnError::UnknownApi(key), None))?;
    let Some((min, max)) = api::supported(api) else {
        return Err((ConnError::UnknownApi(key), None));
    };
    if version < min || version > max {
        if api == ApiKey::ApiVersions {
            // the one request answered in any version: v0 with UNSUPPORTED_VERSION and our
            // ranges, so the client can pick one
            let resp = api::api_versions_unsupported();
            let mut out = BytesMut::new();
            write_response(&mut out, correlation, 0, ApiKey::ApiVersions, |b| {
                resp.encode(b, 0)
            })
            .map_err(|e| (e, None))?;
            return Ok(Some(Outgoing::Bytes(out)));
        }
        return Err((
            ConnError::UnsupportedVersion {
                api,
                version,
                min,
                max,
            },
            None,
        ));
    }
    let malformed = |reason: String| {
        (
            ConnError::Malformed {
                api,
                version,
                reason,
            },
            None,
        )
    };
    let header =
        decode_request_header_from_buffer(&mut body).map_err(|e| malformed(e.to_string()))?;
    let request =
        RequestKind::decode(api, &mut body, version).map_err(|e| malformed(e.to_string()))?;
    if body.has_remaining() {
        // as Kafka's own parser: fields a client sends beyond the schema are ignored
        // (librdkafka 2.x adds bytes to some Metadata v12 requests)
        tracing::debug!(
            ?api,
            version,
            "{} bytes after the request ignored",
            body.remaining()
        );
    }
    let reply = match handler.handle(request, version, &header).await {
        api::Answer::Reply(r) => r,
        api::Answer::Nothing => return Ok(None),
        api::Answer::Close(why) => return Err((ConnError::UnansweredProduceFailed(why), None)),
    };
    Ok(Some(Outgoing::Reply {
        correlation: header.correlation_id,
        api,
        version,
        reply,
    }))
}

fn write_response(
    out: &mut BytesMut,
    correlation: i32,
    header_version: i16,
    api: ApiKey,
    body: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>,
) -> Result<(), ConnError> {
    let start = out.len();
    out.put_i32(0);
    let mut h = ResponseHeader::default();
    h.correlation_id = correlation;
    let encoded = h
        .encode(out, header_version)
        .and_then(|_| body(out))
        .map_err(|e| ConnError::Encode(api, e.to_string()));
    if let Err(e) = encoded {
        out.truncate(start); // never send half a response
        return Err(e);
    }
    let len = (out.len() - start - 4) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}
