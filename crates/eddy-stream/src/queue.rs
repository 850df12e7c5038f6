//! An Eddy (or any AMQP 0-9-1) queue as a source: `EddyQueue::named("tasks")`.
//!
//! Every worker consumes from the queue (competing consumers, the broker spreads the
//! messages). With checkpoints, a message is acknowledged only once the checkpoint of the
//! epoch that read it is complete, so a crash redelivers what the restored state has not
//! seen. Messages that carry a `message_id` are exactly-once: the ids of messages read in
//! checkpointed epochs but not yet acknowledged are kept in the checkpoint, and a redelivery
//! (flagged `redelivered` by the broker) of one of them after a restore is acknowledged and
//! skipped, whichever worker it reaches: every worker restores the ids of all workers (their
//! checkpoint files must be visible to it; a directory shared by the processes). Messages
//! without an id are at-least-once across a crash between a checkpoint and its
//! acknowledgement. Without checkpoints, messages are acknowledged as they are read. When the
//! stream ends, the last acknowledgement is confirmed sent and the connection closed before
//! the job returns.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use timely::scheduling::SyncActivator;

use crate::checkpoint::FINAL;
use crate::source::{Item, Poll, Reader, Source};

/// The default address of Eddy's AMQP listener, with the default user.
pub const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A message read from a queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMessage {
    /// Its body.
    pub body: Vec<u8>,
    /// Its `message_id` property.
    pub message_id: Option<String>,
    /// Whether the broker delivered it before (to this job's earlier run, say).
    pub redelivered: bool,
    /// The routing key it was published with.
    pub routing_key: String,
}

/// An AMQP queue as a source.
#[derive(Clone, Debug)]
pub struct EddyQueue {
    queue: String,
    uri: String,
    prefetch: u16,
    until_idle: Option<Duration>,
}

impl EddyQueue {
    /// The queue `name` (it must exist) on Eddy at [`DEFAULT_AMQP`].
    pub fn named(name: &str) -> EddyQueue {
        EddyQueue {
            queue: name.to_owned(),
            uri: DEFAULT_AMQP.to_owned(),
            prefetch: 1000,
            until_idle: None,
        }
    }

    /// The broker's AMQP URI.
    pub fn uri(mut self, uri: &str) -> Self {
        self.uri = uri.to_owned();
        self
    }

    /// Unacknowledged messages each worker may hold (its prefetch; with checkpoints, at
    /// least what arrives in a checkpoint interval, or reading stalls until the checkpoint).
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// End the stream once no message has come for `quiet` while every message read was
    /// acknowledged (a bounded run over what the queue holds: with checkpoints, the broker
    /// holds back deliveries beyond the prefetch until a checkpoint acknowledges, which does
    /// not count as quiet); by default the stream never ends.
    pub fn until_idle(mut self, quiet: Duration) -> Self {
        self.until_idle = Some(quiet);
        self
    }

    /// The whole messages.
    pub fn messages(self) -> Source<QueueMessage> {
        Source::from_reader(move |_, _| {
            Box::new(QueueReader::new(self.clone(), |m| m)) as Box<dyn Reader<QueueMessage>>
        })
    }
}

/// The bodies, as text (invalid UTF-8 replaced).
impl From<EddyQueue> for Source<String> {
    fn from(q: EddyQueue) -> Source<String> {
        Source::from_reader(move |_, _| {
            Box::new(QueueReader::new(q.clone(), |m: QueueMessage| {
                String::from_utf8_lossy(&m.body).into_owned()
            })) as Box<dyn Reader<String>>
        })
    }
}

impl From<EddyQueue> for Source<QueueMessage> {
    fn from(q: EddyQueue) -> Source<QueueMessage> {
        q.messages()
    }
}

/// From the consuming thread.
enum FromBroker {
    Message(u64, QueueMessage),
    Failed(String),
}

/// To the consuming thread.
enum ToBroker {
    /// Acknowledge up to this delivery tag (multiple).
    Ack(u64),
    /// Close the connection (after the acknowledgements sent before) and say how it went.
    Close(SyncSender<Result<(), String>>),
}

