//! `vigil plugins`: list the plugin libraries, or add one to your plugin directory.

use std::path::PathBuf;

use clap::Subcommand;

use super::RunEnd;

/// List every plugin library in the plugin directories with its name, version, sha256 and
/// whether a run could load it.
#[derive(Debug, clap::Args)]
pub struct PluginsArgs {
    #[command(subcommand)]
    pub action: Option<PluginsAction>,
    /// A directory to list (repeatable). Default: <exe dir>/plugins, <exe dir> when it is
    /// a Cargo build directory, and $XDG_DATA_HOME/vigil/plugins (~/.local/share/vigil/plugins).
    #[arg(long = "dir", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Do not load legacy libraries to read their identity.
    #[arg(long)]
    pub no_load: bool,
}

#[derive(Debug, Subcommand)]
pub enum PluginsAction {
    /// Check a plugin library (owner, permissions, an ELF library for this machine exporting a
    /// vigil plugin of this API) without running any of it, copy it into your plugin
    /// directory ($XDG_DATA_HOME/vigil/plugins) with mode 0644, and print its sha256 and the
    /// config lines that enable and pin it.
    Add {
        /// The plugin's .so file.
        file: PathBuf,
        /// Install into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

pub fn run(args: PluginsArgs) -> anyhow::Result<RunEnd> {
    match args.action {
        Some(PluginsAction::Add { file, dir }) => {
            let dir = dir.or_else(vigil::plugin::user_plugin_dir).ok_or_else(|| {
                anyhow::anyhow!(vigil::Error::Config {
                    location: "vigil plugins add".into(),
                    message:
                        "neither XDG_DATA_HOME nor HOME is set to an absolute path; give --dir DIR"
                            .into(),
                })
            })?;
            let added = vigil::plugin::dirs::add(&file, &dir)?;
            print!("{}", added.instructions());
            Ok(RunEnd::Done)
        }
        None => {
            let dirs = if args.dirs.is_empty() {
                vigil::plugin::default_plugin_dirs()
            } else {
                args.dirs
            };
            print!("{}", vigil::plugin::listing(&dirs, false, !args.no_load));
            Ok(RunEnd::Done)
        }
    }
}
