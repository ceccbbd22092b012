//! `vigil new-monitor`: a ready monitor crate to start from.

use std::path::PathBuf;

use super::RunEnd;

/// Write a new monitor crate to start from: Cargo.toml, src/lib.rs with settings, one hook,
/// state for resume and a unit test on the API's fake host. `cargo test` tests it (no
/// libtorch needed); `cargo build --release` builds the plugin.
#[derive(Debug, clap::Args)]
pub struct NewMonitorArgs {
    /// The monitor's name (lowercase letters, digits and `-`), also the crate's.
    name: String,
    /// Where to write the crate (default: ./NAME); must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Depend on vigil-plugin-api in this directory (a vigil checkout or its plugin-api/).
    /// Default: the source this vigil was built from, when it is still there.
    #[arg(long, value_name = "PATH", conflicts_with = "api_version")]
    api_path: Option<PathBuf>,
    /// Depend on this version of vigil-plugin-api from the registry instead (e.g. 1.3).
    #[arg(long, value_name = "VERSION")]
    api_version: Option<String>,
}

/// Write the crate and say how to build and test it.
pub fn run(args: NewMonitorArgs) -> anyhow::Result<RunEnd> {
    let api = match (args.api_path, args.api_version) {
        (Some(path), _) => vigil::scaffold::ApiSource::Path(path),
        (None, Some(version)) => vigil::scaffold::ApiSource::Version(version),
        (None, None) => vigil::scaffold::ApiSource::default_for_this_build(),
    };
    let made = vigil::scaffold::new_monitor(&args.name, args.dir.as_deref(), api)?;
    print!("{}", made.instructions());
    Ok(RunEnd::Done)
}
