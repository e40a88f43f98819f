//! Frames on the agent stream: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! A frame larger than [`MAX_FRAME`] is an error (the caller drops the connection); its body is
//! never read or allocated.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::LinkError;

/// The largest frame either side accepts: 16 MiB.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Write one frame and flush it.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), LinkError>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize + ?Sized,
{
    let body = serde_json::to_vec(msg).map_err(|e| LinkError::Decode(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(LinkError::FrameTooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Read one frame; `Ok(None)` at a clean end of stream (between frames).
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, LinkError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(LinkError::FrameTooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| LinkError::Decode(wharf_types::excerpt(&e.to_string(), MAX_ERROR_CHARS)))
}

/// Read one frame of the exec stream (`wharf_types::ExecFrame`); `Ok(None)` at a clean end of
/// stream. A frame larger than its limit is an `InvalidData` error; its body is never read.
pub async fn read_exec_frame<R>(r: &mut R) -> std::io::Result<Option<wharf_types::ExecFrame>>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut header = [0u8; 5];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let invalid = |e: wharf_types::ExecFrameError| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    };
    let (kind, len) = wharf_types::ExecFrame::header(header).map_err(invalid)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    wharf_types::ExecFrame::parse(kind, payload)
        .map(Some)
        .map_err(invalid)
}

/// The longest a decode error says, in characters: serde quotes the offending value, which a
/// peer chooses (a 16 MiB string must not become a 16 MiB log line).
const MAX_ERROR_CHARS: usize = 240;

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[tokio::test]
    async fn a_huge_junk_frame_makes_a_short_error() {
        let junk = serde_json::to_vec(&"A".repeat(MAX_FRAME - 16)).unwrap();
        let mut frame = (junk.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&junk);
        let r = read_frame::<_, Msg>(&mut frame.as_slice()).await;
        let message = r.unwrap_err().to_string();
        assert!(
            message.len() < 1024 && message.contains("more characters"),
            "{} bytes: {}",
            message.len(),
            &message[..message.len().min(300)]
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        n: u32,
        s: String,
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let w = tokio::spawn(async move {
            for n in 0..3 {
                write_frame(
                    &mut a,
                    &Msg {
                        n,
                        s: "é\n".repeat(n as usize * 100),
                    },
                )
                .await
                .unwrap();
            }
        });
        for n in 0..3 {
            let m: Msg = read_frame(&mut b).await.unwrap().unwrap();
            assert_eq!(
                m,
                Msg {
                    n,
                    s: "é\n".repeat(n as usize * 100)
                }
            );
        }
        w.await.unwrap();
        assert!(read_frame::<_, Msg>(&mut b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversize_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
            .await
            .unwrap();
        let e = read_frame::<_, Msg>(&mut b).await.unwrap_err();
        assert!(
            matches!(e, LinkError::FrameTooLarge(n) if n == MAX_FRAME + 1),
            "{e}"
        );
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(read_frame::<_, Msg>(&mut b).await.is_err());

        let mut sink = tokio::io::sink();
        let big = "x".repeat(MAX_FRAME + 1);
        assert!(matches!(
            write_frame(&mut sink, &big).await,
            Err(LinkError::FrameTooLarge(_))
        ));
    }

    #[tokio::test]
    async fn malformed_and_truncated_frames_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{x}").await.unwrap();
        assert!(matches!(
            read_frame::<_, Msg>(&mut b).await,
            Err(LinkError::Decode(_))
        ));
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{").await.unwrap();
        drop(a);
        assert!(read_frame::<_, Msg>(&mut b).await.is_err());
    }
}
