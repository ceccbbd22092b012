//! Integration tests: real files on disk, the real `vigil` binary, real training.

mod checkpoint_integrity;
mod cli;
mod curvature;
mod dashboard;
mod early_stopping;
mod experiment;
mod export;
mod fuzz;
mod idx_files;
mod init;
mod mlflow;
mod monitor_kit;
mod monitors;
mod notifications;
mod plugin_loading;
mod profile;
mod reliability;
mod resume;
mod run_log;
mod study;
mod system_metrics;
mod torchscript;
mod training;
mod trust;
mod util;
mod your_data;
