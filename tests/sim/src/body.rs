//! Request bodies: `Content-Encoding: zstd` decoding and small helpers.

use axum::http::HeaderMap;

/// Largest request body read off the wire.
pub const MAX_WIRE_BODY: usize = 64 * 1024 * 1024;
/// Largest decoded body.
pub const MAX_DECODED_BODY: usize = 256 * 1024 * 1024;

/// The decoded request body, handed from the recording layer to handlers.
#[derive(Debug, Clone)]
pub struct DecodedBody(pub Result<bytes::Bytes, String>);

/// Decode a body according to its `Content-Encoding` (identity or zstd).
pub fn decode(headers: &HeaderMap, raw: &[u8]) -> Result<Vec<u8>, String> {
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(raw.to_vec()),
        "zstd" => zstd_decode(raw, MAX_DECODED_BODY),
        other => Err(format!("unsupported content-encoding: {other}")),
    }
}

/// Decode every zstd frame in `input` (skippable frames are skipped), up to `cap` bytes.
pub fn zstd_decode(mut input: &[u8], cap: usize) -> Result<Vec<u8>, String> {
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

    let mut out = Vec::new();
    let mut decoder = FrameDecoder::new();
    if input.is_empty() {
        return Err("empty zstd body".into());
    }
    while !input.is_empty() {
        match decoder.reset(&mut input) {
            Ok(()) => {}
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                input = input
                    .get(length as usize..)
                    .ok_or_else(|| "truncated skippable frame".to_string())?;
                continue;
            }
            Err(e) => return Err(format!("invalid zstd frame: {e}")),
        }
        while !decoder.is_finished() {
            decoder
                .decode_blocks(&mut input, BlockDecodingStrategy::UptoBytes(1024 * 1024))
                .map_err(|e| format!("invalid zstd data: {e}"))?;
            if let Some(chunk) = decoder.collect() {
                out.extend_from_slice(&chunk);
            }
            if out.len() > cap {
                return Err("decoded body too large".into());
            }
        }
        if let Some(chunk) = decoder.collect() {
            out.extend_from_slice(&chunk);
        }
    }
    Ok(out)
}

/// Compress with zstd (for tests and tools that need an encoded body).
pub fn zstd_encode(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn zstd_round_trip_and_multi_frame() {
        let a = br#"{"model":"m","input":[]}"#.repeat(50);
        let b = b"second frame".to_vec();
        let mut enc = zstd_encode(&a);
        assert!(enc.len() < a.len());
        assert_eq!(zstd_decode(&enc, usize::MAX).unwrap(), a);
        enc.extend(zstd_encode(&b));
        let mut both = a.clone();
        both.extend(&b);
        assert_eq!(zstd_decode(&enc, usize::MAX).unwrap(), both);
    }

    #[test]
    fn zstd_cap_and_garbage() {
        let data = vec![b'x'; 10_000];
        assert!(zstd_decode(&zstd_encode(&data), 100).is_err());
        assert!(zstd_decode(b"not zstd at all", usize::MAX).is_err());
    }

    #[test]
    fn decode_by_header() {
        let mut h = HeaderMap::new();
        assert_eq!(decode(&h, b"abc").unwrap(), b"abc");
        h.insert("content-encoding", HeaderValue::from_static("zstd"));
        assert_eq!(decode(&h, &zstd_encode(b"abc")).unwrap(), b"abc");
        h.insert("content-encoding", HeaderValue::from_static("br"));
        assert!(decode(&h, b"abc").is_err());
    }
}
