//! Multi-head self-attention with FiAK priors and an optional pruning pattern.

use std::sync::Arc;

use super::{Linear, SplitMix64};
use crate::autograd::{AttentionPath, ParamGroup, ParamStore, Var, WeightLayout};
use crate::error::{Error, Result};
use crate::fiak::{LogitKernel, PriorKind, PriorLearning};
use crate::ops::attention::{AttentionConfig, GatheredPath, Pattern};
use crate::tensor::{DType, Tensor};

/// Run-time choices that do not change the parameters.
#[derive(Clone, Copy, Debug)]
pub struct AttentionOptions {
    pub path: AttentionPath,
    /// Store each layer's attention probabilities, averaged over the batch, in
    /// [`Attention::captured`] (through the unfused path; for figures and head diversity).
    pub capture: bool,
}

impl Default for AttentionOptions {
    fn default() -> Self {
        AttentionOptions {
            path: AttentionPath::Fused,
            capture: false,
        }
    }
}

/// A pruning pattern with the flat index h * Nq * Nk + i * Nk + j of every kept entry, which
/// gathers the kept entries' prior logits. The indices are distinct because each row's kept
/// keys are.
pub struct Pruned {
    pub pattern: Arc<Pattern>,
    flat_index: Tensor,
    flat_host: Vec<u32>,
}

impl Pruned {
    pub fn new(pattern: Pattern) -> Result<Pruned> {
        let (heads, nq, nk) = (pattern.heads(), pattern.nq(), pattern.nk());
        let offsets = pattern.row_offsets();
        let keys = pattern.key_index();
        let mut flat_host = Vec::with_capacity(keys.len());
        for h in 0..heads {
            for i in 0..nq {
                let (start, end) = (
                    offsets[h * (nq + 1) + i] as usize,
                    offsets[h * (nq + 1) + i + 1] as usize,
                );
                for &j in &keys[start..end] {
                    flat_host.push(((h * nq + i) * nk) as u32 + j);
                }
            }
        }
        let flat_index = Tensor::from_u32(&[flat_host.len()], &flat_host)?;
        Ok(Pruned {
            pattern: Arc::new(pattern),
            flat_index,
            flat_host,
        })
    }
}

pub struct Attention {
    /// Parameter prefix, `blocks.{i}.attn` or `h.{i}.attn`.
    pub name: String,
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
    /// Sequence length the priors are sized for.
    pub tokens: usize,
    pub causal: bool,
    pub logits: LogitKernel,
    /// theta [H, N, N]
    pub entry_prior: Option<Var>,
    /// phi [H, N]
    pub key_prior: Option<Var>,
    pub pruned: Option<Pruned>,
    /// Mean attention probabilities [H, N, N] of the last forward with `capture` on.
    pub captured: std::cell::RefCell<Option<Tensor>>,
}

