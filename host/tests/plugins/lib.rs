//! Nothing: the fixtures are this package's examples (see Cargo.toml).
