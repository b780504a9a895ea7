//! Fused dense attention: forward with an online softmax, backward in two kernels (dQ by query
//! rows, then dK, dV and the bias gradient by key rows), so no kernel needs atomics.

use super::{
    ACCUMULATE_DBIAS, AttentionConfig, BiasLayout, CAUSAL, Dims, GAUSSIAN, HAS_BIAS, LogitKernel, Params, batch_chunks,
    constants, expect_shape, rows_per_workgroup, whole, window,
};
use crate::error::{Error, Result};
use crate::gpu;
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{DType, Tensor};

/// Builds the fields of `Params` that every dense kernel shares.
fn base_params(dims: &Dims, cfg: &AttentionConfig, bias: Option<&BiasLayout>) -> Params {
    let mut flags = 0;
    if cfg.causal {
        flags |= CAUSAL;
    }
    if cfg.logits == LogitKernel::Gaussian {
        flags |= GAUSSIAN;
    }
    let mut p = Params {
        heads: dims.heads as u32,
        nq: dims.nq as u32,
        nk: dims.nk as u32,
        scale: dims.scale(),
        b_inner: 1,
        h_inner: 1,
        ..Params::default()
    };
    if let Some(layout) = bias {
        flags |= HAS_BIAS;
        p.bias_bs = layout.bs as u32;
        p.bias_hs = layout.hs as u32;
        p.bias_rs = layout.rs as u32;
    }
    p.flags = flags;
    p
}

/// Checks a bias against the sizes and that a bias shared by all batch items fits one binding.
fn bias_layout(op: &'static str, bias: Option<&Tensor>, dims: &Dims) -> Result<Option<BiasLayout>> {
    let Some(bias) = bias else {
        return Ok(None);
    };
    let layout = BiasLayout::of_tensor(op, bias, dims)?;
    if layout.batch_broadcast() && bias.byte_len() > gpu::get().max_binding_bytes() {
        return Err(Error::shape(
            op,
            format!(
                "bias {:?} shared by the batch exceeds the binding limit of {} bytes",
                bias.shape(),
                gpu::get().max_binding_bytes()
            ),
        ));
    }
    Ok(Some(layout))
}

/// Elements per batch item of every tensor bound per batch range.
fn item_elements(dims: &Dims, bias: Option<&BiasLayout>) -> Vec<usize> {
    let mut items = vec![dims.q_item(), dims.k_item(), dims.row_item()];
    items.extend(bias.and_then(|b| b.item()));
    items
}

/// Fused attention forward.
///
/// Shapes: q [B, H, Nq, d], k and v [B, H, Nk, d], bias [B|1, H|1, Nq|1, Nk] added to the
/// scores before the softmax. Returns out [B, H, Nq, d] and the row log-sum-exp
/// lse [B, H, Nq] of the biased scores, which the backward needs. Head widths up to
/// [`super::MAX_HEAD_WIDTH`].
pub fn attention_dense(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    cfg: &AttentionConfig,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention_dense";
    let dims = Dims::of(OP, q, k, v)?;
    dims.check_head_width(OP)?;
    let layout = bias_layout(OP, bias, &dims)?;
    let lse_shape = [dims.batch, dims.heads, dims.nq];
    if dims.nk == 0 {
        return Ok((
            Tensor::zeros(q.shape(), DType::F32),
            Tensor::zeros(&lse_shape, DType::F32),
        ));
    }
    let out = Tensor::empty(q.shape(), DType::F32);
    let lse = Tensor::empty(&lse_shape, DType::F32);
    if q.numel() == 0 {
        return Ok((out, lse));
    }

    let gpu = gpu::get();
    let block = rows_per_workgroup();
    for items in batch_chunks(OP, dims.batch, &item_elements(&dims, layout.as_ref()))? {
        let mut p = base_params(&dims, cfg, layout.as_ref());
        let (q_bind, q_off) = window(q, dims.q_item(), &items);
        let (k_bind, k_off) = window(k, dims.k_item(), &items);
        let (v_bind, _) = window(v, dims.k_item(), &items);
        let (out_bind, _) = window(&out, dims.q_item(), &items);
        let (lse_bind, row_off) = window(&lse, dims.row_item(), &items);
        let (bias_bind, bias_off) = bias_window(bias, layout.as_ref(), q, &items);
        (p.q_off, p.k_off, p.row_off, p.bias_off) = (q_off, k_off, row_off, bias_off);
        gpu.dispatch(
            &shaders::ATTENTION_DENSE,
            "forward",
            &constants(dims.d),
            bytemuck::bytes_of(&p),
            &[q_bind, k_bind, v_bind, bias_bind, out_bind, lse_bind],
            [groups(dims.nq, block), dims.heads as u32, items.len() as u32],
        )?;
    }
    Ok((out, lse))
}

