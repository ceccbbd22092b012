//! The stable boundary between the vigil training host and its monitor plugins.
//!
//! A monitor plugin is a `cdylib` that links this crate and nothing else: it never links
//! libtorch. The host hands a plugin scalars, CPU copies of the data it subscribed to, and
//! capabilities such as a Hessian-vector product; the plugin hands back metrics and artifacts.
//!
//! This first release fixes the version contract only; the monitor interface, the host
//! capabilities and the SDK land with the plugin-ABI work.

/// The major version of the plugin interface. A host loads plugins of the same major version
/// that were built against the same or a newer minor release of this crate.
pub const API_MAJOR_VERSION: u32 = 1;

/// This crate's version, as the host reports it in `vigil plugins`.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_matches_the_crate_version() {
        let major: u32 = API_VERSION
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert_eq!(major, API_MAJOR_VERSION);
    }
}
