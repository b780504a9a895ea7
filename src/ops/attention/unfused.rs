//! The plain attention path: `P = softmax(scale * Q K^T + bias + mask)`, `O = P V`, with the
//! probabilities kept for the backward and for inspection. It costs O(Nq Nk) memory and serves
//! as the readable counterpart of the fused kernels.

use super::{
    ACCUMULATE_DBIAS, AttentionConfig, BiasLayout, CAUSAL, Dims, GAUSSIAN, HAS_BIAS, LogitKernel, Params, batch_chunks,
    expect_shape, whole, window,
};
use crate::error::Result;
use crate::gpu;
use crate::ops::{groups, matmul, matmul_into};
use crate::shaders;
use crate::tensor::{DType, Tensor};

/// Threads per workgroup of the unfused helper kernels.
const WORKGROUP: usize = 64;

fn base_params(dims: &Dims, cfg: &AttentionConfig) -> Params {
    let mut flags = 0;
    if cfg.causal {
        flags |= CAUSAL;
    }
    if cfg.logits == LogitKernel::Gaussian {
        flags |= GAUSSIAN;
    }
    Params {
        heads: dims.heads as u32,
        nq: dims.nq as u32,
        nk: dims.nk as u32,
        flags,
        scale: dims.scale(),
        d: dims.d as u32,
        b_inner: 1,
        h_inner: 1,
        ..Params::default()
    }
}

/// Attention through matmuls and an explicit softmax.
///
/// Shapes: q [B, H, Nq, d], k and v [B, H, Nk, d], bias [B|1, H|1, Nq|1, Nk]. Returns
/// out [B, H, Nq, d] and the probabilities [B, H, Nq, Nk], with exact zeros at masked keys.
pub fn attention_unfused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    cfg: &AttentionConfig,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention_unfused";
    let dims = Dims::of(OP, q, k, v)?;
    let layout = bias.map(|b| BiasLayout::of_tensor(OP, b, &dims)).transpose()?;
    let probs_shape = [dims.batch, dims.heads, dims.nq, dims.nk];
    if dims.nk == 0 || q.numel() == 0 {
        return Ok((
            Tensor::zeros(q.shape(), DType::F32),
            Tensor::zeros(&probs_shape, DType::F32),
        ));
    }

    // (B, H, Nq, Nk) = scale * (B, H, Nq, d) @ (B, H, Nk, d)^T
    let probs = Tensor::empty(&probs_shape, DType::F32);
    matmul_into(q, k, false, true, None, &probs, dims.scale(), false)?;

    let gpu = gpu::get();
    let score_item = dims.heads * dims.nq * dims.nk;
    let norm_item = dims.heads * dims.nk;
    let mut items_elements = vec![score_item, dims.k_item()];
    items_elements.extend(layout.and_then(|l| l.item()));
    let chunks = batch_chunks(OP, dims.batch, &items_elements)?;

    let norms = Tensor::empty(&[dims.batch, dims.heads, dims.nk], DType::F32);
    for items in &chunks {
        let mut p = base_params(&dims, cfg);
        let (probs_bind, probs_off) = window(&probs, score_item, items);
        let (norms_bind, norms_off) = window(&norms, norm_item, items);
        (p.q_off, p.row_off) = (probs_off, norms_off);
        let grid = [groups(dims.nq, WORKGROUP), dims.heads as u32, items.len() as u32];

        if cfg.logits == LogitKernel::Gaussian {
            let (k_bind, k_off) = window(k, dims.k_item(), items);
            p.k_off = k_off;
            gpu.dispatch(
                &shaders::ATTENTION_DENSE,
                "unfused_key_norms",
                &[],
                bytemuck::bytes_of(&p),
                &[k_bind, norms_bind],
                [groups(dims.nk, WORKGROUP), dims.heads as u32, items.len() as u32],
            )?;
        }
        let bias_bind = match (bias, &layout) {
            (Some(b), Some(l)) => {
                p.flags |= HAS_BIAS;
                (p.bias_bs, p.bias_hs, p.bias_rs) = (l.bs as u32, l.hs as u32, l.rs as u32);
                match l.item() {
                    Some(item) => {
                        let (bind, off) = window(b, item, items);
                        p.bias_off = off;
                        bind
                    }
                    None => whole(b),
                }
            }
            // Any f32 buffer; the kernel reads the bias only with HAS_BIAS.
            _ => norms_bind,
        };
        // NOTE: a local softmax kernel with the mask and bias fused in, in place of the shared
        // softmax op, which was not available when this path was written.
        gpu.dispatch(
            &shaders::ATTENTION_DENSE,
            "unfused_softmax",
            &[],
            bytemuck::bytes_of(&p),
            &[probs_bind, bias_bind, norms_bind],
            grid,
        )?;
    }

    // (B, H, Nq, d) = (B, H, Nq, Nk) @ (B, H, Nk, d)
    let out = matmul(&probs, v, false, false, None)?;
    Ok((out, probs))
}