/// Binds the bias window of a batch range, or q's window in place of a missing bias.
fn bias_window<'t>(
    bias: Option<&'t Tensor>,
    layout: Option<&BiasLayout>,
    fallback: &'t Tensor,
    items: &std::ops::Range<usize>,
) -> (gpu::Binding<'t>, u32) {
    match (bias, layout) {
        (Some(bias), Some(layout)) => match layout.item() {
            Some(item) => window(bias, item, items),
            None => (whole(bias), 0),
        },
        _ => (window(fallback, fallback.numel() / fallback.dim(0), items).0, 0),
    }
}

/// Fused attention backward from the forward's `out` and `lse`.
///
/// Shapes as in [`attention_dense`], with dout like out. Returns dq, dk, dv and, when a bias
/// was given, its gradient in the bias's shape, summed over the axes it broadcasts.
#[allow(clippy::too_many_arguments)]
pub fn attention_dense_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    cfg: &AttentionConfig,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    const OP: &str = "attention_dense_backward";
    let dims = Dims::of(OP, q, k, v)?;
    dims.check_head_width(OP)?;
    let layout = bias_layout(OP, bias, &dims)?;
    expect_shape(OP, "out", out, q.shape())?;
    expect_shape(OP, "dout", dout, q.shape())?;
    expect_shape(OP, "lse", lse, &[dims.batch, dims.heads, dims.nq])?;

    if dims.nk == 0 || dims.nq == 0 || dims.batch * dims.heads == 0 {
        // No query row or no key: every gradient is zero.
        let dbias = bias.map(|b| Tensor::zeros(b.shape(), DType::F32));
        return Ok((
            Tensor::zeros(q.shape(), DType::F32),
            Tensor::zeros(k.shape(), DType::F32),
            Tensor::zeros(v.shape(), DType::F32),
            dbias,
        ));
    }
    let dq = Tensor::empty(q.shape(), DType::F32);
    let dk = Tensor::empty(k.shape(), DType::F32);
    let dv = Tensor::empty(v.shape(), DType::F32);
    let delta = Tensor::empty(lse.shape(), DType::F32);
    let dbias = bias.map(|b| Tensor::empty(b.shape(), DType::F32));
    // Without a bias the dK/dV kernel still binds a gradient buffer, which it never writes.
    let scratch = Tensor::empty(&[1], DType::F32);

    let gpu = gpu::get();
    let block = rows_per_workgroup();
    let chunks = batch_chunks(OP, dims.batch, &item_elements(&dims, layout.as_ref()))?;
    for (chunk, items) in chunks.iter().enumerate() {
        let mut p = base_params(&dims, cfg, layout.as_ref());
        let (q_bind, q_off) = window(q, dims.q_item(), items);
        let (k_bind, k_off) = window(k, dims.k_item(), items);
        let (v_bind, _) = window(v, dims.k_item(), items);
        let (out_bind, _) = window(out, dims.q_item(), items);
        let (dout_bind, _) = window(dout, dims.q_item(), items);
        let (dq_bind, _) = window(&dq, dims.q_item(), items);
        let (dk_bind, _) = window(&dk, dims.k_item(), items);
        let (dv_bind, _) = window(&dv, dims.k_item(), items);
        let (lse_bind, row_off) = window(lse, dims.row_item(), items);
        let (delta_bind, _) = window(&delta, dims.row_item(), items);
        let (bias_bind, bias_off) = bias_window(bias, layout.as_ref(), q, items);
        let dbias_bind = match (&dbias, &layout) {
            (Some(t), Some(l)) => match l.item() {
                Some(item) => window(t, item, items).0,
                None => whole(t),
            },
            _ => whole(&scratch),
        };
        (p.q_off, p.k_off, p.row_off, p.bias_off) = (q_off, k_off, row_off, bias_off);

        gpu.dispatch(
            &shaders::ATTENTION_DENSE,
            "backward_dq",
            &constants(dims.d),
            bytemuck::bytes_of(&p),
            &[
                q_bind, k_bind, v_bind, bias_bind, out_bind, lse_bind, dout_bind, dq_bind, delta_bind,
            ],
            [groups(dims.nq, block), dims.heads as u32, items.len() as u32],
        )?;

        // Batch items and heads that share a bias slice run in one invocation, which sums
        // their bias gradients.
        if let Some(l) = &layout {
            if l.shape[0] == 1 {
                p.b_inner = items.len() as u32;
                if chunk > 0 {
                    p.flags |= ACCUMULATE_DBIAS;
                }
            }
            if l.shape[1] == 1 {
                p.h_inner = dims.heads as u32;
            }
        }
        let slices = (items.len() / p.b_inner as usize) * (dims.heads / p.h_inner as usize);
        gpu.dispatch(
            &shaders::ATTENTION_DENSE,
            "backward_dkdv",
            &constants(dims.d),
            bytemuck::bytes_of(&p),
            &[
                q_bind, k_bind, v_bind, bias_bind, delta_bind, lse_bind, dout_bind, dk_bind, dv_bind, dbias_bind,
            ],
            [groups(dims.nk, block), slices as u32, 1],
        )?;
    }
    Ok((dq, dk, dv, dbias))
}
