//! Inter-node traffic: one TCP connection from each node to each peer, shared by every group
//! (requests carry the group's name and an id; answers come back in any order). A frame is a
//! little-endian u32 length and a bincode body, at most [`MAX_FRAME`] bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::types::{MetaCommand, NodeId, Reply, TypeConfig};

/// Largest inter-node frame (an AppendEntries of several large batches).
pub const MAX_FRAME: usize = 512 << 20;
/// Frames are gathered into one write up to this size.
pub(crate) const COALESCE: usize = 64 << 10;
/// Requests one peer connection may have unanswered.
const MAX_IN_FLIGHT: usize = 4096;

/// A request to a peer.
#[derive(Serialize, Deserialize)]
pub(crate) enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A metadata change for the metadata leader to propose; answers its log index and reply.
    Forward(MetaCommand),
    /// This node's view of its groups.
    Status,
    /// A membership change of the metadata group, for its leader to make: add (true) or
    /// remove (false) a node.
    Membership(NodeId, bool),
}

/// A peer's answer.
#[derive(Serialize, Deserialize)]
pub(crate) enum Answer {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Forwarded(Result<(u64, Reply), String>),
    /// A membership change made (or why not).
    Changed(Result<(), String>),
    /// JSON text (bincode cannot carry a `serde_json::Value`).
    Status(String),
    /// The peer could not take the request (no such group on it yet, say).
    Refused(String),
}

#[derive(Serialize, Deserialize)]
struct Frame<T> {
    id: u64,
    group: String,
    body: T,
}

/// A frame must arrive in full within this long of its length.
pub(crate) const FRAME_DEADLINE: Duration = Duration::from_secs(30);
/// A peer connection that sends nothing for this long is closed (a live peer sends
/// heartbeats many times a second; the dialing side reconnects when it needs to).
pub(crate) const PEER_IDLE: Duration = Duration::from_secs(60);
/// Most inter-node connections a node accepts at once.
pub(crate) const MAX_PEER_CONNECTIONS: usize = 128;

pub(crate) async fn read_frame<T: for<'de> Deserialize<'de>>(
    r: &mut (impl AsyncReadExt + Unpin),
) -> std::io::Result<(u64, String, T)> {
    let len = tokio::time::timeout(PEER_IDLE, r.read_u32_le())
        .await
        .map_err(|_| std::io::Error::other("the peer sent nothing for 60 s"))??
        as usize;
    tokio::time::timeout(FRAME_DEADLINE, read_body(r, len))
        .await
        .map_err(|_| {
            std::io::Error::other(format!("a {len}-byte frame did not arrive within 30 s"))
        })?
}

async fn read_body<T: for<'de> Deserialize<'de>>(
    r: &mut (impl AsyncReadExt + Unpin),
    len: usize,
) -> std::io::Result<(u64, String, T)> {
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "inter-node frame of {len} bytes is over the {MAX_FRAME}-byte limit"
        )));
    }
    // read into spare capacity (no zeroing of what the read overwrites at once), grown as the
    // bytes arrive: a frame announced and not sent holds only what was sent
    let mut buf = Vec::with_capacity(len.min(1 << 20));
    (&mut *r).take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let f: Frame<T> = bincode::deserialize(&buf).map_err(std::io::Error::other)?;
    Ok((f.id, f.group, f.body))
}

