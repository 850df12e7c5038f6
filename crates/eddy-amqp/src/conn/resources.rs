//! The exchange and queue classes: declare, bind, unbind, purge, delete. Every method has the
//! same shape — permission checks, one call on the vhost, an `-ok` reply unless `nowait` —
//! so each is one call of [`Conn::resource`].

use std::sync::Arc;

use amq_protocol::protocol::{exchange, queue, AMQPClass};
use amq_protocol::types::FieldTable;
use eddy_broker::{Access, BrokerError, VHost};

use super::error::*;
use super::state::{short, Conn};

/// A permission a method needs: what access, to which kind of resource, by name.
type Check<'a> = (Access, &'static str, &'a str);

impl Conn {
    /// One resource method: the permission checks (the declare checks include the arguments
    /// that route elsewhere: dead-letter and alternate exchanges), the vhost operation, and
    /// the reply built from its result, sent unless `nowait`.
    fn resource<R>(
        &mut self,
        id: u16,
        nowait: bool,
        checks: &[Check<'_>],
        arguments: Option<(&'static str, &str, &FieldTable)>,
        op: impl FnOnce() -> Result<R, BrokerError>,
        reply: impl FnOnce(R) -> AMQPClass,
    ) -> AResult<()> {
        for &(access, kind, name) in checks {
            self.allow(access, kind, name)?;
        }
        if let Some((kind, name, arguments)) = arguments {
            self.allow_arguments(kind, name, arguments)?;
        }
        let r = op()?;
        if !nowait {
            self.send(id, reply(r));
        }
        Ok(())
    }

    /// The exchange class.
    pub(super) fn handle_exchange(
        &mut self,
        id: u16,
        vhost: &Arc<VHost>,
        m: exchange::AMQPMethod,
    ) -> AResult<()> {
        use exchange::AMQPMethod as E;
        use Access::*;
        match m {
            E::Declare(d) => {
                let name = d.exchange.as_str();
                // a passive declare only asks whether it is there
                let checks: &[Check<'_>] = match d.passive {
                    true => &[],
                    false => &[(Configure, "exchange", name)],
                };
                let arguments = (!d.passive).then_some(("exchange", name, &d.arguments));
                self.resource(
                    id,
                    d.nowait,
                    checks,
                    arguments,
                    || {
                        vhost.declare_exchange(eddy_broker::ExchangeDeclare {
                            name: d.exchange.to_string(),
                            kind: d.kind.to_string(),
                            passive: d.passive,
                            durable: d.durable,
                            auto_delete: d.auto_delete,
                            internal: d.internal,
                            arguments: d.arguments.clone(),
                        })
                    },
                    |()| AMQPClass::Exchange(E::DeclareOk(exchange::DeclareOk {})),
                )
            }
            E::Delete(d) => self.resource(
                id,
                d.nowait,
                &[(Configure, "exchange", d.exchange.as_str())],
                None,
                || vhost.delete_exchange(d.exchange.as_str(), d.if_unused),
                |()| AMQPClass::Exchange(E::DeleteOk(exchange::DeleteOk {})),
            ),
            E::Bind(b) => self.resource(
                id,
                b.nowait,
                &[
                    (Write, "exchange", b.destination.as_str()),
                    (Read, "exchange", b.source.as_str()),
                ],
                None,
                || {
                    vhost.bind_exchange(
                        b.destination.as_str(),
                        b.source.as_str(),
                        b.routing_key.as_str(),
                        b.arguments.clone(),
                    )
                },
                |()| AMQPClass::Exchange(E::BindOk(exchange::BindOk {})),
            ),
            E::Unbind(b) => self.resource(
                id,
                b.nowait,
                &[
                    (Write, "exchange", b.destination.as_str()),
                    (Read, "exchange", b.source.as_str()),
                ],
                None,
                || {
                    vhost.unbind_exchange(
                        b.destination.as_str(),
                        b.source.as_str(),
                        b.routing_key.as_str(),
                        b.arguments.clone(),
                    )
                },
                |()| AMQPClass::Exchange(E::UnbindOk(exchange::UnbindOk {})),
            ),
            _ => Err(AmqpError::conn(
                COMMAND_INVALID,
                "COMMAND_INVALID - server-side exchange method sent by client",
            )),
        }
    }

    /// The queue class.
    pub(super) fn handle_queue(
        &mut self,
        id: u16,
        vhost: &Arc<VHost>,
        m: queue::AMQPMethod,
    ) -> AResult<()> {
        use queue::AMQPMethod as Q;
        use Access::*;
        let conn = self.id;
        match m {
            Q::Declare(d) => {
                // a server-named queue gets its name first, and the checks see that name
                let server_named = d.queue.as_str().is_empty() && !d.passive;
                let name = if server_named {
                    eddy_broker::vhost::server_queue_name()
                } else {
                    d.queue.to_string()
                };
                let checks: &[Check<'_>] = match d.passive {
                    true => &[],
                    false => &[(Configure, "queue", &name)],
                };
                let arguments = (!d.passive).then_some(("queue", name.as_str(), &d.arguments));
                self.resource(
                    id,
                    d.nowait,
                    checks,
                    arguments,
                    || {
                        vhost.declare_queue(
                            eddy_broker::QueueDeclare {
                                name: name.clone(),
                                server_named,
                                passive: d.passive,
                                durable: d.durable,
                                exclusive: d.exclusive,
                                auto_delete: d.auto_delete,
                                arguments: d.arguments.clone(),
                            },
                            conn,
                        )
                    },
                    |r| {
                        AMQPClass::Queue(Q::DeclareOk(queue::DeclareOk {
                            queue: short(&r.name),
                            message_count: r.message_count,
                            consumer_count: r.consumer_count,
                        }))
                    },
                )
            }
            Q::Bind(b) => self.resource(
                id,
                b.nowait,
                &[
                    (Write, "queue", b.queue.as_str()),
                    (Read, "exchange", b.exchange.as_str()),
                ],
                None,
                || {
                    vhost.bind_queue(
                        b.queue.as_str(),
                        b.exchange.as_str(),
                        b.routing_key.as_str(),
                        b.arguments.clone(),
                        conn,
                    )
                },
                |()| AMQPClass::Queue(Q::BindOk(queue::BindOk {})),
            ),
            // queue.unbind has no nowait
            Q::Unbind(b) => self.resource(
                id,
                false,
                &[
                    (Write, "queue", b.queue.as_str()),
                    (Read, "exchange", b.exchange.as_str()),
                ],
                None,
                || {
                    vhost.unbind_queue(
                        b.queue.as_str(),
                        b.exchange.as_str(),
                        b.routing_key.as_str(),
                        b.arguments.clone(),
                        conn,
                    )
                },
                |()| AMQPClass::Queue(Q::UnbindOk(queue::UnbindOk {})),
            ),
            Q::Purge(p) => self.resource(
                id,
                p.nowait,
                &[(Read, "queue", p.queue.as_str())],
                None,
                || vhost.purge_queue(p.queue.as_str(), conn),
                |n| {
                    AMQPClass::Queue(Q::PurgeOk(queue::PurgeOk {
                        message_count: n as u32,
                    }))
                },
            ),
            Q::Delete(d) => self.resource(
                id,
                d.nowait,
                &[(Configure, "queue", d.queue.as_str())],
                None,
                || vhost.delete_queue(d.queue.as_str(), d.if_unused, d.if_empty, conn),
                |n| {
                    AMQPClass::Queue(Q::DeleteOk(queue::DeleteOk {
                        message_count: n as u32,
                    }))
                },
            ),
            _ => Err(AmqpError::conn(
                COMMAND_INVALID,
                "COMMAND_INVALID - server-side queue method sent by client",
            )),
        }
    }
}
