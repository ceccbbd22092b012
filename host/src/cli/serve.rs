//! `vigil serve`: the web dashboard.

use std::net::IpAddr;
use std::path::PathBuf;

use super::RunEnd;
use vigil::serve::{ServeOptions, Server, DEFAULT_PORT, TOKEN_ENV};

/// Serve a read-only dashboard of the run and study directories under DIR (default `runs`).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Directories that hold run or study directories (or are one).
    #[arg(value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// The address to listen on. Anything but a loopback address needs a token.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// The access token (at least 16 characters), also read from VIGIL_SERVE_TOKEN.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<RunEnd> {
    let dirs = if args.dirs.is_empty() {
        vec![PathBuf::from("runs")]
    } else {
        args.dirs
    };
    let options = ServeOptions {
        dirs,
        host: args.host,
        port: args.port,
        token: args.token,
    };
    let server = Server::bind(&options)?;
    let address = server.local_addr().map_or_else(
        || format!("{}:{}", options.host, options.port),
        |a| a.to_string(),
    );
    let shown: Vec<String> = options
        .dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    match &options.token {
        Some(token) if !options.host.is_loopback() => {
            tracing::warn!(
                "serving on {address}, reachable from other machines (read-only, token required; \
                 HTTP is not encrypted: prefer 127.0.0.1 and an SSH tunnel)"
            );
            println!(
                "vigil serve: http://{address}/?token={token} ({})",
                shown.join(", ")
            );
        }
        _ => println!("vigil serve: http://{address}/ ({})", shown.join(", ")),
    }
    server.run();
    Ok(RunEnd::Done)
}
