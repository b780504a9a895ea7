//! Layer norm over the last axis, with the mean and reciprocal standard deviation saved for
//! the backward.

use bytemuck::{Pod, Zeroable};

use super::softmax::{RowDispatch, bind_rows, grid, row_windows};
use crate::error::{Error, Result};
use crate::gpu;
use crate::shaders;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ForwardParams {
    rows: u32,
    cols: u32,
    eps: f32,
    off_x: u32,
    off_y: u32,
    off_mean: u32,
    off_rstd: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BackwardParams {
    rows: u32,
    cols: u32,
    rows_per_group: u32,
    group0: u32,
    off_x: u32,
    off_mean: u32,
    off_rstd: u32,
    off_dy: u32,
    off_dx: u32,
    pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ParamGradParams {
    groups: u32,
    cols: u32,
    pad: [u32; 2],
}

/// Workgroups the backward of the workgroup variant aims for. Each writes one row of partial
/// parameter gradients, which a second kernel sums in a fixed order.
const BACKWARD_GROUPS: usize = 256;

/// Rows that one invocation of the invocation variant handles together, sharing each load of
/// weight and bias (`R` in layernorm.wgsl, which must match).
const BLOCK_ROWS: usize = 8;

/// Maximum invocations the backward of the invocation variant uses, each writing one row of
/// partial parameter gradients. Beyond it an invocation handles several blocks, which bounds
/// the partials and the serial sum over them.
const MAX_INVOCATION_GROUPS: usize = 4096;

fn check(op: &'static str, name: &str, t: &Tensor, shape: Option<&[usize]>) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::shape(op, format!("{name} must be f32, got {:?}", t.dtype())));
    }
    if let Some(shape) = shape
        && t.shape() != shape
    {
        return Err(Error::shape(
            op,
            format!("{name} has shape {:?}, expected {shape:?}", t.shape()),
        ));
    }
    Ok(())
}

/// Normalises `x` [..., D] over its last axis and applies `weight` [D] and `bias` [D]:
/// y = (x - mean) / sqrt(var + eps) * weight + bias, with the biased variance.
///
/// Returns (y with the shape of x, mean [rows], rstd [rows]), where rows is the product of
/// the leading axes and rstd = 1 / sqrt(var + eps).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "layer_norm";
    if x.rank() == 0 {
        return Err(Error::shape(OP, "x must have rank >= 1, got a scalar"));
    }
    let cols = x.dim(-1);
    check(OP, "x", x, None)?;
    check(OP, "weight", weight, Some(&[cols]))?;
    check(OP, "bias", bias, Some(&[cols]))?;
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::invalid("eps", eps, "layer_norm needs a finite eps >= 0"));
    }
    let rows = x.numel().checked_div(cols).unwrap_or(0);

    let y = Tensor::empty(x.shape(), DType::F32);
    let mean = Tensor::empty(&[rows], DType::F32);
    let rstd = Tensor::empty(&[rows], DType::F32);
    if x.numel() == 0 {
        return Ok((y, mean, rstd));
    }
    let mut kernel = RowDispatch::new(OP, cols);
    if kernel.is_invocation() {
        kernel = kernel.rows_per_group(BLOCK_ROWS);
    }
    for (start, count) in row_windows(OP, rows, &[cols], 1)? {
        let (x_bind, off_x) = bind_rows(x, start, count, cols);
        let (y_bind, off_y) = bind_rows(&y, start, count, cols);
        let (mean_bind, off_mean) = bind_rows(&mean, start, count, 1);
        let (rstd_bind, off_rstd) = bind_rows(&rstd, start, count, 1);
        let params = ForwardParams {
            rows: count as u32,
            cols: cols as u32,
            eps,
            off_x,
            off_y,
            off_mean,
            off_rstd,
            pad: 0,
        };
        kernel.dispatch(
            &shaders::LAYERNORM,
            &params,
            &[x_bind, weight.bind(), bias.bind(), y_bind, mean_bind, rstd_bind],
            count,
        )?;
    }
    Ok((y, mean, rstd))
}

