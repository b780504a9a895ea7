//! Prior-weighted attention on the tape: from the fused QKV projection to the merged heads,
//! with the FiAK prior bias and an optional pruning pattern.

use std::sync::Arc;

use super::Var;
use crate::error::{Error, Result};
use crate::ops::attention::{self, AttentionConfig, Pattern};
use crate::ops::permute;

/// Implementation of dense attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum AttentionPath {
    /// The fused online-softmax kernel (FlashAttention style); never materialises Nq x Nk.
    Fused,
    /// The readable reference: matmul, softmax, matmul through the autograd kernels.
    Unfused,
}

impl Var {
    /// Multi-head attention of the fused projection `self` = qkv [B, N, 3 D] -> [B, N, D].
    ///
    /// Without a pattern, `bias` is the prior bias broadcast as [B|1, H|1, N|1, N]. With a
    /// pattern, attention runs over the kept entries only and `bias` has one value per kept
    /// entry, [nnz].
    pub fn attention(
        &self,
        heads: usize,
        bias: Option<&Var>,
        pattern: Option<&Arc<Pattern>>,
        config: &AttentionConfig,
        path: AttentionPath,
    ) -> Result<Var> {
        let qkv = self.value();
        if qkv.rank() != 3 || !qkv.dim(2).is_multiple_of(3 * heads) {
            return Err(Error::shape(
                "Var::attention",
                format!(
                    "qkv must be [B, N, 3 * D] with D divisible by {heads} heads, got {:?}",
                    qkv.shape()
                ),
            ));
        }
        // three [B, H, N, d]
        let (q, k, v) = permute::split_qkv(qkv, heads)?;
        let bias_tensor = bias.map(|b| b.value().clone());
        let mut inputs = vec![self];
        if let Some(b) = bias {
            inputs.push(b);
        }
        let has_bias = bias.is_some();
        let config = *config;

        if let Some(pattern) = pattern {
            let pattern = pattern.clone();
            let (o, lse) = attention::attention_gathered(&q, &k, &v, &pattern, bias_tensor.as_ref(), &config)?;
            let out = permute::merge_heads(&o)?; // [B, N, D]
            return Ok(Var::from_op(out, &inputs, move |dout| {
                let d_o = permute::split_heads(dout, heads)?;
                let (dq, dk, dv, dbias) = attention::attention_gathered_backward(
                    &q,
                    &k,
                    &v,
                    &pattern,
                    bias_tensor.as_ref(),
                    &o,
                    &lse,
                    &d_o,
                    &config,
                )?;
                let mut grads = vec![Some(permute::merge_qkv(&dq, &dk, &dv)?)];
                if has_bias {
                    grads.push(dbias);
                }
                Ok(grads)
            }));
        }

        match path {
            AttentionPath::Fused => {
                let (o, lse) = attention::attention_dense(&q, &k, &v, bias_tensor.as_ref(), &config)?;
                let out = permute::merge_heads(&o)?;
                Ok(Var::from_op(out, &inputs, move |dout| {
                    let d_o = permute::split_heads(dout, heads)?;
                    let (dq, dk, dv, dbias) =
                        attention::attention_dense_backward(&q, &k, &v, bias_tensor.as_ref(), &o, &lse, &d_o, &config)?;
                    let mut grads = vec![Some(permute::merge_qkv(&dq, &dk, &dv)?)];
                    if has_bias {
                        grads.push(dbias);
                    }
                    Ok(grads)
                }))
            }
            AttentionPath::Unfused => {
                let (o, probs) = attention::attention_unfused(&q, &k, &v, bias_tensor.as_ref(), &config)?;
                let out = permute::merge_heads(&o)?;
                let bias_shape = bias_tensor.as_ref().map(|b| b.shape().to_vec());
                Ok(Var::from_op(out, &inputs, move |dout| {
                    let d_o = permute::split_heads(dout, heads)?;
                    let (dq, dk, dv, dbias) = attention::attention_unfused_backward(
                        &q,
                        &k,
                        &v,
                        &probs,
                        &d_o,
                        &config,
                        bias_shape.as_deref(),
                    )?;
                    let mut grads = vec![Some(permute::merge_qkv(&dq, &dk, &dv)?)];
                    if has_bias {
                        grads.push(dbias);
                    }
                    Ok(grads)
                }))
            }
        }
    }
}
