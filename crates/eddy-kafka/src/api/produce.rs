//! Produce (record batches split, validated and appended byte for byte; idempotent producers;
//! acks=all answered once durable) and InitProducerId.

use std::sync::Arc;

use eddy_broker::Log;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;

use crate::producers::Outcome;
use crate::records::split_batches;

use super::{str_bytes, Handler};

impl Handler {
    /// Append what a produce carries; the response may only go out once `waits` are durable
    /// (acks=all). None: acks=0, no response.
    #[allow(clippy::type_complexity)]
    pub(super) fn produce(
        &self,
        r: ProduceRequest,
        version: i16,
    ) -> (ProduceResponse, Vec<(Arc<Log>, u64)>) {
        let message = |m: &str| (version >= 8).then(|| str_bytes(m));
        let mut resp = ProduceResponse::default();
        let mut waits: Vec<(Arc<Log>, u64)> = Vec::new();
        for t in r.topic_data {
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
        (resp, waits)
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
