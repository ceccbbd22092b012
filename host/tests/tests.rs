//! Integration tests: real files on disk, the real `vigil` binary, real training.

mod cli;
mod experiment;
mod idx_files;
mod monitors;
mod plugin_loading;
mod training;
mod util;
