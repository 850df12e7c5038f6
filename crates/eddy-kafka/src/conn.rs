//! One Kafka connection: size-prefixed requests read one at a time (the size bounded before
//! anything is allocated), answered in order.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use eddy_broker::Broker;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseHeader};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::api::{self, Handler, Shared};
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
}

pub(crate) async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Broker,
    cfg: Arc<KafkaConfig>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let handler = Handler::new(broker, cfg.clone(), &shared, peer);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let result: Result<(), String> = async {
        loop {
            let mut size = [0u8; 4];
            tokio::select! {
                r = rd.read_exact(&mut size) => match r {
                    Ok(_) => {}
                    Err(_) => return Ok(()),
                },
                _ = shutdown.changed() => return Ok(()),
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
            out.clear();
            match respond(&handler, body.freeze(), &mut out).await {
                Ok(true) => {
                    wr.write_all(&out)
                        .await
                        .map_err(|e| format!("write failed: {e}"))?;
                    if handler
                        .close_after
                        .load(std::sync::atomic::Ordering::Relaxed)
                    {
                        return Err("SASL authentication failed".into());
                    }
                }
                Ok(false) => {} // acks=0: no response
                Err(e) => {
                    // what Kafka does too: a request it cannot parse closes the connection
                    if !out.is_empty() {
                        let _ = wr.write_all(&out).await;
                    }
                    return Err(e.to_string());
                }
            }
        }
    }
    .await;
    match result {
        Ok(()) => tracing::debug!(%peer, "kafka connection closed"),
        Err(e) => tracing::info!(%peer, "kafka connection closed: {e}"),
    }
    let _ = wr.shutdown().await;
}

/// Handle one request; writes the size-prefixed response into `out`. Ok(false): no response
/// (produce with acks=0).
async fn respond(
    handler: &Handler,
    mut body: Bytes,
    out: &mut BytesMut,
) -> Result<bool, ConnError> {
    let key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let api = ApiKey::try_from(key).map_err(|_| ConnError::UnknownApi(key))?;
    let Some((min, max)) = api::supported(api) else {
        return Err(ConnError::UnknownApi(key));
    };
    if version < min || version > max {
        if api == ApiKey::ApiVersions {
            // the one request answered in any version: v0 with UNSUPPORTED_VERSION and our
            // ranges, so the client can pick one
            let resp = api::api_versions_unsupported();
            write_response(out, correlation, 0, ApiKey::ApiVersions, |b| {
                resp.encode(b, 0)
            })?;
            return Ok(true);
        }
        return Err(ConnError::UnsupportedVersion {
            api,
            version,
            min,
            max,
        });
    }
    let malformed = |reason: String| ConnError::Malformed {
        api,
        version,
        reason,
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
    let Some(response) = handler.handle(request, version, &header).await else {
        return Ok(false);
    };
    let header_version = api.response_header_version(version);
    write_response(out, header.correlation_id, header_version, api, |b| {
        response.encode(b, version)
    })?;
    Ok(true)
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
