//! `eddy-broker`: Eddy's protocol-neutral broker core — vhosts, exchanges and bindings, routing,
//! classic queues with acknowledgements, prefetch-driven dispatch, TTL, max-length,
//! dead-lettering and priorities, metadata persistence and resource alarms.
//!
//! The shaping decision: a queue is an in-memory structure guarded by one short-held lock,
//! plus (when durable) an `eddy-log` log of its persistent messages and acknowledgements.
//! Publishing routes and enqueues in the caller's task; a queue hands deliveries straight to a
//! [`ConsumerSink`] (a front end's channel) so the hot path has no task hop. The broker knows no
//! wire format: front ends map [`BrokerError`] kinds to their protocol's codes. Message
//! properties use AMQP 0-9-1's basic-properties model (via `amq-protocol`'s types), the richest
//! of the protocols; other front ends map into it.
//!
//! Files import downward only, so there is no import loop (this file declares and re-exports;
//! nothing imports it). Ownership runs broker → vhosts → queues; the only pointers up are a
//! vhost's to its broker and a queue's to its vhost, each `Weak` and typed by a narrow trait
//! that the child declares and the parent implements (`vhost::VHostParent`,
//! `queue::QueueParent`). `metadata.json` is read and written by `metadata.rs` alone.

pub mod args;
mod broker;
pub mod connections;
pub mod error;
pub mod exchange;
mod lock;
pub mod memory;
pub mod message;
mod metadata;
pub mod offsets;
pub mod queue;
/// Kafka's record batch format (the `eddy-records` crate, shared with the stream engine).
pub use eddy_records as records;
pub mod stream;
pub mod topic;
pub mod users;
pub mod vhost;

pub use amq_protocol::protocol::BasicProperties;
pub use amq_protocol::types;
pub use broker::{
    run_blocking, total_memory, Alarms, Broker, BrokerConfig, DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT,
};
pub use connections::{ChannelView, ConnectionHandle, ConnectionInfo};
/// The wall clock, in ms since the Unix epoch, that timestamps and ages are measured in.
pub use eddy_log::now_ms;
pub use eddy_log::{FsyncHistogram, FsyncPolicy, Log, LogError, FSYNC_BUCKETS};
pub use error::{BrokerError, Result};
pub use lock::LOCK_FILE;
pub use message::Message;
pub use offsets::{Committed, OffsetStore};
pub use queue::{ConsumerSink, Delivery, GetResult, Queue, QueueCounts};
pub use topic::{Partition, Topic, TopicConfig};
pub use users::{Access, Permission, User, Users};
pub use vhost::{ExchangeDeclare, PublishOutcome, QueueDeclare, QueueDeclared, VHost};

#[cfg(test)]
mod tests;
