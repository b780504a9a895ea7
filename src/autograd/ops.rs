//! Ops on vars: each method runs the forward kernels and records the backward rule beside it.
//! Shapes follow the kernels in `crate::ops`; comments give them where they change.

use super::Var;
use crate::error::{Error, Result};
use crate::ops::elementwise::{self, GeluKind};
use crate::ops::{cross_entropy, embedding, layernorm, matmul, permute, reduce, softmax};
use crate::tensor::Tensor;

/// Storage layout of an affine map's weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// [out, in], as PyTorch's Linear and timm store it.
    OutIn,
    /// [in, out], as GPT-2's Conv1D stores it.
    InOut,
}

/// Gradients of `y = x W (+ b)` for x [.., in] and dy [.., out]: (dx, dW, db).
fn affine_backward(x: &Tensor, w: &Tensor, dy: &Tensor, layout: WeightLayout) -> Result<(Tensor, Tensor, Tensor)> {
    let (out_features, in_features) = match layout {
        WeightLayout::OutIn => (w.dim(0), w.dim(1)),
        WeightLayout::InOut => (w.dim(1), w.dim(0)),
    };
    let rows = dy.numel() / out_features;
    // [rows, out] and [rows, in]
    let dy2 = dy.reshape(&[rows, out_features])?;
    let x2 = x.reshape(&[rows, in_features])?;
    let (dx, dw) = match layout {
        WeightLayout::OutIn => (
            matmul::matmul(dy, w, false, false, None)?,
            matmul::matmul(&dy2, &x2, true, false, None)?,
        ),
        WeightLayout::InOut => (
            matmul::matmul(dy, w, false, true, None)?,
            matmul::matmul(&x2, &dy2, true, false, None)?,
        ),
    };
    let db = reduce::sum_to_last(&dy2, out_features)?;
    Ok((dx, dw, db))
}

impl Var {
    /// `op(self) @ op(other)`; `other` may be rank 2 and shared across `self`'s batch when
    /// `self` is not transposed.
    pub fn matmul(&self, other: &Var, trans_a: bool, trans_b: bool) -> Result<Var> {
        let (a, b) = (self.value().clone(), other.value().clone());
        let out = matmul::matmul(&a, &b, trans_a, trans_b, None)?;
        let shared_b = b.rank() == 2 && a.rank() > 2;
        if shared_b && trans_a {
            return Err(Error::shape(
                "Var::matmul",
                "a shared rank-2 B needs an untransposed A".to_string(),
            ));
        }
        Ok(Var::from_op(out, &[self, other], move |dc| {
            let da = if trans_a {
                // A is stored [K, M]: dA = op(B) @ dC^T.
                matmul::matmul(&b, dc, trans_b, true, None)?
            } else {
                // dA = dC @ op(B)^T.
                matmul::matmul(dc, &b, false, !trans_b, None)?
            };
            let (a2, dc2) = if shared_b {
                // Fold the batch into rows so dB sums over it: [batch * M, K] and [batch * M, N].
                let k = a.dim(-1);
                let n = dc.dim(-1);
                (a.reshape(&[a.numel() / k, k])?, dc.reshape(&[dc.numel() / n, n])?)
            } else {
                (a.clone(), dc.clone())
            };
            let db = if trans_b {
                // B is stored [N, K]: dB = dC^T @ op(A).
                matmul::matmul(&dc2, &a2, true, trans_a, None)?
            } else {
                // dB = op(A)^T @ dC.
                matmul::matmul(&a2, &dc2, !trans_a, false, None)?
            };
            Ok(vec![Some(da), Some(db)])
        }))
    }

    /// `self @ weight^T + bias`, with weight [out, in] as in PyTorch's Linear; self [.., in].
    pub fn linear(&self, weight: &Var, bias: Option<&Var>) -> Result<Var> {
        self.affine(weight, bias, WeightLayout::OutIn)
    }

    /// `self @ weight + bias` with weight [in, out], as GPT-2's Conv1D stores it.
    pub fn conv1d(&self, weight: &Var, bias: Option<&Var>) -> Result<Var> {
        self.affine(weight, bias, WeightLayout::InOut)
    }

