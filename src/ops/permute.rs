//! Axis permutation and the layout changes of attention: heads split and merged, the packed
//! query/key/value projection split into three tensors, the class token prepended and a token
//! selected. Each op and each backward is one dispatch.
//!
//! NOTE: these ops bind their operands whole, so a tensor over the device's storage binding
//! limit (128 MiB on lavapipe) is rejected with an error instead of being split.

use bytemuck::{Pod, Zeroable};

use super::softmax::grid;
use crate::error::{Error, Result};
use crate::gpu;
use crate::shaders;
use crate::tensor::{DType, Tensor};

/// Highest rank `permute` accepts, after merging axes that stay adjacent (`MAX_RANK` slots of
/// the shader's parameter vectors hold it).
const MAX_RANK: usize = 6;
/// Invocations per workgroup (`WG` in permute.wgsl).
const WG: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PermuteParams {
    total: u32,
    rank: u32,
    pad: [u32; 2],
    dims: [u32; 8],
    strides: [u32; 8],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LayoutParams {
    total: u32,
    batch: u32,
    tokens: u32,
    heads: u32,
    width: u32,
    index: u32,
    pad: [u32; 2],
}

impl LayoutParams {
    fn new(total: usize, batch: usize, tokens: usize, heads: usize, width: usize, index: usize) -> LayoutParams {
        LayoutParams {
            total: total as u32,
            batch: batch as u32,
            tokens: tokens as u32,
            heads: heads as u32,
            width: width as u32,
            index: index as u32,
            pad: [0; 2],
        }
    }
}

/// Checks dtype, rank and the binding limit of an operand.
fn check(op: &'static str, name: &str, t: &Tensor, rank: Option<usize>) -> Result<()> {
    if t.dtype() != DType::F32 || rank.is_some_and(|r| t.rank() != r) {
        let want = rank.map_or(String::from("an f32 tensor"), |r| format!("an f32 tensor of rank {r}"));
        return Err(Error::shape(
            op,
            format!("{name} must be {want}, got {:?} {:?}", t.shape(), t.dtype()),
        ));
    }
    let limit = gpu::get().max_binding_bytes();
    if t.byte_len() > limit {
        return Err(Error::shape(
            op,
            format!(
                "{name} {:?} has {} bytes, over the device's storage binding limit of {limit} bytes",
                t.shape(),
                t.byte_len()
            ),
        ));
    }
    Ok(())
}

/// Records a layout op, through its `_vec4` twin when the innermost axis (`params.width`) is a
/// multiple of 4 long: every layout op's `total` is then a multiple of 4 too. An empty operand
/// keeps the scalar kernel, because its 4-byte placeholder binding is shorter than one vec4.
fn dispatch_layout(entry: &str, params: &LayoutParams, buffers: &[&Tensor]) -> Result<()> {
    if params.total == 0 {
        return Ok(());
    }
    let bindings: Vec<_> = buffers.iter().map(|t| t.bind()).collect();
    let vec4 = params.width.is_multiple_of(4) && buffers.iter().all(|t| t.numel() > 0);
    let (entry, params) = if vec4 {
        let in_vec4 = LayoutParams {
            total: params.total / 4,
            width: params.width / 4,
            ..*params
        };
        (format!("{entry}_vec4"), in_vec4)
    } else {
        (entry.to_string(), *params)
    };
    gpu::get().dispatch(
        &shaders::PERMUTE,
        &entry,
        &[],
        bytemuck::bytes_of(&params),
        &bindings,
        grid((params.total as usize).div_ceil(WG)),
    )
}

/// Simplifies a permutation by dropping size-1 axes and merging runs of input axes that stay
/// adjacent in the output. Returns (output sizes, input stride of each output axis).
fn simplify(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    // Drop the size-1 axes and renumber the others.
    let kept_axes: Vec<usize> = (0..shape.len()).filter(|&a| shape[a] != 1).collect();
    let sizes: Vec<usize> = kept_axes.iter().map(|&a| shape[a]).collect();
    let perm: Vec<usize> = perm
        .iter()
        .filter_map(|&a| kept_axes.iter().position(|&k| k == a))
        .collect();

    // Runs of consecutive input axes in output order, as (first input axis, size).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut previous: Option<usize> = None;
    for &axis in &perm {
        match runs.last_mut() {
            Some(run) if previous.is_some_and(|p| p + 1 == axis) => run.1 *= sizes[axis],
            _ => runs.push((axis, sizes[axis])),
        }
        previous = Some(axis);
    }

    // Row-major strides of the merged input axes, which keep the input order of their first
    // axes.
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by_key(|&r| runs[r].0);
    let mut strides = vec![0; runs.len()];
    let mut stride = 1;
    for &r in order.iter().rev() {
        strides[r] = stride;
        stride *= runs[r].1;
    }
    (runs.iter().map(|r| r.1).collect(), strides)
}

/// Returns x with its axes reordered: `out.shape[i] = x.shape[perm[i]]`, as `torch.permute`.
/// Any rank works as long as at most 6 axes remain once size-1 axes are dropped and axes that
/// stay adjacent are merged, which covers every permutation of rank up to 6.
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    const OP: &str = "permute";
    check(OP, "x", x, None)?;
    let rank = x.rank();
    let mut seen = vec![false; rank];
    let valid = perm.len() == rank && perm.iter().all(|&a| a < rank && !std::mem::replace(&mut seen[a], true));
    if !valid {
        return Err(Error::invalid(
            "perm",
            format!("{perm:?}"),
            format!("must be a permutation of 0..{rank} for x {:?}", x.shape()),
        ));
    }
    let out_shape: Vec<usize> = perm.iter().map(|&a| x.shape()[a]).collect();
    if x.numel() == 0 {
        return Ok(Tensor::empty(&out_shape, DType::F32));
    }

    let (dims, strides) = simplify(x.shape(), perm);
    if dims.len() <= 1 {
        // The order of the elements does not change.
        return x.deep_clone().reshape(&out_shape);
    }
    if dims.len() > MAX_RANK {
        return Err(Error::shape(
            OP,
            format!(
                "x {:?} with perm {perm:?} needs {} axes; at most {MAX_RANK} are supported",
                x.shape(),
                dims.len()
            ),
        ));
    }
    let out = Tensor::empty(&out_shape, DType::F32);

    // With the innermost output axis contiguous in the input and a multiple of 4 long, every
    // input stride of the other axes is a multiple of it, so the copy can move vec4s.
    let rank = dims.len();
    let vec4 = strides[rank - 1] == 1 && dims[rank - 1].is_multiple_of(4);
    let mut params = PermuteParams {
        total: (x.numel() / if vec4 { 4 } else { 1 }) as u32,
        rank: rank as u32,
        pad: [0; 2],
        dims: [1; 8],
        strides: [0; 8],
    };
    for (a, (&dim, &stride)) in dims.iter().zip(&strides).enumerate() {
        params.dims[a] = dim as u32;
        params.strides[a] = stride as u32;
    }
    if vec4 {
        for a in 0..rank - 1 {
            params.strides[a] /= 4;
        }
        params.dims[rank - 1] /= 4;
    }
    gpu::get().dispatch(
        &shaders::PERMUTE,
        if vec4 { "permute_vec4" } else { "permute" },
        &[],
        bytemuck::bytes_of(&params),
        &[x.bind(), out.bind()],
        grid((params.total as usize).div_ceil(WG)),
    )?;
    Ok(out)
}

