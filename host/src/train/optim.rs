//! SGD (momentum, Nesterov, L2 weight decay) and AdamW (decoupled weight decay), written on
//! tensors so that their state can be checkpointed and restored exactly. The update rules are
//! PyTorch's `torch.optim.SGD` (dampening 0) and `torch.optim.AdamW`.

use tch::{Kind, Tensor};

use crate::config::{OptimKind, OptimSettings};
use crate::error::{Error, Result};

/// The optimizer state of one parameter.
#[derive(Debug, Default)]
struct ParamState {
    /// SGD momentum buffer, or AdamW's first moment.
    first: Option<Tensor>,
    /// AdamW's second moment.
    second: Option<Tensor>,
}

/// An optimizer over a fixed list of parameters.
#[derive(Debug)]
pub struct Optimizer {
    settings: OptimSettings,
    parameters: Vec<Tensor>,
    state: Vec<ParamState>,
    /// Steps taken (AdamW's bias correction uses it).
    steps: u64,
}

impl Optimizer {
    pub fn new(settings: &OptimSettings, parameters: Vec<Tensor>) -> Self {
        let state = parameters.iter().map(|_| ParamState::default()).collect();
        Optimizer {
            settings: settings.clone(),
            parameters,
            state,
            steps: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for parameter in &mut self.parameters {
            let mut grad = parameter.grad();
            if grad.defined() {
                let _ = grad.detach_();
                let _ = grad.zero_();
            }
        }
    }

    /// The global L2 norm of all gradients.
    pub fn grad_norm(&self) -> Result<f64> {
        let mut squares = Vec::with_capacity(self.parameters.len());
        for parameter in &self.parameters {
            let grad = parameter.grad();
            if grad.defined() {
                squares.push(
                    grad.f_to_kind(Kind::Double)?
                        .f_square()?
                        .f_sum(Kind::Double)?,
                );
            }
        }
        if squares.is_empty() {
            return Ok(0.0);
        }
        Ok(Tensor::f_stack(&squares, 0)?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?
            .sqrt())
    }

    /// Scale gradients whose global norm is `norm` (from [`Optimizer::grad_norm`]) as
    /// PyTorch's `clip_grad_norm_(max_norm)` does: by `max_norm / (norm + 1e-6)` when that is
    /// below 1. Returns the norm after clipping.
    pub fn clip_grad_norm_from(&mut self, norm: f64, max_norm: f64) -> Result<f64> {
        let factor = max_norm / (norm + 1e-6);
        if !norm.is_finite() || factor >= 1.0 {
            return Ok(norm);
        }
        for parameter in &self.parameters {
            let mut grad = parameter.grad();
            if grad.defined() {
                let _ = grad.f_mul_scalar_(factor)?;
            }
        }
        Ok(norm * factor)
    }

    /// Take one step with learning rate `lr`.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        self.steps += 1;
        let settings = &self.settings;
        for (parameter, state) in self.parameters.iter_mut().zip(&mut self.state) {
            let grad = parameter.grad();
            if !grad.defined() {
                continue;
            }
            match settings.kind {
                OptimKind::Sgd => {
                    let mut direction = if settings.weight_decay > 0.0 {
                        grad.f_add(&parameter.f_mul_scalar(settings.weight_decay)?)?
                    } else {
                        grad.shallow_clone()
                    };
                    if settings.momentum > 0.0 {
                        let buffer = match state.first.take() {
                            Some(buffer) => {
                                buffer.f_mul_scalar(settings.momentum)?.f_add(&direction)?
                            }
                            None => direction.f_detach_copy()?,
                        };
                        direction = if settings.nesterov {
                            direction.f_add(&buffer.f_mul_scalar(settings.momentum)?)?
                        } else {
                            buffer.shallow_clone()
                        };
                        state.first = Some(buffer);
                    }
                    let _ = parameter.f_sub_(&direction.f_mul_scalar(lr)?)?;
                }
                OptimKind::Adamw => {
                    let (beta1, beta2) = settings.betas;
                    if settings.weight_decay > 0.0 {
                        let _ = parameter.f_mul_scalar_(1.0 - lr * settings.weight_decay)?;
                    }
                    let first = match state.first.take() {
                        Some(m) => m
                            .f_mul_scalar(beta1)?
                            .f_add(&grad.f_mul_scalar(1.0 - beta1)?)?,
                        None => grad.f_mul_scalar(1.0 - beta1)?,
                    };
                    let second = match state.second.take() {
                        Some(v) => v
                            .f_mul_scalar(beta2)?
                            .f_add(&grad.f_square()?.f_mul_scalar(1.0 - beta2)?)?,
                        None => grad.f_square()?.f_mul_scalar(1.0 - beta2)?,
                    };
                    let t = self.steps as i32;
                    let correction1 = 1.0 - beta1.powi(t);
                    let correction2 = 1.0 - beta2.powi(t);
                    let denominator = second
                        .f_div_scalar(correction2)?
                        .f_sqrt()?
                        .f_add_scalar(settings.eps)?;
                    let update = first.f_div(&denominator)?.f_mul_scalar(lr / correction1)?;
                    let _ = parameter.f_sub_(&update)?;
                    state.first = Some(first);
                    state.second = Some(second);
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (`first.<index>`, `second.<index>`) and the step count.
    pub fn state_tensors(&self) -> (Vec<(String, Tensor)>, u64) {
        let mut named = Vec::new();
        for (index, state) in self.state.iter().enumerate() {
            if let Some(first) = &state.first {
                named.push((format!("first.{index}"), first.shallow_clone()));
            }
            if let Some(second) = &state.second {
                named.push((format!("second.{index}"), second.shallow_clone()));
            }
        }
        (named, self.steps)
    }

    /// Restore what [`Optimizer::state_tensors`] returned.
    pub fn load_state(&mut self, named: Vec<(String, Tensor)>, steps: u64) -> Result<()> {
        let device = self.parameters.first().map(|p| p.device());
        for state in &mut self.state {
            *state = ParamState::default();
        }
        for (name, tensor) in named {
            let bad = || Error::DataCorrupt {
                path: "optimizer.safetensors".into(),
                reason: format!("holds an unexpected tensor `{name}`"),
            };
            let (slot, index) = name.split_once('.').ok_or_else(bad)?;
            let index: usize = index.parse().map_err(|_| bad())?;
            let parameter = self.parameters.get(index).ok_or_else(bad)?;
            if tensor.size() != parameter.size() {
                return Err(bad());
            }
            let tensor = match device {
                Some(device) => tensor.f_to_device(device)?,
                None => tensor,
            };
            match slot {
                "first" => self.state[index].first = Some(tensor),
                "second" => self.state[index].second = Some(tensor),
                _ => return Err(bad()),
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn settings(kind: OptimKind) -> OptimSettings {
        OptimSettings {
            kind,
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
            clip_grad_norm: None,
        }
    }

    /// Minimise (x - 3)² from x = 0 for `steps` steps; returns x.
    fn minimise(settings: &OptimSettings, steps: usize) -> f64 {
        let x = Tensor::zeros([1], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let mut optimizer = Optimizer::new(settings, vec![x.shallow_clone()]);
        for _ in 0..steps {
            optimizer.zero_grad();
            (&x - 3.0).square().sum(Kind::Double).backward();
            optimizer.step(settings.lr).unwrap();
        }
        x.double_value(&[0])
    }

    #[test]
    fn sgd_with_momentum_matches_the_recurrence() {
        // g = 2(x - 3); b = 0.9 b + g; x -= 0.1 b, from x = 0.
        let (mut x, mut b) = (0.0f64, 0.0f64);
        for step in 0..3 {
            let g = 2.0 * (x - 3.0);
            b = if step == 0 { g } else { 0.9 * b + g };
            x -= 0.1 * b;
        }
        assert!((minimise(&settings(OptimKind::Sgd), 3) - x).abs() < 1e-12);
    }

    #[test]
    fn nesterov_and_weight_decay_follow_pytorch() {
        let mut s = settings(OptimKind::Sgd);
        s.nesterov = true;
        s.weight_decay = 0.01;
        let (mut x, mut b) = (0.0f64, 0.0f64);
        for step in 0..2 {
            let g = 2.0 * (x - 3.0) + 0.01 * x;
            b = if step == 0 { g } else { 0.9 * b + g };
            x -= 0.1 * (g + 0.9 * b);
        }
        assert!((minimise(&s, 2) - x).abs() < 1e-12);
    }

    #[test]
    fn adamw_matches_the_reference_update() {
        let mut s = settings(OptimKind::Adamw);
        s.weight_decay = 0.1;
        let (mut x, mut m, mut v) = (0.0f64, 0.0f64, 0.0f64);
        for t in 1..=3 {
            let g = 2.0 * (x - 3.0);
            x *= 1.0 - 0.1 * 0.1;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let m_hat = m / (1.0 - 0.9f64.powi(t));
            let v_hat = v / (1.0 - 0.999f64.powi(t));
            x -= 0.1 * m_hat / (v_hat.sqrt() + 1e-8);
        }
        assert!(
            (minimise(&s, 3) - x).abs() < 1e-9,
            "{} vs {x}",
            minimise(&s, 3)
        );
    }

    #[test]
    fn clipping_scales_the_global_norm() {
        let x = Tensor::zeros([2], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let mut optimizer = Optimizer::new(&settings(OptimKind::Sgd), vec![x.shallow_clone()]);
        // Gradient (3, 4): norm 5.
        (&x * Tensor::from_slice(&[3.0f64, 4.0]))
            .sum(Kind::Double)
            .backward();
        let norm = optimizer.grad_norm().unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        let after = optimizer.clip_grad_norm_from(norm, 1.0).unwrap();
        assert!((after - 5.0 / (5.0 + 1e-6)).abs() < 1e-12);
        assert!((optimizer.grad_norm().unwrap() - after).abs() < 1e-12);
        // Below the limit: untouched, as PyTorch leaves it (its factor is clamped to 1).
        assert_eq!(
            optimizer.clip_grad_norm_from(1.0 - 1e-5, 2.0).unwrap(),
            1.0 - 1e-5
        );
        let after = optimizer.clip_grad_norm_from(optimizer.grad_norm().unwrap(), 0.5);
        assert!((after.unwrap() - 0.5).abs() < 1e-5);
        assert!((optimizer.grad_norm().unwrap() - 0.5).abs() < 1e-5);
    }

    #[test]
    fn state_round_trips() {
        let s = settings(OptimKind::Adamw);
        let x = Tensor::zeros([1], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let mut optimizer = Optimizer::new(&s, vec![x.shallow_clone()]);
        (&x - 3.0).square().sum(Kind::Double).backward();
        optimizer.step(0.1).unwrap();
        let (state, steps) = optimizer.state_tensors();
        assert_eq!(state.len(), 2);
        let mut restored = Optimizer::new(&s, vec![x.shallow_clone()]);
        restored.load_state(state, steps).unwrap();
        assert_eq!(restored.steps, 1);
        assert!(restored.state[0].second.is_some());
    }
}