pub(crate) fn encode_frame<T: Serialize>(id: u64, group: &str, body: &T) -> Vec<u8> {
    let f = Frame {
        id,
        group: group.to_owned(),
        body,
    };
    let mut out = vec![0; 4];
    bincode::serialize_into(&mut out, &f).expect("serializing into memory");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>;

/// The halves of an inter-node connection, plain or TLS.
pub(crate) type Halves = (
    Box<dyn AsyncRead + Send + Unpin>,
    Box<dyn AsyncWrite + Send + Unpin>,
);

/// How long a TLS handshake between nodes may take.
pub(crate) const TLS_HANDSHAKE: Duration = Duration::from_secs(5);

/// Split a connection, after a TLS handshake as the dialing side when `tls` is given.
async fn dial_halves(
    stream: TcpStream,
    addr: &str,
    tls: Option<&eddy_net::TlsConnector>,
) -> std::io::Result<Halves> {
    let Some(tls) = tls else {
        let (rd, wr) = stream.into_split();
        return Ok((Box::new(rd), Box::new(wr)));
    };
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = eddy_net::ServerName::try_from(host.to_owned())
        .map_err(|e| std::io::Error::other(format!("peer address {addr}: {e}")))?;
    let s = tokio::time::timeout(TLS_HANDSHAKE, tls.connect(name, stream))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake with the peer timed out"))??;
    let (rd, wr) = tokio::io::split(s);
    Ok((Box::new(rd), Box::new(wr)))
}

struct Connection {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Pending,
}

/// The connection to one peer, made on first use and again after it breaks.
pub(crate) struct Peer {
    pub(crate) id: NodeId,
    pub(crate) addr: String,
    tls: Option<eddy_net::TlsConnector>,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
    next_id: AtomicU64,
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("node {0} is unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
}

impl Peer {
    pub(crate) fn new(id: NodeId, addr: String, tls: Option<eddy_net::TlsConnector>) -> Arc<Peer> {
        Arc::new(Peer {
            id,
            addr,
            tls,
            conn: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        })
    }

    async fn connection(&self) -> Result<Arc<Connection>, CallError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.tx.is_closed()) {
            return Ok(c.clone());
        }
        let stream =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(&self.addr))
                .await
                .map_err(|_| CallError::Unreachable(self.id, "connect timed out".into()))?
                .map_err(|e| CallError::Unreachable(self.id, e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = dial_halves(stream, &self.addr, self.tls.as_ref())
            .await
            .map_err(|e| CallError::Unreachable(self.id, e.to_string()))?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT);
        let pending: Pending = Default::default();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut buf = first;
                // write what queued up meanwhile in one go (small frames: a large one is
                // written as it is, not copied)
                while buf.len() < COALESCE {
                    match rx.try_recv() {
                        Ok(more) => buf.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let p = pending.clone();
        let id = self.id;
        tokio::spawn(async move {
            loop {
                match read_frame::<Answer>(&mut rd).await {
                    Ok((rid, _, answer)) => {
                        if let Some(tx) = p.lock().remove(&rid) {
                            let _ = tx.send(answer);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(peer = id, "connection to peer closed: {e}");
                        // every caller still waiting learns the connection is gone
                        p.lock().clear();
                        break;
                    }
                }
            }
        });
        let c = Arc::new(Connection { tx, pending });
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Send a request to this peer and wait for its answer, at most `timeout`.
    pub(crate) async fn call(
        &self,
        group: &str,
        rpc: &Rpc,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let conn = tokio::time::timeout_at(deadline, self.connection())
            .await
            .map_err(|_| CallError::Timeout(self.id))??;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = conn.pending.lock();
            if p.len() >= MAX_IN_FLIGHT {
                return Err(CallError::Unreachable(
                    self.id,
                    "too many requests in flight".into(),
                ));
            }
            p.insert(id, tx);
        }
        let frame = encode_frame(id, group, rpc);
        let sent = tokio::time::timeout_at(deadline, conn.tx.send(frame)).await;
        if !matches!(sent, Ok(Ok(()))) {
            conn.pending.lock().remove(&id);
            *self.conn.lock().await = None;
            return Err(CallError::Unreachable(self.id, "connection closed".into()));
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => {
                let mut slot = self.conn.lock().await;
                if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                    *slot = None;
                }
                Err(CallError::Unreachable(self.id, "connection closed".into()))
            }
            Err(_) => {
                conn.pending.lock().remove(&id);
                Err(CallError::Timeout(self.id))
            }
        }
    }
}

/// The peers this node dials, by id: those of `--cluster-peers`, and nodes added later (their
/// address from the metadata).
pub(crate) type Peers = Arc<parking_lot::RwLock<HashMap<NodeId, Arc<Peer>>>>;

/// Makes each group's clients to its peers.
#[derive(Clone)]
pub struct Network {
    pub(crate) group: String,
    pub(crate) peers: Peers,
}

/// One group's client to one peer.
pub struct PeerClient {
    group: String,
    peer: Option<Arc<Peer>>,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> PeerClient {
        PeerClient {
            group: self.group.clone(),
            peer: self.peers.read().get(&target).cloned(),
            target,
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call(&self, rpc: Rpc, option: &RPCOption) -> Result<Answer, Unreachable> {
        let Some(peer) = &self.peer else {
            return Err(Unreachable::new(&std::io::Error::other(format!(
                "node {} is not in --cluster-peers",
                self.target
            ))));
        };
        match peer.call(&self.group, &rpc, option.hard_ttl()).await {
            Ok(Answer::Refused(why)) => Err(Unreachable::new(&std::io::Error::other(why))),
            Ok(a) => Ok(a),
            Err(e) => Err(Unreachable::new(&e)),
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&std::io::Error::other(
            "unexpected answer kind from peer",
        )))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self.call(Rpc::Append(rpc), &option).await? {
            Answer::Append(Ok(r)) => Ok(r),
            Answer::Append(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.call(Rpc::Snapshot(rpc), &option).await? {
            Answer::Snapshot(Ok(r)) => Ok(r),
            Answer::Snapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(Rpc::Vote(rpc), &option).await? {
            Answer::Vote(Ok(r)) => Ok(r),
            Answer::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // a dead peer is retried often enough that a restarted one catches up at once
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