struct QueueReader<D> {
    cfg: EddyQueue,
    convert: fn(QueueMessage) -> D,
    rx: Option<Receiver<FromBroker>>,
    acks: Option<tokio::sync::mpsc::UnboundedSender<ToBroker>>,
    thread: Option<std::thread::JoinHandle<()>>,
    buffered: VecDeque<(u64, QueueMessage)>,
    checkpointed: bool,
    /// The last delivery tag handed out, the last acknowledged (an ack never repeats: the
    /// broker would close the channel), and per ended epoch the last tag read in it.
    last_tag: u64,
    acked: u64,
    ended: BTreeMap<u64, u64>,
    /// Ids of messages read in checkpointed epochs, not yet acknowledged (checkpointed).
    unacked_ids: BTreeMap<u64, Vec<String>>,
    current_ids: Vec<String>,
    /// Restored: ids whose redelivery is skipped.
    seen: BTreeSet<String>,
    /// When the last message came (for `until_idle`).
    last_message: std::time::Instant,
}

#[derive(Serialize, Deserialize, Default)]
struct QueuePosition {
    ids: Vec<String>,
}

impl<D> QueueReader<D> {
    fn new(cfg: EddyQueue, convert: fn(QueueMessage) -> D) -> QueueReader<D> {
        QueueReader {
            cfg,
            convert,
            rx: None,
            acks: None,
            thread: None,
            buffered: VecDeque::new(),
            checkpointed: false,
            last_tag: 0,
            acked: 0,
            ended: BTreeMap::new(),
            unacked_ids: BTreeMap::new(),
            current_ids: Vec::new(),
            seen: BTreeSet::new(),
            last_message: std::time::Instant::now(),
        }
    }

    fn ack(&mut self, tag: u64) {
        if tag <= self.acked {
            return;
        }
        self.acked = tag;
        if let Some(a) = &self.acks {
            let _ = a.send(ToBroker::Ack(tag));
        }
    }

    /// The stream ended: wait until the acknowledgements are on their way and the
    /// connection is closed (a message acknowledged only in a buffer when the process exits
    /// would be delivered again to the next run).
    fn close(&mut self) {
        let Some(a) = self.acks.take() else { return };
        let (tx, rx) = sync_channel(1);
        let closed = if a.send(ToBroker::Close(tx)).is_ok() {
            rx.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| Err("no answer from the broker in 10 s".into()))
        } else {
            Err("the connection was gone".into())
        };
        match closed {
            Ok(()) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            Err(e) => tracing::warn!(
                queue = %self.cfg.queue,
                "closing the queue source's connection: {e}; messages acknowledged last may be \
                 delivered again"
            ),
        }
    }
}

async fn consume(
    cfg: EddyQueue,
    tx: SyncSender<FromBroker>,
    mut acks: tokio::sync::mpsc::UnboundedReceiver<ToBroker>,
    wake: SyncActivator,
) -> Result<(), String> {
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&cfg.uri, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| {
        format!(
            "timed out connecting to the AMQP broker for queue {}",
            cfg.queue
        )
    })?
    .map_err(|e| {
        format!(
            "cannot connect to the AMQP broker for queue {}: {e}",
            cfg.queue
        )
    })?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = ch
        .basic_consume(
            cfg.queue.as_str().into(),
            "eddy-stream".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("cannot consume from queue {}: {e}", cfg.queue))?;
    loop {
        tokio::select! {
            d = consumer.next() => {
                let Some(d) = d else { return Err(format!("queue {}: the broker ended the consumer", cfg.queue)) };
                let d = d.map_err(|e| format!("queue {}: {e}", cfg.queue))?;
                let m = QueueMessage {
                    body: d.data.clone(),
                    message_id: d.properties.message_id().as_ref().map(|s| s.as_str().to_owned()),
                    redelivered: d.redelivered,
                    routing_key: d.routing_key.as_str().to_owned(),
                };
                // blocking hand-over: the bounded channel is this source's backpressure
                let tx2 = tx.clone();
                let tag = d.delivery_tag;
                let sent = tokio::task::spawn_blocking(move || tx2.send(FromBroker::Message(tag, m))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return Ok(()); // the job is gone
                }
                let _ = wake.activate();
            }
            a = acks.recv() => {
                match a {
                    None => return Ok(()),
                    Some(ToBroker::Ack(tag)) => {
                        ch.basic_ack(tag, BasicAckOptions { multiple: true }).await.map_err(|e| format!("queue {}: {e}", cfg.queue))?;
                    }
                    Some(ToBroker::Close(reply)) => {
                        let r = conn.close(200, "the stream ended".into()).await.map_err(|e| format!("queue {}: {e}", cfg.queue));
                        let _ = reply.send(r);
                        return Ok(());
                    }
                }
            }
        }
    }
}

