//! One Kafka connection: size-prefixed requests read one at a time (the size bounded before
//! anything is allocated, the buffer grown as the bytes arrive, within a deadline), answered
//! in order by a writer task; the bytes of responses not yet written are bounded (`budget`).
//! A connection idle for the idle timeout is closed.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use eddy_broker::Broker;
use eddy_net::{ReadHalf, WriteHalf};
use kafka_protocol::messages::{ApiKey, FetchResponse, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::Instrument;

use crate::api::{self, Handler, Reply, Shared};
use crate::budget::{Closer, Held};
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
    #[error("writing to the client failed")]
    Closing,
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

/// When the connection last did something: a request read or response bytes written.
struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
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
    let idle = (!cfg.idle_timeout.is_zero()).then_some(cfg.idle_timeout);
    let activity = Arc::new(Activity::new());
    // requests are handled in order; their responses go out in order from a writer task, so a
    // produce waiting for its fsync does not hold up reading (and appending) the next ones
    let (tx, rx) = tokio::sync::mpsc::channel::<(Outgoing, Held)>(MAX_IN_FLIGHT);
    let mut writer = tokio::spawn(
        write_responses(
            rx,
            wr,
            counters.clone(),
            activity.clone(),
            idle,
            handler.budget.closer(),
        )
        .in_current_span(),
    );
    // fires once the connection may have been idle for the idle timeout (then checked)
    let idle_check = tokio::time::sleep(idle.unwrap_or(Duration::from_secs(86_400 * 365)));
    tokio::pin!(idle_check);
    let mut first = true;
    let result: Result<(), String> = async {
        loop {
            let mut size = [0u8; 4];
            let mut got = 0;
            while got < 4 {
                tokio::select! {
                    biased;
                    r = rd.read(&mut size[got..]) => match r {
                        Ok(0) | Err(_) => return Ok(()),
                        Ok(n) => got += n,
                    },
                    _ = shutdown.changed() => return Ok(()),
                    // Kafka has no way to tell the client why: the socket just closes
                    reason = counters.close_requested() => return Err(format!("closed as asked: {reason}")),
                    _ = &mut idle_check, if idle.is_some() => {
                        let idle = idle.unwrap_or_default();
                        let until = activity.last() + idle;
                        if Instant::now() >= until {
                            return Err(format!(
                                "idle for {} s (no request, no response written)",
                                idle.as_secs()
                            ));
                        }
                        idle_check.as_mut().reset(until.into());
                    }
                }
            }
            let size = i32::from_be_bytes(size);
            // while a SASL login is expected, requests are small (Kafka's
            // `sasl.server.max.receive.size`): nothing large is held for a client that has
            // not logged in
            // and a connection's first request is small too: clients open with ApiVersions,
            // Metadata or SaslHandshake, so nothing large is held for one that never spoke
            let max = if handler.login_pending() || first {
                cfg.max_request_bytes.min(api::MAX_SASL_REQUEST_BYTES)
            } else {
                cfg.max_request_bytes
            };
            first = false;
            let len = usize::try_from(size)
                .ok()
                .filter(|n| (8..=max).contains(n))
                .ok_or_else(|| ConnError::Size(size, max).to_string())?;
            // a large request takes its bytes from the bound over all connections first
            // (waiting, unread, while others are received), within its deadline
            let receive = async {
                let _room = if len > LARGE_REQUEST {
                    // (a request larger than the whole bound takes all of it)
                    let room = u32::try_from(len.min(cfg.max_receiving)).unwrap_or(u32::MAX);
                    match shared.receiving.clone().acquire_many_owned(room).await {
                        Ok(p) => Some(p),
                        Err(_) => return Err(std::io::ErrorKind::Other.into()),
                    }
                } else {
                    None
                };
                read_body(&mut rd, len).await
            };
            let body = tokio::time::timeout(cfg.request_timeout, receive)
                .await
                .map_err(|_| {
                    format!(
                        "a {len}-byte request did not arrive within {} s",
                        cfg.request_timeout.as_secs()
                    )
                })?
                .map_err(|e| format!("reading a {len}-byte request: {e}"))?;
            activity.touch();
            counters.received(len + 4);
            let (outgoing, failure) = match prepare(&handler, body.freeze()).await {
                Ok(o) => (o, None),
                // what Kafka does too: a request it cannot parse closes the connection
                Err((e, answer)) => (answer.map(Outgoing::Bytes), Some(e.to_string())),
            };
            if let Some(mut o) = outgoing {
                let close = matches!(&o, Outgoing::Reply { reply, .. } if reply.close);
                // the response's bytes are held until written: past the connection's bound
                // (or the global one) the next request waits unread
                let size = o.size();
                let held = match o.held() {
                    Some(h) => handler.budget.settle(h, size).await,
                    None => handler.budget.take(size, false).await,
                };
                let Some(held) = held else {
                    return Err("writing to the client failed".into());
                };
                if tx.send((o, held)).await.is_err() {
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
    if tokio::time::timeout(Duration::from_secs(30), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Requests larger than this take room from the bound on bytes being received.
const LARGE_REQUEST: usize = 1 << 20;

/// A request body of `len` bytes, its buffer grown as the bytes arrive (not sized by what
/// the client announced).
async fn read_body(rd: &mut ReadHalf, len: usize) -> std::io::Result<BytesMut> {
    let mut body = BytesMut::with_capacity(len.min(FIRST_READ));
    while body.len() < len {
        if body.len() == body.capacity() {
            // double, up to what is announced (exactly: `reserve` may take more)
            let mut bigger = BytesMut::with_capacity(len.min(body.len() * 2));
            bigger.extend_from_slice(&body);
            body = bigger;
        }
        let want = (len - body.len()) as u64;
        if (&mut *rd).take(want).read_buf(&mut body).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(body)
}

/// What a request body's buffer starts with (most requests fit: one allocation).
const FIRST_READ: usize = 1 << 20;

/// Responses not yet written per connection before its reader waits.
const MAX_IN_FLIGHT: usize = 64;

/// Record sets from this size up are written from the fetched batches, not copied into the
/// response's buffer.
const SHARE_FROM: usize = 16 * 1024;

impl Outgoing {
    /// Bytes on the wire (a response to encode: its size once encoded).
    fn size(&self) -> usize {
        match self {
            Outgoing::Bytes(b) => b.len(),
            Outgoing::Reply {
                api,
                version,
                reply,
                ..
            } => 4 + 8 + body_size(&reply.response, *api, *version),
        }
    }

    /// The response bytes set aside before it was built, if any.
    fn held(&mut self) -> Option<Held> {
        match self {
            Outgoing::Bytes(_) => None,
            Outgoing::Reply { reply, .. } => reply.held.take(),
        }
    }
}

/// The encoded size of a response's body.
fn body_size(r: &ResponseKind, api: ApiKey, version: i16) -> usize {
    macro_rules! sizes {
        ($($kind:ident),*) => {
            match r {
                $(ResponseKind::$kind(x) => x.compute_size(version),)*
                _ => {
                    tracing::error!("no size for a {api:?} response");
                    Ok(0)
                }
            }
        };
    }
    sizes!(
        Produce,
        Fetch,
        ListOffsets,
        Metadata,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        CreatePartitions,
        InitProducerId,
        FindCoordinator,
        JoinGroup,
        SyncGroup,
        Heartbeat,
        LeaveGroup,
        OffsetCommit,
        OffsetFetch,
        ListGroups,
        DescribeGroups,
        DeleteGroups,
        DescribeConfigs,
        AlterConfigs,
        IncrementalAlterConfigs,
        SaslHandshake,
        SaslAuthenticate,
        DescribeCluster
    )
    .unwrap_or(0)
}

/// What the writer sends next: encoded bytes, and the record sets it writes from where they
/// are, each at an offset of the encoded bytes.
#[derive(Default)]
struct Pending {
    out: BytesMut,
    shared: Vec<(usize, Bytes)>,
    /// Bytes in `shared`.
    shared_len: usize,
}

impl Pending {
    fn len(&self) -> usize {
        self.out.len() + self.shared_len
    }
    fn clear(&mut self) {
        self.out.clear();
        self.shared.clear();
        self.shared_len = 0;
        if self.out.capacity() > 4 << 20 {
            // a large response once does not keep its buffer for the connection's life
            self.out = BytesMut::with_capacity(64 * 1024);
        }
    }
}

async fn write_responses<W: AsyncWrite + Unpin>(
    mut rx: tokio::sync::mpsc::Receiver<(Outgoing, Held)>,
    mut wr: W,
    counters: Arc<eddy_broker::ConnectionInfo>,
    activity: Arc<Activity>,
    stall: Option<Duration>,
    closer: Closer,
) {
    let mut p = Pending {
        out: BytesMut::with_capacity(64 * 1024),
        ..Default::default()
    };
    // what the responses being written hold, given back once they are
    let mut held: Vec<Held> = Vec::new();
    let mut next: Option<(Outgoing, Held)> = None;
    let clean = 'write: loop {
        let (o, h) = match next.take() {
            Some(o) => o,
            None => match rx.recv().await {
                Some(o) => o,
                None => break true,
            },
        };
        p.clear();
        held.push(h);
        if !encode(&mut p, o, true).await {
            break false;
        }
        // put the responses already ready behind it into the same write
        while p.len() < (1 << 20) {
            match rx.try_recv() {
                Ok((o, h)) if ready(&o) => {
                    held.push(h);
                    if !encode(&mut p, o, false).await {
                        break 'write false;
                    }
                }
                Ok(o) => {
                    next = Some(o);
                    break;
                }
                Err(_) => break,
            }
        }
        if let Err(e) = write_pending(&mut wr, &p, stall, &activity).await {
            tracing::info!("writing to the client failed: {e}");
            break false;
        }
        counters.sent(p.len());
        held.clear();
    };
    // the reader stops waiting for room that will not come
    closer.close();
    if clean {
        let _ = tokio::time::timeout(Duration::from_secs(5), wr.shutdown()).await;
    }
}

/// Write what is pending (one vectored write where the stream takes one), closing the
/// connection when no byte goes out for `stall`.
async fn write_pending<W: AsyncWrite + Unpin>(
    wr: &mut W,
    p: &Pending,
    stall: Option<Duration>,
    activity: &Activity,
) -> std::io::Result<()> {
    // most writes are one buffer: no list of parts to allocate
    let mut one = [IoSlice::new(&p.out)];
    let mut many: Vec<IoSlice<'_>>;
    let mut parts: &mut [IoSlice<'_>] = if p.shared.is_empty() {
        &mut one
    } else {
        many = Vec::with_capacity(1 + 2 * p.shared.len());
        let mut at = 0;
        for (pos, b) in &p.shared {
            if *pos > at {
                many.push(IoSlice::new(&p.out[at..*pos]));
            }
            many.push(IoSlice::new(b));
            at = *pos;
        }
        if p.out.len() > at {
            many.push(IoSlice::new(&p.out[at..]));
        }
        &mut many
    };
    while !parts.is_empty() {
        let write = wr.write_vectored(parts);
        let n = match stall {
            Some(d) => tokio::time::timeout(d, write).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client took no byte for {} s", d.as_secs()),
                )
            })??,
            None => write.await?,
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        activity.touch();
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// Whether a response needs no wait.
fn ready(o: &Outgoing) -> bool {
    match o {
        Outgoing::Bytes(_) => true,
        Outgoing::Reply { reply, .. } => {
            reply.commits.is_empty()
                && reply
                    .waits
                    .iter()
                    .all(|(log, end)| log.durable_offset() >= *end)
        }
    }
}

/// Encode a response into `p`, first waiting (when `wait`) for what it must be durable
/// after. False: encoding failed (a bug; the connection closes).
async fn encode(p: &mut Pending, o: Outgoing, wait: bool) -> bool {
    match o {
        Outgoing::Bytes(b) => {
            p.out.extend_from_slice(&b);
            true
        }
        Outgoing::Reply {
            correlation,
            api,
            version,
            mut reply,
        } => {
            for c in std::mem::take(&mut reply.commits) {
                let result = c.result.await;
                api::apply_commit(&mut reply.response, c.topic, c.partition, result, version);
            }
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
            let written = match &reply.response {
                ResponseKind::Fetch(f) => write_fetch(p, correlation, header_version, f, version),
                response => write_response(&mut p.out, correlation, header_version, api, |b| {
                    response.encode(b, version)
                }),
            };
            match written {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!("{e}");
                    false
                }
            }
        }
    }
}

/// A fetch response: its record sets are not copied but written from the batches read.
fn write_fetch(
    p: &mut Pending,
    correlation: i32,
    header_version: i16,
    resp: &FetchResponse,
    version: i16,
) -> Result<(), ConnError> {
    let records: Vec<Bytes> = resp
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .filter_map(|p| p.records.clone())
        .filter(|r| r.len() >= SHARE_FROM)
        .collect();
    if records.is_empty() {
        return write_response(
            &mut p.out,
            correlation,
            header_version,
            ApiKey::Fetch,
            |b| resp.encode(b, version),
        );
    }
    let start = p.out.len();
    let first = p.shared.len();
    p.out.put_i32(0);
    let mut h = ResponseHeader::default();
    h.correlation_id = correlation;
    let mut buf = SharingBuf {
        out: &mut p.out,
        shared: &mut p.shared,
        records: &records,
        added: 0,
    };
    let encoded = h
        .encode(&mut buf, header_version)
        .and_then(|_| resp.encode(&mut buf, version));
    let added = buf.added;
    if let Err(e) = encoded {
        // never send half a response
        p.out.truncate(start);
        p.shared.truncate(first);
        return Err(ConnError::Encode(ApiKey::Fetch, e.to_string()));
    }
    p.shared_len += added;
    let len = (p.out.len() - start - 4 + added) as i32;
    p.out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// The buffer a fetch response is encoded into: the encoder's bytes go to `out`, except a
/// record set of the response, which is kept (a reference to the same bytes) to be written
/// from where it is at that offset of `out`.
struct SharingBuf<'a> {
    out: &'a mut BytesMut,
    shared: &'a mut Vec<(usize, Bytes)>,
    /// The response's record sets (found by address when the encoder writes them).
    records: &'a [Bytes],
    /// Bytes kept in `shared` by this buffer.
    added: usize,
}

// SAFETY: every method of the contract forwards to the `BytesMut`, which upholds it;
// `put_slice` (a provided method) either forwards too or writes nothing to the buffer.
unsafe impl BufMut for SharingBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.out.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's promise (cnt bytes of the chunk initialised) is about the
        // chunk `chunk_mut` returned, which is the `BytesMut`'s.
        unsafe { self.out.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.out.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= SHARE_FROM {
            let same = self
                .records
                .iter()
                .find(|r| r.as_ptr() == src.as_ptr() && r.len() == src.len());
            if let Some(r) = same {
                self.shared.push((self.out.len(), r.clone()));
                self.added += r.len();
                return;
            }
        }
        self.out.put_slice(src)
    }
}

// Offsets are those of `out`: message encoders use no gaps, and a gap would still be in
// `out` (shared bytes are never inside one).
impl ByteBufMut for SharingBuf<'_> {
    fn offset(&self) -> usize {
        self.out.len()
    }
    fn seek(&mut self, offset: usize) {
        self.out.resize(offset, 0);
    }
    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        &mut self.out[r]
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
        api::Answer::Closing => return Err((ConnError::Closing, None)),
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
