//! Fused dense attention: forward with an online softmax, backward in two kernels (dQ by query
//! rows, then dK, dV and the bias gradient by key rows), so no kernel needs atomics. The same
//! kernels, given a per-head key list, run the keys-only layout of gathered attention.

use std::ops::Range;

use super::{
    ACCUMULATE_DBIAS, AttentionConfig, BiasLayout, CAUSAL, Dims, GAUSSIAN, HAS_BIAS, KEY_LIST, LogitKernel, Params,
    batch_chunks, expect_shape, whole, window,
};
use crate::error::{Error, Result};
use crate::gpu::{self, Binding};
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{DType, Tensor};

/// Query rows (or key slots) per invocation, `ROWS` in attention_dense.wgsl.
const ROWS: usize = 4;

/// Invocations per workgroup. CPU adapters such as lavapipe run a workgroup as a loop over SIMD
/// groups, so smaller blocks waste less on causal masks and ragged ends; GPUs want more
/// threads per workgroup to hide latency.
pub(super) fn block() -> usize {
    if gpu::get().info.device_type == wgpu::DeviceType::Cpu {
        8
    } else {
        32
    }
}

/// The fused kernels: the subgroup kernels where the adapter has 8-lane subgroups (the
/// workgroup is then one subgroup), the plain ones elsewhere.
pub(super) struct Kernels {
    shader: &'static gpu::Shader,
    suffix: &'static str,
}

impl Kernels {
    pub(super) fn new() -> Kernels {
        if gpu::get().subgroup8 && block() == 8 {
            Kernels {
                shader: &shaders::ATTENTION_DENSE_SUBGROUP,
                suffix: "_subgroup",
            }
        } else {
            Kernels {
                shader: &shaders::ATTENTION_DENSE,
                suffix: "",
            }
        }
    }

    /// Dispatches the kernel `entry` (forward, backward_dq or backward_dkdv).
    fn dispatch(&self, entry: &str, params: &Params, bindings: &[Binding], groups: [u32; 3]) -> Result<()> {
        gpu::get().dispatch(
            self.shader,
            &format!("{entry}{}", self.suffix),
            &[("BLOCK", block() as f64)],
            bytemuck::bytes_of(params),
            bindings,
            groups,
        )
    }
}

/// Bias of a fused kernel call, with the layout that decides its addressing.
#[derive(Clone, Copy)]
pub(super) enum BiasArg<'t> {
    None,
    /// A dense bias [B|1, H|1, Nq|1, Nk].
    Dense(&'t Tensor, BiasLayout),
    /// One value per kept entry of a key list, shared by the batch (keys-only patterns).
    Entries(&'t Tensor),
}

impl<'t> BiasArg<'t> {
    fn tensor(&self) -> Option<&'t Tensor> {
        match *self {
            BiasArg::None => None,
            BiasArg::Dense(t, _) | BiasArg::Entries(t) => Some(t),
        }
    }

    /// Elements of one batch item, when the bias has a batch axis of its own.
    fn item(&self) -> Option<usize> {
        match self {
            BiasArg::Dense(_, layout) => layout.item(),
            _ => None,
        }
    }

    /// Binds the bias (or its gradient `t`) for a batch range, with the element offset.
    fn bind<'a>(&self, t: &'a Tensor, items: &Range<usize>) -> (Binding<'a>, u32) {
        match self.item() {
            Some(item) => window(t, item, items),
            None => (whole(t), 0),
        }
    }
}

/// Builds the fields of `Params` that every fused kernel shares. `dims.d` is the padded head
/// width; `scale` comes from the real one.
fn base_params(dims: &Dims, scale: f32, cfg: &AttentionConfig, bias: &BiasArg, key_list: bool) -> Params {
    let mut flags = 0;
    if cfg.causal {
        flags |= CAUSAL;
    }
    if cfg.logits == LogitKernel::Gaussian {
        flags |= GAUSSIAN;
    }
    if key_list {
        flags |= KEY_LIST;
    }
    let mut p = Params {
        heads: dims.heads as u32,
        nq: dims.nq as u32,
        nk: dims.nk as u32,
        scale,
        b_inner: 1,
        h_inner: 1,
        d4: (dims.d / 4) as u32,
        ..Params::default()
    };
    match bias {
        BiasArg::None => {}
        BiasArg::Dense(_, layout) => {
            flags |= HAS_BIAS;
            p.bias_bs = layout.bs as u32;
            p.bias_hs = layout.hs as u32;
            p.bias_rs = layout.rs as u32;
        }
        BiasArg::Entries(_) => flags |= HAS_BIAS,
    }
    p.flags = flags;
    p
}

