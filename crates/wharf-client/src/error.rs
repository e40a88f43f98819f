//! `ClientError`: everything that can go wrong talking to the API, with hints for people.

use std::path::PathBuf;

use wharf_types::ApiError;

/// An error of the client. `Display` is a lower-case one-line message; [`ClientError::hint`] says
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with a non-2xx status and (normally) an `ApiError` body.
    #[error("{}", .error.message)]
    Api { status: u16, error: ApiError },
    /// Nothing answers at the URL (connection refused, no route, DNS failure).
    #[error("cannot reach the wharf API at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The API took too long to answer.
    #[error("the wharf API at {url} did not answer in time")]
    Timeout {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Any other transport error (connection reset mid-body, bad URL, ...).
    #[error("request to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The reply was not the JSON we expected.
    #[error("cannot decode the reply of {url}: {source}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// No context: neither a context file nor `WHARF_URL`/`WHARF_TOKEN`.
    #[error(
        "no wharf context: {path} does not exist and WHARF_URL and WHARF_TOKEN are not both set"
    )]
    NoContext { path: PathBuf },
    /// The context file exists but cannot be read, parsed or written.
    #[error("context file {path}: {message}")]
    ContextFile { path: PathBuf, message: String },
    /// An `https` API without a pinned CA, or a TLS setting that cannot be made.
    #[error("{0}")]
    Tls(String),
    /// The API did not speak the protocol asked for (the exec stream).
    #[error("{0}")]
    Protocol(String),
}

impl ClientError {
    /// What the user can do about the error, if we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::Api { status, error } => error.hint.clone().or_else(|| match status {
                401 => Some(
                    "the token was refused: check WHARF_TOKEN or the context file (`wharf context`)"
                        .to_string(),
                ),
                403 => Some("the token is not allowed to do this".to_string()),
                _ => None,
            }),
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => Some(
                "is `wharf up` running? check the context with `wharf context`".to_string(),
            ),
            ClientError::Http { .. } => {
                Some("check the URL of the context with `wharf context`".to_string())
            }
            ClientError::Decode { .. } | ClientError::Protocol(_) => Some(
                "is the URL a wharf API of the same version? compare with `wharf version`"
                    .to_string(),
            ),
            ClientError::NoContext { .. } => Some(
                "run `wharf up` to start a local master (it writes the context), or set WHARF_URL and WHARF_TOKEN"
                    .to_string(),
            ),
            ClientError::ContextFile { .. } => Some(
                "fix or remove the file; `wharf up` writes a fresh one".to_string(),
            ),
            ClientError::Tls(_) => Some(
                "log in with `wharf login URL`, which pins the API's CA (or set WHARF_CA_FINGERPRINT)"
                    .to_string(),
            ),
        }
    }

    /// True when the request itself was wrong (bad input, unknown name, conflict, too large),
    /// as opposed to a failure of the server or of the network.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if matches!(status, 400 | 404 | 409 | 413 | 422))
    }

    /// True for a 404 reply.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The HTTP status when the API answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `ApiError` body when the API answered with an error.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Transport failures worth retrying (nothing answered, timeout).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. }
                | ClientError::Timeout { .. }
                | ClientError::Http { .. }
        ) || matches!(self.status(), Some(502..=504))
    }

    /// `base` is the API's base URL (named when it cannot be reached), `url` the full request URL.
    pub(crate) fn from_reqwest(base: &str, url: &str, source: reqwest::Error) -> ClientError {
        if source.is_connect() {
            ClientError::Unreachable {
                url: base.to_string(),
                source,
            }
        } else if source.is_timeout() {
            ClientError::Timeout {
                url: base.to_string(),
                source,
            }
        } else {
            ClientError::Http {
                url: url.to_string(),
                source,
            }
        }
    }

    /// Builds the `Api` error of a non-2xx reply from its status and body.
    pub(crate) fn from_reply(status: u16, reason: &str, body: &[u8]) -> ClientError {
        let error = match serde_json::from_slice::<ApiError>(body) {
            Ok(error) => error,
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let message = if text.is_empty() {
                    format!("the wharf API answered {status} {reason}")
                        .trim_end()
                        .to_string()
                } else {
                    let mut t: String = text.chars().take(300).collect();
                    if t.len() < text.len() {
                        t.push_str("...");
                    }
                    format!("the wharf API answered {status}: {t}")
                };
                ApiError {
                    code: format!("http_{status}"),
                    message,
                    hint: None,
                    location: None,
                }
            }
        };
        ClientError::Api { status, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_body_is_decoded_and_classified() {
        let e = ClientError::from_reply(
            422,
            "Unprocessable Entity",
            br#"{"code":"invalid_spec","message":"bad port","hint":"use 1-65535","location":"services.web.ports[0]"}"#,
        );
        assert!(e.is_bad_input());
        assert_eq!(e.to_string(), "bad port");
        assert_eq!(e.hint().as_deref(), Some("use 1-65535"));
        assert_eq!(
            e.api_error().unwrap().location.as_deref(),
            Some("services.web.ports[0]")
        );
    }

    #[test]
    fn non_json_error_body_is_kept_as_message() {
        let e = ClientError::from_reply(502, "Bad Gateway", b"upstream down\n");
        assert!(!e.is_bad_input());
        assert!(e.is_transient());
        assert_eq!(e.to_string(), "the wharf API answered 502: upstream down");
        let e = ClientError::from_reply(401, "Unauthorized", b"");
        assert_eq!(e.to_string(), "the wharf API answered 401 Unauthorized");
        assert!(e.hint().unwrap().contains("token"));
    }

    #[test]
    fn bad_input_statuses() {
        for (s, bad) in [
            (400, true),
            (404, true),
            (409, true),
            (413, true),
            (422, true),
            (401, false),
            (500, false),
        ] {
            assert_eq!(
                ClientError::from_reply(s, "", b"").is_bad_input(),
                bad,
                "{s}"
            );
        }
    }
}
