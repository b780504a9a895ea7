//! Key-gathered sparse attention over a pruning [`Pattern`]: only kept entries are scored and
//! only kept keys are read, in O(nnz d) work and O(nnz) memory. Keys-only patterns run on the
//! fused dense kernels restricted to their key lists; other patterns on the row kernels of
//! attention_gathered.wgsl.

use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};

use super::dense::{BiasArg, KeyList, Padded, Saved, block, check_binding, fused_backward, fused_forward};
use super::pattern::KeyUnion;
use super::{
    ACCUMULATE_DBIAS, AttentionConfig, CAUSAL, Dims, GAUSSIAN, GatheredPath, HAS_BIAS, LogitKernel, Pattern,
    batch_chunks, expect_shape, whole, window,
};
use crate::error::{Error, Result};
use crate::gpu;
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{DType, Tensor};

/// The uniform block of the row kernels (`Params` in attention_gathered.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct RowParams {
    heads: u32,
    nq: u32,
    nk: u32,
    flags: u32,
    nnz: u32,
    scale: f32,
    q_off: u32,
    k_off: u32,
    row_off: u32,
    b_inner: u32,
    d4: u32,
    pad: [u32; 5],
}

/// Checks that the pattern and the per-entry bias fit the sizes.
fn check_pattern(op: &'static str, dims: &Dims, pattern: &Pattern, bias: Option<&Tensor>) -> Result<()> {
    if (pattern.heads(), pattern.nq(), pattern.nk()) != (dims.heads, dims.nq, dims.nk) {
        return Err(Error::shape(
            op,
            format!(
                "pattern of {} heads, {} queries and {} keys does not fit H = {}, Nq = {}, Nk = {}",
                pattern.heads(),
                pattern.nq(),
                pattern.nk(),
                dims.heads,
                dims.nq,
                dims.nk
            ),
        ));
    }
    if let Some(bias) = bias {
        expect_shape(op, "bias", bias, &[pattern.nnz()])?;
        check_binding(op, "bias", bias, true)?;
    }
    Ok(())
}

fn bias_arg(bias: Option<&Tensor>) -> BiasArg<'_> {
    bias.map_or(BiasArg::None, BiasArg::Entries)
}

fn key_list(pattern: &Pattern) -> Option<KeyList<'_>> {
    pattern
        .shared_keys_tensor()
        .map(|(tensor, max_count)| KeyList { tensor, max_count })
}

fn row_params(dims: &Dims, scale: f32, cfg: &AttentionConfig, pattern: &Pattern, with_bias: bool) -> RowParams {
    let mut flags = 0;
    if cfg.causal {
        flags |= CAUSAL;
    }
    if cfg.logits == LogitKernel::Gaussian {
        flags |= GAUSSIAN;
    }
    if with_bias {
        flags |= HAS_BIAS;
    }
    RowParams {
        heads: dims.heads as u32,
        nq: dims.nq as u32,
        nk: dims.nk as u32,
        flags,
        nnz: pattern.nnz() as u32,
        scale,
        b_inner: 1,
        d4: (dims.d / 4) as u32,
        ..RowParams::default()
    }
}

/// The bias of masked grid slots: far below any score, yet finite.
const MASKED: f32 = -1.0e9;

/// Returns the key-union grid of `pattern` when the fused kernels run it instead of the row
/// kernels (see [`GatheredPath`]). On CPU adapters with 8-lane subgroups (attention_dense.wgsl)
/// a grid slot of the fused kernels costs about d / 4 + 1 loads per lane. An entry of the row
/// kernels costs 2 d + 2, because rows there share no K or V load. Other adapters run the row
/// kernels.
fn key_union<'p>(pattern: &'p Pattern, dims: &Dims, cfg: &AttentionConfig) -> Option<&'p KeyUnion> {
    let path = match cfg.gathered {
        GatheredPath::Auto => forced_path(),
        path => path,
    };
    if path == GatheredPath::Rows || pattern.nnz() == 0 {
        return None;
    }
    if path == GatheredPath::Auto && !gpu::get().subgroup8 {
        return None;
    }
    let union = pattern.key_union();
    let covered = if cfg.causal {
        union.rows_covered_causal
    } else {
        union.rows_covered
    };
    if !covered {
        return None;
    }
    let scored = if cfg.causal { union.causal_slots } else { union.slots };
    let fused_cost = scored * (dims.d / 4 + 1);
    let rows_cost = pattern.nnz() * (2 * dims.d + 2);
    (path == GatheredPath::KeyUnion || fused_cost < rows_cost).then_some(union)
}

/// Returns the path `FIAK_GATHERED=rows|union` forces, or Auto. The variable is read once per
/// process.
fn forced_path() -> GatheredPath {
    static CHOICE: OnceLock<GatheredPath> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let forced = std::env::var("FIAK_GATHERED").ok().filter(|v| !v.is_empty());
        match forced.as_deref() {
            Some("rows") => GatheredPath::Rows,
            Some("union") => GatheredPath::KeyUnion,
            Some(other) => {
                log::warn!("FIAK_GATHERED={other} ignored: expected rows or union");
                GatheredPath::Auto
            }
            None => GatheredPath::Auto,
        }
    })
}