/// Checks a dense bias against the sizes, and that a bias shared by all batch items fits one
/// binding.
fn dense_bias<'t>(op: &'static str, bias: Option<&'t Tensor>, dims: &Dims) -> Result<BiasArg<'t>> {
    let Some(bias) = bias else {
        return Ok(BiasArg::None);
    };
    let layout = BiasLayout::of_tensor(op, bias, dims)?;
    check_binding(op, "bias", bias, layout.item().is_none())?;
    Ok(BiasArg::Dense(bias, layout))
}

/// Rejects a tensor that every batch range binds whole but that exceeds the binding limit.
pub(super) fn check_binding(op: &'static str, name: &str, t: &Tensor, bound_whole: bool) -> Result<()> {
    let limit = gpu::get().max_binding_bytes();
    if bound_whole && t.byte_len() > limit {
        return Err(Error::shape(
            op,
            format!(
                "{name} {:?} of {} bytes exceeds the binding limit of {limit} bytes",
                t.shape(),
                t.byte_len()
            ),
        ));
    }
    Ok(())
}

/// Elements per batch item of every tensor bound per batch range.
fn item_elements(dims: &Dims, bias: &BiasArg) -> Vec<usize> {
    let mut items = vec![dims.q_item(), dims.k_item(), dims.row_item()];
    items.extend(bias.item());
    items
}

/// Fused attention forward.
///
/// Shapes: q [B, H, Nq, d], k and v [B, H, Nk, d], bias [B|1, H|1, Nq|1, Nk] added to the
/// scores before the softmax. Returns out [B, H, Nq, d] and the row log-sum-exp
/// lse [B, H, Nq] of the biased scores, which the backward needs.
pub fn attention_dense(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    cfg: &AttentionConfig,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention_dense";
    let dims = Dims::of(OP, q, k, v)?;
    let bias = dense_bias(OP, bias, &dims)?;
    fused_forward(OP, q, k, v, bias, None, &dims, cfg)
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
    let bias = dense_bias(OP, bias, &dims)?;
    let saved = Saved { out, lse, dout };
    fused_backward(OP, q, k, v, bias, None, saved, &dims, cfg)
}

/// A per-head key list for the fused kernels: u32 [H + 1 + kept], the list offsets and then
/// the kept keys of all heads, and the largest list length.
#[derive(Clone, Copy)]
pub(super) struct KeyList<'t> {
    pub tensor: &'t Tensor,
    pub max_count: usize,
}

