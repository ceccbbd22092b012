//! A small blocking HTTP client (ureq, TLS by rustls) for the MLflow sink and notifications:
//! every call has a time-out, every answer comes back whatever its status, and an error names
//! the server by scheme and host only, since a webhook's path is its secret.

use std::time::Duration;

/// An answer: the status and the body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text, cut to `limit` characters, for messages.
    pub fn text(&self, limit: usize) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(limit)
            .collect()
    }
}

/// A client with one time-out for each whole call.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Http")
    }
}

/// What a failed call says: the server (scheme and host) and why, never the URL's path.
pub type CallError = String;

impl Http {
    pub fn new(timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")))
            .build();
        Http {
            agent: config.into(),
        }
    }

    /// POST `body` as JSON.
    pub fn post_json(
        &self,
        url: &str,
        body: &[u8],
        headers: &[(String, String)],
    ) -> Result<Response, CallError> {
        let request = self.agent.post(url);
        send(url, request, "application/json", body, headers)
    }

    /// GET with query parameters.
    pub fn get(
        &self,
        url: &str,
        query: &[(&str, &str)],
        headers: &[(String, String)],
    ) -> Result<Response, CallError> {
        let mut request = self.agent.get(url);
        for (name, value) in query {
            request = request.query(*name, *value);
        }
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        finish(url, request.call())
    }

    /// PUT `body` as bytes.
    pub fn put(
        &self,
        url: &str,
        body: &[u8],
        headers: &[(String, String)],
    ) -> Result<Response, CallError> {
        let request = self.agent.put(url);
        send(url, request, "application/octet-stream", body, headers)
    }
}

/// Send a request with a body of `content_type` and the given headers.
fn send(
    url: &str,
    request: ureq::RequestBuilder<ureq::typestate::WithBody>,
    content_type: &str,
    body: &[u8],
    headers: &[(String, String)],
) -> Result<Response, CallError> {
    let mut request = request.header("Content-Type", content_type);
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    finish(url, request.send(body))
}

fn finish(
    url: &str,
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Response, CallError> {
    let mut response = sent.map_err(|err| describe(url, &err))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .map_err(|err| describe(url, &err))?;
    Ok(Response { status, body })
}

/// `http://host:port`: a URL without its path, query or credentials.
pub fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{host}")
}

fn describe(url: &str, err: &ureq::Error) -> CallError {
    let why = match err {
        ureq::Error::Timeout(_) => "timed out".to_string(),
        ureq::Error::Io(io) => io.kind().to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        other => {
            // ureq's own words may quote the URL: keep them out, but the kind of failure in.
            let text = other.to_string();
            let path_free = text.replace(url, &origin(url));
            path_free.chars().take(200).collect()
        }
    };
    format!("{}: {why}", origin(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_keeps_no_path_query_or_credentials() {
        assert_eq!(
            origin("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            origin("http://user:pw@127.0.0.1:5000/api?x=1"),
            "http://127.0.0.1:5000"
        );
    }

    #[test]
    fn an_unreachable_server_is_an_error_naming_only_its_origin() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/secret/path");
        let err = Http::new(Duration::from_secs(2))
            .post_json(&url, b"{}", &[])
            .unwrap_err();
        assert!(
            err.starts_with(&format!("http://127.0.0.1:{port}: ")),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
    }
}