/// Moves per-entry values between the CSR order and the key-union grid: `dst[x] = src[index[x]]`,
/// `fill` where the index is NONE, and 0 in place of src when there is none.
fn gather_entries(src: Option<&Tensor>, index: &Tensor, count: usize, fill: f32) -> Result<Tensor> {
    let dst = Tensor::empty(&[count.max(1)], DType::F32);
    let p = RowParams {
        flags: if src.is_some() { HAS_BIAS } else { 0 },
        nnz: count as u32,
        scale: fill,
        ..RowParams::default()
    };
    let blocks = count.div_ceil(64);
    gpu::get().dispatch(
        &shaders::ATTENTION_GATHERED,
        "gather_entries",
        &[],
        bytemuck::bytes_of(&p),
        // Without a source the kernel reads none, so the index buffer takes its binding.
        &[whole(src.unwrap_or(index)), whole(index), whole(&dst)],
        [blocks.min(65535) as u32, blocks.div_ceil(65535) as u32, 1],
    )?;
    Ok(dst)
}

/// Builds the bias of the key-union grid: the entries' bias in their slots, MASKED elsewhere.
fn union_bias(union: &KeyUnion, bias: Option<&Tensor>) -> Result<Tensor> {
    gather_entries(bias, &union.to_entries, union.slots, MASKED)
}

fn union_list(union: &KeyUnion) -> KeyList<'_> {
    KeyList {
        tensor: &union.lists,
        max_count: union.longest,
    }
}

