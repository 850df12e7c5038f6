//! Produce (record batches split, validated and appended byte for byte; idempotent producers;
//! acks=all answered once durable) and InitProducerId.

use std::sync::Arc;

use eddy_broker::Log;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;

use std::time::Duration;

use crate::producers::{Outcome, Reserved};
use crate::records::{for_each_header, split_batches, BatchInfo};

/// The record header AMQP consumers of a stream queue get as the message's `user_id`.
const USER_ID_HEADER: &str = "amqp.user-id";

use super::{str_bytes, Commit, CommitFuture, Handler};

/// A replicated produce's failure as Kafka's error code and message.
fn propose_error(e: &eddy_cluster::ProposeError) -> (i16, String) {
    use eddy_cluster::ProposeError as P;
    let code = match e {
        P::NotLeader(_) => ResponseError::NotLeaderOrFollower.code(),
        P::NoQuorum(..) => ResponseError::NotEnoughReplicas.code(),
        P::TimedOut(..) => ResponseError::RequestTimedOut.code(),
        P::Failed(_) => ResponseError::KafkaStorageError.code(),
    };
    (code, e.to_string())
}

impl Handler {
    /// Append what a produce carries; the response may only go out once `waits` are durable
    /// (acks=all). None: acks=0, no response.
    #[allow(clippy::type_complexity)]
    pub(super) async fn produce(
        &self,
        r: ProduceRequest,
        version: i16,
    ) -> (ProduceResponse, Vec<(Arc<Log>, u64)>, Vec<Commit>) {
        let message = |m: &str| (version >= 8).then(|| str_bytes(m));
        let mut resp = ProduceResponse::default();
        let mut waits: Vec<(Arc<Log>, u64)> = Vec::new();
        let mut commits: Vec<Commit> = Vec::new();
        // a replicated produce not committed by then is answered REQUEST_TIMED_OUT
        let timeout = Duration::from_millis(r.timeout_ms.clamp(1_000, 30_000) as u64);
        for (ti, t) in r.topic_data.into_iter().enumerate() {
            let name = t.name.0.to_string();
            let topic = if self.allowed(eddy_broker::Access::Write, "topic", &name) {
                self.topic_or_create(&name, true)
            } else {
                Err(ResponseError::TopicAuthorizationFailed.code())
            };
            let mut tr = TopicProduceResponse::default();
            tr.name = t.name;
            for p in t.partition_data {
                let mut pr = PartitionProduceResponse::default();
                pr.index = p.index;
                pr.base_offset = -1;
                let partition = match &topic {
                    Err(c) => {
                        pr.error_code = *c;
                        tr.partition_responses.push(pr);
                        continue;
                    }
                    Ok(t) => t.partition(p.index),
                };
                let Some(partition) = partition else {
                    pr.error_code = ResponseError::UnknownTopicOrPartition.code();
                    tr.partition_responses.push(pr);
                    continue;
                };
                let records = p.records.unwrap_or_default();
                let batches = match split_batches(&records) {
                    Ok(b) => b,
                    Err(e) => {
                        pr.error_code = ResponseError::CorruptMessage.code();
                        pr.error_message = message(&e.to_string());
                        tr.partition_responses.push(pr);
                        continue;
                    }
                };
                if batches.iter().any(|(_, info)| info.transactional) {
                    pr.error_code = ResponseError::InvalidRecord.code();
                    pr.error_message = message("transactions are not supported yet");
                    tr.partition_responses.push(pr);
                    continue;
                }
                if let Err((c, msg)) = self.check_user_id(&batches) {
                    pr.error_code = c;
                    pr.error_message = message(&msg);
                    tr.partition_responses.push(pr);
                    continue;
                }
                if let Some(group) = self.replicated(&name, p.index) {
                    let pi = tr.partition_responses.len();
                    match self
                        .propose(group, &partition, &records, &batches, timeout)
                        .await
                    {
                        Ok(result) => commits.push(Commit {
                            topic: ti,
                            partition: pi,
                            result,
                        }),
                        Err((c, msg)) => {
                            pr.error_code = c;
                            pr.error_message = message(&msg);
                        }
                    }
                    tr.partition_responses.push(pr);
                    continue;
                }
                match self.producers.append(&partition, &batches) {
                    Err((c, msg)) => {
                        if c == ResponseError::KafkaStorageError.code() {
                            tracing::error!(partition = ?partition, "append failed: {msg}");
                        }
                        pr.error_code = c;
                        pr.error_message = message(&msg);
                    }
                    Ok(outcomes) => {
                        let base = match outcomes[0] {
                            Outcome::Appended(b) | Outcome::Duplicate(b) => b,
                        };
                        pr.base_offset = base as i64;
                        if version >= 5 {
                            pr.log_start_offset = partition.start_offset() as i64;
                        }
                        if r.acks == -1 {
                            // a duplicate waits too: its first append may not be durable yet
                            let end = outcomes
                                .iter()
                                .zip(&batches)
                                .map(|(o, (_, info))| match o {
                                    Outcome::Appended(b) | Outcome::Duplicate(b) => {
                                        b + info.record_count as u64
                                    }
                                })
                                .max()
                                .unwrap_or(base);
                            waits.push((partition.log().clone(), end));
                        }
                    }
                }
                tr.partition_responses.push(pr);
            }
            resp.responses.push(tr);
        }
        // acks=all: the answer waits until these are durable under the fsync policy
        (resp, waits, commits)
    }

