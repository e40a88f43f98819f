//! Running a command in an instance (`wharf service exec`) and reading its resource usage
//! (`wharf service stats`, `wharf top`): the API's query and rows, what travels to the agent, and
//! the frames of the exec stream between the CLI and the master.
//!
//! The exec stream is an HTTP/1.1 upgrade (`Upgrade: wharf-exec.v1`) of
//! `GET /v1/services/{stack}/{service}/exec`. After the `101 Switching Protocols` both sides
//! send frames: one byte of kind, four bytes of big-endian length, then that many bytes of
//! payload ([`ExecFrame::encode`], [`ExecFrame::parse`]). A payload is at most
//! [`MAX_EXEC_CHUNK`] bytes; a larger frame is an error and ends the stream.

use serde::{Deserialize, Serialize};

use crate::{ApiError, LogStream};

/// The protocol named in the `Upgrade` header of an exec request.
pub const EXEC_PROTOCOL: &str = "wharf-exec.v1";

/// The largest payload of one exec frame (input or output): 32 KiB.
pub const MAX_EXEC_CHUNK: usize = 32 * 1024;

/// The most arguments a command may have, and the most bytes they may take in all.
pub const MAX_EXEC_ARGS: usize = 256;
pub const MAX_EXEC_COMMAND_BYTES: usize = 16 * 1024;

/// The query of `GET /v1/services/{stack}/{service}/exec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecQuery {
    /// The command and its arguments, as a JSON array of strings: `["sh","-c","echo hi"]`.
    pub command: String,
    /// The instance of this slot; absent: the first running instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Keep the command's standard input open (frames of kind `stdin`).
    #[serde(default)]
    pub stdin: bool,
    /// Allocate a pseudo-terminal (output then comes as `stdout` only).
    #[serde(default)]
    pub tty: bool,
    /// The terminal's width in columns, with `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    /// The terminal's height in rows, with `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
}

/// A terminal's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub cols: u16,
    pub rows: u16,
}

/// What to run in an instance, as the master asks its node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub command: Vec<String>,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<TtySize>,
}

impl ExecQuery {
    /// The spec the query asks for, or what is wrong with it: (field, message, hint).
    pub fn spec(&self) -> Result<ExecSpec, (&'static str, String, &'static str)> {
        const HINT: &str =
            "send the command as a JSON array of strings: command=[\"sh\",\"-c\",\"echo hi\"]";
        let command: Vec<String> = serde_json::from_str(&self.command).map_err(|e| {
            (
                "command",
                format!(
                    "not a JSON array of strings: {}",
                    crate::excerpt(&e.to_string(), 120)
                ),
                HINT,
            )
        })?;
        if command.is_empty() || command[0].is_empty() {
            return Err(("command", "the command is empty".into(), HINT));
        }
        let bytes: usize = command.iter().map(String::len).sum();
        if command.len() > MAX_EXEC_ARGS || bytes > MAX_EXEC_COMMAND_BYTES {
            return Err((
                "command",
                format!(
                    "{} arguments of {bytes} bytes: at most {MAX_EXEC_ARGS} arguments of {MAX_EXEC_COMMAND_BYTES} bytes in all",
                    command.len()
                ),
                "run a script in the container instead of a long command line",
            ));
        }
        if command.iter().any(|a| a.contains('\0')) {
            return Err((
                "command",
                "an argument holds a NUL byte".into(),
                "remove it",
            ));
        }
        let size = match (self.cols, self.rows) {
            (Some(cols), Some(rows)) if cols > 0 && rows > 0 => Some(TtySize { cols, rows }),
            (None, None) => None,
            _ => {
                return Err((
                    "cols",
                    "cols and rows go together, both above 0".into(),
                    "send both (the terminal's size) or neither",
                ));
            }
        };
        Ok(ExecSpec {
            command,
            stdin: self.stdin,
            tty: self.tty,
            size: size.filter(|_| self.tty),
        })
    }
}

/// One frame of the exec stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecFrame {
    /// Client → master: bytes for the command's standard input (kind 0).
    Stdin(Vec<u8>),
    /// Master → client: the command's output (kind 1), and its error output (kind 2).
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Client → master: the standard input ended (kind 3, no payload).
    StdinEof,
    /// Client → master: the terminal was resized (kind 4: columns, rows, two bytes each).
    Resize(TtySize),
    /// Master → client: the command exited with this code (kind 5: eight bytes, signed); the
    /// last frame.
    Exit(i64),
    /// Master → client: the exec failed (kind 6: an `ApiError` as JSON); the last frame.
    Error(ApiError),
}

