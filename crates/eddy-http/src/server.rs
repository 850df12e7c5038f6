//! A small HTTP/1.1 server: enough for a JSON API, a metrics endpoint and a few static files.
//!
//! Requests are read with bounds on everything (request line and headers together at most
//! [`MAX_HEAD`] bytes and [`MAX_HEADERS`] lines; bodies, by `Content-Length` or chunked, at
//! most [`MAX_BODY`]); keep-alive is the default for HTTP/1.1. Framing follows RFC 9112: a
//! `Transfer-Encoding` not ending in `chunked`, or two different `Content-Length`s, is a 400;
//! with both `Content-Length` and `Transfer-Encoding`, the latter frames the body and the
//! connection closes after the response. It runs over any byte stream, so TLS is a wrapper
//! around the socket, not a second server.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest request line plus headers.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines.
pub const MAX_HEADERS: usize = 100;
/// Largest request body (a definitions import, a published message). The buffer grows with
/// the bytes that arrive, never with what a header claims.
pub const MAX_BODY: usize = 64 << 20;
/// Most trailer lines after a chunked body.
const MAX_TRAILERS: usize = 32;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    /// GET, PUT, …
    pub method: String,
    /// The path, still percent-encoded.
    pub path: String,
    /// The query string's pairs, decoded.
    pub query: Vec<(String, String)>,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The client.
    pub peer: SocketAddr,
    /// How the body (read separately) is delimited.
    pub body_framing: Framing,
    /// The connection closes after the response whatever the client asked: the request had
    /// both `Content-Length` and `Transfer-Encoding` (RFC 9112 6.1).
    pub must_close: bool,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// JSON.
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec(v).unwrap_or_default();
        body.push(b'\n');
        Response::new(status, "application/json", body)
    }

    /// No content.
    pub fn empty(status: u16) -> Response {
        Response::new(status, "text/plain", Vec::new())
    }
}

/// Why a request could not be read (answered with the status, then the connection closes).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client went away.
    #[error("connection closed")]
    Closed,
    /// Malformed or too large: the status to answer with.
    #[error("{1}")]
    Bad(u16, String),
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Decode `%XX` (and `+` as space when `plus` is set, for query strings).
pub fn percent_decode(s: &str, plus: bool) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    budget: &mut usize,
) -> Result<String, ReadError> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|_| ReadError::Closed)?;
    if n == 0 {
        return Err(ReadError::Closed);
    }
    if n > *budget {
        return Err(ReadError::Bad(431, "request head too large".into()));
    }
    *budget -= n;
    if !line.ends_with(b"\n") {
        return Err(ReadError::Closed);
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| ReadError::Bad(400, "request head is not UTF-8".into()))
}

/// Read `len` bytes onto `body`, growing it as they arrive.
async fn read_exactly<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    body: &mut Vec<u8>,
    len: usize,
) -> Result<(), ReadError> {
    let n = (&mut *r)
        .take(len as u64)
        .read_to_end(body)
        .await
        .map_err(|_| ReadError::Closed)?;
    if n < len {
        return Err(ReadError::Closed);
    }
    Ok(())
}

