//! Deterministic reductions: sum and mean over an axis, the bias-gradient sum over leading
//! dimensions, the sum of all elements and the squared global norm of many tensors.
//!
//! Sums are blocked: each kernel pass adds chunks of at most 2048 elements (a tree over a
//! workgroup, or at most 256 in order), and passes repeat on the partial sums until one chunk
//! remains. A row of 10^5 elements therefore takes two passes and stays within a few units of
//! f32 rounding of the f64 sum. No pass uses atomics, so results are the same on every run.

use bytemuck::{Pod, Zeroable};

use super::elementwise::{check_f32, grid, window_elements, windows};
use crate::error::{Error, Result};
use crate::gpu;
use crate::shaders;
use crate::tensor::{DType, Tensor};

/// Workgroup size of reduce.wgsl (`WG`).
const WG: usize = 256;
/// Chunk of `sum_rows`: 8 elements per invocation, then the workgroup tree.
const ROW_CHUNK: usize = 2048;
/// Max chunk that one `sum_cols` invocation adds, in groups of 16.
const COL_CHUNK: usize = 256;
/// Elements per partial sum of `sumsq_partials` (`SQ_BLOCK`).
const SQ_BLOCK: usize = 4096;
/// Operand bindings of `sumsq_partials`.
const SQ_OPERANDS: usize = 7;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct Params {
    len: u32,
    inner: u32,
    chunk: u32,
    nchunks: u32,
    block0: u32,
    nblocks: u32,
    x_base: u32,
    x_off: u32,
    out_off: u32,
    scale: f32,
    pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct SumsqParams {
    group_end: [u32; 8],
    count: [u32; 8],
    off: [u32; 8],
    out_base: u32,
    operands: u32,
    pad: [u32; 2],
}

/// Returns the sum of x over `axis`, which is removed: [.., L, ..] -> [.., ..]. A rank-1 x
/// gives shape [], as in PyTorch.
pub fn sum_axis(x: &Tensor, axis: usize) -> Result<Tensor> {
    reduce_axis("sum_axis", x, axis, false)
}

/// Returns the mean of x over `axis`, which is removed.
pub fn mean_axis(x: &Tensor, axis: usize) -> Result<Tensor> {
    reduce_axis("mean_axis", x, axis, true)
}

fn reduce_axis(op: &'static str, x: &Tensor, axis: usize, mean: bool) -> Result<Tensor> {
    check_f32(op, &[("x", x)])?;
    if axis >= x.rank() {
        return Err(Error::invalid(
            "axis",
            axis,
            format!("{op}: x {:?} has rank {}", x.shape(), x.rank()),
        ));
    }
    let shape = x.shape();
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    if mean && len == 0 {
        return Err(Error::shape(
            op,
            format!("the mean over axis {axis} of {shape:?} has no elements"),
        ));
    }
    let mut out_shape = shape.to_vec();
    out_shape.remove(axis);
    let scale = if mean { 1.0 / len as f32 } else { 1.0 };
    sum_middle(op, x, outer, len, inner, scale)?.reshape(&out_shape)
}

/// Returns the sum of x [.., n] over every leading dimension: [n] (the gradient of a bias
/// [n]). n must equal the product of trailing dimensions of x, so x [B, T, D] with n = T * D
/// also works and gives [T * D]; `sum_axis(x, 0)` gives the same sums as [T, D].
pub fn sum_to_last(x: &Tensor, n: usize) -> Result<Tensor> {
    check_f32("sum_to_last", &[("x", x)])?;
    let shape = x.shape();
    let fits = (0..=shape.len()).any(|k| shape[k..].iter().product::<usize>() == n);
    if !fits || n == 0 {
        return Err(Error::shape(
            "sum_to_last",
            format!("x {shape:?} does not end in dimensions of {n} elements; target shape [{n}]"),
        ));
    }
    sum_middle("sum_to_last", x, 1, x.numel() / n, n, 1.0)
}

/// Returns the sum of all elements of x as [1].
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    check_f32("sum_all", &[("x", x)])?;
    sum_middle("sum_all", x, 1, x.numel(), 1, 1.0)
}

