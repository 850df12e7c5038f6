//! A queue's part of the broker's housekeeping tick: expiry at the head, x-expires, ack records
//! and log compaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{DeathReason, Queue};

impl Queue {
    /// Periodic work: expire messages at the head, compact the log. Returns true when the
    /// queue has been unused for longer than x-expires and should be deleted.
    pub(crate) fn tick(self: &Arc<Self>, now: Instant) -> bool {
        let mut dead = Vec::new();
        let mut settled = Vec::new();
        let expired_queue;
        let min_live;
        let upto;
        {
            let mut st = self.lock();
            if st.deleted {
                return false;
            }
            while st
                .ready
                .front()
                .is_some_and(|e| e.expires_at.is_some_and(|t| t <= now))
            {
                if let Some(e) = st.ready.pop_front() {
                    self.release(&mut st, &e, &mut settled);
                    dead.push((e.msg, DeathReason::Expired));
                }
            }
            self.dispatch_locked(&mut st, &mut dead, &mut settled);
            expired_queue = self.args.expires.is_some_and(|ms| {
                st.consumers.is_empty()
                    && now.duration_since(st.last_used) >= Duration::from_millis(ms)
            });
            // under the lock: every offset below `upto` is settled, in `live_log`, or at or
            // above an announced append's floor
            upto = self.log.as_ref().map(|log| {
                let next = log.next_offset();
                let live = st.live_log.first().copied().unwrap_or(next);
                let appending = st.appending.iter().copied().min().unwrap_or(next);
                live.min(appending).min(next)
            });
            min_live = st.live_log.first().copied();
        }
        self.finish(dead, settled);
        self.flush_acks();
        if let (Some(log), Some(upto)) = (&self.log, upto) {
            if upto > log.start_offset()
                && (log.segment_count() > 1 || (min_live.is_none() && log.size_bytes() > (8 << 20)))
            {
                if let Err(e) = log.delete_before(upto) {
                    tracing::warn!(queue = %self.name, "log compaction failed: {e}");
                }
            }
        }
        expired_queue
    }
}
