//! Virtual hosts: the namespace of exchanges and queues, declarations, bindings and routing.

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Weak};

use amq_protocol::types::FieldTable;
use eddy_log::Log;
use parking_lot::RwLock;

use crate::args::QueueArgs;
use crate::error::{BrokerError, Result};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::message::Message;
use crate::queue::{Enqueued, Queue, QueueParent, QueueSpec};
use crate::topic::{Partition, Topic, TopicConfig};

/// What a vhost asks of the broker that holds it. [`VHost`]'s one pointer up (`broker`, weak)
/// has this type, so this file imports nothing of the broker's; the broker implements it.
pub(crate) trait VHostParent: Send + Sync {
    /// Write metadata of every durable exchange, queue and binding, and of every topic
    /// (group-committed: returns once a write that began after the call is on disk).
    fn save_metadata(&self);
    /// Return once every metadata change made so far is on disk (a declare that finds its
    /// queue already there must not answer before the declare that created it is durable).
    fn metadata_barrier(&self);
    /// Open (or create) the log of a durable queue.
    fn open_queue_log(&self, vhost: &str, queue: &str) -> Result<Arc<Log>>;
    /// Bytes of messages held in memory, broker-wide (queues count theirs in it).
    fn memory(&self) -> &Arc<AtomicI64>;
    /// A topic by name.
    fn topic(&self, name: &str) -> Option<Arc<Topic>>;
    /// Create a topic (blocks on disk). An existing name is [`BrokerError::AlreadyExists`].
    fn create_topic(
        &self,
        name: &str,
        partitions: usize,
        config: TopicConfig,
    ) -> Result<Arc<Topic>>;
    /// Remove a topic and its data (not a stream queue of the same name).
    fn remove_topic(&self, name: &str);
}

/// Result of routing a publish.
#[derive(Default)]
pub struct PublishOutcome {
    /// At least one queue took the message.
    pub routed: bool,
    /// Some queue refused it (x-overflow reject-publish): a confirm must be a nack.
    pub rejected: bool,
    /// Logs and offsets to wait for before a confirm.
    pub durable: Vec<(Arc<eddy_log::Log>, u64)>,
}

/// Declare-ok data for a queue.
#[derive(Debug, Clone)]
pub struct QueueDeclared {
    /// The queue's name (server-generated for `""`).
    pub name: String,
    /// Ready messages.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
}

/// Parameters of queue.declare.
#[derive(Debug, Clone, Default)]
pub struct QueueDeclare {
    /// Name (empty: server-named).
    pub name: String,
    /// Only check existence.
    pub passive: bool,
    /// Survive restarts.
    pub durable: bool,
    /// Owned by the declaring connection.
    pub exclusive: bool,
    /// Deleted when the last consumer goes.
    pub auto_delete: bool,
    /// `x-*` arguments.
    pub arguments: FieldTable,
    /// `name` was made by [`server_queue_name`] for a client that asked for a server-named
    /// queue (so its `amq.` prefix is allowed).
    pub server_named: bool,
}

/// Parameters of exchange.declare.
#[derive(Debug, Clone)]
pub struct ExchangeDeclare {
    /// Name.
    pub name: String,
    /// Type name (direct, fanout, topic, headers).
    pub kind: String,
    /// Only check existence.
    pub passive: bool,
    /// Survive restarts.
    pub durable: bool,
    /// Deleted when unused.
    pub auto_delete: bool,
    /// Not for client publishes.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// A virtual host.
pub struct VHost {
    /// Name (`/` by default).
    pub name: String,
    pub(crate) exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    /// The default exchange (also in `exchanges`; it can be neither deleted nor redeclared),
    /// kept apart so the commonest publish finds it without a lookup.
    default_exchange: Arc<Exchange>,
    pub(crate) queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// The parent pointer: the broker that holds this vhost.
    broker: Weak<dyn VHostParent>,
    /// Held while a queue is created or removed, so a durable queue's log directory is opened
    /// by one declare only and never removed under a queue that was just declared again.
    lifecycle: parking_lot::Mutex<()>,
}

impl std::fmt::Debug for VHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VHost").field("name", &self.name).finish()
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

impl VHost {
    pub(crate) fn new(name: &str, broker: Weak<dyn VHostParent>) -> Arc<VHost> {
        let default_exchange = Arc::new(Exchange::new(
            "",
            ExchangeKind::Direct,
            true,
            false,
            false,
            FieldTable::default(),
        ));
        let vh = Arc::new(VHost {
            name: name.to_owned(),
            exchanges: RwLock::new(HashMap::from([(String::new(), default_exchange.clone())])),
            default_exchange,
            queues: RwLock::new(HashMap::new()),
            broker,
            lifecycle: parking_lot::Mutex::new(()),
        });
        let mut ex = vh.exchanges.write();
        for (n, k) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            ex.insert(
                n.into(),
                Arc::new(Exchange::new(
                    n,
                    k,
                    true,
                    false,
                    false,
                    FieldTable::default(),
                )),
            );
        }
        drop(ex);
        vh
    }