/// Runs the fused forward kernel over every batch range.
#[allow(clippy::too_many_arguments)]
pub(super) fn fused_forward(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: BiasArg,
    key_list: Option<KeyList>,
    dims: &Dims,
    cfg: &AttentionConfig,
) -> Result<(Tensor, Tensor)> {
    let lse_shape = [dims.batch, dims.heads, dims.nq];
    if dims.nk == 0 || q.numel() == 0 {
        return Ok((
            Tensor::zeros(q.shape(), DType::F32),
            Tensor::zeros(&lse_shape, DType::F32),
        ));
    }
    let scale = dims.scale();
    let padded = Padded::new(dims, [q, k, v])?;
    let [q, k, v] = padded.inputs();
    let dims = &padded.dims;
    let out = Tensor::empty(q.shape(), DType::F32);
    let lse = Tensor::empty(&lse_shape, DType::F32);
    // Stands in for a missing key list, which the kernel then never reads.
    let no_list = Tensor::zeros(&[1], DType::U32);
    let list = key_list.map_or(&no_list, |l| l.tensor);

    let kernels = Kernels::new();
    for items in batch_chunks(op, dims.batch, &item_elements(dims, &bias))? {
        let mut p = base_params(dims, scale, cfg, &bias, key_list.is_some());
        let (q_bind, q_off) = window(q, dims.q_item(), &items);
        let (k_bind, k_off) = window(k, dims.k_item(), &items);
        let (v_bind, _) = window(v, dims.k_item(), &items);
        let (out_bind, _) = window(&out, dims.q_item(), &items);
        let (lse_bind, row_off) = window(&lse, dims.row_item(), &items);
        // Without a bias, q's window takes the binding; the kernel never reads it.
        let (bias_bind, bias_off) = match bias.tensor() {
            Some(t) => bias.bind(t, &items),
            None => (q_bind, 0),
        };
        (p.q_off, p.k_off, p.row_off, p.bias_off) = (q_off / 4, k_off / 4, row_off, bias_off);
        kernels.dispatch(
            "forward",
            &p,
            &[q_bind, k_bind, v_bind, bias_bind, whole(list), out_bind, lse_bind],
            [groups(dims.nq, block() * ROWS), dims.heads as u32, items.len() as u32],
        )?;
    }
    Ok((padded.crop(out)?, lse))
}

/// The forward's saved outputs and the incoming gradient.
#[derive(Clone, Copy)]
pub(super) struct Saved<'t> {
    pub out: &'t Tensor,
    pub lse: &'t Tensor,
    pub dout: &'t Tensor,
}

