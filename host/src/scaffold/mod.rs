//! `vigil new-monitor`: a ready monitor crate to start from.
//!
//! The crate depends on `vigil-plugin-api` only (by path or by version), builds into a
//! loadable plugin with `cargo build --release`, and tests its monitor with the API's fake host
//! under `cargo test`, without libtorch.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const CARGO_TOML: &str = include_str!("Cargo.toml.in");
const LIB_RS: &str = include_str!("lib.rs.in");
const GITIGNORE: &str = include_str!("gitignore.in");

/// Where the new crate gets `vigil-plugin-api` from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSource {
    /// A checkout of vigil: `plugin-api/` in it, or the crate directory itself.
    Path(PathBuf),
    /// A version requirement, e.g. `1.3`, resolved from the registry.
    Version(String),
}

impl ApiSource {
    /// The `plugin-api` directory of the vigil source this binary was built from, when it is
    /// still there; otherwise this API's version.
    pub fn default_for_this_build() -> Self {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
        match source.join("Cargo.toml").is_file() {
            true => ApiSource::Path(source.canonicalize().unwrap_or(source)),
            false => ApiSource::Version(api_version_requirement()),
        }
    }

    /// The dependency line, with `features` when there are any.
    fn dependency(&self, features: &str) -> Result<String> {
        let location = match self {
            ApiSource::Path(path) => {
                let dir = if path.join("plugin-api/Cargo.toml").is_file() {
                    path.join("plugin-api")
                } else {
                    path.clone()
                };
                if !dir.join("Cargo.toml").is_file() {
                    return Err(Error::Usage {
                        command: "vigil new-monitor --api-path",
                        message: format!(
                            "{} holds no Cargo.toml of vigil-plugin-api (give the plugin-api directory of a vigil checkout)",
                            path.display()
                        ),
                    });
                }
                let dir = dir.canonicalize().map_err(|err| Error::io(&dir, err))?;
                let text = dir.to_str().ok_or_else(|| Error::Usage {
                    command: "vigil new-monitor --api-path",
                    message: format!("{} is not valid UTF-8", dir.display()),
                })?;
                format!("path = {}", toml_string(text))
            }
            ApiSource::Version(version) => format!("version = {}", toml_string(version)),
        };
        Ok(format!("vigil-plugin-api = {{ {location}{features} }}"))
    }
}

/// `major.minor` of the API this host was built with: a new crate asks for at least that.
fn api_version_requirement() -> String {
    let mut parts = vigil_plugin_api::API_VERSION.split('.');
    format!(
        "{}.{}",
        parts.next().unwrap_or("1"),
        parts.next().unwrap_or("0")
    )
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// What `vigil new-monitor` wrote.
#[derive(Debug, Clone)]
pub struct NewMonitor {
    pub dir: PathBuf,
    /// The library `cargo build --release` writes, relative to `dir`.
    pub library: PathBuf,
    pub api: ApiSource,
}

impl NewMonitor {
    /// What to do next, for the console.
    pub fn instructions(&self) -> String {
        let dir = self.dir.display();
        let from = match &self.api {
            ApiSource::Path(path) => format!("vigil-plugin-api from {}", path.display()),
            ApiSource::Version(version) => format!("vigil-plugin-api {version} from the registry"),
        };
        format!(
            "wrote {dir} ({from})\n\
             next:\n  cd {dir}\n  cargo test                 # the monitor's unit test, on the fake host\n  \
             cargo build --release      # writes {library}\n  \
             vigil plugins add {library}\n\
             then list it in a config: [[monitors]] name = \"{name}\"\n",
            library = self.library.display(),
            name = self
                .dir
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
        )
    }
}

/// Check a monitor name: lowercase ASCII letters, digits and `-`, starting with a letter, at
/// most 64 characters (a crate name and a file name on every system).
pub fn check_name(name: &str) -> Result<()> {
    let valid = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(Error::Usage {
            command: "vigil new-monitor",
            message: format!(
                "`{name}` is not a monitor name: use lowercase letters, digits and `-`, starting with a letter (e.g. `loss-watch`), at most 64 characters"
            ),
        })
    }
}

/// `loss-watch` → `LossWatch`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Write the crate of monitor `name` into `dir` (default `./name`), which must not exist or
/// be empty. Nothing is written when a check fails.
pub fn new_monitor(name: &str, dir: Option<&Path>, api: ApiSource) -> Result<NewMonitor> {
    check_name(name)?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    let occupied = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
    if occupied || dir.is_file() {
        return Err(Error::Usage {
            command: "vigil new-monitor",
            message: format!(
                "{} already exists and is not empty; give --dir a new directory",
                dir.display()
            ),
        });
    }
    let library = name.replace('-', "_");
    let dependency = api.dependency("")?;
    let dev_dependency = api.dependency(", features = [\"testing\"]")?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{library}}", &library)
            .replace("{{type}}", &type_name(name))
            .replace("{{dependency}}", &dependency)
            .replace("{{dev_dependency}}", &dev_dependency)
    };
    let src = dir.join("src");
    std::fs::create_dir_all(&src).map_err(|err| Error::io(&src, err))?;
    for (file, template) in [
        (dir.join("Cargo.toml"), CARGO_TOML),
        (src.join("lib.rs"), LIB_RS),
        (dir.join(".gitignore"), GITIGNORE),
    ] {
        std::fs::write(&file, fill(template)).map_err(|err| Error::io(&file, err))?;
    }
    Ok(NewMonitor {
        library: PathBuf::from(format!("target/release/lib{library}.so")),
        dir,
        api,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_crates_types_and_libraries() {
        assert_eq!(type_name("loss-watch"), "LossWatch");
        assert_eq!(type_name("demo2"), "Demo2");
        for bad in ["", "Demo", "2x", "a_b", "a-", "a b", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("loss-watch-2").is_ok());
    }

    #[test]
    fn writes_a_crate_and_never_over_an_existing_one() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("loss-watch");
        let api = ApiSource::Version("1.3".into());
        let made = new_monitor("loss-watch", Some(&dir), api.clone()).unwrap();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("vigil-plugin-api = { version = \"1.3\" }"));
        assert!(manifest.contains("features = [\"testing\"]"));
        let source = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(source.contains("impl Monitor for LossWatch"));
        assert!(!source.contains("{{"), "every placeholder is filled");
        assert_eq!(made.library, Path::new("target/release/libloss_watch.so"));
        let again = new_monitor("loss-watch", Some(&dir), api).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
        assert_eq!(
            std::fs::read_to_string(dir.join("Cargo.toml")).unwrap(),
            manifest
        );
    }

    #[test]
    fn a_path_must_hold_the_api_crate() {
        let root = tempfile::tempdir().unwrap();
        let err = new_monitor(
            "demo",
            Some(&root.path().join("demo")),
            ApiSource::Path(root.path().to_path_buf()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("holds no Cargo.toml"), "{err}");
        assert!(!root.path().join("demo").exists(), "nothing written");
    }
}
