//! `vigil train`: train the model a config describes, or resume a run.

use std::path::PathBuf;

use vigil::run_log::say;

use super::RunEnd;

/// Train the model a config file describes, or resume a run. Exits 75 when SIGTERM, SIGINT or
/// SIGUSR1 interrupted it after writing a checkpoint (resume it to go on).
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The experiment config (TOML), e.g. configs/quickstart.toml.
    #[arg(required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its newest checkpoint, with the config it keeps
    /// (`--set epochs=N` trains it longer). With a CONFIG, `--resume auto` continues the
    /// run in the config's `run_dir` if it holds one, else starts it there.
    #[arg(long, value_name = "RUN_DIR|auto")]
    resume: Option<PathBuf>,
    /// Override a config value, e.g. --set optim.lr=0.1 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// When training ends (or is interrupted), write where the time went into the run
    /// directory's profile/: breakdown.txt (each part of the step, each monitor's hooks,
    /// service and sink time), stacks.folded, flamegraph.svg and monitors.svg. With
    /// `--resume` on a completed run: the profile of its last attempt.
    #[arg(long)]
    profile: bool,
}

/// Train or resume as `args` say; 75 (interrupted) when a signal stopped it after a checkpoint.
pub fn run(args: TrainArgs) -> anyhow::Result<RunEnd> {
    let TrainArgs {
        config,
        resume,
        overrides,
        profile,
    } = args;
    let resume = match (&config, resume) {
        (Some(_), Some(word)) if word.as_os_str() == "auto" => Some(vigil::train::Resume::Auto),
        (Some(_), Some(_)) => anyhow::bail!(vigil::Error::Usage {
            command: "vigil train",
            message: "with a CONFIG, --resume takes only `auto`; to continue a run directory, \
                      give `--resume RUN_DIR` without a CONFIG"
                .into(),
        }),
        (None, Some(word)) if word.as_os_str() == "auto" => {
            anyhow::bail!(vigil::Error::Usage {
                command: "vigil train",
                message: "`--resume auto` needs the CONFIG whose `run_dir` it continues: \
                          vigil train CONFIG --resume auto (for a directory named auto, give ./auto)"
                    .into(),
            })
        }
        (None, dir) => dir.map(vigil::train::Resume::Dir),
        (Some(_), None) => None,
    };
    let interrupt = super::install_interrupt()?;
    let request = vigil::train::TrainRequest {
        config,
        resume,
        overrides,
        interrupt: Some(interrupt),
    };
    let outcome = vigil::train::train(&request)?;
    // A run that was already complete is profiled from the run.json it has.
    if profile {
        let written = vigil::profile::write_profile(&outcome.run_dir)?;
        say(&format!(
            "profile: {} (breakdown.txt, flamegraph.svg)",
            written.display()
        ));
    }
    if let Some(signal) = outcome.interrupted {
        let signal = vigil::train::signal_name(signal);
        let run_dir = outcome.run_dir.display();
        match outcome.checkpoint_step {
            Some(step) if step == outcome.global_step => say(&format!(
                "interrupted by {signal} at step {step}: checkpoint written; continue with `vigil train --resume {run_dir}`"
            )),
            Some(step) => say(&format!(
                "interrupted by {signal} at step {}: the checkpoint could not be written (see run.json); \
                 `vigil train --resume {run_dir}` continues from step {step}",
                outcome.global_step
            )),
            None => say(&format!(
                "interrupted by {signal} at step {}: checkpoints are disabled (checkpoint.enabled = false), \
                 so this run cannot be resumed",
                outcome.global_step
            )),
        }
        return Ok(RunEnd::Interrupted);
    }
    if let Some(last) = outcome.summary.last() {
        say(&format!(
            "done: epoch {} in {:.1} s; val_acc {:.4}, val_loss {:.4}, best_val_loss {:.4}; results in {}",
            last.epoch,
            outcome.summary.seconds,
            last.val.accuracy,
            last.val.loss,
            outcome.best_val_loss.unwrap_or(f64::NAN),
            outcome.run_dir.display()
        ));
    }
    Ok(RunEnd::Done)
}