    /// An affine map with the weight in either layout; the bias is fused into the matmul.
    pub fn affine(&self, weight: &Var, bias: Option<&Var>, layout: WeightLayout) -> Result<Var> {
        let x = self.value().clone();
        let w = weight.value().clone();
        let trans_w = layout == WeightLayout::OutIn;
        let out = matmul::matmul(&x, &w, false, trans_w, bias.map(|b| b.value()))?;
        let has_bias = bias.is_some();
        let mut inputs = vec![self, weight];
        if let Some(b) = bias {
            inputs.push(b);
        }
        Ok(Var::from_op(out, &inputs, move |dy| {
            let (dx, dw, db) = affine_backward(&x, &w, dy, layout)?;
            let mut grads = vec![Some(dx), Some(dw)];
            if has_bias {
                grads.push(Some(db));
            }
            Ok(grads)
        }))
    }

    /// `self + other`, where `other` has `self`'s shape or a trailing part of it.
    pub fn add(&self, other: &Var) -> Result<Var> {
        let out = elementwise::add(self.value(), other.value())?;
        let other_shape = other.shape().to_vec();
        let broadcast = other.value().numel() != self.value().numel();
        Ok(Var::from_op(out, &[self, other], move |dy| {
            let d_other = if broadcast {
                let n = other_shape.iter().product::<usize>();
                reduce::sum_to_last(&dy.reshape(&[dy.numel() / n, n])?, n)?.reshape(&other_shape)?
            } else {
                dy.clone()
            };
            Ok(vec![Some(dy.clone()), Some(d_other)])
        }))
    }

    /// Elementwise product of equal shapes.
    pub fn mul(&self, other: &Var) -> Result<Var> {
        let (a, b) = (self.value().clone(), other.value().clone());
        let out = elementwise::mul(&a, &b)?;
        Ok(Var::from_op(out, &[self, other], move |dy| {
            Ok(vec![Some(elementwise::mul(dy, &b)?), Some(elementwise::mul(dy, &a)?)])
        }))
    }

    pub fn scale(&self, s: f32) -> Result<Var> {
        let out = elementwise::scale(self.value(), s)?;
        Ok(Var::from_op(out, &[self], move |dy| {
            Ok(vec![Some(elementwise::scale(dy, s)?)])
        }))
    }

    pub fn gelu(&self, kind: GeluKind) -> Result<Var> {
        let x = self.value().clone();
        let out = elementwise::gelu(&x, kind)?;
        Ok(Var::from_op(out, &[self], move |dy| {
            Ok(vec![Some(elementwise::gelu_backward(&x, dy, kind)?)])
        }))
    }

    /// `gelu(affine(self))` with the bias and activation fused into one kernel after the
    /// matmul; the pre-activation is saved for the backward.
    pub fn affine_gelu(&self, weight: &Var, bias: &Var, layout: WeightLayout, kind: GeluKind) -> Result<Var> {
        let x = self.value().clone();
        let w = weight.value().clone();
        let product = matmul::matmul(&x, &w, false, layout == WeightLayout::OutIn, None)?;
        let (pre, out) = elementwise::bias_gelu(&product, bias.value(), kind)?;
        drop(product);
        Ok(Var::from_op(out, &[self, weight, bias], move |dy| {
            let dpre = elementwise::gelu_backward(&pre, dy, kind)?;
            let (dx, dw, db) = affine_backward(&x, &w, &dpre, layout)?;
            Ok(vec![Some(dx), Some(dw), Some(db)])
        }))
    }

    /// Layer norm over the last axis with weight and bias [D].
    pub fn layer_norm(&self, weight: &Var, bias: &Var, eps: f32) -> Result<Var> {
        let x = self.value().clone();
        let w = weight.value().clone();
        let (out, mean, rstd) = layernorm::layer_norm(&x, &w, bias.value(), eps)?;
        Ok(Var::from_op(out, &[self, weight, bias], move |dy| {
            let (dx, dw, db) = layernorm::layer_norm_backward(&x, &w, &mean, &rstd, dy)?;
            Ok(vec![Some(dx), Some(dw), Some(db)])
        }))
    }

