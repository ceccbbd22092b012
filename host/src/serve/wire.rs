//! HTTP/1.1 on a socket, as little of it as a read-only dashboard needs: one GET (or HEAD) a
//! connection, headers capped in size, a response with a length or an event stream. Written
//! here rather than taken from a server crate because the event stream must flush each event
//! as it is written, and the whole surface (what is parsed, what is answered) stays small
//! enough to read in one sitting.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The longest request line plus headers read before answering 431.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoded; `None` when the decoding is not UTF-8 or holds a NUL.
    pub path: Option<String>,
    /// The query's parameters, percent-decoded, in order (a key may repeat).
    pub query: Vec<(String, String)>,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The last value of a query parameter.
    pub fn param<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.params(name).last()
    }

    /// Every value of a query parameter, in order.
    pub fn params<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Why no request could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// The client closed or timed out before a full head.
    Gone,
    TooLarge,
    Malformed,
}

/// Read one request's head from the stream.
pub fn read_request(stream: &TcpStream) -> Result<Request, BadRequest> {
    stream.set_read_timeout(Some(READ_TIMEOUT)).ok();
    let mut reader = BufReader::new(stream.take(MAX_HEAD as u64 + 1));
    let mut head = Vec::new();
    loop {
        let before = head.len();
        match reader.read_until(b'\n', &mut head) {
            Ok(0) | Err(_) => {
                return Err(if head.len() > MAX_HEAD {
                    BadRequest::TooLarge
                } else {
                    BadRequest::Gone
                })
            }
            Ok(_) => {}
        }
        if head.len() > MAX_HEAD {
            return Err(BadRequest::TooLarge);
        }
        if matches!(&head[before..], b"\r\n" | b"\n") {
            break;
        }
    }
    parse_head(&head)
}

/// Parse a request line and headers.
pub fn parse_head(head: &[u8]) -> Result<Request, BadRequest> {
    let text = std::str::from_utf8(head).map_err(|_| BadRequest::Malformed)?;
    let mut lines = text.split('\n').map(|line| line.trim_end_matches('\r'));
    let request_line = lines.next().ok_or(BadRequest::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(BadRequest::Malformed);
    }
    let mut headers = BTreeMap::new();
    for line in lines.take_while(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(BadRequest::Malformed)?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(key, true)?, decode(value, true)?))
        })
        .collect();
    Ok(Request {
        method: method.to_string(),
        path: decode(path, false),
        query,
        headers,
    })
}

/// Percent-decode (and `+` as a space in a query); `None` for bad escapes, non-UTF-8 or NUL.
pub fn decode(text: &str, query: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.contains('\0')).then_some(text)
}

/// A complete response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra headers (name, value).
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub fn json(value: &impl serde::Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        Response::new(200, "application/json", body)
    }

    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Response::new(
            status,
            "text/plain; charset=utf-8",
            text.into().into_bytes(),
        )
    }

    pub fn not_found() -> Self {
        Response::text(404, "not found\n")
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Write the response; `head_only` leaves the body out (HEAD).
    pub fn write_to(&self, stream: &mut impl Write, head_only: bool) -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in SECURITY_HEADERS.iter().chain(
            self.headers
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect::<Vec<_>>()
                .iter(),
        ) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        if !head_only {
            stream.write_all(&self.body)?;
        }
        stream.flush()
    }
}

/// Sent with every answer: no framing by other sites, no sniffing, no scripts or requests
/// to anywhere but this server, no caching of run data.
const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    ),
    ("Cache-Control", "no-store"),
];

/// Start a server-sent event stream.
pub fn start_event_stream(stream: &mut impl Write) -> std::io::Result<()> {
    let mut head =
        String::from("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n");
    for (name, value) in SECURITY_HEADERS {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()
}

/// Write one event (`data` must not hold a newline: JSON from serde has none) and flush it.
pub fn write_event(stream: &mut impl Write, event: &str, data: &str) -> std::io::Result<()> {
    debug_assert!(!data.contains('\n'));
    write!(stream, "event: {event}\ndata: {data}\n\n")?;
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_parses_with_decoded_path_and_query() {
        let request = parse_head(
            b"GET /api/run%20x?run=0%2Fa%2Fb&flag&q=a+b HTTP/1.1\r\nHost: 127.0.0.1:6070\r\nX-Y:  z \r\n\r\n",
        )
        .unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path.as_deref(), Some("/api/run x"));
        assert_eq!(request.param("run"), Some("0/a/b"));
        assert_eq!(request.param("flag"), Some(""));
        assert_eq!(request.param("q"), Some("a b"));
        let repeated = parse_head(b"GET /?run=a&run=b%2Fc HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(repeated.params("run").collect::<Vec<_>>(), ["a", "b/c"]);
        assert_eq!(request.header("host"), Some("127.0.0.1:6070"));
        assert_eq!(request.header("x-y"), Some("z"));
    }

    #[test]
    fn bad_heads_and_escapes_are_refused() {
        for head in [
            &b"GET\r\n\r\n"[..],
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"GET / SPDY\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        ] {
            assert_eq!(parse_head(head), Err(BadRequest::Malformed), "{head:?}");
        }
        assert_eq!(decode("%2e%2e/x", false).as_deref(), Some("../x"));
        assert_eq!(decode("a%00b", false), None);
        assert_eq!(decode("%zz", false), None);
        assert_eq!(decode("%2", false), None);
        assert_eq!(decode("%ff", false), None);
        assert_eq!(decode("a+b", false).as_deref(), Some("a+b"));
    }
}
