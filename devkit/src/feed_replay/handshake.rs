//! The HTTP upgrade checks of the Birdeye WebSocket endpoint.
//!
//! Consumes the client's upgrade request. Accepts it when three checks pass. The last path
//! segment names the replayed chain (`/socket/ethereum` or `/ethereum`). The API key matches,
//! if the server was given one, as `x-api-key` in the query or as a header. And
//! `Sec-WebSocket-Protocol` offers `echo-protocol`. The accepted response selects `echo-protocol`, as Birdeye's server
//! does; a rejected request gets an HTTP error status with a one-line reason as its body.

use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use monitor_core::messages::Chain;
use monitor_core::settings::Redacted;

/// The sub-protocol that Birdeye requires and echoes.
pub const SUB_PROTOCOL: &str = "echo-protocol";

/// Requirements of an upgrade request.
#[derive(Debug, Clone)]
pub struct Gate {
    pub chain: Chain,
    pub api_key: Option<Redacted>,
}

/// Reason for rejecting an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("unknown chain {segment:?} in path {path:?}: this server replays {expected}")]
    WrongChain {
        path: String,
        segment: String,
        expected: &'static str,
    },
    #[error("missing or wrong x-api-key")]
    ApiKey,
    #[error("Sec-WebSocket-Protocol must offer echo-protocol, got {offered:?}")]
    MissingProtocol { offered: String },
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::WrongChain { .. } => StatusCode::NOT_FOUND,
            Rejection::ApiKey => StatusCode::UNAUTHORIZED,
            Rejection::MissingProtocol { .. } => StatusCode::BAD_REQUEST,
        }
    }
}

impl Gate {
    /// Checks an upgrade request.
    pub fn check(&self, request: &Request) -> Result<(), Rejection> {
        let path = request.uri().path();
        let segment = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
        let expected = self.chain.birdeye_name();
        if segment != expected {
            return Err(Rejection::WrongChain {
                path: path.to_owned(),
                segment: segment.to_owned(),
                expected,
            });
        }

        if let Some(key) = self.api_key.as_ref().filter(|k| !k.is_empty()) {
            if api_key_of(request).as_deref() != Some(key.expose()) {
                return Err(Rejection::ApiKey);
            }
        }

        let offered: Vec<&str> = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if !offered.contains(&SUB_PROTOCOL) {
            return Err(Rejection::MissingProtocol {
                offered: offered.join(", "),
            });
        }
        Ok(())
    }

    /// Runs [`Gate::check`] inside the WebSocket handshake. `outcome` receives the request path
    /// and the rejection, if any, for the caller's log.
    // tungstenite's handshake callback fixes this error type.
    #[allow(clippy::result_large_err)]
    pub fn respond(
        &self,
        request: &Request,
        mut response: Response,
        outcome: &mut HandshakeOutcome,
    ) -> Result<Response, ErrorResponse> {
        outcome.path = request.uri().path().to_owned();
        match self.check(request) {
            Ok(()) => {
                response.headers_mut().insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_static(SUB_PROTOCOL),
                );
                Ok(response)
            }
            Err(rejection) => {
                let mut error = ErrorResponse::new(Some(rejection.to_string()));
                *error.status_mut() = rejection.status();
                outcome.rejection = Some(rejection);
                Err(error)
            }
        }
    }
}

/// Path and rejection seen by the handshake, for logging.
#[derive(Debug, Default)]
pub struct HandshakeOutcome {
    pub path: String,
    pub rejection: Option<Rejection>,
}

fn api_key_of(request: &Request) -> Option<String> {
    let from_query = request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "x-api-key")
            .map(|(_, value)| value.into_owned())
    });
    from_query.or_else(|| {
        request
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, protocol: Option<&str>) -> Request {
        let mut builder = Request::builder().uri(uri);
        if let Some(p) = protocol {
            builder = builder.header("Sec-WebSocket-Protocol", p);
        }
        builder.body(()).unwrap()
    }

    fn gate(api_key: Option<&str>) -> Gate {
        Gate {
            chain: Chain::Eth,
            api_key: api_key.map(|k| Redacted(k.to_owned())),
        }
    }

    #[test]
    fn accepts_chain_path_with_echo_protocol() {
        let gate = gate(None);
        assert_eq!(
            gate.check(&request("/socket/ethereum", Some("echo-protocol"))),
            Ok(())
        );
        assert_eq!(
            gate.check(&request(
                "/ethereum?x-api-key=x",
                Some("chat, echo-protocol")
            )),
            Ok(())
        );
    }

    #[test]
    fn rejects_another_chain_with_not_found() {
        let rejection = gate(None)
            .check(&request("/socket/solana", Some("echo-protocol")))
            .unwrap_err();
        assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
        assert!(rejection.to_string().contains("\"solana\""), "{rejection}");
    }

    #[test]
    fn rejects_missing_protocol_with_bad_request() {
        let rejection = gate(None).check(&request("/ethereum", None)).unwrap_err();
        assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn checks_api_key_only_when_configured() {
        let gate = gate(Some("k1"));
        assert_eq!(
            gate.check(&request("/ethereum?x-api-key=k1", Some("echo-protocol"))),
            Ok(())
        );
        assert_eq!(
            gate.check(&request("/ethereum?x-api-key=k2", Some("echo-protocol"))),
            Err(Rejection::ApiKey)
        );
        assert_eq!(
            gate.check(&request("/ethereum", Some("echo-protocol"))),
            Err(Rejection::ApiKey)
        );
        assert_eq!(Rejection::ApiKey.status(), StatusCode::UNAUTHORIZED);
    }
}