    /// Softmax over the last axis.
    pub fn softmax(&self) -> Result<Var> {
        let out = softmax::softmax(self.value())?;
        let y = out.clone();
        Ok(Var::from_op(out, &[self], move |dy| {
            Ok(vec![Some(softmax::softmax_backward(&y, dy)?)])
        }))
    }

    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let out = self.value().reshape(shape)?;
        let original = self.shape().to_vec();
        Ok(Var::from_op(out, &[self], move |dy| {
            Ok(vec![Some(dy.reshape(&original)?)])
        }))
    }

    /// Reorders the axes: the result's axis i is this var's axis `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let out = permute::permute(self.value(), perm)?;
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(Var::from_op(out, &[self], move |dy| {
            Ok(vec![Some(permute::permute(dy, &inverse)?)])
        }))
    }

    /// Inverted dropout with probability `p`; the identity when `p` is 0. The mask is a hash
    /// of `seed` and the element index, so the backward recomputes it instead of saving it.
    pub fn dropout(&self, p: f32, seed: u64) -> Result<Var> {
        if p == 0.0 {
            return Ok(self.clone());
        }
        let out = elementwise::dropout(self.value(), p, seed)?;
        Ok(Var::from_op(out, &[self], move |dy| {
            Ok(vec![Some(elementwise::dropout_backward(dy, p, seed)?)])
        }))
    }

    /// Sum of all elements, [1].
    pub fn sum(&self) -> Result<Var> {
        let out = reduce::sum_all(self.value())?;
        let shape = self.shape().to_vec();
        Ok(Var::from_op(out, &[self], move |dy| {
            // Broadcast the scalar gradient: zeros [n, 1] plus dy [1] along the last axis.
            let n = shape.iter().product::<usize>();
            let zeros = Tensor::zeros(&[n, 1], crate::tensor::DType::F32);
            Ok(vec![Some(elementwise::add(&zeros, dy)?.reshape(&shape)?)])
        }))
    }

    /// Mean of all elements, [1].
    pub fn mean(&self) -> Result<Var> {
        let n = self.value().numel() as f32;
        self.sum()?.scale(1.0 / n)
    }

    /// Rows of `table` [V, D] at `ids` (u32, any shape S) -> [S.., D]. `ids_host` is the same
    /// ids on the CPU, which the backward uses to group positions by id.
    pub fn embedding(table: &Var, ids: &Tensor, ids_host: Vec<u32>) -> Result<Var> {
        let out = embedding::embedding(table.value(), ids)?;
        let vocab = table.value().dim(0);
        Ok(Var::from_op(out, &[table], move |dy| {
            Ok(vec![Some(embedding::embedding_backward(dy, &ids_host, vocab)?)])
        }))
    }

    /// [`Var::embedding`] for pairwise distinct `ids`, whose backward scatters in one pass
    /// over the ids (see [`embedding::embedding_backward_distinct`]).
    pub fn embedding_distinct(table: &Var, ids: &Tensor) -> Result<Var> {
        let out = embedding::embedding(table.value(), ids)?;
        let vocab = table.value().dim(0);
        let ids = ids.clone();
        Ok(Var::from_op(out, &[table], move |dy| {
            Ok(vec![Some(embedding::embedding_backward_distinct(dy, &ids, vocab)?)])
        }))
    }

    /// Mean cross-entropy of logits [N, C] against u32 targets [N], [1].
    pub fn cross_entropy(&self, targets: &Tensor, label_smoothing: f32, ignore_index: Option<u32>) -> Result<Var> {
        let logits = self.value().clone();
        let targets = targets.clone();
        let (loss, lse) = cross_entropy::cross_entropy(&logits, &targets, label_smoothing, ignore_index)?;
        Ok(Var::from_op(loss, &[self], move |dloss| {
            let dlogits =
                cross_entropy::cross_entropy_backward(&logits, &targets, &lse, label_smoothing, ignore_index, dloss)?;
            Ok(vec![Some(dlogits)])
        }))
    }

    /// Prepends the class token `cls` [D] to every sequence of `x` [B, N, D] -> [B, N+1, D].
    pub fn concat_cls(cls: &Var, x: &Var) -> Result<Var> {
        let out = permute::concat_cls(cls.value(), x.value())?;
        let cls_shape = cls.shape().to_vec();
        Ok(Var::from_op(out, &[cls, x], move |dy| {
            let (dcls, dx) = permute::concat_cls_backward(dy)?;
            Ok(vec![Some(dcls.reshape(&cls_shape)?), Some(dx)])
        }))
    }

    /// Token `index` of every sequence: [B, N, D] -> [B, D].
    pub fn select_token(&self, index: usize) -> Result<Var> {
        let out = permute::select_token(self.value(), index)?;
        let n = self.value().dim(1);
        Ok(Var::from_op(out, &[self], move |dy| {
            Ok(vec![Some(permute::select_token_backward(dy, n, index)?)])
        }))
    }
}