fn constants() -> [(&'static str, f64); 1] {
    [("BLOCK", (block() * 2) as f64)]
}

/// Invocations per workgroup of the row kernels, each owning one query or key row.
fn rows_per_workgroup() -> usize {
    block() * 2
}

/// Sparse attention forward over the kept entries of `pattern`.
///
/// Shapes: q [B, H, Nq, d], k and v [B, H, Nk, d], bias [nnz] per kept entry in the pattern's
/// order, shared by the batch. Returns out [B, H, Nq, d] and lse [B, H, Nq]. With `cfg.causal`
/// a kept key j > i is masked as well. Rows without a visible entry return zeros.
pub fn attention_gathered(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pattern: &Pattern,
    bias: Option<&Tensor>,
    cfg: &AttentionConfig,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention_gathered";
    let dims = Dims::of(OP, q, k, v)?;
    check_pattern(OP, &dims, pattern, bias)?;
    if let Some(list) = key_list(pattern) {
        return fused_forward(OP, q, k, v, bias_arg(bias), Some(list), &dims, cfg);
    }
    if let Some(union) = key_union(pattern, &dims, cfg) {
        let grid_bias = union_bias(union, bias)?;
        let list = Some(union_list(union));
        return fused_forward(OP, q, k, v, BiasArg::Entries(&grid_bias), list, &dims, cfg);
    }

    let lse_shape = [dims.batch, dims.heads, dims.nq];
    if dims.nk == 0 || q.numel() == 0 {
        return Ok((
            Tensor::zeros(q.shape(), DType::F32),
            Tensor::zeros(&lse_shape, DType::F32),
        ));
    }
    let scale = dims.scale();
    let padded = Padded::new(&dims, [q, k, v])?;
    let [q, k, v] = padded.inputs();
    let dims = &padded.dims;
    let out = Tensor::empty(q.shape(), DType::F32);
    let lse = Tensor::empty(&lse_shape, DType::F32);

    let gpu = gpu::get();
    let items_elements = [dims.q_item(), dims.k_item(), dims.row_item()];
    for items in batch_chunks(OP, dims.batch, &items_elements)? {
        let mut p = row_params(dims, scale, cfg, pattern, bias.is_some());
        let (q_bind, q_off) = window(q, dims.q_item(), &items);
        let (k_bind, k_off) = window(k, dims.k_item(), &items);
        let (v_bind, _) = window(v, dims.k_item(), &items);
        let (out_bind, _) = window(&out, dims.q_item(), &items);
        let (lse_bind, row_off) = window(&lse, dims.row_item(), &items);
        let bias_bind = bias.map_or(q_bind, whole);
        (p.q_off, p.k_off, p.row_off) = (q_off / 4, k_off / 4, row_off);
        gpu.dispatch(
            &shaders::ATTENTION_GATHERED,
            "forward_rows",
            &constants(),
            bytemuck::bytes_of(&p),
            &[
                q_bind,
                k_bind,
                v_bind,
                bias_bind,
                whole(pattern.row_offsets_tensor()),
                whole(pattern.key_index_tensor()),
                out_bind,
                lse_bind,
            ],
            [
                groups(dims.nq, rows_per_workgroup()),
                dims.heads as u32,
                items.len() as u32,
            ],
        )?;
    }
    Ok((padded.crop(out)?, lse))
}

/// Sparse attention backward from the forward's `out` and `lse`.
///
/// Shapes as in [`attention_gathered`], with dout like out. Returns dq, dk, dv and, when a bias
/// was given, its gradient [nnz] summed over the batch. Keys no row keeps get zero dk and dv.
#[allow(clippy::too_many_arguments)]
pub fn attention_gathered_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pattern: &Pattern,
    bias: Option<&Tensor>,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    cfg: &AttentionConfig,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    const OP: &str = "attention_gathered_backward";
    let dims = Dims::of(OP, q, k, v)?;
    check_pattern(OP, &dims, pattern, bias)?;
    let saved = Saved { out, lse, dout };
    if let Some(list) = key_list(pattern) {
        return fused_backward(OP, q, k, v, bias_arg(bias), Some(list), saved, &dims, cfg);
    }
    if let Some(union) = key_union(pattern, &dims, cfg) {
        let grid_bias = union_bias(union, bias)?;
        let list = Some(union_list(union));
        let (dq, dk, dv, grid_dbias) =
            fused_backward(OP, q, k, v, BiasArg::Entries(&grid_bias), list, saved, &dims, cfg)?;
        let dbias = match (bias, grid_dbias) {
            (Some(_), Some(grid)) => Some(gather_entries(Some(&grid), &union.to_slots, pattern.nnz(), 0.0)?),
            _ => None,
        };
        return Ok((dq, dk, dv, dbias));
    }

    expect_shape(OP, "out", out, q.shape())?;
    expect_shape(OP, "dout", dout, q.shape())?;
    expect_shape(OP, "lse", lse, &[dims.batch, dims.heads, dims.nq])?;
    if dims.nk == 0 || dims.nq == 0 || dims.batch * dims.heads == 0 || pattern.nnz() == 0 {
        // No kept entry: every gradient is zero.
        return Ok((
            Tensor::zeros(q.shape(), DType::F32),
            Tensor::zeros(k.shape(), DType::F32),
            Tensor::zeros(v.shape(), DType::F32),
            bias.map(|b| Tensor::zeros(b.shape(), DType::F32)),
        ));
    }

    let scale = dims.scale();
    let padded = Padded::new(&dims, [q, k, v, out, dout])?;
    let [q, k, v, out, dout] = padded.inputs();
    let dims = &padded.dims;
    let dq = Tensor::empty(q.shape(), DType::F32);
    let dk = Tensor::empty(k.shape(), DType::F32);
    let dv = Tensor::empty(v.shape(), DType::F32);
    let delta = Tensor::empty(lse.shape(), DType::F32);
    let dbias = bias.map(|b| Tensor::empty(b.shape(), DType::F32));
    // Stands in for a missing bias gradient, which the kernel never writes.
    let scratch = Tensor::empty(&[1], DType::F32);

    let gpu = gpu::get();
    let items_elements = [dims.q_item(), dims.k_item(), dims.row_item()];
    let chunks = batch_chunks(OP, dims.batch, &items_elements)?;
    for (chunk, items) in chunks.iter().enumerate() {
        let mut p = row_params(dims, scale, cfg, pattern, bias.is_some());
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
        let bias_bind = bias.map_or(q_bind, whole);
        let dbias_bind = whole(dbias.as_ref().unwrap_or(&scratch));
        (p.q_off, p.k_off, p.row_off) = (q_off / 4, k_off / 4, row_off);

        // The batch items of a chunk run in one invocation per row, which sums their bias
        // gradients; a later chunk adds to the earlier ones.
        let mut dq_params = p;
        if bias.is_some() {
            dq_params.b_inner = items.len() as u32;
            if chunk > 0 {
                dq_params.flags |= ACCUMULATE_DBIAS;
            }
        }
        gpu.dispatch(
            &shaders::ATTENTION_GATHERED,
            "backward_dq_rows",
            &constants(),
            bytemuck::bytes_of(&dq_params),
            &[
                q_bind,
                k_bind,
                v_bind,
                bias_bind,
                whole(pattern.row_offsets_tensor()),
                whole(pattern.key_index_tensor()),
                out_bind,
                lse_bind,
                dout_bind,
                dq_bind,
                delta_bind,
                dbias_bind,
            ],
            [
                groups(dims.nq, rows_per_workgroup()),
                dims.heads as u32,
                (items.len() / dq_params.b_inner as usize) as u32,
            ],
        )?;

        gpu.dispatch(
            &shaders::ATTENTION_GATHERED,
            "backward_dkdv_rows",
            &constants(),
            bytemuck::bytes_of(&p),
            &[
                q_bind,
                k_bind,
                v_bind,
                bias_bind,
                whole(pattern.transposed_tensor()),
                lse_bind,
                delta_bind,
                dout_bind,
                dk_bind,
                dv_bind,
            ],
            [
                groups(dims.nk, rows_per_workgroup()),
                dims.heads as u32,
                items.len() as u32,
            ],
        )?;
    }
    Ok((padded.crop(dq)?, padded.crop(dk)?, padded.crop(dv)?, dbias))
}
