//! `CliError`, how it is printed, and which exit code it means.

use std::fmt;
use std::process::ExitCode;

use wharf_client::ClientError;

/// One located problem of a stack file, as printed: `error: file:line:column: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// `file:line:column`, when known.
    pub location: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

/// Everything a client command can fail with.
#[derive(Debug)]
pub enum CliError {
    /// Talking to the API failed, or the API refused.
    Client(ClientError),
    /// The stack file is invalid (exit 2).
    Compose(Vec<Diagnostic>),
    /// The command line asked for something that cannot be (exit 2).
    BadInput {
        message: String,
        hint: Option<String>,
    },
    /// The operation ran and failed or timed out (exit 1). `details` are printed indented.
    Failed {
        message: String,
        details: Vec<String>,
        hint: Option<String>,
    },
    /// `stack diff --exit-code` found changes (exit 1, nothing more printed: the diff was).
    Differs,
    /// `service exec`: the command exited with this code (not 0), which is wharf's; nothing
    /// more printed.
    Exited(u8),
}

impl CliError {
    pub fn bad_input(message: impl Into<String>, hint: Option<String>) -> Self {
        CliError::BadInput {
            message: message.into(),
            hint,
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        CliError::Failed {
            message: message.into(),
            details: Vec::new(),
            hint: None,
        }
    }

    /// The exit status: 2 for bad input, 1 for any other failure.
    pub fn exit_status(&self) -> u8 {
        match self {
            CliError::Client(e) if e.is_bad_input() => 2,
            CliError::Client(_) | CliError::Failed { .. } | CliError::Differs => 1,
            CliError::Compose(_) | CliError::BadInput { .. } => 2,
            CliError::Exited(code) => *code,
        }
    }

    /// The lines [`print_error`] writes to stderr.
    pub fn render(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut push = |loc: Option<&str>, message: &str, hint: Option<&str>| {
            match loc {
                Some(l) if !l.is_empty() => out.push(format!("error: {l}: {message}")),
                _ => out.push(format!("error: {message}")),
            }
            if let Some(h) = hint {
                out.push(format!("  hint: {h}"));
            }
        };
        match self {
            CliError::Client(e) => {
                let loc = e.api_error().and_then(|a| a.location.as_deref());
                push(loc, &e.to_string(), e.hint().as_deref());
            }
            CliError::Compose(diags) => {
                for d in diags {
                    push(d.location.as_deref(), &d.message, d.hint.as_deref());
                }
            }
            CliError::BadInput { message, hint } => push(None, message, hint.as_deref()),
            CliError::Failed {
                message,
                details,
                hint,
            } => {
                push(None, message, None);
                out.extend(details.iter().map(|d| format!("  {d}")));
                if let Some(h) = hint {
                    out.push(format!("  hint: {h}"));
                }
            }
            CliError::Differs | CliError::Exited(_) => {}
        }
        out
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Client(e) => write!(f, "{e}"),
            CliError::Compose(diags) => match diags.as_slice() {
                [one] => match &one.location {
                    Some(l) => write!(f, "{l}: {}", one.message),
                    None => write!(f, "{}", one.message),
                },
                many => write!(f, "the stack file has {} errors", many.len()),
            },
            CliError::BadInput { message, .. } | CliError::Failed { message, .. } => {
                write!(f, "{message}")
            }
            CliError::Differs => f.write_str("the deploy would change the stack"),
            CliError::Exited(code) => write!(f, "the command exited with code {code}"),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Client(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
}

/// 2 for bad input (invalid file, unknown service, API 4xx bad input), 1 for other failures.
pub fn exit_code(err: &CliError) -> ExitCode {
    ExitCode::from(err.exit_status())
}

/// Prints the error on stderr: `error: ...` then `  hint: ...` lines.
pub fn print_error(err: &CliError) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    for line in err.render() {
        let _ = writeln!(stderr, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::ApiError;

    #[test]
    fn compose_errors_print_located_with_hints() {
        let e = CliError::Compose(vec![
            Diagnostic {
                location: Some("stack.yml:4:7".into()),
                message: "unknown key `imagee`".into(),
                hint: Some("did you mean `image`?".into()),
            },
            Diagnostic {
                location: None,
                message: "no services".into(),
                hint: None,
            },
        ]);
        assert_eq!(
            e.render(),
            vec![
                "error: stack.yml:4:7: unknown key `imagee`",
                "  hint: did you mean `image`?",
                "error: no services",
            ]
        );
        assert_eq!(e.exit_status(), 2);
    }

    #[test]
    fn api_errors_show_location_and_server_hint() {
        let e = CliError::Client(wharf_client_error(422, Some("services.web.ports[0]")));
        assert_eq!(
            e.render(),
            vec![
                "error: services.web.ports[0]: port out of range",
                "  hint: use 1-65535"
            ]
        );
        assert_eq!(e.exit_status(), 2);
        assert_eq!(
            CliError::Client(wharf_client_error(500, None)).exit_status(),
            1
        );
    }

    #[test]
    fn failures_list_details() {
        let e = CliError::Failed {
            message: "deployment d1 of stack shop failed".into(),
            details: vec!["web: image not found".into()],
            hint: Some("see `wharf stack ps shop`".into()),
        };
        assert_eq!(
            e.render(),
            vec![
                "error: deployment d1 of stack shop failed",
                "  web: image not found",
                "  hint: see `wharf stack ps shop`",
            ]
        );
        assert_eq!(e.exit_status(), 1);
    }

    fn wharf_client_error(status: u16, location: Option<&str>) -> ClientError {
        ClientError::Api {
            status,
            error: ApiError {
                code: "invalid".into(),
                message: "port out of range".into(),
                hint: Some("use 1-65535".into()),
                location: location.map(str::to_string),
            },
        }
    }
}
