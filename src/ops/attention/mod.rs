//! Prior-weighted attention, `softmax_j(s_ij + b_ij) v_j`, in three forms:
//!
//! - [`attention_dense`]: fused kernels in the FlashAttention style that never store the
//!   Nq x Nk scores in the forward, with an optional bias broadcast as [B|1, H|1, Nq|1, Nk].
//! - [`attention_gathered`]: the same over a pruning [`Pattern`], reading only the kept keys of
//!   each row, in O(nnz d) work and O(nnz) memory.
//! - [`attention_unfused`]: the plain path of matmul, bias, mask, softmax and matmul, which
//!   keeps the probabilities.
//!
//! The scores are `s_ij = q_i . k_j / sqrt(d)` for [`LogitKernel::Dot`]; the Gaussian kernel
//! `-|q_i - k_j|^2 / (2 sqrt(d))` equals that plus the per-key term `-|k_j|^2 / (2 sqrt(d))`,
//! because `|q_i|^2` is constant within a row and cancels in the softmax. A causal model masks
//! the keys j > i, so row i attends to keys 0..=i, aligned at the top left when Nq != Nk.
//!
//! A row without a visible key returns zeros and a log-sum-exp of 0; its gradients are zero.
//! Biases must be finite: mask an entry with a large negative value such as -1e9, never with
//! -inf.

mod dense;
mod gathered;
mod pattern;
mod unfused;

use std::ops::Range;

pub use dense::{attention_dense, attention_dense_backward};
pub use gathered::{attention_gathered, attention_gathered_backward};
pub use pattern::Pattern;
pub use unfused::{attention_unfused, attention_unfused_backward};

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{self, Binding};
use crate::shaders;
use crate::tensor::{DType, Tensor};

/// Function that turns a query and a key into an attention score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogitKernel {
    /// `q . k / sqrt(d)`: standard softmax attention.
    #[serde(alias = "Dot")]
    Dot,
    /// `-|q - k|^2 / (2 sqrt(d))`: the Gaussian-mixture form of FiAK.
    #[serde(alias = "Gaussian")]
    Gaussian,
}

impl std::fmt::Display for LogitKernel {
    /// Writes the name the command line and config.json use.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogitKernel::Dot => "dot",
            LogitKernel::Gaussian => "gaussian",
        })
    }
}

/// Options shared by every attention op. The scale is always `1 / sqrt(d)`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionConfig {
    /// Mask the keys j > i of query row i.
    pub causal: bool,
    pub logits: LogitKernel,
    /// Kernels of gathered attention for patterns that are not keys-only.
    pub gathered: GatheredPath,
}

/// Kernel choice of gathered attention for a pattern whose rows keep different keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GatheredPath {
    /// The cheaper of the two below for this adapter and pattern; `FIAK_GATHERED=rows|union`
    /// overrides the choice.
    #[default]
    Auto,
    /// The row kernels: one invocation per query row reads only its kept keys.
    Rows,
    /// The fused dense kernels over the union of each head's kept keys, the other entries of
    /// that grid masked through the bias. Needs every row to keep a visible key.
    KeyUnion,
}

// Flags of the kernels' `Params.flags`, as in the shaders.
const CAUSAL: u32 = 1;
const GAUSSIAN: u32 = 2;
const HAS_BIAS: u32 = 4;
const ACCUMULATE_DBIAS: u32 = 8;
const KEY_LIST: u32 = 16;

/// The uniform block of the kernels in attention_dense.wgsl (`Params` there).
#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct Params {
    heads: u32,
    nq: u32,
    nk: u32,
    flags: u32,
    bias_bs: u32,
    bias_hs: u32,
    bias_rs: u32,
    scale: f32,
    q_off: u32,
    k_off: u32,
    row_off: u32,
    bias_off: u32,
    b_inner: u32,
    h_inner: u32,
    /// Head width in vec4 (fused kernels) and in elements (unfused helpers).
    d4: u32,
    d: u32,
}

/// Sizes of one attention call: q [B, H, Nq, d], k and v [B, H, Nk, d].
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    heads: usize,
    nq: usize,
    nk: usize,
    d: usize,
}

impl Dims {
    /// Checks the shapes and dtypes of q, k and v.
    fn of(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
        for (name, t) in [("q", q), ("k", k), ("v", v)] {
            if t.rank() != 4 || t.dtype() != DType::F32 {
                return Err(Error::shape(
                    op,
                    format!(
                        "{name} must be an f32 tensor [B, H, N, d], got {:?} {:?}",
                        t.shape(),
                        t.dtype()
                    ),
                ));
            }
        }
        let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
        if ks != vs || qs[0] != ks[0] || qs[1] != ks[1] || qs[3] != ks[3] {
            return Err(Error::shape(
                op,
                format!("q {qs:?}, k {ks:?} and v {vs:?} must be [B, H, Nq, d], [B, H, Nk, d], [B, H, Nk, d]"),
            ));
        }
        if qs[3] == 0 {
            return Err(Error::shape(op, format!("head width is 0 in q {qs:?}")));
        }
        Ok(Dims {
            batch: qs[0],
            heads: qs[1],
            nq: qs[2],
            nk: ks[2],
            d: qs[3],
        })
    }

    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }

    /// Elements of one batch item of q (and of out, dout, dq).
    fn q_item(&self) -> usize {
        self.heads * self.nq * self.d
    }

    /// Elements of one batch item of k (and of v, dk, dv).
    fn k_item(&self) -> usize {
        self.heads * self.nk * self.d
    }

    /// Elements of one batch item of lse.
    fn row_item(&self) -> usize {
        self.heads * self.nq
    }
}

