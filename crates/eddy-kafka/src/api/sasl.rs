//! SaslHandshake and SaslAuthenticate (PLAIN, against the broker's users).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;

use super::{str_bytes, Handler};

impl Handler {
    pub(super) fn sasl_handshake(&self, r: SaslHandshakeRequest) -> SaslHandshakeResponse {
        let mut resp = SaslHandshakeResponse::default();
        resp.mechanisms = vec![str_bytes("PLAIN")];
        if r.mechanism.as_str() == "PLAIN" {
            *self.sasl_mechanism.lock() = Some("PLAIN".into());
        } else {
            resp.error_code = ResponseError::UnsupportedSaslMechanism.code();
        }
        resp
    }

    pub(super) fn sasl_authenticate(&self, r: SaslAuthenticateRequest) -> SaslAuthenticateResponse {
        let mut resp = SaslAuthenticateResponse::default();
        // Kafka closes the connection after a failed authentication (the caller does)
        let fail = |resp: &mut SaslAuthenticateResponse, msg: String| {
            resp.error_code = ResponseError::SaslAuthenticationFailed.code();
            resp.error_message = Some(str_bytes(&msg));
        };
        if self.sasl_mechanism.lock().is_none() {
            resp.error_code = ResponseError::IllegalSaslState.code();
            resp.error_message = Some(str_bytes("SaslAuthenticate before SaslHandshake"));
            return resp;
        }
        // PLAIN: authzid NUL authcid NUL password
        let parts: Vec<&[u8]> = r.auth_bytes.split(|b| *b == 0).collect();
        if parts.len() != 3 {
            fail(&mut resp, "malformed SASL/PLAIN response".into());
            return resp;
        }
        let user = String::from_utf8_lossy(parts[1]).into_owned();
        let pass = String::from_utf8_lossy(parts[2]).into_owned();
        match self.broker.authenticate(&user, &pass, self.loopback) {
            Ok(()) => {
                if let Some(info) = &self.info {
                    info.set_user(&user);
                    self.span.record("user", user.as_str());
                }
                self.granted.lock().clear();
                *self.user.lock() = Some(user)
            }
            Err(e) => {
                tracing::warn!(user, "authentication failed: {e}");
                fail(&mut resp, format!("Authentication failed: {e}"));
            }
        }
        resp
    }
}
