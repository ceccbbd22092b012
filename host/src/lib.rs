//! vigil: a libtorch training host whose monitors are shared-library plugins.
//!
//! The binary `vigil` is a thin CLI over this library. The pieces, by concept:
//!
//! - [`config`]: TOML and `--set` overrides → validated [`config::Settings`], with errors that
//!   point at the file, key and line;
//! - [`data`]: IDX, CIFAR-10, image folders, tensor files and the synthetic dataset, as bytes;
//! - [`model`]: the built-in networks (MLP, CNN, CIFAR ResNet-18) and TorchScript modules;
//! - [`train`]: the loop, validation, checkpoints, `vigil train` and `vigil check`;
//! - [`hub`]: one owner for a run's outputs ([`hub::RunHub`]): its monitors, its sinks and its
//!   directory; the trainer hands it events as data and it routes them;
//! - [`run_dir`]: the run directory as an interface: file names, `run.json` typed
//!   ([`run_dir::RunInfo`]), the lock, and the readers everything else uses;
//! - [`plugin`]: monitor plugins — find, check, load, dispatch, time, isolate;
//! - [`sink`]: where records go (`metrics.jsonl`, TensorBoard, the console), on threads of
//!   their own;
//! - [`study`]: grids of runs from a study file, run here or on SLURM, watched and exported;
//! - [`export`]: a trained model as TorchScript or ONNX;
//! - [`scaffold`]: `vigil new-monitor`;
//! - [`bench`]: what training and monitoring cost (`vigil bench`), measured through the
//!   trainer's and the hub's public interfaces;
//! - [`mlflow`]: `[mlflow]`, a run sent to an MLflow tracking server through an outbox in the
//!   run directory, and `vigil sync`;
//! - [`notify`]: `[[notify]]` webhooks (Slack, Discord, JSON), sent off the training thread;
//! - [`http`]: a blocking HTTP client with time-outs, for the MLflow sink and notifications;
//! - [`serve`]: `vigil serve`, a read-only web dashboard over run and study directories, live
//!   while runs train;
//! - [`compare`]: `vigil compare` and the dashboard's comparisons: runs side by side;
//! - [`profile`]: `vigil train --profile`, where a run's time went, as a table and a flame
//!   graph;
//! - [`fs`]: atomic, durable writes and cut-backs of the files a run keeps;
//! - [`interrupt`]: SIGTERM, SIGINT and SIGUSR1 stop a run cleanly, with a checkpoint;
//! - [`memory`]: the allocator settings training wants;
//! - [`run_log`]: `vigil.log`, the run's console lines and debug detail, rotated by size;
//! - [`system`]: memory, CPU, disk and GPU of a run, sampled on a thread of their own;
//! - [`rng`]: the seeded generator behind epoch orders, augmentation and samples shown.
//!
//! Arrows run one way: the CLI calls the trainer and the study; the trainer uses data, models
//! and the hub; the hub uses the plugin host, sinks and the run directory; studies read run
//! directories through [`run_dir`]; data, models and sinks know nothing of the loop. A step:
//! forward, loss, backward; the trainer emits `train_batch_end` to the hub, which calls the
//! monitors that want it in config order and routes what they logged to the sinks; the
//! optimizer steps; the step's record goes to the sinks, which write it off the training
//! thread.
//!
//! ```no_run
//! let outcome = vigil::train::train_from_file(std::path::Path::new("configs/quickstart.toml"))?;
//! println!("validation accuracy {:.4}", outcome.summary.last().unwrap().val.accuracy);
//! # Ok::<(), vigil::Error>(())
//! ```

pub mod bench;
pub mod compare;
pub mod config;
pub mod data;
mod error;
pub mod export;
pub mod fs;
pub mod http;
pub mod hub;
pub mod interrupt;
pub mod memory;
pub mod mlflow;
pub mod model;
pub mod notify;
pub mod plugin;
pub mod profile;
pub mod rng;
pub mod run_dir;
pub mod run_log;
pub mod scaffold;
pub mod serve;
pub mod sink;
pub mod study;
pub mod system;
pub mod train;

pub use error::{Error, Result};