/// Runs the fused backward kernels over every batch range.
#[allow(clippy::too_many_arguments)]
pub(super) fn fused_backward(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: BiasArg,
    key_list: Option<KeyList>,
    saved: Saved,
    dims: &Dims,
    cfg: &AttentionConfig,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    expect_shape(op, "out", saved.out, q.shape())?;
    expect_shape(op, "dout", saved.dout, q.shape())?;
    expect_shape(op, "lse", saved.lse, &[dims.batch, dims.heads, dims.nq])?;

    let bias_tensor = bias.tensor();
    if dims.nk == 0 || dims.nq == 0 || dims.batch * dims.heads == 0 {
        // No query row or no key: every gradient is zero.
        return Ok((
            Tensor::zeros(q.shape(), DType::F32),
            Tensor::zeros(k.shape(), DType::F32),
            Tensor::zeros(v.shape(), DType::F32),
            bias_tensor.map(|b| Tensor::zeros(b.shape(), DType::F32)),
        ));
    }
    let scale = dims.scale();
    let padded = Padded::new(dims, [q, k, v, saved.out, saved.dout])?;
    let [q, k, v, out, dout] = padded.inputs();
    let dims = &padded.dims;
    let dq = Tensor::empty(q.shape(), DType::F32);
    // With a key list the kernel writes only the rows of kept keys; the others stay zero.
    let (dk, dv) = if key_list.is_some() {
        (
            Tensor::zeros(k.shape(), DType::F32),
            Tensor::zeros(v.shape(), DType::F32),
        )
    } else {
        (
            Tensor::empty(k.shape(), DType::F32),
            Tensor::empty(v.shape(), DType::F32),
        )
    };
    let delta = Tensor::empty(saved.lse.shape(), DType::F32);
    let dbias = bias_tensor.map(|b| Tensor::empty(b.shape(), DType::F32));
    // Stand-ins for a missing key list and bias gradient, which the kernels never touch.
    let no_list = Tensor::zeros(&[1], DType::U32);
    let list = key_list.map_or(&no_list, |l| l.tensor);
    let scratch = Tensor::empty(&[1], DType::F32);
    let slots = key_list.map_or(dims.nk, |l| l.max_count);

    let kernels = Kernels::new();
    let chunks = batch_chunks(op, dims.batch, &item_elements(dims, &bias))?;
    for (chunk, items) in chunks.iter().enumerate() {
        let mut p = base_params(dims, scale, cfg, &bias, key_list.is_some());
        let (q_bind, q_off) = window(q, dims.q_item(), items);
        let (k_bind, k_off) = window(k, dims.k_item(), items);
        let (v_bind, _) = window(v, dims.k_item(), items);
        let (out_bind, _) = window(out, dims.q_item(), items);
        let (dout_bind, _) = window(dout, dims.q_item(), items);
        let (dq_bind, _) = window(&dq, dims.q_item(), items);
        let (dk_bind, _) = window(&dk, dims.k_item(), items);
        let (dv_bind, _) = window(&dv, dims.k_item(), items);
        let (lse_bind, row_off) = window(saved.lse, dims.row_item(), items);
        let (delta_bind, _) = window(&delta, dims.row_item(), items);
        let (bias_bind, bias_off) = match bias_tensor {
            Some(t) => bias.bind(t, items),
            None => (q_bind, 0),
        };
        let dbias_bind = match &dbias {
            Some(t) => bias.bind(t, items).0,
            None => whole(&scratch),
        };
        (p.q_off, p.k_off, p.row_off, p.bias_off) = (q_off / 4, k_off / 4, row_off, bias_off);
        let list_bind = whole(list);

        kernels.dispatch(
            "backward_dq",
            &p,
            &[
                q_bind, k_bind, v_bind, bias_bind, list_bind, out_bind, lse_bind, dout_bind, dq_bind, delta_bind,
            ],
            [groups(dims.nq, block() * ROWS), dims.heads as u32, items.len() as u32],
        )?;

        // Batch items and heads that share a bias slice run in one invocation, which sums
        // their bias gradients.
        let (batch_shared, heads_shared) = match &bias {
            BiasArg::None => (false, false),
            BiasArg::Dense(_, layout) => (layout.batch_broadcast(), layout.shape[1] == 1),
            BiasArg::Entries(_) => (true, false),
        };
        if batch_shared {
            p.b_inner = items.len() as u32;
            if chunk > 0 {
                p.flags |= ACCUMULATE_DBIAS;
            }
        }
        if heads_shared {
            p.h_inner = dims.heads as u32;
        }
        let slices = (items.len() / p.b_inner as usize) * (dims.heads / p.h_inner as usize);
        kernels.dispatch(
            "backward_dkdv",
            &p,
            &[
                q_bind, k_bind, v_bind, bias_bind, list_bind, delta_bind, lse_bind, dout_bind, dk_bind, dv_bind,
                dbias_bind,
            ],
            [groups(slots, block() * ROWS), slices as u32, 1],
        )?;
    }
    Ok((padded.crop(dq)?, padded.crop(dk)?, padded.crop(dv)?, dbias))
}

/// Inputs of the fused kernels with the head width padded to a multiple of 4, because they
/// read rows as vec4. Widths that are multiples of 4 pass through without a copy.
pub(super) struct Padded<'t, const N: usize> {
    pub dims: Dims,
    /// The real head width.
    width: usize,
    inputs: [&'t Tensor; N],
    copies: Option<Vec<Tensor>>,
}

impl<'t, const N: usize> Padded<'t, N> {
    pub fn new(dims: &Dims, inputs: [&'t Tensor; N]) -> Result<Self> {
        let padded = dims.d.next_multiple_of(4);
        let copies = if padded == dims.d {
            None
        } else {
            Some(
                inputs
                    .iter()
                    .map(|t| super::copy_rows(t, padded))
                    .collect::<Result<Vec<_>>>()?,
            )
        };
        Ok(Padded {
            dims: Dims { d: padded, ..*dims },
            width: dims.d,
            inputs,
            copies,
        })
    }

    pub fn inputs(&self) -> [&Tensor; N] {
        match &self.copies {
            Some(copies) => std::array::from_fn(|i| &copies[i]),
            None => self.inputs,
        }
    }

    /// Cuts a result computed at the padded width back to the real head width.
    pub fn crop(&self, t: Tensor) -> Result<Tensor> {
        if self.copies.is_some() {
            super::copy_rows(&t, self.width)
        } else {
            Ok(t)
        }
    }
}
