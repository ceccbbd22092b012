//! What the trainer computes for monitors on request, as the plugin host sees it: the seam
//! between the hooks' host view and libtorch.

use vigil_plugin_api::per_sample;
use vigil_plugin_api::{GradientEma, ProbeSpec};

/// What the training loop computes for monitors on request. Implemented where libtorch lives
/// (the trainer); everything here runs on the training thread.
pub trait HostServices {
    /// L2 norm of each trainable parameter's gradient (0 where there is none).
    fn grad_norms(&self) -> crate::Result<Vec<f64>>;
    /// L2 norm of each trainable parameter.
    fn weight_norms(&self) -> crate::Result<Vec<f64>>;
    /// All gradients, flattened in parameter order, into `out` (resized to fit; its
    /// allocation is reused from step to step).
    fn gradient_into(&self, out: &mut Vec<f32>) -> crate::Result<()>;
    /// The same, without a copy, where the trainer keeps its gradients that way.
    fn gradient_view(&self) -> Option<&[f32]> {
        None
    }
    /// `out = H · vector` for the mean loss on the probe subsample; returns the probe loss.
    fn hessian_vector_product(
        &self,
        probe: &ProbeSpec,
        vector: &[f32],
        out: &mut [f32],
    ) -> crate::Result<f64>;
    /// Mean loss on the probe subsample.
    fn probe_loss(&self, probe: &ProbeSpec) -> crate::Result<f64>;
    /// The hook that asked for Hessian-vector products has returned: drop anything kept to
    /// make the next product cheaper within that hook (autograd graphs).
    fn release_probe_state(&self) {}
    /// Fold the gradient of training step `step` into the moving averages (decay `beta`) kept
    /// for monitor `owner`, once per step; a new `beta` starts them afresh.
    fn update_gradient_ema(&self, _owner: usize, _beta: f64, _step: u64) -> crate::Result<()> {
        Err(crate::Error::Capability(
            "this host keeps no gradient averages".into(),
        ))
    }
    /// Monitor `owner`'s gradient averages, if it has updated them.
    fn gradient_ema(&self, _owner: usize) -> crate::Result<Option<GradientEma>> {
        Ok(None)
    }
    /// Serve monitor `owner` individual gradients (and the parameters' motion) at the steps
    /// `schedule` covers.
    fn schedule_per_sample(
        &self,
        _owner: usize,
        _schedule: per_sample::Schedule,
    ) -> crate::Result<()> {
        Err(no_per_sample())
    }
    /// This step's statistics of the individual gradients.
    fn per_sample_stats(&self) -> crate::Result<per_sample::PerSampleStats> {
        Err(no_per_sample())
    }
    /// `Σₙ gₙ²` in the flattened gradient's order.
    fn per_sample_second_moment(&self) -> crate::Result<Vec<f32>> {
        Err(no_per_sample())
    }
    /// Histograms of the individual gradients' elements.
    fn per_sample_histograms(
        &self,
        _spec: &per_sample::HistogramSpec,
    ) -> crate::Result<per_sample::Histograms> {
        Err(no_per_sample())
    }
    /// The last update made at a motion step.
    fn last_update(&self) -> crate::Result<per_sample::LastUpdate> {
        Err(no_per_sample())
    }
    /// `‖θ − θ₀‖` per parameter.
    fn distance_from_init(&self) -> crate::Result<Vec<f64>> {
        Err(no_per_sample())
    }
}

fn no_per_sample() -> crate::Error {
    crate::Error::Capability("this host computes no individual gradients".into())
}
