//! `vigil serve`: a read-only web dashboard over run and study directories: the runs list,
//! a run's charts (live while it trains), images, config and summary, a study's status, table
//! and report, and comparisons. One process, one thread per connection, no writes.
//!
//! - [`wire`]: HTTP/1.1 requests and responses, and server-sent events;
//! - [`paths`]: the served directories, and every path a request names, checked;
//! - [`api`]: the JSON of the runs list, a run, a study and a comparison;
//! - [`series`]: `metrics.jsonl` as chart series, read incrementally, thinned for drawing;
//! - [`live`]: the series endpoint, and the stream of new lines while a run trains;
//! - [`assets`]: the page and uPlot, embedded.
//!
//! Safe by default: it binds 127.0.0.1; bound elsewhere it requires a token. On loopback it
//! also refuses requests whose `Host` is not a loopback name, so that a web page the user
//! visits cannot read the runs by rebinding its own name to 127.0.0.1.

pub mod api;
pub mod assets;
pub mod live;
pub mod paths;
pub mod series;
pub mod wire;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use live::MetricsCache;
use paths::Roots;
use wire::{read_request, BadRequest, Request, Response};

/// The port `vigil serve` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 6070;
/// The environment variable that holds the access token.
pub const TOKEN_ENV: &str = "VIGIL_SERVE_TOKEN";
/// Connections served at once; more wait for the operating system's backlog.
const MAX_CONNECTIONS: usize = 128;
/// The cookie that carries the token after the first visit with `?token=`.
const TOKEN_COOKIE: &str = "vigil_token";

/// What `vigil serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub dirs: Vec<PathBuf>,
    pub host: IpAddr,
    pub port: u16,
    /// Required unless `host` is a loopback address.
    pub token: Option<String>,
}

/// A bound dashboard, ready to serve.
pub struct Server {
    listener: TcpListener,
    state: Arc<State>,
}

struct State {
    roots: Roots,
    token: Option<String>,
    loopback: bool,
    cache: MetricsCache,
    open: AtomicUsize,
}

impl Server {
    /// Check the options and bind.
    pub fn bind(options: &ServeOptions) -> Result<Server> {
        let loopback = options.host.is_loopback();
        let token = options.token.clone().filter(|t| !t.is_empty());
        if !loopback && token.is_none() {
            return Err(Error::Usage {
                command: "serve",
                message: format!(
                    "serving on {} makes the runs readable from other machines: give a token \
                     with --token or {TOKEN_ENV} (or serve on 127.0.0.1 and use an SSH tunnel)",
                    options.host
                ),
            });
        }
        if let Some(token) = &token {
            let plain = token
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b";,\"\\".contains(&b));
            if token.len() < 16 || !plain {
                return Err(Error::Usage {
 command: "serve",
                    message: "the token must be at least 16 characters, printable ASCII without                               spaces, quotes, `;`, `,` or `\\`"
                        .into(),
                });
            }
        }
        let roots = Roots::new(&options.dirs)?;
        let address = SocketAddr::new(options.host, options.port);
        let listener = TcpListener::bind(address).map_err(|err| Error::Usage {
            command: "serve",
            message: format!("cannot listen on {address}: {err} (choose another --port)"),
        })?;
        Ok(Server {
            listener,
            state: Arc::new(State {
                roots,
                token,
                loopback,
                cache: MetricsCache::default(),
                open: AtomicUsize::new(0),
            }),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serve until the process ends.
    pub fn run(self) {
        for stream in self.listener.incoming() {
            let Ok(stream) = stream else { continue };
            let state = Arc::clone(&self.state);
            if state.open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                state.open.fetch_sub(1, Ordering::SeqCst);
                let _ = Response::text(503, "too many connections\n").write_to(&mut &stream, false);
                continue;
            }
            let spawned = std::thread::Builder::new()
                .name("vigil-serve".into())
                .spawn(move || {
                    handle(&state, stream);
                    state.open.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                self.state.open.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

fn handle(state: &State, mut stream: TcpStream) {
    let request = match read_request(&stream) {
        Ok(request) => request,
        Err(BadRequest::Gone) => return,
        Err(BadRequest::TooLarge) => {
            let _ = Response::text(431, "request head too large\n").write_to(&mut stream, false);
            return;
        }
        Err(BadRequest::Malformed) => {
            let _ = Response::text(400, "bad request\n").write_to(&mut stream, false);
            return;
        }
    };
    let head_only = request.method == "HEAD";
    if request.method != "GET" && !head_only {
        let _ = Response::text(405, "read-only: GET only\n")
            .with_header("Allow", "GET, HEAD")
            .write_to(&mut stream, false);
        return;
    }
    if let Some(refused) = refuse(state, &request) {
        let _ = refused.write_to(&mut stream, head_only);
        return;
    }
    if request.path.as_deref() == Some("/api/events") && !head_only {
        let _ = live::events(&state.roots, &request, &mut stream);
        return;
    }
    let mut response = route(state, &request);
    let valid = |given: &&str| {
        state
            .token
            .as_deref()
            .is_some_and(|t| same(given.as_bytes(), t.as_bytes()))
    };
    if let Some(token) = request.param("token").filter(valid) {
        // The first visit carries the token in the URL; the page's own requests then carry
        // it as a cookie that scripts cannot read.
        response = response.with_header(
            "Set-Cookie",
            format!("{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"),
        );
    }
    let _ = response.write_to(&mut stream, head_only);
    let _ = stream.flush();
}

/// A response that refuses the request: a foreign `Host` on loopback, or a missing or wrong
/// token.
fn refuse(state: &State, request: &Request) -> Option<Response> {
    if state.loopback && !loopback_host(request.header("host").unwrap_or("")) {
        return Some(Response::text(
            421,
            "this dashboard answers to 127.0.0.1 and localhost only\n",
        ));
    }
    let token = state.token.as_deref()?;
    let cookie = request.header("cookie").and_then(|cookies| {
        cookies
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .find(|(name, _)| *name == TOKEN_COOKIE)
            .map(|(_, value)| value)
    });
    let bearer = request
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "));
    let given = [request.param("token"), cookie, bearer];
    if given
        .into_iter()
        .flatten()
        .any(|g| same(g.as_bytes(), token.as_bytes()))
    {
        None
    } else {
        Some(Response::text(
            401,
            "a token is required: open the address vigil serve printed (it carries ?token=…)\n",
        ))
    }
}

/// `Host` names a loopback address (with or without a port).
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn route(state: &State, request: &Request) -> Response {
    let Some(path) = request.path.as_deref() else {
        return Response::not_found();
    };
    match path {
        "/api/runs" => api::runs(&state.roots),
        "/api/run" => api::run(&state.roots, request),
        "/api/metrics" => live::metrics(&state.roots, &state.cache, request),
        "/api/file" => api::file(&state.roots, request),
        "/api/study" => api::study(&state.roots, request),
        "/api/compare" => api::compare_runs(&state.roots, request),
        _ => match assets::asset(path) {
            Some((content_type, bytes)) => Response::new(200, content_type, bytes),
            None => Response::not_found(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_only() {
        for host in [
            "127.0.0.1:6070",
            "localhost:1",
            "LOCALHOST",
            "[::1]:6070",
            "127.0.0.2",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in ["evil.example:6070", "10.0.0.1:6070", "", "localhost.evil:1"] {
            assert!(!loopback_host(host), "{host}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcdefgh", b"abcdefgh"));
        assert!(!same(b"abcdefgh", b"abcdefgx"));
        assert!(!same(b"abc", b"abcd"));
    }
}