/// Splits the last axis into heads: [B, N, H * dh] -> [B, H, N, dh].
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    check("split_heads", "x", x, Some(3))?;
    let (b, n, width) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    if heads == 0 || width % heads != 0 {
        return Err(Error::invalid(
            "heads",
            heads,
            format!(
                "split_heads needs a head count that divides the width of x {:?}",
                x.shape()
            ),
        ));
    }
    permute(&x.reshape(&[b, n, heads, width / heads])?, &[0, 2, 1, 3])
}

/// Merges the heads back into the last axis: [B, H, N, dh] -> [B, N, H * dh].
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    check("merge_heads", "x", x, Some(4))?;
    let (b, h, n, dh) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    permute(x, &[0, 2, 1, 3])?.reshape(&[b, n, h * dh])
}

/// Splits the output of a packed query/key/value projection [B, N, 3 * H * dh] into q, k and v,
/// each [B, H, N, dh], in one dispatch. The last axis holds the q, k and v blocks in that order,
/// as timm's `qkv` Linear produces them.
pub fn split_qkv(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    check("split_qkv", "qkv", qkv, Some(3))?;
    let (b, n, width) = (qkv.shape()[0], qkv.shape()[1], qkv.shape()[2]);
    if heads == 0 || width % (3 * heads) != 0 {
        return Err(Error::invalid(
            "heads",
            heads,
            format!("split_qkv needs 3 * heads to divide the width of qkv {:?}", qkv.shape()),
        ));
    }
    let dh = width / (3 * heads);
    let shape = [b, heads, n, dh];
    let (q, k, v) = (
        Tensor::empty(&shape, DType::F32),
        Tensor::empty(&shape, DType::F32),
        Tensor::empty(&shape, DType::F32),
    );
    let params = LayoutParams::new(b * heads * n * dh, b, n, heads, dh, 0);
    dispatch_layout("split_qkv", &params, &[qkv, &q, &k, &v])?;
    Ok((q, k, v))
}

