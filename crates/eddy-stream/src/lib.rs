//! `eddy-stream`: Eddy's stream engine — a Flink-style DataStream API (sources, `map`,
//! `flat_map`, `filter`, `key_by`, event-time windows, aggregations, sinks) lowered onto timely
//! dataflow, which runs it on N worker threads, or on several processes, with its own exchange
//! and progress tracking.
//!
//! Shaping decision: event time travels *in* the records, and watermarks travel in-band beside
//! them (as in Flink): each source instance emits its watermark, a keyed exchange sends every
//! watermark to every downstream worker, and a stateful operator's watermark is the minimum over
//! its upstream channels. Timely's own timestamp is left for checkpoint epochs.
//!
//! ```no_run
//! use std::time::Duration;
//! use eddy_stream::{Source, StreamEnv, Tumbling};
//!
//! StreamEnv::from_args().unwrap().execute("wordcount", |env| {
//!     env.source(Source::lines_of_file("words.txt"))
//!         .flat_map(|line: String| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
//!         .key_by(|w| w.clone())
//!         .window(Tumbling::event_time(Duration::from_secs(5)))
//!         .count()
//!         .print();
//! }).unwrap();
//! ```

mod checkpoint;
mod connectors;
mod env;
mod error;
mod event;
pub mod jobs;
mod join;
mod kafka;
pub mod nexmark;
mod operators;
mod process;
#[cfg(feature = "amqp")]
mod queue;
mod report;
mod runner;
mod source;
mod window;

pub use connectors::{EddySink, EddySource, ToRecord, TopicRecord, DEFAULT_BOOTSTRAP};
pub use env::{Env, StreamEnv, DEFAULT_CHECKPOINT_INTERVAL};
pub use error::StreamError;
pub use event::{now_ms, Data, Ev, Windowed};
pub use join::{Either, IntervalJoin, Join, Joined, WindowJoin};
pub use operators::{Committer, DataStream, KeyedStream, Sink, SinkTo};
pub use process::{Context, ProcessFunction, Processed, TimeDomain};
#[cfg(feature = "amqp")]
pub use queue::{EddyQueue, QueueMessage, DEFAULT_AMQP};
pub use report::ReportTo;
pub use source::{Source, WatermarkStrategy};
pub use window::{
    Aggregator, CountWindow, GlobalWindow, Session, Sliding, Tumbling, WindowSpec, WindowedStream,
    WithLate,
};
