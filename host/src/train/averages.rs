//! Moving averages of the gradient the host keeps on the training device for monitors
//! (`query::GradientEma`), saved in checkpoints and restored on resume.

use std::cell::RefCell;
use std::collections::HashMap;

use tch::{Device, Tensor};

use crate::error::{Error, Result};

/// Exponential moving averages of the gradient, kept on the training device for the monitors
/// that ask for them (by monitor index), so that no monitor copies the whole gradient off the
/// device every step to average it.
#[derive(Default)]
pub(super) struct GradientAverages(pub(super) RefCell<HashMap<usize, GradientEma>>);

impl GradientAverages {
    /// Every monitor's averages, for a checkpoint: the scalars, and the EMA tensors named
    /// `gradient_ema.<owner>`.
    pub fn snapshot(
        &self,
    ) -> (
        Vec<super::checkpoint::SavedGradientAverage>,
        Vec<(String, Tensor)>,
    ) {
        let averages = self.0.borrow();
        let mut owners: Vec<&usize> = averages.keys().collect();
        owners.sort();
        owners
            .into_iter()
            .map(|&owner| {
                let ema = &averages[&owner];
                (
                    super::checkpoint::SavedGradientAverage {
                        owner,
                        beta: ema.beta,
                        mean_square: ema.mean_square,
                        updates: ema.updates,
                        last_step: ema.last_step,
                    },
                    (format!("gradient_ema.{owner}"), ema.mean.shallow_clone()),
                )
            })
            .unzip()
    }

    /// Put back what [`GradientAverages::snapshot`] saved, on `device`.
    pub fn restore(
        &self,
        saved: &[super::checkpoint::SavedGradientAverage],
        tensors: &[(String, Tensor)],
        device: Device,
    ) -> Result<()> {
        let mut averages = self.0.borrow_mut();
        averages.clear();
        for entry in saved {
            let name = format!("gradient_ema.{}", entry.owner);
            let mean = tensors
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.f_to_device(device))
                .transpose()?
                .ok_or_else(|| Error::DataCorrupt {
                    path: "host.safetensors".into(),
                    reason: format!("lacks the tensor `{name}`"),
                })?;
            averages.insert(
                entry.owner,
                GradientEma {
                    beta: entry.beta,
                    mean,
                    mean_square: entry.mean_square,
                    updates: entry.updates,
                    last_step: entry.last_step,
                },
            );
        }
        Ok(())
    }
}

/// `Σ x²` of a 1-D tensor, as a 0-d tensor. ATen's norm reduction splits the work by index
/// and accumulates in double; BLAS `dot` (what `Tensor::dot` calls on the CPU) may sum in an
/// order that depends on the buffers' alignment, so a resumed run, whose buffers are new,
/// would not reproduce the uninterrupted run's last bits.
pub(super) fn squared_norm(values: &Tensor) -> Result<Tensor> {
    Ok(values.f_norm()?.f_square()?)
}

/// One monitor's averages.
pub(super) struct GradientEma {
    pub(super) beta: f64,
    /// EMA of the flattened gradient (`f32`, on the device).
    pub(super) mean: Tensor,
    /// EMA of `Σ g² / numel`.
    pub(super) mean_square: f64,
    pub(super) updates: u64,
    /// The step last folded in.
    pub(super) last_step: Option<u64>,
}
