//! Ready messages: one FIFO per priority level, highest level first.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::message::Message;

pub(super) struct Entry {
    pub(super) id: u64,
    pub(super) msg: Arc<Message>,
    pub(super) log_offset: Option<u64>,
    pub(super) redelivered: bool,
    pub(super) expires_at: Option<Instant>,
    /// When it entered the queue (for the mean time in queue).
    pub(super) enqueued: Instant,
}

/// Ready messages by priority level (one level without x-max-priority).
pub(super) struct Ready {
    levels: Vec<VecDeque<Entry>>,
    pub(super) len: usize,
    pub(super) bytes: u64,
}

impl Ready {
    pub(super) fn new(max_priority: Option<u8>) -> Self {
        let n = max_priority.map(|p| p as usize + 1).unwrap_or(1);
        Ready {
            levels: (0..n).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
        }
    }
    fn level(&self, e: &Entry) -> usize {
        (e.msg.priority() as usize).min(self.levels.len() - 1)
    }
    pub(super) fn push_back(&mut self, e: Entry) {
        let l = self.level(&e);
        self.len += 1;
        self.bytes += e.msg.body_size() as u64;
        self.levels[l].push_back(e);
    }
    pub(super) fn push_front(&mut self, e: Entry) {
        let l = self.level(&e);
        self.len += 1;
        self.bytes += e.msg.body_size() as u64;
        // keep requeued messages in their original order among themselves
        let q = &mut self.levels[l];
        let pos = q.iter().position(|x| x.id > e.id).unwrap_or(q.len());
        if pos == 0 {
            q.push_front(e)
        } else {
            q.insert(pos, e)
        }
    }
    pub(super) fn front(&self) -> Option<&Entry> {
        self.levels.iter().rev().find_map(|q| q.front())
    }
    pub(super) fn pop_front(&mut self) -> Option<Entry> {
        let e = self.levels.iter_mut().rev().find_map(|q| q.pop_front())?;
        self.len -= 1;
        self.bytes -= e.msg.body_size() as u64;
        Some(e)
    }
    pub(super) fn drain(&mut self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.len);
        for q in self.levels.iter_mut().rev() {
            out.extend(q.drain(..));
        }
        self.len = 0;
        self.bytes = 0;
        out
    }
}
