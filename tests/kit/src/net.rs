//! Loopback networking for tests: free ports, address parsing, and a raw HTTP/1.1 client that
//! sends exactly the bytes written (no path normalization, no added headers but `Host`,
//! `Connection: close` and a body's `Content-Length`).
//!
//! Rules: one request per connection, read to the end, bounded by a timeout; chunked bodies are
//! decoded. [`raw_http`] is the async form, [`raw_http_blocking`] (and [`http_get`]) the
//! blocking one; both share the request writer and the answer parser.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// How long a raw exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A loopback port free right now (the OS picks it; another process may take it later).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `s` (trimmed) as a socket address.
pub fn parse_addr(s: &str) -> Result<SocketAddr> {
    s.trim()
        .parse()
        .with_context(|| format!("not a socket address: {s:?}"))
}

/// An answer read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased, in the order received (repeats kept).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The request's bytes, sent in one write: a server that answers before reading the body must
/// still have read it all, or its close turns into a reset that swallows the answer.
fn request_bytes(
    host: &str,
    method: &str,
    path: &str,
    head_lines: &[String],
    body: &[u8],
) -> Vec<u8> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for line in head_lines {
        request.push_str(line);
        request.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends one HTTP/1.1 request exactly as written (like `curl --path-as-is`) and reads the
/// answer to the end. `head_lines` are extra header lines (`Name: value`).
pub async fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    head_lines: &[String],
    body: &[u8],
) -> Result<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(&request_bytes(
            &addr.to_string(),
            method,
            path,
            head_lines,
            body,
        ))
        .await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => bail!("no complete answer within {EXCHANGE_TIMEOUT:?}"),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            // A reset after the whole answer arrived (the server closed with our bytes unread).
            Ok(Err(e)) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                break
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    parse_raw_response(&raw)
}

/// [`raw_http`] on a blocking socket; `addr` is `HOST:PORT`.
pub fn raw_http_blocking(
    addr: &str,
    method: &str,
    path: &str,
    head_lines: &[String],
    body: &[u8],
) -> Result<RawResponse> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.write_all(&request_bytes(addr, method, path, head_lines, body))?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(e.into()),
    }
    parse_raw_response(&raw)
}

/// A bare GET against a loopback `HOST:PORT`; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    http_get_with(addr, path, &[])
}

/// [`http_get`] with extra request headers.
pub fn http_get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let lines: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let r = raw_http_blocking(addr, "GET", path, &lines, b"")?;
    Ok((r.status, r.body))
}

fn parse_raw_response(raw: &[u8]) -> Result<RawResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no header end in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = body.as_slice();
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| anyhow!("truncated chunked body"))?;
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 {
                bail!("truncated chunk");
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok(RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
