//! The connections the front ends serve, for the management API and metrics: who, from where,
//! over what, and how many bytes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use eddy_log::now_ms;
use parking_lot::Mutex;

/// What a front end shows of one of its channels (read only when asked: no cost on the
/// message path).
pub trait ChannelView: Send + Sync + std::fmt::Debug {
    /// basic.qos prefetch count in force (0: unlimited).
    fn prefetch_count(&self) -> u32;
    /// Deliveries not yet acknowledged.
    fn unacked(&self) -> u64;
    /// Consumers on the channel.
    fn consumers(&self) -> u32;
    /// In publisher-confirm mode.
    fn confirm(&self) -> bool;
    /// In transaction mode.
    fn transactional(&self) -> bool;
}

/// One open connection. Front ends update the counters as they read and write.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// The broker-wide connection id.
    pub id: u64,
    /// "AMQP 0-9-1", "Kafka", …
    pub protocol: &'static str,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's address it came in on.
    pub local: SocketAddr,
    /// When it was accepted (ms since the epoch).
    pub connected_at_ms: i64,
    /// Whether it runs over TLS.
    pub tls: bool,
    user: Mutex<String>,
    vhost: Mutex<String>,
    channels: Mutex<BTreeMap<u16, Arc<dyn ChannelView>>>,
    /// Bytes read from the client (its own cache line: the reader and the writer of a
    /// connection run on different threads).
    pub recv_oct: Counter,
    /// Bytes written to the client.
    pub send_oct: Counter,
    /// Set when an operator asks for the connection to be closed (the reason).
    close_reason: Mutex<Option<String>>,
    close: tokio::sync::Notify,
}

/// A counter alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Counter(AtomicU64);

impl Counter {
    /// Its value.
    pub fn load(&self, o: Ordering) -> u64 {
        self.0.load(o)
    }
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

impl ConnectionInfo {
    /// `peer -> local`, RabbitMQ's connection name.
    pub fn name(&self) -> String {
        format!("{} -> {}", self.peer, self.local)
    }
    /// The authenticated user ("" before login).
    pub fn user(&self) -> String {
        self.user.lock().clone()
    }
    /// The vhost it opened ("" before).
    pub fn vhost(&self) -> String {
        self.vhost.lock().clone()
    }
    /// Set once authenticated.
    pub fn set_user(&self, user: &str) {
        *self.user.lock() = user.to_owned();
    }
    /// Set once the vhost is open.
    pub fn set_vhost(&self, vhost: &str) {
        *self.vhost.lock() = vhost.to_owned();
    }
    /// A channel opened.
    pub fn channel_opened(&self, number: u16, view: Arc<dyn ChannelView>) {
        self.channels.lock().insert(number, view);
    }
    /// A channel closed.
    pub fn channel_closed(&self, number: u16) {
        self.channels.lock().remove(&number);
    }
    /// Its open channels.
    pub fn channels(&self) -> Vec<u16> {
        self.channels.lock().keys().copied().collect()
    }

    /// Its open channels, with what they show.
    pub fn channel_views(&self) -> Vec<(u16, Arc<dyn ChannelView>)> {
        self.channels
            .lock()
            .iter()
            .map(|(n, v)| (*n, v.clone()))
            .collect()
    }
    /// Ask the front end to close the connection (it tells the client `reason`, as the
    /// protocol allows).
    pub fn request_close(&self, reason: &str) {
        *self.close_reason.lock() = Some(reason.to_owned());
        self.close.notify_one();
    }

    /// Resolves once a close was requested, with its reason.
    pub async fn close_requested(&self) -> String {
        loop {
            if let Some(r) = self.close_reason.lock().clone() {
                return r;
            }
            self.close.notified().await;
        }
    }

    /// Count bytes read.
    pub fn received(&self, n: usize) {
        self.recv_oct.add(n as u64);
    }
    /// Count bytes written.
    pub fn sent(&self, n: usize) {
        self.send_oct.add(n as u64);
    }
}

/// Keeps a connection listed while it lives; dropping it removes the entry.
#[derive(Debug)]
pub struct ConnectionHandle {
    info: Arc<ConnectionInfo>,
    /// The registry it is listed in (weak: a handle outliving the broker removes nothing).
    registry: Weak<Connections>,
}

impl std::ops::Deref for ConnectionHandle {
    type Target = ConnectionInfo;
    fn deref(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl ConnectionHandle {
    /// The shared entry (for tasks that count bytes).
    pub fn info(&self) -> Arc<ConnectionInfo> {
        self.info.clone()
    }
}

impl Drop for ConnectionHandle {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            r.remove(&self.info);
        }
    }
}

/// The registry, with the byte totals of connections already closed.
#[derive(Default)]
pub(crate) struct Connections {
    open: Mutex<std::collections::BTreeMap<u64, Arc<ConnectionInfo>>>,
    closed_recv: AtomicU64,
    closed_send: AtomicU64,
    opened: AtomicU64,
}

impl Connections {
    pub(crate) fn add(
        self: &Arc<Self>,
        id: u64,
        protocol: &'static str,
        peer: SocketAddr,
        local: SocketAddr,
        tls: bool,
    ) -> ConnectionHandle {
        let info = Arc::new(ConnectionInfo {
            id,
            protocol,
            peer,
            local,
            connected_at_ms: now_ms(),
            tls,
            user: Mutex::new(String::new()),
            vhost: Mutex::new(String::new()),
            channels: Mutex::new(BTreeMap::new()),
            recv_oct: Counter::default(),
            send_oct: Counter::default(),
            close_reason: Mutex::new(None),
            close: tokio::sync::Notify::new(),
        });
        self.open.lock().insert(id, info.clone());
        self.opened.fetch_add(1, Ordering::Relaxed);
        ConnectionHandle {
            info,
            registry: Arc::downgrade(self),
        }
    }

    fn remove(&self, info: &ConnectionInfo) {
        self.open.lock().remove(&info.id);
        self.closed_recv
            .fetch_add(info.recv_oct.load(Ordering::Relaxed), Ordering::Relaxed);
        self.closed_send
            .fetch_add(info.send_oct.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub(crate) fn list(&self) -> Vec<Arc<ConnectionInfo>> {
        self.open.lock().values().cloned().collect()
    }

    /// Bytes received and sent by all connections ever, and connections ever opened.
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        let open = self.list();
        let recv: u64 = open
            .iter()
            .map(|c| c.recv_oct.load(Ordering::Relaxed))
            .sum();
        let send: u64 = open
            .iter()
            .map(|c| c.send_oct.load(Ordering::Relaxed))
            .sum();
        (
            recv + self.closed_recv.load(Ordering::Relaxed),
            send + self.closed_send.load(Ordering::Relaxed),
            self.opened.load(Ordering::Relaxed),
        )
    }
}
