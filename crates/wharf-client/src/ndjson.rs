//! Incremental newline-delimited JSON: bytes arrive in arbitrary chunks, values come out per line.

use std::collections::VecDeque;
use std::marker::PhantomData;

use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::ClientError;

/// Splits a byte stream into lines and decodes each non-blank line as one `T`.
/// A line may be split anywhere, including inside a multi-byte UTF-8 character.
#[derive(Debug)]
pub struct NdjsonDecoder<T> {
    buf: Vec<u8>,
    source: String,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> NdjsonDecoder<T> {
    /// `source` names where the bytes come from (the URL), for error messages.
    pub fn new(source: impl Into<String>) -> Self {
        NdjsonDecoder {
            buf: Vec::new(),
            source: source.into(),
            _t: PhantomData,
        }
    }

    /// Feeds a chunk; returns the values of the lines it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Result<T, ClientError>> {
        let mut out = Vec::new();
        let mut start = self.buf.len();
        self.buf.extend_from_slice(chunk);
        let mut consumed = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            if let Some(v) = self.decode(consumed, end) {
                out.push(v);
            }
            consumed = end + 1;
            start = consumed;
        }
        self.buf.drain(..consumed);
        out
    }

    /// The end of the stream: decodes a last line that had no newline.
    pub fn finish(&mut self) -> Option<Result<T, ClientError>> {
        let len = self.buf.len();
        let v = self.decode(0, len);
        self.buf.clear();
        v
    }

    fn decode(&self, from: usize, to: usize) -> Option<Result<T, ClientError>> {
        let line = self.buf[from..to].trim_ascii();
        if line.is_empty() {
            return None;
        }
        Some(
            serde_json::from_slice(line).map_err(|source| ClientError::Decode {
                url: self.source.clone(),
                source,
            }),
        )
    }
}

/// Turns a stream of byte chunks into a stream of decoded values. A transport error ends it.
pub(crate) fn ndjson_stream<T, S, B>(
    body: S,
    source: String,
) -> impl Stream<Item = Result<T, ClientError>> + Send + 'static
where
    T: DeserializeOwned + Send + 'static,
    S: Stream<Item = Result<B, ClientError>> + Send + Unpin + 'static,
    B: AsRef<[u8]>,
{
    struct State<T, S> {
        body: S,
        dec: NdjsonDecoder<T>,
        queue: VecDeque<Result<T, ClientError>>,
        done: bool,
    }
    let state = State {
        body,
        dec: NdjsonDecoder::new(source),
        queue: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.queue.pop_front() {
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            match st.body.next().await {
                Some(Ok(chunk)) => st.queue.extend(st.dec.push(chunk.as_ref())),
                Some(Err(e)) => {
                    st.done = true;
                    st.queue.push_back(Err(e));
                }
                None => {
                    st.done = true;
                    st.queue.extend(st.dec.finish());
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::{LogLine, LogStream};

    fn line(i: &str, l: &str) -> LogLine {
        LogLine {
            instance: i.into(),
            stream: LogStream::Stdout,
            line: l.into(),
            node: None,
            time: None,
        }
    }

    #[test]
    fn values_split_across_every_possible_boundary() {
        let text = "{\"instance\":\"s.web.1\",\"stream\":\"stdout\",\"line\":\"héllo ✓\"}\r\n\n{\"instance\":\"s.web.2\",\"stream\":\"stdout\",\"line\":\"b\"}\n{\"instance\":\"s.web.1\",\"stream\":\"stdout\",\"line\":\"tail\"}";
        let bytes = text.as_bytes();
        for cut1 in 0..bytes.len() {
            for cut2 in [cut1, (cut1 + 7).min(bytes.len()), bytes.len()] {
                let mut d = NdjsonDecoder::<LogLine>::new("test");
                let mut got: Vec<LogLine> = Vec::new();
                for chunk in [&bytes[..cut1], &bytes[cut1..cut2], &bytes[cut2..]] {
                    got.extend(d.push(chunk).into_iter().map(Result::unwrap));
                }
                got.extend(d.finish().map(Result::unwrap));
                assert_eq!(
                    got,
                    vec![
                        line("s.web.1", "héllo ✓"),
                        line("s.web.2", "b"),
                        line("s.web.1", "tail")
                    ],
                    "cuts at {cut1}, {cut2}"
                );
            }
        }
    }

    #[test]
    fn a_bad_line_is_an_error_and_decoding_goes_on() {
        let mut d = NdjsonDecoder::<LogLine>::new("http://x/logs");
        let out = d.push(b"not json\n{\"instance\":\"a\",\"stream\":\"stderr\",\"line\":\"\"}\n");
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Err(ClientError::Decode { url, .. }) if url == "http://x/logs"));
        assert_eq!(out[1].as_ref().unwrap().stream, LogStream::Stderr);
        assert!(d.finish().is_none());
    }

    #[tokio::test]
    async fn stream_yields_lines_as_chunks_arrive() {
        let chunks: Vec<Result<Vec<u8>, ClientError>> = vec![
            Ok(b"{\"instance\":\"a\",\"str".to_vec()),
            Ok(b"eam\":\"stdout\",\"line\":\"1\"}\n{\"inst".to_vec()),
            Ok(b"ance\":\"a\",\"stream\":\"stdout\",\"line\":\"2\"}".to_vec()),
        ];
        let s = ndjson_stream::<LogLine, _, _>(futures::stream::iter(chunks), "t".into());
        let got: Vec<_> = s.map(Result::unwrap).collect().await;
        assert_eq!(got, vec![line("a", "1"), line("a", "2")]);
    }
}