    fn not_found_queue(&self, q: &str) -> BrokerError {
        BrokerError::NotFound(format!("no queue '{q}' in vhost '{}'", self.name))
    }

    fn not_found_exchange(&self, e: &str) -> BrokerError {
        BrokerError::NotFound(format!("no exchange '{e}' in vhost '{}'", self.name))
    }

    fn persist(&self) {
        if let Some(b) = self.broker.upgrade() {
            b.save_metadata();
        }
    }

    /// Wait for metadata changes in flight (see [`VHostParent::metadata_barrier`]).
    fn persisted(&self) {
        if let Some(b) = self.broker.upgrade() {
            b.metadata_barrier();
        }
    }

    /// Look up a queue.
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    /// Look up an exchange.
    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        if name.is_empty() {
            return Some(self.default_exchange.clone());
        }
        self.exchanges.read().get(name).cloned()
    }

    /// All queues.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    /// All exchanges.
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    /// Find a queue usable by `conn` (exclusive queues belong to their connection).
    pub fn queue_for(&self, name: &str, conn: u64) -> Result<Arc<Queue>> {
        let q = self.queue(name).ok_or_else(|| self.not_found_queue(name))?;
        self.check_owner(&q, conn)?;
        Ok(q)
    }

    fn check_owner(&self, q: &Queue, conn: u64) -> Result<()> {
        match q.exclusive_owner {
            Some(owner) if owner != conn => Err(self.locked(q)),
            _ => Ok(()),
        }
    }

    fn locked(&self, q: &Queue) -> BrokerError {
        BrokerError::ResourceLocked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            q.name, self.name
        ))
    }

    /// exchange.declare
    pub fn declare_exchange(&self, d: ExchangeDeclare) -> Result<()> {
        if d.name.is_empty() && !d.passive {
            return Err(BrokerError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if let Some(ex) = self.exchange(&d.name) {
            if d.passive {
                return Ok(());
            }
            let kind = ExchangeKind::parse(&d.kind)?;
            let mismatch = |arg: &str, got: &str, cur: &str| {
                BrokerError::PreconditionFailed(format!(
                    "inequivalent arg '{arg}' for exchange '{}' in vhost '{}': received '{got}' but current is '{cur}'",
                    d.name, self.name
                ))
            };
            if ex.kind != kind {
                return Err(mismatch("type", kind.as_str(), ex.kind.as_str()));
            }
            if ex.durable != d.durable {
                return Err(mismatch(
                    "durable",
                    bool_str(d.durable),
                    bool_str(ex.durable),
                ));
            }
            if ex.auto_delete != d.auto_delete {
                return Err(mismatch(
                    "auto_delete",
                    bool_str(d.auto_delete),
                    bool_str(ex.auto_delete),
                ));
            }
            if ex.internal != d.internal {
                return Err(mismatch(
                    "internal",
                    bool_str(d.internal),
                    bool_str(ex.internal),
                ));
            }
            if ex.alternate_exchange()
                != Exchange::new("", kind, false, false, false, d.arguments.clone())
                    .alternate_exchange()
            {
                return Err(mismatch("alternate-exchange", "", ""));
            }
            if ex.durable {
                self.persisted();
            }
            return Ok(());
        }
        if d.passive {
            return Err(self.not_found_exchange(&d.name));
        }
        if d.name.starts_with("amq.") {
            return Err(BrokerError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        if d.name.len() > 255 {
            return Err(BrokerError::PreconditionFailed(
                "exchange name too long".into(),
            ));
        }
        let kind = ExchangeKind::parse(&d.kind)?;
        crate::args::check_storable(&d.arguments, &format!("exchange '{}'", d.name))?;
        let durable = d.durable;
        self.exchanges
            .write()
            .entry(d.name.clone())
            .or_insert_with(|| {
                Arc::new(Exchange::new(
                    d.name,
                    kind,
                    d.durable,
                    d.auto_delete,
                    d.internal,
                    d.arguments,
                ))
            });
        if durable {
            self.persist();
        }
        Ok(())
    }

    /// exchange.delete
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<()> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(BrokerError::AccessRefused(format!(
                "operation not permitted on the default exchange or 'amq.*' exchanges ('{name}')"
            )));
        }
        let ex = match self.exchange(name) {
            Some(ex) => ex,
            // RabbitMQ treats deleting a missing exchange as success
            None => return Ok(()),
        };
        if if_unused && ex.binding_count() > 0 {
            return Err(BrokerError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if self.exchanges.write().remove(name).is_none() {
            return Ok(());
        }
        let durable_gone = self.remove_bindings_to(Destination::Exchange(name.to_owned()));
        if ex.durable || durable_gone {
            self.persist();
        }
        Ok(())
    }

    /// Remove every binding that leads to `dest` (a deleted queue or exchange); an auto-delete
    /// exchange left without bindings goes too, and so on down the chain — as a worklist, not
    /// recursion, so a long chain cannot overflow the stack. Returns true when a durable
    /// exchange was removed on the way.
    fn remove_bindings_to(&self, dest: Destination) -> bool {
        let mut durable_gone = false;
        let mut pending = vec![dest];
        while let Some(dest) = pending.pop() {
            for e in self.exchanges() {
                if e.unbind_destination(&dest) > 0 && self.remove_if_unused_auto_delete(&e) {
                    durable_gone |= e.durable;
                    pending.push(Destination::Exchange(e.name.clone()));
                }
            }
        }
        durable_gone
    }

    /// queue.declare
    pub fn declare_queue(
        self: &Arc<Self>,
        mut d: QueueDeclare,
        conn: u64,
    ) -> Result<QueueDeclared> {
        let _lifecycle = self.lifecycle.lock();
        if !d.name.is_empty() {
            if let Some(q) = self.queue(&d.name) {
                self.check_owner(&q, conn)?;
                if !d.passive {
                    self.check_equivalent(&q, &d)?;
                }
                q.touch();
                if q.durable {
                    self.persisted();
                }
                let c = q.counts();
                return Ok(QueueDeclared {
                    name: q.name.clone(),
                    message_count: c.ready as u32,
                    consumer_count: c.consumers as u32,
                });
            }
            if d.passive {
                return Err(self.not_found_queue(&d.name));
            }
            if d.name.starts_with("amq.") && !d.server_named {
                return Err(BrokerError::AccessRefused(format!(
                    "queue name '{}' contains reserved prefix 'amq.*'",
                    d.name
                )));
            }
        } else {
            if d.passive {
                return Err(self.not_found_queue(""));
            }
            d.name = server_queue_name();
        }
        let args = QueueArgs::parse(&d.arguments, &d.name, &self.name)?;
        crate::args::check_storable(&d.arguments, &format!("queue '{}'", d.name))?;
        let broker = self
            .broker
            .upgrade()
            .ok_or_else(|| BrokerError::Internal("broker is shutting down".into()))?;
        let durable = d.durable && !d.exclusive;
        let stream = if args.queue_type == "stream" {
            Some(self.stream_partition(&*broker, &d)?)
        } else {
            None
        };
        let log = if durable && stream.is_none() {
            Some(broker.open_queue_log(&self.name, &d.name)?)
        } else {
            None
        };
        let parent: Weak<dyn QueueParent> = Arc::<VHost>::downgrade(self);
        let q = Queue::new(
            QueueSpec {
                name: d.name.clone(),
                durable: d.durable,
                exclusive_owner: d.exclusive.then_some(conn),
                auto_delete: d.auto_delete,
                arguments: d.arguments,
                args,
            },
            &self.name,
            parent,
            log,
            stream,
            broker.memory().clone(),
        );
        self.queues.write().insert(d.name.clone(), q);
        drop(_lifecycle);
        if durable {
            self.persist();
        }
        Ok(QueueDeclared {
            name: d.name,
            message_count: 0,
            consumer_count: 0,
        })
    }

    /// The partition behind a new stream queue: the one-partition topic of the same name
    /// (created with retention from `x-max-age` / `x-max-length-bytes`).
    fn stream_partition(
        &self,
        broker: &dyn VHostParent,
        d: &QueueDeclare,
    ) -> Result<Arc<Partition>> {
        let refuse = |why: &str| {
            BrokerError::PreconditionFailed(format!(
                "invalid declaration of stream queue '{}' in vhost '{}': {why}",
                d.name, self.name
            ))
        };
        if !d.durable {
            return Err(refuse("stream queues must be durable"));
        }
        if d.exclusive {
            return Err(refuse("stream queues cannot be exclusive"));
        }
        if d.auto_delete {
            return Err(refuse("stream queues cannot be auto-delete"));
        }
        if self.name != "/" {
            return Err(refuse("stream queues exist in the default vhost only"));
        }
        crate::topic::check_topic_name(&d.name).map_err(|e| refuse(&e.to_string()))?;
        let topic = match broker.topic(&d.name) {
            Some(t) => t,
            None => {
                let mut config = TopicConfig {
                    retention_ms: -1,
                    ..Default::default()
                };
                for (k, v) in d.arguments.inner() {
                    let n = crate::args::value_as_i64(v);
                    match (k.as_str(), n) {
                        ("x-max-length-bytes", Some(n)) => config.retention_bytes = n,
                        ("x-stream-max-segment-size-bytes", Some(n)) => {
                            config.segment_bytes = n.max(4096) as u64
                        }
                        ("x-max-age", _) => {
                            config.retention_ms = crate::args::value_as_string(v)
                                .and_then(|s| parse_age_ms(&s))
                                .ok_or_else(|| refuse("x-max-age must be like 7D, 12h, 30m"))?
                        }
                        _ => {}
                    }
                }
                broker.create_topic(&d.name, 1, config)?
            }
        };
        if topic.partition_count() != 1 {
            return Err(refuse(&format!(
                "topic '{}' has {} partitions; a stream queue is one partition",
                d.name,
                topic.partition_count()
            )));
        }
        topic.partition(0).ok_or_else(|| {
            BrokerError::Internal("a one-partition topic without partition 0".into())
        })
    }

    fn check_equivalent(&self, q: &Queue, d: &QueueDeclare) -> Result<()> {
        let mismatch = |arg: &str, got: String, cur: String| {
            BrokerError::PreconditionFailed(format!(
                "inequivalent arg '{arg}' for queue '{}' in vhost '{}': received '{got}' but current is '{cur}'",
                q.name, self.name
            ))
        };
        if q.exclusive_owner.is_some() != d.exclusive {
            // RabbitMQ checks exclusive access first (strict): 405, not an inequivalent arg
            return Err(self.locked(q));
        }
        if q.durable != d.durable {
            return Err(mismatch(
                "durable",
                bool_str(d.durable).into(),
                bool_str(q.durable).into(),
            ));
        }
        if q.auto_delete != d.auto_delete {
            return Err(mismatch(
                "auto_delete",
                bool_str(d.auto_delete).into(),
                bool_str(q.auto_delete).into(),
            ));
        }
        // RabbitMQ compares the arguments that change behaviour
        for key in [
            "x-message-ttl",
            "x-expires",
            "x-max-length",
            "x-max-length-bytes",
            "x-overflow",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-max-priority",
            "x-queue-type",
        ] {
            let got = d.arguments.inner().get(key);
            let cur = q.arguments.inner().get(key);
            let norm = |v: Option<&amq_protocol::types::AMQPValue>| {
                v.map(|v| {
                    crate::args::value_as_i64(v)
                        .map(|n| n.to_string())
                        .or_else(|| crate::args::value_as_string(v))
                        .unwrap_or_else(|| format!("{v:?}"))
                })
            };
            let (g, c) = (norm(got), norm(cur));
            let same = g == c
                || (key == "x-queue-type"
                    && g.as_deref().unwrap_or("classic") == c.as_deref().unwrap_or("classic"));
            if !same {
                return Err(mismatch(
                    key,
                    g.unwrap_or_else(|| "none".into()),
                    c.unwrap_or_else(|| "none".into()),
                ));
            }
        }
        Ok(())
    }

    /// queue.delete: returns the number of messages dropped.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: u64,
    ) -> Result<u64> {
        let q = match self.queue(name) {
            Some(q) => q,
            // RabbitMQ answers delete-ok (0 messages) for a queue that does not exist
            None => return Ok(0),
        };
        self.check_owner(&q, conn)?;
        let c = q.counts();
        if if_unused && c.consumers > 0 {
            return Err(BrokerError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && c.ready > 0 {
            return Err(BrokerError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' not empty",
                self.name
            )));
        }
        Ok(self.remove_queue(&q))
    }

    /// Remove a queue and its bindings (auto-delete, exclusive owner gone, x-expires).
    pub fn remove_queue(&self, q: &Arc<Queue>) -> u64 {
        let lifecycle = self.lifecycle.lock();
        let removed = {
            let mut qs = self.queues.write();
            match qs.get(&q.name) {
                Some(cur) if Arc::ptr_eq(cur, q) => qs.remove(&q.name).is_some(),
                _ => false,
            }
        };
        if !removed {
            return 0;
        }
        let durable_exchange_gone = self.remove_bindings_to(Destination::Queue(q.name.clone()));
        let n = q.destroy();
        drop(lifecycle);
        if q.stream().is_some() {
            if let Some(b) = self.broker.upgrade() {
                b.remove_topic(&q.name);
            }
        }
        if (q.durable && q.exclusive_owner.is_none()) || durable_exchange_gone {
            self.persist();
        }
        n
    }

    /// queue.purge
    pub fn purge_queue(&self, name: &str, conn: u64) -> Result<u64> {
        let q = self.queue_for(name, conn)?;
        if q.stream().is_some() {
            return Err(BrokerError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' is a stream: streams are not purged (retention removes old messages)",
                self.name
            )));
        }
        Ok(q.purge())
    }

    /// queue.bind
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        conn: u64,
    ) -> Result<()> {
        let q = self.queue_for(queue, conn)?;
        let ex = self.bindable_exchange(exchange)?;
        ex.check_binding_arguments(&arguments)?;
        crate::args::check_storable(&arguments, "binding")?;
        let durable = q.durable && ex.durable;
        let added = ex.bind(Binding {
            destination: Destination::Queue(q.name.clone()),
            routing_key: routing_key.into(),
            arguments,
        });
        match (durable, added) {
            (true, true) => self.persist(),
            (true, false) => self.persisted(),
            _ => {}
        }
        Ok(())
    }

    /// queue.unbind
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        conn: u64,
    ) -> Result<()> {
        let q = self.queue_for(queue, conn)?;
        let ex = self.bindable_exchange(exchange)?;
        if ex.unbind(&Binding {
            destination: Destination::Queue(q.name.clone()),
            routing_key: routing_key.into(),
            arguments,
        }) {
            self.after_unbind(&ex);
            self.persist();
        }
        Ok(())
    }

    /// exchange.bind (destination ← source)
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let dst = self.bindable_exchange(destination)?;
        let src = self.bindable_exchange(source)?;
        src.check_binding_arguments(&arguments)?;
        crate::args::check_storable(&arguments, "binding")?;
        if src.bind(Binding {
            destination: Destination::Exchange(dst.name.clone()),
            routing_key: routing_key.into(),
            arguments,
        }) && src.durable
            && dst.durable
        {
            self.persist();
        }
        Ok(())
    }

    /// exchange.unbind
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let dst = self.bindable_exchange(destination)?;
        let src = self.bindable_exchange(source)?;
        if src.unbind(&Binding {
            destination: Destination::Exchange(dst.name.clone()),
            routing_key: routing_key.into(),
            arguments,
        }) {
            self.after_unbind(&src);
            self.persist();
        }
        Ok(())
    }

    /// After an unbind: an auto-delete exchange goes with its last binding (and so do the
    /// bindings that lead to it). Returns true when a durable exchange was removed.
    fn after_unbind(&self, ex: &Arc<Exchange>) -> bool {
        if !self.remove_if_unused_auto_delete(ex) {
            return false;
        }
        let below = self.remove_bindings_to(Destination::Exchange(ex.name.clone()));
        ex.durable || below
    }

    /// Remove `ex` from the vhost if it is auto-delete and has no bindings left.
    fn remove_if_unused_auto_delete(&self, ex: &Arc<Exchange>) -> bool {
        let goes = ex.auto_delete
            && ex.binding_count() == 0
            && !ex.name.is_empty()
            && !ex.name.starts_with("amq.");
        if !goes {
            return false;
        }
        self.exchanges.write().remove(&ex.name).is_some()
    }

    fn bindable_exchange(&self, name: &str) -> Result<Arc<Exchange>> {
        if name.is_empty() {
            return Err(BrokerError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        self.exchange(name)
            .ok_or_else(|| self.not_found_exchange(name))
    }

    /// Route a client publish. Errors: unknown exchange (404), internal exchange (403).
    pub fn publish(self: &Arc<Self>, exchange: &str, msg: Arc<Message>) -> Result<PublishOutcome> {
        let ex = self
            .exchange(exchange)
            .ok_or_else(|| self.not_found_exchange(exchange))?;
        if ex.internal {
            return Err(BrokerError::AccessRefused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.name
            )));
        }
        self.route_and_enqueue(&ex, msg)
    }

    fn route_and_enqueue(
        self: &Arc<Self>,
        ex: &Arc<Exchange>,
        msg: Arc<Message>,
    ) -> Result<PublishOutcome> {
        let queues = self.route(ex, &msg);
        self.enqueue_all(&queues, &msg)
    }

    fn enqueue_all(&self, queues: &[Arc<Queue>], msg: &Arc<Message>) -> Result<PublishOutcome> {
        let mut out = PublishOutcome::default();
        for q in queues {
            self.enqueue(q, msg, &mut out)?;
        }
        Ok(out)
    }

    fn enqueue(&self, q: &Arc<Queue>, msg: &Arc<Message>, out: &mut PublishOutcome) -> Result<()> {
        let Enqueued { rejected, durable } = q.publish(msg.clone())?;
        if rejected {
            out.rejected = true;
        } else {
            out.routed = true;
        }
        if let Some(d) = durable {
            out.durable.push(d);
        }
        Ok(())
    }

    /// The queues a message reaches from `ex`, following exchange-to-exchange bindings and
    /// alternate exchanges; each queue once.
    fn route(&self, ex: &Arc<Exchange>, msg: &Message) -> Vec<Arc<Queue>> {
        if ex.name.is_empty() {
            // the default exchange: every queue is bound by its own name
            return self.queue(&msg.routing_key).into_iter().collect();
        }
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        let mut visited: Vec<String> = Vec::new();
        let mut pending: Vec<Arc<Exchange>> = vec![ex.clone()];
        let mut dests = Vec::new();
        while let Some(e) = pending.pop() {
            if visited.contains(&e.name) {
                continue;
            }
            visited.push(e.name.clone());
            dests.clear();
            e.route(&msg.routing_key, msg.headers(), &mut dests);
            let before = queues.len();
            let mut reached_exchange = false;
            for d in &dests {
                match d {
                    Destination::Queue(n) => {
                        if let Some(q) = self.queue(n) {
                            if !queues.iter().any(|x| Arc::ptr_eq(x, &q)) {
                                queues.push(q);
                            }
                        }
                    }
                    Destination::Exchange(n) => {
                        if let Some(x) = self.exchange(n) {
                            reached_exchange = true;
                            pending.push(x);
                        }
                    }
                }
            }
            if queues.len() == before && !reached_exchange {
                if let Some(ae) = e.alternate_exchange().and_then(|n| self.exchange(&n)) {
                    pending.push(ae);
                }
            }
        }
        queues
    }

    /// Delete the exclusive queues of a closed connection.
    pub fn connection_closed(&self, conn: u64) {
        let owned: Vec<Arc<Queue>> = self
            .queues
            .read()
            .values()
            .filter(|q| q.exclusive_owner == Some(conn))
            .cloned()
            .collect();
        for q in owned {
            self.remove_queue(&q);
        }
    }
}

/// A vhost is its queues' parent: it routes their dead letters.
impl QueueParent for VHost {
    /// Publish a dead-lettered message (no internal-exchange check), skipping the queues in
    /// `cycle`.
    fn publish_dead_lettered(
        &self,
        exchange: &str,
        msg: Arc<Message>,
        cycle: &[String],
    ) -> Result<()> {
        let ex = self
            .exchange(exchange)
            .ok_or_else(|| self.not_found_exchange(exchange))?;
        let mut queues = self.route(&ex, &msg);
        queues.retain(|q| {
            let looped = cycle.contains(&q.name);
            if looped {
                tracing::warn!(queue = %q.name, vhost = %self.name, "dead-letter cycle detected: message dropped");
            }
            !looped
        });
        self.enqueue_all(&queues, &msg).map(|_| ())
    }
}

/// A server-generated queue name (`amq.gen-` and 22 random characters), as RabbitMQ makes them.
pub fn server_queue_name() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let s: String = (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("amq.gen-{s}")
}

/// RabbitMQ's `x-max-age` in milliseconds.
fn parse_age_ms(s: &str) -> Option<i64> {
    crate::stream::interval_ms(s)
}
