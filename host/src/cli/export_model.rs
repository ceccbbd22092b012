//! `vigil export-model`: a trained model from a run's checkpoint, as a file to deploy.

use std::path::PathBuf;

use super::RunEnd;

/// Write a trained model to a file to deploy: TorchScript for a TorchScript model, ONNX for
/// the built-in networks, and FILE.json beside it with the input shape, the normalisation the
/// inputs need and the class names.
#[derive(Debug, clap::Args)]
pub struct ExportModelArgs {
    /// The run directory (it holds checkpoints/ and inputs.json).
    run_dir: PathBuf,
    /// Which checkpoint: best (by validation loss; with early stopping's `restore_best`, the
    /// checkpoint it restored), last, or step_N.
    #[arg(long, default_value = "best", value_name = "best|last|step_N")]
    checkpoint: vigil::export::Which,
    /// Where to write the model (e.g. model.onnx or model.pt).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Export, warning of damaged checkpoints passed over.
pub fn run(args: ExportModelArgs) -> anyhow::Result<RunEnd> {
    let exported = vigil::export::export_model(&args.run_dir, args.checkpoint, &args.out)?;
    for warning in &exported.warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "{}: {} model from {}; inputs, normalisation and class names in {}",
        exported.file.display(),
        exported.format,
        exported.checkpoint.display(),
        exported.inputs_file.display()
    );
    Ok(RunEnd::Done)
}
