//! Byte ranges of the registry API: the `Content-Range` of a chunk sent to an upload (which must
//! start where the upload ends) and the `Range` of a blob read. Pure.

/// Where a chunk goes: `Content-Range: START-END` (inclusive; `bytes ` and `/total` tolerated)
/// checked against the upload's current `size` and the chunk's `Content-Length`, when given.
/// `Err` is the message of a 416.
pub fn chunk(content_range: Option<&str>, size: u64, length: Option<u64>) -> Result<(), String> {
    let Some(raw) = content_range else {
        return Ok(()); // appended at the end (Docker sends no range)
    };
    let spec = raw
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches([' ', '=']);
    let spec = spec.split('/').next().unwrap_or(spec);
    let (start, end) = spec
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        .ok_or_else(|| {
            format!(
                "Content-Range {:?} is not START-END",
                wharf_types::excerpt(raw, 60)
            )
        })?;
    if end < start {
        return Err(format!("Content-Range {start}-{end} ends before it starts"));
    }
    if start != size {
        return Err(format!(
            "the chunk starts at {start} but the upload has {size} bytes: send from {size}"
        ));
    }
    if let Some(len) = length
        && len != end - start + 1
    {
        return Err(format!(
            "Content-Range {start}-{end} is {} bytes but Content-Length is {len}",
            end - start + 1
        ));
    }
    Ok(())
}

/// The `Range` header of an upload's status: what the registry has, `0-(size-1)` (`0-0` when
/// empty, as the reference registry answers).
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// A range that is not in the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// A blob read's range: `Range: bytes=A-B`, `bytes=A-` or `bytes=-N` of a blob of `len` bytes.
/// `Ok(None)`: the whole blob (no header, or one we do not serve partially: several ranges);
/// `Ok(Some((start, end)))` inclusive; `Err(Unsatisfiable)`: a 416.
pub fn read(range: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Err(Unsatisfiable);
    };
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
            if n == 0 || len == 0 {
                return Err(Unsatisfiable);
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
            let end = if b.is_empty() {
                u64::MAX
            } else {
                b.parse().map_err(|_| Unsatisfiable)?
            };
            (start, end.min(len.saturating_sub(1)))
        }
        (true, true) => return Err(Unsatisfiable),
    };
    if start >= len || end < start {
        return Err(Unsatisfiable);
    }
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_must_start_where_the_upload_ends() {
        for (range, size, len, want) in [
            (None, 10, Some(5), Ok(())),
            (Some("10-14"), 10, Some(5), Ok(())),
            (Some("bytes 10-14/*"), 10, None, Ok(())),
            (Some("0-4"), 10, Some(5), Err("send from 10")),
            (Some("10-14"), 10, Some(4), Err("Content-Length is 4")),
            (Some("14-10"), 10, None, Err("ends before it starts")),
            (Some("ten"), 10, None, Err("is not START-END")),
        ] {
            let got = chunk(range, size, len);
            match (got, want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(w)) => assert!(e.contains(w), "{range:?}: {e}"),
                (got, want) => panic!("{range:?}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn an_upload_status_is_the_range_held() {
        assert_eq!(upload_range(0), "0-0");
        assert_eq!(upload_range(1), "0-0");
        assert_eq!(upload_range(100), "0-99");
    }

    #[test]
    fn blob_reads_serve_one_range_or_the_whole_blob() {
        for (range, len, want) in [
            (None, 10, Ok(None)),
            (Some("bytes=0-4"), 10, Ok(Some((0, 4)))),
            (Some("bytes=5-"), 10, Ok(Some((5, 9)))),
            (Some("bytes=5-100"), 10, Ok(Some((5, 9)))),
            (Some("bytes=-3"), 10, Ok(Some((7, 9)))),
            (Some("bytes=-30"), 10, Ok(Some((0, 9)))),
            (Some("bytes=0-1,4-5"), 10, Ok(None)),
            (Some("items=0-1"), 10, Ok(None)),
            (Some("bytes=10-"), 10, Err(Unsatisfiable)),
            (Some("bytes=4-2"), 10, Err(Unsatisfiable)),
            (Some("bytes=-0"), 10, Err(Unsatisfiable)),
            (Some("bytes=x-"), 10, Err(Unsatisfiable)),
            (Some("bytes=0-"), 0, Err(Unsatisfiable)),
        ] {
            assert_eq!(read(range, len), want, "{range:?} of {len}");
        }
    }
}