    /// Propose a produce's batches to a replicated partition this node leads; the future
    /// resolves once all are committed (the first's base offset) or one failed.
    async fn propose(
        &self,
        group: Option<Arc<eddy_cluster::Group>>,
        partition: &Arc<eddy_broker::Partition>,
        records: &bytes::Bytes,
        batches: &[(&[u8], BatchInfo)],
        timeout: Duration,
    ) -> Result<CommitFuture, (i16, String)> {
        let not_leader = || {
            (
                ResponseError::NotLeaderOrFollower.code(),
                format!("this node does not lead {partition:?}"),
            )
        };
        let group = group.filter(|g| g.is_leader()).ok_or_else(not_leader)?;
        let reserved = self.producers.reserve(partition, group.term(), batches)?;
        let mut pending = Vec::with_capacity(batches.len());
        for ((bytes, info), r) in batches.iter().zip(reserved) {
            match r {
                Reserved::Duplicate(base) => pending.push((*info, None, Some(base))),
                Reserved::InFlight => {
                    // batches of this produce reserved before it will not be settled here:
                    // the state is rebuilt from the log on the next produce
                    self.producers.forget(partition);
                    return Err((
                        ResponseError::NotEnoughReplicas.code(),
                        "an earlier send of this batch is still being committed: retry".into(),
                    ));
                }
                Reserved::New => {
                    match group
                        // a view of the request's bytes, not a copy
                        .propose(records.slice_ref(bytes), timeout)
                        .await
                    {
                        Ok(f) => pending.push((*info, Some(f), None)),
                        Err(e) => {
                            self.producers.forget(partition);
                            return Err(propose_error(&e));
                        }
                    }
                }
            }
        }
        let producers = self.producers.clone();
        let partition = partition.clone();
        Ok(Box::pin(async move {
            let mut first = None;
            let mut failed = None;
            for (info, fut, dup) in pending {
                let base = match (fut, dup) {
                    (Some(f), _) => match f.await {
                        Ok(b) => {
                            if info.producer_id >= 0 {
                                producers.settle(&partition, &info, b);
                            }
                            b
                        }
                        Err(e) => {
                            failed.get_or_insert_with(|| propose_error(&e));
                            continue;
                        }
                    },
                    (None, Some(b)) => b,
                    (None, None) => continue,
                };
                first.get_or_insert(base);
            }
            match failed {
                Some(e) => {
                    producers.forget(&partition);
                    Err(e)
                }
                None => first.ok_or_else(|| {
                    (
                        ResponseError::UnknownServerError.code(),
                        "no batch in the produce".into(),
                    )
                }),
            }
        }))
    }

    /// A record's `amqp.user-id` header is the `user_id` AMQP consumers of a stream queue get,
    /// which they trust as AMQP publishes are refused one naming another user: so is a
    /// produce whose records name another user than the connection's (INVALID_RECORD); a
    /// batch that holds the header's name in records that cannot be read is CORRUPT_MESSAGE. Refused rather than dropped: the
    /// batch is stored as sent (dropping a header means rewriting it), and the producer
    /// learns why, as an AMQP publisher does.
    fn check_user_id(&self, batches: &[(&[u8], BatchInfo)]) -> Result<(), (i16, String)> {
        let mut principal: Option<Option<String>> = None;
        let mut foreign: Option<String> = None;
        for (batch, _) in batches {
            for_each_header(batch, USER_ID_HEADER.as_bytes(), |v| {
                let user = principal.get_or_insert_with(|| self.principal());
                if foreign.is_none() && (v.is_none() || v != user.as_deref().map(str::as_bytes)) {
                    foreign = Some(String::from_utf8_lossy(v.unwrap_or_default()).into_owned());
                }
            })
            .map_err(|e| (ResponseError::CorruptMessage.code(), e.to_string()))?;
            if let Some(named) = foreign {
                let user = principal.flatten().unwrap_or_default();
                return Err((
                    ResponseError::InvalidRecord.code(),
                    format!(
                        "header {USER_ID_HEADER} '{named}' is not the user of this connection ('{user}'): a record may not claim another user"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn init_producer_id(
        &self,
        r: InitProducerIdRequest,
        _version: i16,
    ) -> InitProducerIdResponse {
        let mut resp = InitProducerIdResponse::default();
        if r.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) {
            // transactions are not implemented: a fatal error for the client, not a retry loop
            resp.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
            resp.producer_id = ProducerId(-1);
            resp.producer_epoch = -1;
            return resp;
        }
        // a producer that asks to bump its epoch (v3+) keeps its id unless the epoch is spent
        if r.producer_id.0 >= 0 && r.producer_epoch >= 0 && r.producer_epoch < i16::MAX - 1 {
            resp.producer_id = r.producer_id;
            resp.producer_epoch = r.producer_epoch + 1;
        } else {
            resp.producer_id = ProducerId(self.producers.allocate());
            resp.producer_epoch = 0;
        }
        resp
    }
}
