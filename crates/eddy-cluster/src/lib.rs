//! `eddy-cluster`: Eddy as a cluster of nodes, on openraft.
//!
//! One Raft group, the metadata group, holds what the cluster agrees on (nodes and their
//! addresses, replicated topics and where their partitions live); one Raft group per
//! replicated partition holds the partition's data, its Raft log *being* the partition's
//! eddy-log. A front end asks [`Cluster`] who leads a partition and proposes batches to its
//! [`Group`]; answers wait for a majority to have them durable.
//!
//! # Modules
//! - `types.rs`: the Raft type configuration, entries' commands and replies, the metadata.
//! - `store.rs`: [`RaftLog`], the Raft log over an eddy-log (entry encoding, index, vote).
//! - `sm.rs`: the state machines (a partition's moves its high watermark; the metadata's
//!   creates topics and starts groups).
//! - `transport.rs`: the inter-node connections every group shares.
//! - `node/`: [`Cluster`] (`mod.rs`: start, status), [`Group`] (`group.rs`), the metadata
//!   group's uses (`meta.rs`), membership (`membership.rs`), the cluster listener (`serve.rs`).

// openraft's storage traits return its `StorageError` (over 200 bytes); helpers return it too
#![allow(clippy::result_large_err)]

mod node;
mod sm;
mod store;
mod transport;
mod types;

pub use node::{Cluster, ClusterConfig, ClusterError, Group, PeerTls, ProposeError};
pub use store::{is_envelope, RaftLog};
pub use types::{CommittedOffset, MetaError, MetaState, NodeId, NodeInfo, TopicPlacement};

/// Parse `--cluster-peers`: `id@host:port` separated by commas.
pub fn parse_peers(s: &str) -> Result<std::collections::BTreeMap<NodeId, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('@')
            .ok_or_else(|| format!("'{part}' in --cluster-peers is not id@host:port"))?;
        let id: NodeId = id
            .parse()
            .map_err(|_| format!("'{id}' in --cluster-peers is not a node id (a number)"))?;
        if addr
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(format!("'{addr}' in --cluster-peers is not host:port"));
        }
        if out.insert(id, addr.to_owned()).is_some() {
            return Err(format!("node {id} is listed twice in --cluster-peers"));
        }
    }
    if out.is_empty() {
        return Err("--cluster-peers lists no node".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_ones_are_named() {
        let p = parse_peers("1@127.0.0.1:25672,2@127.0.0.1:25673").unwrap();
        assert_eq!(p[&2], "127.0.0.1:25673");
        assert!(parse_peers("x@1:2").unwrap_err().contains("'x'"));
        assert!(parse_peers("1@nohost").unwrap_err().contains("host:port"));
        assert!(parse_peers("1@a:1,1@b:2").unwrap_err().contains("twice"));
    }
}
