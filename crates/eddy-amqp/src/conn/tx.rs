//! The tx class: a transactional channel holds its publishes, acks and rejects until
//! commit.

use std::sync::atomic::Ordering;

use amq_protocol::protocol::{tx, AMQPClass};
use eddy_broker::BrokerError;

use super::error::*;
use super::state::{Conn, Settle, TxBuffer, TxOp};

impl Conn {
    /// The tx class: select, commit (publishes, acks and rejects in order, then commit-ok
    /// once the publishes are durable), rollback.
    pub(super) async fn handle_tx(&mut self, id: u16, t: tx::AMQPMethod) -> AResult<()> {
        use tx::AMQPMethod as T;
        match t {
            T::Select(_) => {
                let fresh = TxBuffer::new(&self.broker);
                let ch = self.channel_mut(id)?;
                if ch.confirm.is_some() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
                    ));
                }
                if ch.tx.is_none() {
                    ch.tx = Some(fresh);
                    ch.shared.tx_mode.store(true, Ordering::Relaxed);
                }
                self.send(id, AMQPClass::Tx(T::SelectOk(tx::SelectOk {})));
            }
            T::Commit(_) => {
                let fresh = TxBuffer::new(&self.broker);
                let ch = self.channel_mut(id)?;
                let Some(mut committed) = ch.tx.replace(fresh) else {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - channel is not transactional",
                    ));
                };
                let mut waits = Vec::new();
                for op in std::mem::take(&mut committed.ops) {
                    match op {
                        TxOp::Publish(p) => {
                            // a held publish that fails names tx.commit, the method that sent it
                            let outcome = self.route(id, p)?;
                            waits.extend(outcome.durable);
                        }
                        TxOp::Ack(tag, multiple) => self.settle(id, tag, multiple, Settle::Ack)?,
                        TxOp::Reject(tag, multiple, requeue) => {
                            self.settle(id, tag, multiple, Settle::Reject(requeue))?
                        }
                    }
                }
                for (log, off) in waits {
                    log.wait_durable(off)
                        .await
                        .map_err(|e| AmqpError::from(BrokerError::from(e)))?;
                }
                self.send(id, AMQPClass::Tx(T::CommitOk(tx::CommitOk {})));
            }
            T::Rollback(_) => {
                let fresh = TxBuffer::new(&self.broker);
                let ch = self.channel_mut(id)?;
                if ch.tx.is_none() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - channel is not transactional",
                    ));
                }
                ch.tx = Some(fresh);
                self.send(id, AMQPClass::Tx(T::RollbackOk(tx::RollbackOk {})));
            }
            _ => {
                return Err(AmqpError::conn(
                    COMMAND_INVALID,
                    "COMMAND_INVALID - server-side tx method sent by client",
                ))
            }
        }
        Ok(())
    }
}