/// Read one request's head (None: the client closed between requests); the body follows with
/// [`read_body`], so a caller may look at the head (credentials) first.
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    peer: SocketAddr,
) -> Result<Option<Request>, ReadError> {
    let mut budget = MAX_HEAD;
    let line = match read_line(r, &mut budget).await {
        Err(ReadError::Closed) => return Ok(None),
        other => other?,
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(400, format!("bad request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(
            400,
            format!("unsupported version {version:?}"),
        ));
    }
    let mut headers = Vec::new();
    loop {
        let h = read_line(r, &mut budget).await?;
        if h.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ReadError::Bad(431, "too many headers".into()));
        }
        let Some((n, v)) = h.split_once(':') else {
            return Err(ReadError::Bad(400, format!("bad header line {h:?}")));
        };
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    if version == "HTTP/1.0" && !headers.iter().any(|(n, _)| n == "connection") {
        headers.push(("connection".into(), "close".into()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut q = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, true).map_err(|e| ReadError::Bad(400, e))?;
        let v = percent_decode(v, true).map_err(|e| ReadError::Bad(400, e))?;
        q.push((k, v));
    }
    // RFC 9112 6.1 and 6.3: a Transfer-Encoding whose last coding is not chunked leaves the
    // body's length unknown (400, then close); with Content-Length as well, Transfer-Encoding
    // decides, and the connection closes after the response (a smuggling attempt, perhaps)
    let last_coding = headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .rfind(|c| !c.is_empty());
    let chunked = match last_coding {
        None => false,
        Some(last) if last.eq_ignore_ascii_case("chunked") => true,
        Some(_) => {
            return Err(ReadError::Bad(
                400,
                "Transfer-Encoding does not end in chunked: the body's length is unknown".into(),
            ))
        }
    };
    let mut lengths = headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str());
    let first_length = lengths.next();
    if let Some(other) = lengths.find(|l| Some(*l) != first_length) {
        return Err(ReadError::Bad(
            400,
            format!(
                "Content-Length given twice ({:?} and {other:?})",
                first_length.unwrap_or_default()
            ),
        ));
    }
    let must_close = chunked && first_length.is_some();
    let length = match first_length {
        _ if chunked => None,
        None => None,
        Some(len) => {
            let len: usize = len
                .parse()
                .map_err(|_| ReadError::Bad(400, format!("bad Content-Length {len:?}")))?;
            if len > MAX_BODY {
                return Err(ReadError::Bad(413, format!("body over {MAX_BODY} bytes")));
            }
            Some(len)
        }
    };
    Ok(Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: q,
        headers,
        body: Vec::new(),
        peer,
        must_close,
        body_framing: if chunked {
            Framing::Chunked
        } else {
            Framing::Length(length.unwrap_or(0))
        },
    }))
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` bytes (0 without the header).
    Length(usize),
    /// Chunked transfer coding.
    Chunked,
}

/// Read the body of `req` (after its head), at most [`MAX_BODY`] bytes.
pub async fn read_body<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    req: &mut Request,
) -> Result<(), ReadError> {
    let mut body = Vec::new();
    match req.body_framing {
        Framing::Length(0) => {}
        Framing::Length(len) => read_exactly(r, &mut body, len).await?,
        Framing::Chunked => loop {
            let mut b = 1024;
            let size_line = read_line(r, &mut b).await?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| ReadError::Bad(400, format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                // trailers (bounded), then the blank line
                let mut trailers = 0;
                loop {
                    let mut b = 1024;
                    if read_line(r, &mut b).await?.is_empty() {
                        break;
                    }
                    trailers += 1;
                    if trailers > MAX_TRAILERS {
                        return Err(ReadError::Bad(431, "too many trailer lines".into()));
                    }
                }
                break;
            }
            if size > MAX_BODY - body.len() {
                return Err(ReadError::Bad(413, format!("body over {MAX_BODY} bytes")));
            }
            read_exactly(r, &mut body, size).await?;
            let mut b = 2;
            read_line(r, &mut b).await?;
        },
    }
    req.body = body;
    Ok(())
}

/// Write a response.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    resp: &Response,
    head_only: bool,
    close: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (n, v) in &resp.headers {
        head.push_str(n);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
    w.write_all(&out).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &[u8]) -> Result<Option<Request>, ReadError> {
        let mut r = BufReader::new(raw);
        let Some(mut req) = read_request(&mut r, "127.0.0.1:1".parse().unwrap()).await? else {
            return Ok(None);
        };
        read_body(&mut r, &mut req).await?;
        Ok(Some(req))
    }

    #[tokio::test]
    async fn requests_parse_with_bounds() {
        let r = parse(b"PUT /api/queues/%2F/q%20x?columns=a,b&x=1+2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, "/api/queues/%2F/q%20x");
        assert_eq!(r.param("x"), Some("1 2"));
        assert_eq!(r.body, b"{}");
        let r = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse(b"").await.unwrap().is_none());
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            parse(huge.as_bytes()).await,
            Err(ReadError::Bad(431, _))
        ));
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(matches!(
            parse(big.as_bytes()).await,
            Err(ReadError::Bad(413, _))
        ));
        assert!(matches!(
            parse(b"GARBAGE\r\n\r\n").await,
            Err(ReadError::Bad(400, _))
        ));
        assert_eq!(percent_decode("%2F", false).unwrap(), "/");
        assert!(percent_decode("%zz", false).is_err());
    }
}