/// Inverse of [`split_qkv`], used for its backward: three [B, H, N, dh] -> [B, N, 3 * H * dh].
pub fn merge_qkv(dq: &Tensor, dk: &Tensor, dv: &Tensor) -> Result<Tensor> {
    const OP: &str = "merge_qkv";
    check(OP, "dq", dq, Some(4))?;
    check(OP, "dk", dk, Some(4))?;
    check(OP, "dv", dv, Some(4))?;
    if dq.shape() != dk.shape() || dq.shape() != dv.shape() {
        return Err(Error::shape(
            OP,
            format!(
                "dq {:?}, dk {:?} and dv {:?} must share one shape",
                dq.shape(),
                dk.shape(),
                dv.shape()
            ),
        ));
    }
    let (b, h, n, dh) = (dq.shape()[0], dq.shape()[1], dq.shape()[2], dq.shape()[3]);
    let out = Tensor::empty(&[b, n, 3 * h * dh], DType::F32);
    let params = LayoutParams::new(b * h * n * dh, b, n, h, dh, 0);
    dispatch_layout("merge_qkv", &params, &[dq, dk, dv, &out])?;
    Ok(out)
}

/// Prepends the class token: cls [D] (or [1, 1, D]) and x [B, N, D] -> [B, N + 1, D].
pub fn concat_cls(cls: &Tensor, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "concat_cls";
    check(OP, "x", x, Some(3))?;
    check(OP, "cls", cls, None)?;
    let (b, n, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    if cls.numel() != d || cls.rank() == 0 || cls.dim(-1) != d {
        return Err(Error::shape(
            OP,
            format!("cls {:?} must be [D] or [1, 1, D] for x {:?}", cls.shape(), x.shape()),
        ));
    }
    let out = Tensor::empty(&[b, n + 1, d], DType::F32);
    let params = LayoutParams::new(b * (n + 1) * d, b, n, 1, d, 0);
    dispatch_layout("concat_cls", &params, &[cls, x, &out])?;
    Ok(out)
}

/// Backward of [`concat_cls`]: dy [B, N + 1, D] -> (dcls [D] summed over the batch in a fixed
/// order, dx [B, N, D]), in one dispatch.
pub fn concat_cls_backward(dy: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "concat_cls_backward";
    check(OP, "dy", dy, Some(3))?;
    let (b, tokens, d) = (dy.shape()[0], dy.shape()[1], dy.shape()[2]);
    if tokens == 0 {
        return Err(Error::shape(OP, format!("dy {:?} has no class token", dy.shape())));
    }
    let n = tokens - 1;
    let dcls = Tensor::empty(&[d], DType::F32);
    // With N = 0 the empty dx is still bound (the dispatch binds at least 4 bytes of its pooled
    // buffer) but never written.
    let dx = Tensor::empty(&[b, n, d], DType::F32);
    let params = LayoutParams::new(b * n * d + d, b, n, 1, d, 0);
    dispatch_layout("concat_cls_backward", &params, &[dy, &dcls, &dx])?;
    Ok((dcls, dx))
}

/// Returns token `index` of every sequence: x [B, N, D] -> [B, D].
pub fn select_token(x: &Tensor, index: usize) -> Result<Tensor> {
    check("select_token", "x", x, Some(3))?;
    let (b, n, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    if index >= n {
        return Err(Error::invalid(
            "index",
            index,
            format!("select_token needs a token index below N of x {:?}", x.shape()),
        ));
    }
    let out = Tensor::empty(&[b, d], DType::F32);
    let params = LayoutParams::new(b * d, b, n, 1, d, index);
    dispatch_layout("select_token", &params, &[x, &out])?;
    Ok(out)
}

/// Backward of [`select_token`]: dy [B, D] -> [B, N, D] with dy at token `index` and zeros
/// elsewhere.
pub fn select_token_backward(dy: &Tensor, n: usize, index: usize) -> Result<Tensor> {
    check("select_token_backward", "dy", dy, Some(2))?;
    if index >= n {
        return Err(Error::invalid(
            "index",
            index,
            format!("select_token_backward needs a token index below N = {n}"),
        ));
    }
    let (b, d) = (dy.shape()[0], dy.shape()[1]);
    let out = Tensor::empty(&[b, n, d], DType::F32);
    let params = LayoutParams::new(b * n * d, b, n, 1, d, index);
    dispatch_layout("select_token_backward", &params, &[dy, &out])?;
    Ok(out)
}