/// Why bytes are not an exec frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecFrameError {
    /// The payload is larger than [`MAX_EXEC_CHUNK`].
    TooLarge(usize),
    UnknownKind(u8),
    /// The payload does not fit its kind.
    Malformed(&'static str),
}

impl std::fmt::Display for ExecFrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecFrameError::TooLarge(n) => write!(
                f,
                "an exec frame of {n} bytes: at most {MAX_EXEC_CHUNK} bytes each"
            ),
            ExecFrameError::UnknownKind(k) => write!(f, "unknown exec frame kind {k}"),
            ExecFrameError::Malformed(what) => write!(f, "malformed exec frame: {what}"),
        }
    }
}

impl ExecFrame {
    /// The frame's kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            ExecFrame::Stdin(_) => 0,
            ExecFrame::Stdout(_) => 1,
            ExecFrame::Stderr(_) => 2,
            ExecFrame::StdinEof => 3,
            ExecFrame::Resize(_) => 4,
            ExecFrame::Exit(_) => 5,
            ExecFrame::Error(_) => 6,
        }
    }

    /// Output of `stream`.
    pub fn output(stream: LogStream, data: Vec<u8>) -> ExecFrame {
        match stream {
            LogStream::Stdout => ExecFrame::Stdout(data),
            LogStream::Stderr => ExecFrame::Stderr(data),
        }
    }

    /// The frame as it goes on the wire: kind, length, payload.
    pub fn encode(&self) -> Vec<u8> {
        let payload: std::borrow::Cow<'_, [u8]> = match self {
            ExecFrame::Stdin(d) | ExecFrame::Stdout(d) | ExecFrame::Stderr(d) => d.into(),
            ExecFrame::StdinEof => (&[][..]).into(),
            ExecFrame::Resize(s) => {
                let mut p = s.cols.to_be_bytes().to_vec();
                p.extend_from_slice(&s.rows.to_be_bytes());
                p.into()
            }
            ExecFrame::Exit(code) => code.to_be_bytes().to_vec().into(),
            ExecFrame::Error(e) => serde_json::to_vec(e)
                .expect("an ApiError always serialises")
                .into(),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(self.kind());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// The kind and payload length a frame's five-byte header says, checked against the limit
    /// (an `Error` frame may be larger: a message with its hint).
    pub fn header(header: [u8; 5]) -> Result<(u8, usize), ExecFrameError> {
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let limit = if header[0] == 6 {
            4 * MAX_EXEC_CHUNK
        } else {
            MAX_EXEC_CHUNK
        };
        if len > limit {
            return Err(ExecFrameError::TooLarge(len));
        }
        Ok((header[0], len))
    }

    /// The frame of `kind` with `payload`.
    pub fn parse(kind: u8, payload: Vec<u8>) -> Result<ExecFrame, ExecFrameError> {
        Ok(match kind {
            0 => ExecFrame::Stdin(payload),
            1 => ExecFrame::Stdout(payload),
            2 => ExecFrame::Stderr(payload),
            3 if payload.is_empty() => ExecFrame::StdinEof,
            3 => return Err(ExecFrameError::Malformed("stdin-eof has no payload")),
            4 => match payload[..] {
                [a, b, c, d] => ExecFrame::Resize(TtySize {
                    cols: u16::from_be_bytes([a, b]),
                    rows: u16::from_be_bytes([c, d]),
                }),
                _ => return Err(ExecFrameError::Malformed("resize takes four bytes")),
            },
            5 => match <[u8; 8]>::try_from(&payload[..]) {
                Ok(b) => ExecFrame::Exit(i64::from_be_bytes(b)),
                Err(_) => return Err(ExecFrameError::Malformed("exit takes eight bytes")),
            },
            6 => ExecFrame::Error(
                serde_json::from_slice(&payload)
                    .map_err(|_| ExecFrameError::Malformed("error is not an ApiError"))?,
            ),
            k => return Err(ExecFrameError::UnknownKind(k)),
        })
    }
}

/// What goes into a running exec (master side and agent side alike).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecInput {
    Data(Vec<u8>),
    Eof,
    Resize(TtySize),
}

/// What comes out of a running exec: output, then one end (`Exit` or `Failed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    Output(LogStream, Vec<u8>),
    /// The command ended; its exit code when the engine knows it.
    Exit(Option<i64>),
    Failed(String),
}