impl Attention {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        (qkv_name, proj_name): (&str, &str),
        dim: usize,
        heads: usize,
        tokens: usize,
        causal: bool,
        logits: LogitKernel,
        layout: WeightLayout,
        (std, proj_std): (f32, f32),
        rng: &mut SplitMix64,
    ) -> Attention {
        Attention {
            name: name.to_string(),
            qkv: Linear::new(
                store,
                &format!("{name}.{qkv_name}"),
                dim,
                3 * dim,
                true,
                layout,
                std,
                rng,
            ),
            proj: Linear::new(
                store,
                &format!("{name}.{proj_name}"),
                dim,
                dim,
                true,
                layout,
                proj_std,
                rng,
            ),
            heads,
            tokens,
            causal,
            logits,
            entry_prior: None,
            key_prior: None,
            pruned: None,
            captured: std::cell::RefCell::new(None),
        }
    }

    /// Adds prior logits initialised to 0 (a uniform prior), so the outputs do not change.
    pub fn add_priors(&mut self, store: &mut ParamStore, kind: PriorKind, learning: PriorLearning) {
        let (h, n) = (self.heads, self.tokens);
        let mut register = |suffix: &str, shape: &[usize]| {
            let name = format!("{}.{suffix}", self.name);
            let zeros = Tensor::zeros(shape, DType::F32);
            match learning {
                PriorLearning::Gd => store.add(name, zeros, ParamGroup::Prior),
                PriorLearning::Em => store.add_buffer(name, zeros),
            }
        };
        if kind.has_entry() && self.entry_prior.is_none() {
            self.entry_prior = Some(register("prior_logits", &[h, n, n]));
        }
        if kind.has_key() && self.key_prior.is_none() {
            self.key_prior = Some(register("key_prior_logits", &[h, n]));
        }
    }

    pub fn prior_kind(&self) -> PriorKind {
        match (self.entry_prior.is_some(), self.key_prior.is_some()) {
            (true, true) => PriorKind::EntryKey,
            (true, false) => PriorKind::Entry,
            (false, true) => PriorKind::Key,
            (false, false) => PriorKind::None,
        }
    }

    pub fn config(&self) -> AttentionConfig {
        AttentionConfig {
            causal: self.causal,
            logits: self.logits,
            gathered: GatheredPath::Auto,
        }
    }

    /// Returns the dense prior bias b = theta + phi as [H, N, N], or `None` without priors.
    pub fn dense_bias(&self) -> Result<Option<Var>> {
        let (h, n) = (self.heads, self.tokens);
        let expanded_key = match &self.key_prior {
            // phi [H, N] -> [H, N, N] through ones [H, N, 1] @ phi [H, 1, N], so the
            // gradient reaches phi summed over the rows.
            Some(phi) => {
                let ones = Var::constant(Tensor::full(&[h, n, 1], 1.0));
                Some(ones.matmul(&phi.reshape(&[h, 1, n])?, false, false)?)
            }
            None => None,
        };
        Ok(match (&self.entry_prior, expanded_key) {
            (Some(theta), Some(key)) => Some(theta.add(&key)?),
            (Some(theta), None) => Some(theta.clone()),
            (None, Some(key)) => Some(key),
            (None, None) => None,
        })
    }

    /// Returns the bias handed to the attention kernel: [1, H, N|1, N] when dense, [nnz] when pruned.
    fn kernel_bias(&self) -> Result<Option<Var>> {
        let (h, n) = (self.heads, self.tokens);
        if let Some(pruned) = &self.pruned {
            let Some(dense) = self.dense_bias()? else {
                return Ok(None);
            };
            let table = dense.reshape(&[h * n * n, 1])?;
            let kept = Var::embedding_distinct(&table, &pruned.flat_index)?; // [nnz, 1]
            return Ok(Some(kept.reshape(&[pruned.flat_host.len()])?));
        }
        Ok(match (&self.entry_prior, &self.key_prior) {
            (None, Some(phi)) => Some(phi.reshape(&[1, h, 1, n])?),
            _ => self.dense_bias()?.map(|b| b.reshape(&[1, h, n, n])).transpose()?,
        })
    }

    /// x [B, N, D] -> [B, N, D].
    pub fn forward(&self, x: &Var, options: &AttentionOptions) -> Result<Var> {
        let n = x.shape()[1];
        let bias = self.kernel_bias()?;
        if (bias.is_some() || self.pruned.is_some()) && n != self.tokens {
            return Err(Error::shape(
                "Attention::forward",
                format!(
                    "{}: priors and patterns are sized for {} tokens, the input has {n}",
                    self.name, self.tokens
                ),
            ));
        }
        let qkv = self.qkv.forward(x)?; // [B, N, 3 D]
        if options.capture {
            self.capture(&qkv)?;
        }
        let pattern = self.pruned.as_ref().map(|p| &p.pattern);
        let out = qkv.attention(self.heads, bias.as_ref(), pattern, &self.config(), options.path)?; // [B, N, D]
        self.proj.forward(&out)
    }

    /// Stores the batch mean of the attention probabilities [H, N, N]. Pruned entries get a
    /// bias of -30000, whose exponential is exactly 0 in f32.
    fn capture(&self, qkv: &Var) -> Result<()> {
        let (h, n) = (self.heads, self.tokens);
        let (q, k, v) = crate::ops::permute::split_qkv(qkv.value(), h)?;
        let mut bias: Option<Tensor> = self.dense_bias()?.map(|b| b.value().clone());
        if let Some(pruned) = &self.pruned {
            let mut dense = match &bias {
                Some(b) => b.to_f32_vec(),
                None => vec![0.0; h * n * n],
            };
            let mut kept = vec![false; h * n * n];
            pruned.flat_host.iter().for_each(|&e| kept[e as usize] = true);
            for (value, keep) in dense.iter_mut().zip(kept) {
                if !keep {
                    *value = -30000.0;
                }
            }
            bias = Some(Tensor::from_f32(&[h, n, n], &dense)?);
        }
        let bias = bias.map(|b| b.reshape(&[1, h, n, n])).transpose()?;
        let (_, probs) = crate::ops::attention::attention_unfused(&q, &k, &v, bias.as_ref(), &self.config())?; // [B, H, N, N]
        let mean = crate::ops::reduce::mean_axis(&probs, 0)?; // [H, N, N]
        *self.captured.borrow_mut() = Some(mean);
        Ok(())
    }

    /// Applies the soft-EM M-step to priors learned by EM, from the probabilities captured in
    /// the last forward (which needs `capture` on). Priors learned by gradient are untouched.
    pub fn em_update(&self, beta: f32) -> Result<()> {
        let Some(mean_probs) = self.captured.borrow_mut().take() else {
            return Err(Error::invalid(
                "EM update",
                &self.name,
                "no attention probabilities were captured in the forward",
            ));
        };
        if let Some(theta) = self.entry_prior.as_ref().filter(|v| !v.requires_grad()) {
            crate::ops::em_prior::em_update_entry(theta.value(), &mean_probs, self.causal, beta)?;
        }
        if let Some(phi) = self.key_prior.as_ref().filter(|v| !v.requires_grad()) {
            crate::ops::em_prior::em_update_key(phi.value(), &mean_probs, beta)?;
        }
        Ok(())
    }
}