/// Backward of [`layer_norm`] from its input `x` [..., D], `weight` [D], the saved `mean` and
/// `rstd` [rows] and the output gradient `dy` (shape of x).
///
/// Returns (dx with the shape of x, dweight [D], dbias [D]). The parameter gradients are summed
/// over rows in a fixed order without atomics, so repeated calls give identical bits.
pub fn layer_norm_backward(
    x: &Tensor,
    weight: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "layer_norm_backward";
    if x.rank() == 0 {
        return Err(Error::shape(OP, "x must have rank >= 1, got a scalar"));
    }
    let cols = x.dim(-1);
    let rows = x.numel().checked_div(cols).unwrap_or(0);
    check(OP, "x", x, None)?;
    check(OP, "weight", weight, Some(&[cols]))?;
    check(OP, "mean", mean, Some(&[rows]))?;
    check(OP, "rstd", rstd, Some(&[rows]))?;
    check(OP, "dy", dy, Some(x.shape()))?;

    let dx = Tensor::empty(x.shape(), DType::F32);
    if x.numel() == 0 {
        return Ok((
            dx,
            Tensor::zeros(&[cols], DType::F32),
            Tensor::zeros(&[cols], DType::F32),
        ));
    }
    let dweight = Tensor::empty(&[cols], DType::F32);
    let dbias = Tensor::empty(&[cols], DType::F32);
    let gpu = gpu::get();

    // Pass 1: dx and one row of partial parameter gradients per workgroup or invocation.
    let kernel = RowDispatch::new(OP, cols);
    let rows_per_group = if kernel.is_invocation() {
        // One block of rows per invocation, unless there are too many blocks or the partials
        // would exceed one binding.
        let fit = (gpu.max_binding_bytes() / 4) as usize / (2 * cols);
        let max_groups = MAX_INVOCATION_GROUPS.min(fit).max(1);
        BLOCK_ROWS * rows.div_ceil(BLOCK_ROWS).div_ceil(max_groups)
    } else {
        rows.div_ceil(BACKWARD_GROUPS)
    };
    let kernel = kernel.rows_per_group(rows_per_group);
    let groups = rows.div_ceil(rows_per_group);
    let partials = Tensor::empty(&[groups, 2, cols], DType::F32);
    for (start, count) in row_windows(OP, rows, &[cols], rows_per_group)? {
        let (x_bind, off_x) = bind_rows(x, start, count, cols);
        let (mean_bind, off_mean) = bind_rows(mean, start, count, 1);
        let (rstd_bind, off_rstd) = bind_rows(rstd, start, count, 1);
        let (dy_bind, off_dy) = bind_rows(dy, start, count, cols);
        let (dx_bind, off_dx) = bind_rows(&dx, start, count, cols);
        let params = BackwardParams {
            rows: count as u32,
            cols: cols as u32,
            rows_per_group: rows_per_group as u32,
            group0: (start / rows_per_group) as u32,
            off_x,
            off_mean,
            off_rstd,
            off_dy,
            off_dx,
            pad: [0; 3],
        };
        kernel.dispatch(
            &shaders::LAYERNORM,
            &params,
            &[
                x_bind,
                weight.bind(),
                mean_bind,
                rstd_bind,
                dy_bind,
                dx_bind,
                partials.bind(),
            ],
            count,
        )?;
    }

    // Pass 2: sum the partials over the workgroups or invocations of pass 1.
    let params = ParamGradParams {
        groups: groups as u32,
        cols: cols as u32,
        pad: [0; 2],
    };
    gpu.dispatch(
        &shaders::LAYERNORM,
        "layer_norm_param_grads",
        &[],
        bytemuck::bytes_of(&params),
        &[partials.bind(), dweight.bind(), dbias.bind()],
        grid((2 * cols).div_ceil(64)),
    )?;
    Ok((dx, dweight, dbias))
}