/// The resource usage of one instance, as `docker stats` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceStats {
    /// `<stack>.<service>.<slot>`
    pub instance: String,
    pub stack: String,
    pub service: String,
    pub slot: u32,
    pub generation: u64,
    /// The node it runs on (set by the master).
    #[serde(default)]
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// CPU use, in percent of one CPU (200: two CPUs busy), over the engine's sample.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    /// The memory limit (the host's memory when the instance has none).
    pub memory_limit_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub pids: u64,
    /// Why the usage could not be read, when it could not (the other fields are then 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/stats` and `GET /v1/services/{stack}/{service}/stats`: one row per running
/// instance, from every node asked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatsResponse {
    pub instances: Vec<InstanceStats>,
    /// Nodes that could not answer, and why (`node n2: ...`): their instances are missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Bytes as base64 in JSON (agent frames carry exec input and output).
pub(crate) mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: ExecFrame) {
        let bytes = f.encode();
        let (kind, len) = ExecFrame::header(bytes[..5].try_into().unwrap()).expect("header");
        assert_eq!(len, bytes.len() - 5, "{f:?}");
        assert_eq!(
            ExecFrame::parse(kind, bytes[5..].to_vec()).expect("parse"),
            f
        );
    }

    #[test]
    fn every_frame_comes_back_as_it_went() {
        round_trip(ExecFrame::Stdin(b"ls\n".to_vec()));
        round_trip(ExecFrame::Stdout(vec![0, 255, 10]));
        round_trip(ExecFrame::Stderr(Vec::new()));
        round_trip(ExecFrame::StdinEof);
        round_trip(ExecFrame::Resize(TtySize {
            cols: 132,
            rows: 43,
        }));
        round_trip(ExecFrame::Exit(3));
        round_trip(ExecFrame::Exit(-1));
        round_trip(ExecFrame::Error(ApiError {
            code: "not_found".into(),
            message: "no instance".into(),
            hint: Some("see wharf service ps".into()),
            location: None,
        }));
    }

    #[test]
    fn oversized_unknown_and_malformed_frames_are_refused() {
        let mut big = vec![0u8];
        big.extend_from_slice(&((MAX_EXEC_CHUNK + 1) as u32).to_be_bytes());
        assert_eq!(
            ExecFrame::header(big.try_into().unwrap()),
            Err(ExecFrameError::TooLarge(MAX_EXEC_CHUNK + 1))
        );
        assert_eq!(
            ExecFrame::header([0, 255, 255, 255, 255]),
            Err(ExecFrameError::TooLarge(u32::MAX as usize))
        );
        assert_eq!(
            ExecFrame::parse(9, vec![]),
            Err(ExecFrameError::UnknownKind(9))
        );
        assert!(matches!(
            ExecFrame::parse(4, vec![1, 2, 3]),
            Err(ExecFrameError::Malformed(_))
        ));
        assert!(matches!(
            ExecFrame::parse(5, vec![1]),
            Err(ExecFrameError::Malformed(_))
        ));
        assert!(matches!(
            ExecFrame::parse(3, vec![1]),
            Err(ExecFrameError::Malformed(_))
        ));
    }

    fn query(command: &str) -> ExecQuery {
        ExecQuery {
            command: command.into(),
            ..ExecQuery::default()
        }
    }

    #[test]
    fn a_query_names_what_is_wrong_with_its_command() {
        let ok = query(r#"["sh","-c","echo hi; exit 3"]"#)
            .spec()
            .expect("ok");
        assert_eq!(ok.command, ["sh", "-c", "echo hi; exit 3"]);
        for (q, says) in [
            ("[]", "empty"),
            (r#"[""]"#, "empty"),
            ("sh -c x", "not a JSON array"),
            (r#"["a\u0000b"]"#, "NUL"),
        ] {
            let (field, message, _) = query(q).spec().unwrap_err();
            assert_eq!(field, "command");
            assert!(message.contains(says), "{q}: {message}");
        }
        let long = serde_json::to_string(&vec!["x"; MAX_EXEC_ARGS + 1]).unwrap();
        assert!(query(&long).spec().unwrap_err().1.contains("at most"));
    }

    #[test]
    fn a_size_needs_both_halves_and_a_terminal() {
        let mut q = query(r#"["sh"]"#);
        q.cols = Some(80);
        assert_eq!(q.spec().unwrap_err().0, "cols");
        q.rows = Some(24);
        assert_eq!(q.spec().unwrap().size, None, "no terminal, no size");
        q.tty = true;
        assert_eq!(q.spec().unwrap().size, Some(TtySize { cols: 80, rows: 24 }));
        q.rows = Some(0);
        assert_eq!(q.spec().unwrap_err().0, "cols");
    }
}