/// Checks that a tensor has the expected shape and dtype f32.
fn expect_shape(op: &'static str, name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape() != shape || t.dtype() != DType::F32 {
        return Err(Error::shape(
            op,
            format!("{name} must be f32 {shape:?}, got {:?} {:?}", t.shape(), t.dtype()),
        ));
    }
    Ok(())
}

/// A dense bias [B|1, H|1, Nq|1, Nk] and its strides, 0 on broadcast axes.
#[derive(Clone, Copy, Debug)]
struct BiasLayout {
    shape: [usize; 4],
    bs: usize,
    hs: usize,
    rs: usize,
}

impl BiasLayout {
    fn of(op: &'static str, shape: &[usize], dims: &Dims) -> Result<BiasLayout> {
        let full = [dims.batch, dims.heads, dims.nq, dims.nk];
        let fits = shape.len() == 4 && (0..3).all(|a| shape[a] == 1 || shape[a] == full[a]) && shape[3] == dims.nk;
        if !fits {
            return Err(Error::shape(
                op,
                format!("bias {shape:?} does not broadcast to [B|1, H|1, Nq|1, Nk] = {full:?}"),
            ));
        }
        let stride = |axis: usize, inner: usize| if shape[axis] == 1 { 0 } else { inner };
        Ok(BiasLayout {
            shape: [shape[0], shape[1], shape[2], shape[3]],
            bs: stride(0, shape[1] * shape[2] * shape[3]),
            hs: stride(1, shape[2] * shape[3]),
            rs: stride(2, shape[3]),
        })
    }

    fn of_tensor(op: &'static str, bias: &Tensor, dims: &Dims) -> Result<BiasLayout> {
        if bias.dtype() != DType::F32 {
            return Err(Error::shape(op, format!("bias must be f32, got {:?}", bias.dtype())));
        }
        Self::of(op, bias.shape(), dims)
    }

    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Returns whether the batch items of a dispatch share one bias slice, so their bias
    /// gradients sum into it.
    fn batch_broadcast(&self) -> bool {
        self.shape[0] == 1
    }

    /// Elements of one batch item of the bias, or None when it broadcasts over the batch.
    fn item(&self) -> Option<usize> {
        (!self.batch_broadcast()).then_some(self.numel() / self.shape[0])
    }
}

/// Splits `batch` items into ranges whose windows fit one storage binding, given the elements
/// per batch item of every tensor that is bound per batch range. Usually one range.
// NOTE: more than one range needs tensors over the binding limit (128 MiB on lavapipe), which
// the tests do not allocate, so the window offsets of later ranges run untested.
fn batch_chunks(op: &'static str, batch: usize, item_elements: &[usize]) -> Result<Vec<Range<usize>>> {
    let gpu = gpu::get();
    let limit = gpu.max_binding_bytes().saturating_sub(gpu.binding_alignment());
    let item_bytes = item_elements.iter().copied().max().unwrap_or(0) as u64 * 4;
    if item_bytes > limit {
        return Err(Error::shape(
            op,
            format!(
                "one batch item needs a {item_bytes}-byte binding, over the device's limit of {} bytes; \
                 use fewer heads or a shorter sequence",
                gpu.max_binding_bytes()
            ),
        ));
    }
    let per_chunk = limit.checked_div(item_bytes).map_or(batch, |n| n as usize).max(1);
    Ok((0..batch)
        .step_by(per_chunk)
        .map(|b0| b0..(b0 + per_chunk).min(batch))
        .collect())
}

/// Binds the batch range `items` of a tensor whose batch items hold `item` elements, and
/// returns the binding and the element offset of the range's start inside it.
fn window<'t>(t: &'t Tensor, item: usize, items: &Range<usize>) -> (Binding<'t>, u32) {
    t.bind_window(items.start * item, items.len() * item)
}

/// Returns a copy of `t` [..., w] with rows of `width` elements: cut, or padded with zeros.
fn copy_rows(t: &Tensor, width: usize) -> Result<Tensor> {
    let src_width = t.dim(-1);
    let rows = t.numel() / src_width.max(1);
    let mut shape = t.shape().to_vec();
    *shape.last_mut().expect("rank >= 1") = width;
    let out = Tensor::empty(&shape, DType::F32);
    if out.numel() == 0 {
        return Ok(out);
    }
    let gpu = gpu::get();
    let limit = (gpu.max_binding_bytes() - gpu.binding_alignment()) as usize / 4;
    let per_chunk = (limit / src_width.max(width)).max(1);
    for first in (0..rows).step_by(per_chunk) {
        let count = per_chunk.min(rows - first);
        let (src, src_off) = t.bind_window(first * src_width, count * src_width);
        let (dst, dst_off) = out.bind_window(first * width, count * width);
        let params = Params {
            q_off: src_off,
            k_off: dst_off,
            nq: count as u32,
            nk: src_width as u32,
            d: width as u32,
            ..Params::default()
        };
        let grid_rows = count.min(65535);
        gpu.dispatch(
            &shaders::ATTENTION_DENSE,
            "copy_rows",
            &[],
            bytemuck::bytes_of(&params),
            &[src, dst],
            [
                crate::ops::groups(width, 64),
                grid_rows as u32,
                count.div_ceil(65535) as u32,
            ],
        )?;
    }
    Ok(out)
}

/// Binds a whole tensor that every batch range reads.
fn whole(t: &Tensor) -> Binding<'_> {
    t.bind_window(0, t.numel()).0
}
