//! AdamW with decoupled weight decay and per-group settings, a linear-warmup cosine schedule,
//! and gradient clipping by the global norm, computed on the GPU without a readback.

use std::collections::HashMap;

use crate::autograd::{ParamGroup, ParamStore};
use crate::error::{Error, Result};
use crate::ops::{optim, reduce};
use crate::tensor::{DType, Tensor};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// Peak learning rate of the `Decay` and `NoDecay` groups.
    pub lr: f32,
    /// Peak learning rate of the FiAK prior logits.
    pub prior_lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay of the `Decay` group; the other groups take none.
    pub weight_decay: f32,
    /// Clip gradients to this global L2 norm; `None` disables clipping.
    pub max_grad_norm: Option<f32>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            prior_lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
            max_grad_norm: Some(1.0),
        }
    }
}

/// Linear warmup from 0 to the peak over `warmup_steps`, then cosine decay to
/// `min_ratio * peak` at `total_steps`.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub min_ratio: f32,
}

impl Schedule {
    /// Multiplier of the peak learning rate at `step` (counting from 0).
    pub fn factor(&self, step: usize) -> f32 {
        if step < self.warmup_steps {
            return (step + 1) as f32 / self.warmup_steps as f32;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f32 / decay_steps as f32).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
        self.min_ratio + (1.0 - self.min_ratio) * cosine
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// First and second moments per parameter name.
    moments: HashMap<String, (Tensor, Tensor)>,
    /// Updates taken so far; the bias correction uses it.
    step: u32,
}

impl AdamW {
    pub fn new(config: AdamWConfig, params: &ParamStore) -> AdamW {
        let moments = params
            .iter()
            .filter(|(_, var, _)| var.requires_grad())
            .map(|(name, var, _)| {
                let shape = var.shape();
                (
                    name.to_string(),
                    (Tensor::zeros(shape, DType::F32), Tensor::zeros(shape, DType::F32)),
                )
            })
            .collect();
        AdamW {
            config,
            moments,
            step: 0,
        }
    }

    pub fn steps_taken(&self) -> u32 {
        self.step
    }

    /// Applies one update to every parameter that has a gradient, with the peak learning
    /// rates scaled by `lr_factor` (from a [`Schedule`]).
    pub fn step(&mut self, params: &ParamStore, lr_factor: f32) -> Result<()> {
        self.step += 1;
        let with_grad: Vec<_> = params
            .iter()
            .filter_map(|(n, v, g)| v.grad().map(|grad| (n, v, g, grad)))
            .collect();
        let norm = match self.config.max_grad_norm {
            Some(max_norm) => {
                let grads: Vec<&Tensor> = with_grad.iter().map(|(_, _, _, g)| g).collect();
                Some((reduce::squared_norm(&grads)?, max_norm))
            }
            None => None,
        };

        for (name, var, group, grad) in &with_grad {
            let (m, v) = self.moments.get(*name).ok_or_else(|| {
                Error::invalid(
                    "parameter",
                    name,
                    "has no optimizer state; it was added after the optimizer was built",
                )
            })?;
            let (lr, weight_decay) = match group {
                ParamGroup::Decay => (self.config.lr, self.config.weight_decay),
                ParamGroup::NoDecay => (self.config.lr, 0.0),
                ParamGroup::Prior => (self.config.prior_lr, 0.0),
            };
            let hp = optim::AdamW {
                lr: lr * lr_factor,
                beta1: self.config.beta1,
                beta2: self.config.beta2,
                eps: self.config.eps,
                weight_decay,
            };
            let clip = norm.as_ref().map(|(sq, max_norm)| (sq, *max_norm));
            optim::adamw_step(var.value(), grad, m, v, &hp, self.step, clip)?;
        }
        Ok(())
    }

    /// Moments as named tensors (`NAME.exp_avg`, `NAME.exp_avg_sq`) and the step count, for
    /// the training state of a checkpoint.
    pub fn state(&self) -> (u32, Vec<(String, &Tensor)>) {
        let mut tensors = Vec::new();
        for (name, (m, v)) in &self.moments {
            tensors.push((format!("{name}.exp_avg"), m));
            tensors.push((format!("{name}.exp_avg_sq"), v));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        (self.step, tensors)
    }

    /// Restores what [`AdamW::state`] returned.
    pub fn load_state(&mut self, step: u32, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (name, (m, v)) in &self.moments {
            for (suffix, target) in [("exp_avg", m), ("exp_avg_sq", v)] {
                let key = format!("{name}.{suffix}");
                let source = tensors
                    .get(&key)
                    .ok_or_else(|| Error::invalid("optimizer state", &key, "missing from the training state"))?;
                if source.shape() != target.shape() {
                    return Err(Error::shape(
                        "AdamW::load_state",
                        format!("{key}: saved {:?}, parameter {:?}", source.shape(), target.shape()),
                    ));
                }
                target.copy_from(source)?;
            }
        }
        self.step = step;
        Ok(())
    }
}