/// Returns [1] holding the sum of squares of every element of every tensor, computed on the
/// GPU without a readback (the squared global norm for gradient clipping). One dispatch per
/// seven binding windows, then the passes that add the partial sums.
pub fn squared_norm(tensors: &[&Tensor]) -> Result<Tensor> {
    for t in tensors {
        check_f32("squared_norm", &[("tensor", t)])?;
    }
    // Binding windows of every tensor, each with its count of partial-sum blocks.
    let mut pieces = Vec::new();
    for t in tensors {
        for w in windows(t.numel(), t.numel()) {
            pieces.push((*t, w.start, w.len, w.len.div_ceil(SQ_BLOCK)));
        }
    }
    let total_blocks: usize = pieces.iter().map(|p| p.3).sum();
    if total_blocks == 0 {
        return Ok(Tensor::zeros(&[1], DType::F32));
    }
    let partials = Tensor::empty(&[total_blocks], DType::F32);
    if partials.numel() > window_elements() {
        return Err(Error::shape(
            "squared_norm",
            format!("{total_blocks} partial sums exceed one binding window"),
        ));
    }

    // Pass 1: one partial sum of squares per block of SQ_BLOCK elements, seven windows a
    // dispatch.
    let gpu = gpu::get();
    let mut out_base = 0;
    for group in pieces.chunks(SQ_OPERANDS) {
        let mut params = SumsqParams {
            out_base: out_base as u32,
            operands: group.len() as u32,
            ..SumsqParams::default()
        };
        let mut bindings = Vec::with_capacity(SQ_OPERANDS + 1);
        let mut groups = 0;
        for (k, &(tensor, start, len, blocks)) in group.iter().enumerate() {
            let (binding, offset) = tensor.bind_window(start, len);
            groups += blocks;
            params.group_end[k] = groups as u32;
            params.count[k] = len as u32;
            params.off[k] = offset;
            bindings.push(binding);
        }
        while bindings.len() < SQ_OPERANDS {
            bindings.push(bindings[0]);
        }
        bindings.push(partials.bind());
        gpu.dispatch(
            &shaders::REDUCE,
            "sumsq_partials",
            &[],
            bytemuck::bytes_of(&params),
            &bindings,
            grid(groups),
        )?;
        out_base += groups;
    }

    // Pass 2 and on: sum the partials.
    sum_middle("squared_norm", &partials, 1, total_blocks, 1, 1.0)
}

/// Sums x, viewed as [outer, len, inner], over the middle axis and multiplies by `scale`;
/// returns [outer * inner].
fn sum_middle(op: &'static str, x: &Tensor, outer: usize, len: usize, inner: usize, scale: f32) -> Result<Tensor> {
    let out_len = outer * inner;
    if out_len == 0 {
        return Ok(Tensor::empty(&[0], DType::F32));
    }
    if len == 0 {
        return Ok(Tensor::zeros(&[out_len], DType::F32));
    }
    let limit = window_elements();
    if 2 * inner > limit {
        // NOTE: a pass needs two positions of the reduced axis in one binding window; wider
        // rows would need windows inside a row.
        return Err(Error::shape(
            op,
            format!(
                "rows of {inner} elements after the reduced axis exceed half a binding window \
                 ({limit} elements)"
            ),
        ));
    }

    // Pass 1 adds chunks of the axis into partial sums [outer, nchunks, inner]; each later pass
    // adds chunks of the partials until one chunk covers the axis.
    let mut current = x.clone();
    let mut len = len;
    loop {
        let rows = inner == 1 && len > COL_CHUNK;
        let chunk = if rows {
            ROW_CHUNK.min(limit)
        } else {
            len.min(COL_CHUNK).min(limit / inner).max(1)
        };
        let nchunks = len.div_ceil(chunk);
        let last = nchunks == 1;
        let next = Tensor::empty(&[outer * nchunks * inner], DType::F32);
        let pass = Pass {
            len,
            inner,
            chunk,
            nchunks,
            scale: if last { scale } else { 1.0 },
        };
        pass.dispatch(&current, &next, outer, rows)?;
        current = next;
        len = nchunks;
        if last {
            return Ok(current);
        }
    }
}

/// One pass of `sum_rows` or `sum_cols` over x [outer, len, inner].
struct Pass {
    len: usize,
    inner: usize,
    chunk: usize,
    nchunks: usize,
    scale: f32,
}

impl Pass {
    /// Returns the first input element of `block`.
    fn block_start(&self, block: usize) -> usize {
        let (outer, chunk) = (block / self.nchunks, block % self.nchunks);
        (outer * self.len + chunk * self.chunk) * self.inner
    }

    /// Returns the end (exclusive) of the input of `block`.
    fn block_end(&self, block: usize) -> usize {
        let (outer, chunk) = (block / self.nchunks, block % self.nchunks);
        (outer * self.len + self.len.min((chunk + 1) * self.chunk)) * self.inner
    }

    /// Records the pass, window by window: consecutive blocks cover consecutive input, so a
    /// window is a range of whole blocks.
    fn dispatch(&self, x: &Tensor, out: &Tensor, outer: usize, rows: bool) -> Result<()> {
        let gpu = gpu::get();
        let blocks = outer * self.nchunks;
        let per_window = (window_elements() / (self.chunk * self.inner)).max(1);
        let entry = if rows { "sum_rows" } else { "sum_cols" };
        for block0 in (0..blocks).step_by(per_window) {
            let nblocks = per_window.min(blocks - block0);
            let x_start = self.block_start(block0);
            let x_len = self.block_end(block0 + nblocks - 1) - x_start;
            let (x_binding, x_off) = x.bind_window(x_start, x_len);
            let (out_binding, out_off) = out.bind_window(block0 * self.inner, nblocks * self.inner);
            let params = Params {
                len: self.len as u32,
                inner: self.inner as u32,
                chunk: self.chunk as u32,
                nchunks: self.nchunks as u32,
                block0: block0 as u32,
                nblocks: nblocks as u32,
                x_base: x_start as u32,
                x_off,
                out_off,
                scale: self.scale,
                pad: [0; 2],
            };
            let groups = if rows {
                nblocks
            } else {
                (nblocks * self.inner).div_ceil(WG)
            };
            gpu.dispatch(
                &shaders::REDUCE,
                entry,
                &[],
                bytemuck::bytes_of(&params),
                &[x_binding, out_binding],
                grid(groups),
            )?;
        }
        Ok(())
    }
}
