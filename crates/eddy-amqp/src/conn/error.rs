//! AMQP reply codes and the one place broker errors become them.

use amq_protocol::protocol::AMQPClass;
use eddy_broker::BrokerError;

// reply codes
pub(super) const NO_ROUTE: u16 = 312;
pub(super) const CONNECTION_FORCED: u16 = 320;
pub(super) const ACCESS_REFUSED: u16 = 403;
pub(super) const NOT_FOUND: u16 = 404;
pub(super) const RESOURCE_LOCKED: u16 = 405;
pub(super) const PRECONDITION_FAILED: u16 = 406;
pub(super) const FRAME_ERROR: u16 = 501;
pub(super) const SYNTAX_ERROR: u16 = 502;
pub(super) const COMMAND_INVALID: u16 = 503;
pub(super) const CHANNEL_ERROR: u16 = 504;
pub(super) const UNEXPECTED_FRAME: u16 = 505;
pub(super) const RESOURCE_ERROR: u16 = 506;
pub(super) const NOT_ALLOWED: u16 = 530;
pub(super) const NOT_IMPLEMENTED: u16 = 540;
pub(super) const INTERNAL_ERROR: u16 = 541;

/// An AMQP error to report: which level, code, text, and the method that caused it.
#[derive(Debug)]
pub(super) struct AmqpError {
    pub(super) connection: bool,
    pub(super) code: u16,
    pub(super) text: String,
    pub(super) class_id: u16,
    pub(super) method_id: u16,
}

impl AmqpError {
    pub(super) fn channel(code: u16, text: impl Into<String>) -> Self {
        AmqpError {
            connection: false,
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }
    pub(super) fn conn(code: u16, text: impl Into<String>) -> Self {
        AmqpError {
            connection: true,
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }
    pub(super) fn at(mut self, m: &AMQPClass) -> Self {
        self.class_id = m.get_amqp_class_id();
        self.method_id = m.get_amqp_method_id();
        self
    }
    /// Raised by a publish once its content is complete: it names basic.publish, as
    /// RabbitMQ does (the frame being handled then is a content frame, which names nothing).
    pub(super) fn on_publish(mut self) -> Self {
        if self.class_id == 0 {
            (self.class_id, self.method_id) = (60, 40);
        }
        self
    }
}

/// The one place broker errors become AMQP reply codes.
impl From<BrokerError> for AmqpError {
    fn from(e: BrokerError) -> Self {
        let text = e.to_string();
        match e {
            BrokerError::NotFound(_) => {
                AmqpError::channel(NOT_FOUND, format!("NOT_FOUND - {text}"))
            }
            BrokerError::PreconditionFailed(_) => {
                AmqpError::channel(PRECONDITION_FAILED, format!("PRECONDITION_FAILED - {text}"))
            }
            BrokerError::AlreadyExists(_) => {
                AmqpError::channel(PRECONDITION_FAILED, format!("PRECONDITION_FAILED - {text}"))
            }
            BrokerError::ResourceLocked(_) => {
                AmqpError::channel(RESOURCE_LOCKED, format!("RESOURCE_LOCKED - {text}"))
            }
            BrokerError::AccessRefused(_) => {
                AmqpError::channel(ACCESS_REFUSED, format!("ACCESS_REFUSED - {text}"))
            }
            BrokerError::ResourceError(_) => {
                AmqpError::conn(RESOURCE_ERROR, format!("RESOURCE_ERROR - {text}"))
            }
            BrokerError::NotAllowed(_) => {
                AmqpError::conn(NOT_ALLOWED, format!("NOT_ALLOWED - {text}"))
            }
            BrokerError::CommandInvalid(_) => {
                AmqpError::conn(COMMAND_INVALID, format!("COMMAND_INVALID - {text}"))
            }
            BrokerError::NotImplemented(_) => {
                AmqpError::conn(NOT_IMPLEMENTED, format!("NOT_IMPLEMENTED - {text}"))
            }
            BrokerError::Storage(_) | BrokerError::Internal(_) => {
                AmqpError::conn(INTERNAL_ERROR, format!("INTERNAL_ERROR - {text}"))
            }
        }
    }
}

pub(super) type AResult<T> = Result<T, AmqpError>;

/// A reply text cut to the 255 bytes a short string holds.
pub(super) fn truncate(s: &str) -> String {
    if s.len() <= 255 {
        return s.to_owned();
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