/// Backward of [`attention_unfused`] from its probabilities.
///
/// Shapes: q [B, H, Nq, d], k and v [B, H, Nk, d], probs [B, H, Nq, Nk], dout [B, H, Nq, d].
/// `bias_shape` is the shape of the forward's bias, if any; its gradient comes back in that
/// shape, summed over the broadcast axes.
pub fn attention_unfused_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
    dout: &Tensor,
    cfg: &AttentionConfig,
    bias_shape: Option<&[usize]>,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    const OP: &str = "attention_unfused_backward";
    let dims = Dims::of(OP, q, k, v)?;
    let layout = bias_shape.map(|s| BiasLayout::of(OP, s, &dims)).transpose()?;
    expect_shape(OP, "probs", probs, &[dims.batch, dims.heads, dims.nq, dims.nk])?;
    expect_shape(OP, "dout", dout, q.shape())?;
    if dims.nk == 0 || q.numel() == 0 {
        return Ok((
            Tensor::zeros(q.shape(), DType::F32),
            Tensor::zeros(k.shape(), DType::F32),
            Tensor::zeros(v.shape(), DType::F32),
            bias_shape.map(|s| Tensor::zeros(s, DType::F32)),
        ));
    }

    // dV (B, H, Nk, d) = P^T @ dO
    let dv = matmul(probs, dout, true, false, None)?;
    // dP (B, H, Nq, Nk) = dO @ V^T, turned into dS = P * (dP - rowsum(P * dP)) in place.
    let ds = matmul(dout, v, false, true, None)?;

    let gpu = gpu::get();
    let score_item = dims.heads * dims.nq * dims.nk;
    let chunks = batch_chunks(OP, dims.batch, &[score_item, dims.k_item()])?;
    for items in &chunks {
        let mut p = base_params(&dims, cfg);
        let (probs_bind, probs_off) = window(probs, score_item, items);
        let (ds_bind, _) = window(&ds, score_item, items);
        p.q_off = probs_off;
        gpu.dispatch(
            &shaders::ATTENTION_DENSE,
            "unfused_softmax_backward",
            &[],
            bytemuck::bytes_of(&p),
            &[probs_bind, ds_bind],
            [groups(dims.nq, WORKGROUP), dims.heads as u32, items.len() as u32],
        )?;
    }

    // dQ (B, H, Nq, d) = scale * dS @ K and dK (B, H, Nk, d) = scale * dS^T @ Q
    let dq = Tensor::empty(q.shape(), DType::F32);
    matmul_into(&ds, k, false, false, None, &dq, dims.scale(), false)?;
    let dk = Tensor::empty(k.shape(), DType::F32);
    matmul_into(&ds, q, true, false, None, &dk, dims.scale(), false)?;

    for items in &chunks {
        let mut p = base_params(&dims, cfg);
        let (ds_bind, ds_off) = window(&ds, score_item, items);
        p.q_off = ds_off;
        if cfg.logits == LogitKernel::Gaussian {
            let (k_bind, k_off) = window(k, dims.k_item(), items);
            let (dk_bind, _) = window(&dk, dims.k_item(), items);
            p.k_off = k_off;
            gpu.dispatch(
                &shaders::ATTENTION_DENSE,
                "unfused_gaussian_key_grad",
                &[],
                bytemuck::bytes_of(&p),
                &[ds_bind, k_bind, dk_bind],
                [groups(dims.nk, WORKGROUP), dims.heads as u32, items.len() as u32],
            )?;
        }
    }

    let dbias = match layout {
        Some(l) => Some(sum_to_bias(&ds, &dims, &l, &chunks)?),
        None => None,
    };
    Ok((dq, dk, dv, dbias))
}

/// Sums dS [B, H, Nq, Nk] over the axes a bias of `layout` broadcasts.
fn sum_to_bias(ds: &Tensor, dims: &Dims, layout: &BiasLayout, chunks: &[std::ops::Range<usize>]) -> Result<Tensor> {
    let gpu = gpu::get();
    let dbias = Tensor::empty(&layout.shape, DType::F32);
    let score_item = dims.heads * dims.nq * dims.nk;
    for (chunk, items) in chunks.iter().enumerate() {
        let mut p = Params {
            heads: dims.heads as u32,
            nq: dims.nq as u32,
            nk: dims.nk as u32,
            bias_bs: layout.bs as u32,
            bias_hs: layout.hs as u32,
            bias_rs: layout.rs as u32,
            b_inner: if layout.batch_broadcast() {
                items.len() as u32
            } else {
                1
            },
            h_inner: if layout.shape[1] == 1 { dims.heads as u32 } else { 1 },
            ..Params::default()
        };
        if layout.batch_broadcast() && chunk > 0 {
            p.flags |= ACCUMULATE_DBIAS;
        }
        let (ds_bind, ds_off) = window(ds, score_item, items);
        let (dbias_bind, dbias_off) = match layout.item() {
            Some(item) => window(&dbias, item, items),
            None => (whole(&dbias), 0),
        };
        (p.q_off, p.bias_off) = (ds_off, dbias_off);
        let slices = (items.len() / p.b_inner as usize) * (dims.heads / p.h_inner as usize);
        gpu.dispatch(
            &shaders::ATTENTION_DENSE,
            "unfused_sum_to_bias",
            &[],
            bytemuck::bytes_of(&p),
            &[ds_bind, dbias_bind],
            [groups(dims.nk, WORKGROUP), layout.shape[2] as u32, slices as u32],
        )?;
    }
    Ok(dbias)
}
