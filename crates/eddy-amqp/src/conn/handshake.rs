//! The connection class: the handshake (start/start-ok with PLAIN or AMQPLAIN, tune, open
//! with the vhost check) and the connection's close in both directions.

use std::sync::atomic::Ordering;

use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use eddy_broker::Access;

use super::error::*;
use super::state::{long, Conn, Phase};
use crate::codec;

impl Conn {
    /// connection.start: the server's properties and capabilities, sent after the protocol
    /// header.
    pub(super) fn send_start(&self) {
        let mut caps = FieldTable::default();
        for c in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
        ] {
            caps.insert(c.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert("product".into(), long(&self.cfg.product));
        props.insert("version".into(), long(&self.cfg.version));
        props.insert("platform".into(), long("Rust"));
        props.insert("copyright".into(), long("Eddy contributors"));
        props.insert(
            "information".into(),
            long("Licensed under the Apache License 2.0"),
        );
        props.insert("cluster_name".into(), long("eddy@localhost"));
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: LongString::from("PLAIN AMQPLAIN"),
                locales: LongString::from("en_US"),
            })),
        );
    }

    /// The connection class on channel 0, by phase.
    pub(super) async fn handle_connection_method(&mut self, m: AMQPClass) -> AResult<()> {
        use connection::AMQPMethod as C;
        let AMQPClass::Connection(cm) = &m else {
            if self.phase == Phase::Closing {
                return Ok(());
            }
            return Err(AmqpError::conn(
                CHANNEL_ERROR,
                "CHANNEL_ERROR - expected a connection method on channel 0",
            )
            .at(&m));
        };
        match (self.phase, cm) {
            (Phase::Closing, C::CloseOk(_)) => {
                self.out.closed.store(true, Ordering::Relaxed);
                self.out.notify.notify_one();
                Ok(())
            }
            (Phase::Closing, C::Close(_)) => {
                self.send(0, AMQPClass::Connection(C::CloseOk(connection::CloseOk {})));
                self.out.closed.store(true, Ordering::Relaxed);
                Ok(())
            }
            (Phase::Closing, _) => Ok(()),
            (Phase::StartOk, C::StartOk(s)) => {
                if let Some(AMQPValue::FieldTable(caps)) =
                    s.client_properties.inner().get("capabilities")
                {
                    self.client_caps = caps.clone();
                }
                let (user, pass) = match s.mechanism.as_str() {
                    "PLAIN" => {
                        let parts: Vec<&[u8]> = s.response.as_bytes().split(|b| *b == 0).collect();
                        if parts.len() != 3 {
                            return Err(AmqpError::conn(
                                ACCESS_REFUSED,
                                "ACCESS_REFUSED - malformed PLAIN response",
                            )
                            .at(&m));
                        }
                        (
                            String::from_utf8_lossy(parts[1]).into_owned(),
                            String::from_utf8_lossy(parts[2]).into_owned(),
                        )
                    }
                    "AMQPLAIN" => {
                        let raw = s.response.as_bytes();
                        if let Err(e) = codec::check_table_content_nesting(raw) {
                            return Err(AmqpError::conn(
                                SYNTAX_ERROR,
                                format!("SYNTAX_ERROR - AMQPLAIN response: {e}"),
                            )
                            .at(&m));
                        }
                        let mut framed = (raw.len() as u32).to_be_bytes().to_vec();
                        framed.extend_from_slice(raw);
                        let t = parse_field_table(&framed[..])
                            .map(|(_, t)| t)
                            .map_err(|_| {
                                AmqpError::conn(
                                    ACCESS_REFUSED,
                                    "ACCESS_REFUSED - malformed AMQPLAIN response",
                                )
                                .at(&m)
                            })?;
                        let get = |k: &str| {
                            t.inner()
                                .get(k)
                                .and_then(eddy_broker::args::value_as_string)
                                .unwrap_or_default()
                        };
                        (get("LOGIN"), get("PASSWORD"))
                    }
                    other => {
                        return Err(AmqpError::conn(
                            ACCESS_REFUSED,
                            format!(
                                "ACCESS_REFUSED - unsupported authentication mechanism '{other}'"
                            ),
                        )
                        .at(&m));
                    }
                };
                let loopback = self.peer.ip().is_loopback();
                if let Err(e) = self.broker.authenticate(&user, &pass, loopback) {
                    tracing::warn!(%user, "authentication failed: {e}");
                    return Err(AmqpError::conn(
                        ACCESS_REFUSED,
                        format!(
                            "ACCESS_REFUSED - Login was refused using authentication mechanism {}: {e}",
                            s.mechanism.as_str()
                        ),
                    )
                    .at(&m));
                }
                self.info.set_user(&user);
                self.span.record("user", user.as_str());
                self.user = user;
                self.send(
                    0,
                    AMQPClass::Connection(C::Tune(connection::Tune {
                        channel_max: self.cfg.channel_max,
                        frame_max: self.cfg.frame_max,
                        heartbeat: self.cfg.heartbeat,
                    })),
                );
                self.phase = Phase::TuneOk;
                Ok(())
            }
            (Phase::TuneOk, C::TuneOk(t)) => {
                if t.frame_max != 0 && t.frame_max < 4096 {
                    return Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!(
                            "NOT_ALLOWED - frame_max {} below the minimum 4096",
                            t.frame_max
                        ),
                    )
                    .at(&m));
                }
                if t.frame_max > self.cfg.frame_max {
                    return Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!(
                            "NOT_ALLOWED - frame_max {} above the server's {}",
                            t.frame_max, self.cfg.frame_max
                        ),
                    )
                    .at(&m));
                }
                if t.frame_max != 0 {
                    self.frame_max = t.frame_max;
                }
                self.channel_max = if t.channel_max == 0 {
                    self.cfg.channel_max
                } else {
                    t.channel_max.min(self.cfg.channel_max)
                };
                self.heartbeat = t.heartbeat;
                self.phase = Phase::Open;
                Ok(())
            }
            (Phase::Open, C::Open(o)) => {
                let name = o.virtual_host.as_str();
                if self.broker.vhost(name).is_some()
                    && !self.broker.users().can_access_vhost(&self.user, name)
                {
                    tracing::warn!(vhost = name, "vhost access refused");
                    return Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!(
                            "NOT_ALLOWED - access to vhost '{name}' refused for user '{}'",
                            self.user
                        ),
                    )
                    .at(&m));
                }
                match self.broker.vhost(name) {
                    Some(v) => {
                        self.info.set_vhost(name);
                        self.span.record("vhost", name);
                        self.publish_anywhere =
                            self.broker
                                .users()
                                .allows_all(&self.user, name, Access::Write);
                        self.vhost = Some(v);
                        self.send(0, AMQPClass::Connection(C::OpenOk(connection::OpenOk {})));
                        self.phase = Phase::Running;
                        tracing::debug!("connection opened");
                        Ok(())
                    }
                    None => Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!("NOT_ALLOWED - vhost '{name}' not found"),
                    )
                    .at(&m)),
                }
            }
            (Phase::Running, C::Close(c)) => {
                tracing::debug!(
                    code = c.reply_code,
                    "client closed connection: {}",
                    c.reply_text.as_str()
                );
                self.cleanup();
                self.send(0, AMQPClass::Connection(C::CloseOk(connection::CloseOk {})));
                self.phase = Phase::Closing;
                self.linger = true;
                self.out.closed.store(true, Ordering::Relaxed);
                self.out.notify.notify_one();
                Ok(())
            }
            (Phase::Running, C::Blocked(_)) | (Phase::Running, C::Unblocked(_)) => Ok(()),
            (Phase::Running, C::UpdateSecret(_)) => {
                self.send(
                    0,
                    AMQPClass::Connection(C::UpdateSecretOk(connection::UpdateSecretOk {})),
                );
                Ok(())
            }
            _ => Err(AmqpError::conn(
                COMMAND_INVALID,
                "COMMAND_INVALID - unexpected connection method in this state",
            )
            .at(&m)),
        }
    }
}
