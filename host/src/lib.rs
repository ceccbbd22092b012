//! vigil: a libtorch training host whose monitors are shared-library plugins.
//!
//! The binary `vigil` is a thin CLI over this library. The pieces, by concept:
//!
//! - [`config`]: TOML → validated [`config::Settings`], with errors that point at the line;
//! - [`data`]: IDX (MNIST, Fashion-MNIST) and the built-in synthetic dataset, as plain bytes;
//! - [`model`]: the networks (MLP, small CNN);
//! - [`train`]: the loop, evaluation, the run directory;
//! - [`plugin`]: monitor plugins — find, check, load, dispatch, time, isolate;
//! - [`bench`]: what training and monitoring cost (`vigil bench`);
//! - [`study`]: grids of runs from a study file, run here or on SLURM, watched and exported;
//! - [`fs`]: atomic, durable writes and cut-backs of the files a run keeps;
//! - [`interrupt`]: SIGTERM, SIGINT and SIGUSR1 stop a run cleanly, with a checkpoint;
//! - [`memory`]: the allocator settings training wants;
//! - [`sink`]: where metrics go (`metrics.jsonl`, the console).
//!
//! Arrows run one way: the CLI calls the trainer; the trainer uses data, models and sinks;
//! data, models and sinks know nothing of the loop.
//!
//! ```no_run
//! let outcome = vigil::train::train_from_file(std::path::Path::new("configs/quickstart.toml"))?;
//! println!("validation accuracy {:.4}", outcome.summary.last().unwrap().val.accuracy);
//! # Ok::<(), vigil::Error>(())
//! ```

pub mod bench;
pub mod config;
pub mod data;
mod error;
pub mod export;
pub mod fs;
pub mod hub;
pub mod interrupt;
pub mod memory;
pub mod model;
pub mod plugin;
pub mod rng;
pub mod run_dir;
pub mod scaffold;
pub mod sink;
pub mod study;
pub mod train;

pub use error::{Error, Result};
