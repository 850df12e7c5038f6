//! The bounds on response bytes prepared and not yet written to the client: one per
//! connection, which its reader waits on before it builds the next response (so it stops
//! taking requests from a client that does not read), and one for the fetch responses of every
//! Kafka connection together. A response holds its bytes from the moment it is built (a
//! fetch: from before, for the most it may hold) until the writer has written it.
//!
//! Only fetch responses, the ones that can be large, count against the shared bound: other
//! answers (heartbeats, produce acknowledgements, metadata) never wait behind other
//! connections' fetches, and each connection's are bounded by its own bound and queue.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bound every Kafka connection shares.
pub(crate) struct Global {
    bytes: Arc<Semaphore>,
    max: u32,
}

impl Global {
    pub(crate) fn new(max: usize) -> Self {
        let max = clamp(max).max(1);
        Global {
            bytes: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// Bytes held now by responses not yet written, over every connection.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        (self.max as usize).saturating_sub(self.bytes.available_permits())
    }
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One connection's bound, and its share of the global one.
pub(crate) struct Budget {
    conn: Arc<Semaphore>,
    conn_max: u32,
    global: Arc<Semaphore>,
    global_max: u32,
}

/// Bytes held for one response (its connection's bound, and the shared one for a fetch),
/// given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    conn: OwnedSemaphorePermit,
    global: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// The bytes it holds.
    pub(crate) fn bytes(&self) -> usize {
        self.conn.num_permits()
    }
}

impl Budget {
    pub(crate) fn new(global: &Global, per_connection: usize) -> Self {
        let conn_max = clamp(per_connection).max(1);
        Budget {
            conn: Arc::new(Semaphore::new(conn_max as usize)),
            conn_max,
            global: global.bytes.clone(),
            global_max: global.max,
        }
    }

    /// Wait until `bytes` are free under the connection's bound (and the shared one, for a
    /// fetch) and take them; a response larger than a bound takes all of it: it goes out
    /// alone. None: the connection is closing.
    pub(crate) async fn take(&self, bytes: usize, fetch: bool) -> Option<Held> {
        let mut n = clamp(bytes).min(self.conn_max);
        if fetch {
            n = n.min(self.global_max);
        }
        // the connection's own first: waiting on it holds nothing another connection needs
        let conn = self.conn.clone().acquire_many_owned(n).await.ok()?;
        let global = match fetch {
            true => Some(self.global.clone().acquire_many_owned(n).await.ok()?),
            false => None,
        };
        Some(Held { conn, global })
    }

    /// Make `held` cover `bytes` (what the response it was taken for turned out to be).
    pub(crate) async fn settle(&self, mut held: Held, bytes: usize) -> Option<Held> {
        let fetch = held.global.is_some();
        let mut n = clamp(bytes).min(self.conn_max);
        if fetch {
            n = n.min(self.global_max);
        }
        let (n, have) = (n as usize, held.bytes());
        if n <= have {
            // the rest goes back at once
            drop(held.conn.split(have - n));
            if let Some(g) = &mut held.global {
                drop(g.split(have - n));
            }
            Some(held)
        } else {
            // more than was set aside: give it back and wait for the whole, so that no
            // connection waits while it holds part of the shared bound
            drop(held);
            self.take(n, fetch).await
        }
    }

    /// What closes the connection's bound once its writer is gone.
    pub(crate) fn closer(&self) -> Closer {
        Closer(self.conn.clone())
    }
}

/// Closes a connection's bound: whoever waits for room stops waiting.
pub(crate) struct Closer(Arc<Semaphore>);

impl Closer {
    pub(crate) fn close(&self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_hold_bytes_until_dropped_and_settle_to_their_size() {
        let g = Global::new(100);
        let a = Budget::new(&g, 60);
        let b = Budget::new(&g, 60);
        let h = a.take(50, true).await.unwrap();
        assert_eq!(g.held(), 50);
        // other responses count against their connection's bound only
        let small = b.take(30, false).await.unwrap();
        assert_eq!((small.bytes(), g.held()), (30, 50));
        drop(small);
        // settling down gives back the rest at once
        let h = a.settle(h, 20).await.unwrap();
        assert_eq!((h.bytes(), g.held()), (20, 20));
        // over a bound: the whole bound, alone
        let h2 = b.take(1000, true).await.unwrap();
        assert_eq!(h2.bytes(), 60);
        assert_eq!(g.held(), 80);
        // no room on the connection: waits until the first is dropped
        let wait = tokio::time::timeout(std::time::Duration::from_millis(50), a.take(41, true));
        assert!(wait.await.is_err());
        drop(h);
        drop(h2);
        assert_eq!(g.held(), 0);
        let h = a.take(41, true).await.unwrap();
        // a closing connection stops waiting
        a.closer().close();
        assert!(a.take(30, false).await.is_none());
        drop(h);
        assert_eq!(g.held(), 0);
    }
}
