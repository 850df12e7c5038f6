//! Fetch (long-polling on the broker's append signal, batches served with their base offset
//! patched in) and ListOffsets.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::*;

use crate::records::patch_for_fetch;

use super::{code, Handler, MAX_FETCH_BYTES};
use crate::budget::Held;

/// The most a response to `r` may hold (what is set aside to build it): its record bytes
/// (the request's and the broker's bounds; a first batch larger than them is counted when the
/// response is settled), and room for the partitions' fields.
fn fetch_bound(r: &FetchRequest) -> usize {
    let budget = if r.max_bytes > 0 {
        (r.max_bytes as usize).min(MAX_FETCH_BYTES)
    } else {
        MAX_FETCH_BYTES
    };
    let (mut partitions, mut per_partition, mut names) = (0usize, 0usize, 0usize);
    for t in &r.topics {
        names += t.topic.0.len() + 32;
        for p in &t.partitions {
            partitions += 1;
            per_partition = per_partition.saturating_add(p.partition_max_bytes.max(0) as usize);
        }
    }
    budget
        .min(per_partition)
        .saturating_add(names)
        .saturating_add(partitions * 64)
        .saturating_add(64)
}

impl Handler {
    /// Answer a fetch once it has what it waits for (`min_bytes`, or its wait is over), with
    /// the response bytes it holds. It waits for the records without holding any: room for
    /// the most the response may hold is taken only to build it (and the rest given back at
    /// once by the caller), so a client that does not read gets no more fetches built.
    /// None: the connection is closing.
    pub(super) async fn fetch(
        &self,
        r: FetchRequest,
        version: i16,
    ) -> Option<(FetchResponse, Held)> {
        let wait = Duration::from_millis(r.max_wait_ms.clamp(0, 60_000) as u64);
        let deadline = Instant::now() + wait;
        let mut appends = self.broker.appends();
        let most = fetch_bound(&r);
        loop {
            appends.borrow_and_update();
            // min_bytes 0 does not wait, whatever max_wait says
            let due = Instant::now() >= deadline || r.min_bytes <= 0;
            if due || self.fetch_ready(&r) {
                let held = self.budget.take(most, true).await?;
                let (resp, bytes, errors) = self.fetch_once(&r, version);
                if errors || bytes >= r.min_bytes.max(0) as usize || due {
                    return Some((resp, held));
                }
            }
            tokio::select! {
                _ = appends.changed() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    /// Whether a pass would find records or an error to report (so it is worth building).
    fn fetch_ready(&self, r: &FetchRequest) -> bool {
        r.topics.iter().any(|t| {
            let name = t.topic.0.as_str();
            if !self.allowed(eddy_broker::Access::Read, "topic", name) {
                return true;
            }
            let topic = self.broker.topic(name);
            t.partitions.iter().any(|p| {
                if self.leader_error(name, p.partition).is_some() {
                    return true;
                }
                match topic.as_ref().and_then(|t| t.partition(p.partition)) {
                    None => true,
                    // past the end is an error; before the end there are records
                    Some(part) => {
                        p.fetch_offset < part.start_offset() as i64
                            || p.fetch_offset != part.end_offset() as i64
                    }
                }
            })
        })
    }

    /// One pass over the requested partitions: (response, record bytes, any error).
    pub(super) fn fetch_once(
        &self,
        r: &FetchRequest,
        version: i16,
    ) -> (FetchResponse, usize, bool) {
        let mut resp = FetchResponse::default();
        // Kafka's fetch.max.bytes bounds what one response may hold, whatever the client asks
        let mut budget = if r.max_bytes > 0 {
            (r.max_bytes as usize).min(MAX_FETCH_BYTES)
        } else {
            MAX_FETCH_BYTES
        };
        let mut total = 0usize;
        let mut errors = false;
        for t in &r.topics {
            let mut tr = FetchableTopicResponse::default();
            tr.topic = t.topic.clone();
            tr.topic_id = t.topic_id;
            let topic = self.broker.topic(t.topic.0.as_str());
            let readable = self.allowed(eddy_broker::Access::Read, "topic", t.topic.0.as_str());
            for p in &t.partitions {
                let mut pd = PartitionData::default();
                pd.partition_index = p.partition;
                pd.high_watermark = -1;
                if !readable {
                    pd.error_code = ResponseError::TopicAuthorizationFailed.code();
                    errors = true;
                    tr.partitions.push(pd);
                    continue;
                }
                let Some(part) = topic.as_ref().and_then(|t| t.partition(p.partition)) else {
                    pd.error_code = ResponseError::UnknownTopicOrPartition.code();
                    errors = true;
                    tr.partitions.push(pd);
                    continue;
                };
                if let Some(c) = self.leader_error(t.topic.0.as_str(), p.partition) {
                    pd.error_code = c;
                    errors = true;
                    tr.partitions.push(pd);
                    continue;
                }
                let (start, end) = (part.start_offset(), part.end_offset());
                pd.high_watermark = end as i64;
                pd.last_stable_offset = end as i64;
                if version >= 5 {
                    pd.log_start_offset = start as i64;
                }
                let from = p.fetch_offset;
                // on a new leader the high watermark may trail what the old one reported until
                // it commits an entry: a reader ahead of it but within the log waits
                let ceiling = if part.is_replicated() {
                    part.log().next_offset().max(end)
                } else {
                    end
                };
                if from < start as i64 || from > ceiling as i64 {
                    pd.error_code = ResponseError::OffsetOutOfRange.code();
                    errors = true;
                    tr.partitions.push(pd);
                    continue;
                }
                let mut records = Vec::new();
                if (from as u64) < end && (budget > 0 || total == 0) {
                    let limit = (p.partition_max_bytes.max(0) as usize).min(budget).max(1);
                    match part.read(from as u64, limit) {
                        Ok(mut batches) => {
                            // nothing above the high watermark this response reports
                            batches.retain(|b| b.base_offset < end);
                            // whole batches only, but the first one even if it is larger
                            // than the limits, so a consumer always makes progress
                            let (mut n, mut len) = (0, 0);
                            for b in &batches {
                                if n > 0 && len + b.payload.len() > limit {
                                    break;
                                }
                                n += 1;
                                len += b.payload.len();
                            }
                            batches.truncate(n);
                            for b in &mut batches {
                                patch_for_fetch(&mut b.payload, b.base_offset);
                            }
                            // one batch is sent as read; more are put together once, exactly
                            // sized (what the response holds is what it is counted for)
                            records = if batches.len() == 1 {
                                batches.swap_remove(0).payload
                            } else {
                                let mut all = Vec::with_capacity(len);
                                for b in &batches {
                                    all.extend_from_slice(&b.payload);
                                }
                                all
                            };
                        }
                        Err(e) => {
                            pd.error_code = code(&e);
                            errors = true;
                        }
                    }
                }
                total += records.len();
                budget = budget.saturating_sub(records.len());
                pd.records = Some(Bytes::from(records));
                tr.partitions.push(pd);
            }
            resp.responses.push(tr);
        }
        (resp, total, errors)
    }

    pub(super) fn list_offsets(&self, r: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
        let mut resp = ListOffsetsResponse::default();
        for t in r.topics {
            let topic = self.broker.topic(t.name.0.as_str());
            let readable = self.allowed(eddy_broker::Access::Read, "topic", t.name.0.as_str());
            let mut tr = ListOffsetsTopicResponse::default();
            tr.name = t.name;
            for p in t.partitions {
                let mut pr = ListOffsetsPartitionResponse::default();
                pr.partition_index = p.partition_index;
                pr.timestamp = -1;
                pr.offset = -1;
                if version >= 4 {
                    pr.leader_epoch = 0;
                }
                let not_leader = self.leader_error(tr.name.0.as_str(), p.partition_index);
                if let (Some(g), true) = (
                    self.replicated(tr.name.0.as_str(), p.partition_index)
                        .flatten(),
                    version >= 4,
                ) {
                    pr.leader_epoch = g.term() as i32;
                }
                match topic.as_ref().and_then(|t| t.partition(p.partition_index)) {
                    _ if !readable => {
                        pr.error_code = ResponseError::TopicAuthorizationFailed.code()
                    }
                    _ if not_leader.is_some() => pr.error_code = not_leader.unwrap_or_default(),
                    None => pr.error_code = ResponseError::UnknownTopicOrPartition.code(),
                    Some(part) => match p.timestamp {
                        -1 => pr.offset = part.end_offset() as i64,
                        -2 => pr.offset = part.start_offset() as i64,
                        ts if ts >= 0 => match part.offset_for_timestamp(ts) {
                            Ok(Some(o)) => {
                                pr.offset = o as i64;
                                pr.timestamp = ts;
                            }
                            Ok(None) => {}
                            Err(e) => pr.error_code = code(&e),
                        },
                        _ => pr.error_code = ResponseError::UnsupportedVersion.code(),
                    },
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }
}
