//! The Raft type configuration every group shares, what entries carry and what applying them
//! answers, and the metadata group's commands and state.

use std::collections::BTreeMap;
use std::io::Cursor;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node's id (`--node-id`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The type configuration of every Raft group of a node (metadata and partitions).
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// What a normal entry carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// A Kafka record batch (magic 2) of a partition group, stored in the partition's log as
    /// it is (its partition leader epoch field holds the entry's term).
    Batch(Bytes),
    /// A change of the metadata group.
    Meta(MetaCommand),
}

/// What applying an entry answers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub enum Reply {
    /// Nothing to say (blank and membership entries).
    #[default]
    None,
    /// A batch's base offset in its partition.
    Offset(u64),
    /// A metadata change's outcome.
    Meta(Result<(), MetaError>),
}

/// Why a metadata change was refused (decided by applying it, so the same on every node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    /// The name is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The change is not valid.
    #[error("{0}")]
    Invalid(String),
}

/// Addresses a node serves clients and peers on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: NodeId,
    /// Inter-node address.
    pub cluster: String,
    /// Kafka listener (host:port), if any.
    pub kafka: Option<String>,
    /// AMQP listener, if any.
    pub amqp: Option<String>,
    /// HTTP listener, if any.
    pub http: Option<String>,
}

/// A change of the metadata group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MetaCommand {
    /// A node tells its addresses.
    RegisterNode(NodeInfo),
    /// Create a topic whose partitions are replicated by the given nodes (the first of each
    /// list is the preferred leader).
    CreateTopic {
        /// Name.
        name: String,
        /// Kafka topic id.
        id: [u8; 16],
        /// Replicas of each partition.
        replicas: Vec<Vec<NodeId>>,
        /// Topic configs (Kafka names).
        configs: Vec<(String, String)>,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// A consumer group's committed offsets (Kafka OffsetCommit), kept by every node.
    CommitOffsets {
        /// Group id.
        group: String,
        /// (topic, partition, committed offset).
        offsets: Vec<CommittedOffset>,
    },
}

/// One committed offset of a consumer group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset to read.
    pub offset: i64,
    /// The leader epoch the client saw.
    pub leader_epoch: i32,
    /// Client metadata.
    pub metadata: String,
}

/// A replicated topic's definition and placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPlacement {
    /// Kafka topic id.
    pub id: [u8; 16],
    /// Replicas of each partition.
    pub replicas: Vec<Vec<NodeId>>,
    /// Topic configs.
    pub configs: Vec<(String, String)>,
}

/// What the metadata group holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// Registered nodes.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Replicated topics.
    pub topics: BTreeMap<String, TopicPlacement>,
}

/// The name of a group: `meta`, or `topic/partition`.
pub fn partition_group(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// The metadata group's name.
pub const META_GROUP: &str = "meta";