impl<D: 'static> Reader<D> for QueueReader<D> {
    fn start(&mut self, wake: SyncActivator, checkpointed: bool) {
        self.checkpointed = checkpointed;
        self.last_message = std::time::Instant::now();
        let (tx, rx) = sync_channel(1024);
        let (atx, arx) = tokio::sync::mpsc::unbounded_channel();
        self.rx = Some(rx);
        self.acks = Some(atx);
        let cfg = self.cfg.clone();
        let thread = std::thread::Builder::new()
            .name(format!("eddy-queue-{}", cfg.queue))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(FromBroker::Failed(e.to_string()));
                        return;
                    }
                };
                let tx2 = tx.clone();
                if let Err(e) = rt.block_on(consume(cfg, tx, arx, wake.clone())) {
                    let _ = tx2.send(FromBroker::Failed(e));
                    let _ = wake.activate();
                }
            })
            .unwrap_or_else(|e| panic!("source: cannot start its consuming thread: {e}"));
        self.thread = Some(thread);
    }

    fn poll(&mut self, out: &mut Vec<Item<D>>, max: usize) -> Poll {
        let Some(rx) = self.rx.as_ref() else {
            return Poll::Pending;
        };
        while self.buffered.len() < max {
            match rx.try_recv() {
                Ok(FromBroker::Message(tag, m)) => {
                    self.buffered.push_back((tag, m));
                    self.last_message = std::time::Instant::now();
                }
                Ok(FromBroker::Failed(e)) => panic!("source: {e}"),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        let mut last = None;
        for _ in 0..max {
            let Some((tag, m)) = self.buffered.pop_front() else {
                break;
            };
            last = Some(tag);
            self.last_tag = tag;
            if let Some(id) = &m.message_id {
                if self.checkpointed {
                    // kept in checkpoints until acknowledged (skipped or not: a crash before
                    // the acknowledgement delivers it again)
                    self.current_ids.push(id.clone());
                }
                if m.redelivered && self.seen.remove(id) {
                    // processed before the crash, in a checkpoint that is restored
                    continue;
                }
            }
            out.push(Item {
                split: 0,
                time: None,
                data: (self.convert)(m),
            });
        }
        if !self.checkpointed {
            if let Some(tag) = last {
                self.ack(tag);
            }
        }
        if self.last_tag > self.acked {
            // the broker may be holding messages back for the prefetch: not quiet
            self.last_message = std::time::Instant::now();
        }
        if !self.buffered.is_empty() {
            Poll::Ready
        } else if self
            .cfg
            .until_idle
            .is_some_and(|q| self.last_message.elapsed() >= q)
        {
            Poll::Done
        } else {
            Poll::Pending
        }
    }

    fn splits(&self) -> Vec<u32> {
        vec![0]
    }

    fn position(&self) -> Vec<u8> {
        // the ids of everything read so far and not acknowledged yet: the epochs ended and
        // not complete, plus the one ending now
        let mut ids: Vec<String> = self.unacked_ids.values().flatten().cloned().collect();
        ids.extend(self.current_ids.iter().cloned());
        // and restored ones not redelivered yet (a second crash must still skip them)
        ids.extend(self.seen.iter().cloned());
        bincode::serialize(&QueuePosition { ids }).expect("strings encode")
    }

    fn restore(&mut self, position: &[u8]) -> Result<(), String> {
        let p: QueuePosition = bincode::deserialize(position).map_err(|e| e.to_string())?;
        self.seen.extend(p.ids);
        Ok(())
    }

    fn restore_peers(&mut self, positions: &[Vec<u8>]) -> Result<(), String> {
        // the broker redelivers a message to whichever consumer it likes
        for p in positions.iter().filter(|p| !p.is_empty()) {
            self.restore(p)?;
        }
        Ok(())
    }

    fn epoch_ended(&mut self, epoch: u64) {
        self.ended.insert(epoch, self.last_tag);
        let ids = std::mem::take(&mut self.current_ids);
        self.unacked_ids.insert(epoch, ids);
    }

    fn epoch_complete(&mut self, epoch: u64) {
        let mut upto = None;
        while let Some((&e, &tag)) = self.ended.first_key_value() {
            if e > epoch {
                break;
            }
            self.ended.remove(&e);
            self.unacked_ids.remove(&e);
            if tag > 0 {
                upto = Some(tag);
            }
        }
        if let Some(tag) = upto {
            self.ack(tag);
        }
        if epoch == FINAL {
            self.close();
        }
    }
}
