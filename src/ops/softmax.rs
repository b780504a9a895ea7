//! Softmax over the last axis and its backward.
//!
//! Also home of the helpers shared by the row kernels (softmax, layer norm, cross-entropy and
//! embedding). They choose between the two variants of a kernel, size the workgroups, lay out
//! the 2-D grid for more than 65535 workgroups and split rows into windows that fit one
//! storage binding.

use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{self, Binding, Shader};
use crate::shaders;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    /// Element offsets of bindings 1, 2 and 3 inside their windows.
    off: [u32; 3],
    pad: [u32; 3],
}

/// Implementation of the row kernels (softmax, layer norm, cross-entropy and embedding),
/// chosen per adapter type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKernels {
    /// One invocation walks whole rows serially, without barriers or workgroup memory. Fastest
    /// on CPU adapters such as lavapipe, which run the lanes of a SIMD vector as consecutive
    /// invocations and make barriers and workgroup memory slow.
    Invocation,
    /// One workgroup per row, with a reduction in workgroup memory: fastest on GPUs.
    Workgroup,
}

/// Returns the row-kernel variant: `FIAK_ROW_KERNELS=invocation|workgroup` forces one, and
/// otherwise CPU adapters get [`RowKernels::Invocation`] and GPUs [`RowKernels::Workgroup`].
/// The choice is made once per process.
pub fn row_kernels() -> RowKernels {
    static CHOICE: OnceLock<RowKernels> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let forced = std::env::var("FIAK_ROW_KERNELS").ok().filter(|v| !v.is_empty());
        match forced.as_deref() {
            Some("invocation") => RowKernels::Invocation,
            Some("workgroup") => RowKernels::Workgroup,
            Some(other) => {
                log::warn!("FIAK_ROW_KERNELS={other} ignored: expected invocation or workgroup");
                default_row_kernels()
            }
            None => default_row_kernels(),
        }
    })
}

fn default_row_kernels() -> RowKernels {
    if gpu::get().is_cpu() {
        RowKernels::Invocation
    } else {
        RowKernels::Workgroup
    }
}

/// Invocations per workgroup of the [`RowKernels::Invocation`] entry points (`ROW_WG` in the
/// shaders, which must match): two of the 8-lane SIMD vectors that lavapipe runs on 256-bit
/// vector units.
pub(super) const ROW_WG: usize = 16;

/// Columns each invocation of a row kernel keeps in registers (`CACHE` in the shaders, which
/// must match). With 32 instead of 16, a workgroup needs half the invocations and one fewer
/// barrier step, and the layer-norm backward of [12608, 384] ran about 1.5 to 2 times faster on
/// lavapipe (a rough figure: measured on a loaded 2-core machine).
pub(super) const ROW_CACHE: usize = 32;

/// Workgroup size of a row kernel for rows of `cols` elements: a power of two up to 256, enough
/// for one block of `ROW_CACHE` columns per invocation where possible. GPUs get at least 32
/// invocations (one warp); CPU adapters such as lavapipe get as few as 8 (one SIMD vector),
/// because every invocation costs them time even when it has no column.
pub(super) fn row_workgroup(cols: usize) -> usize {
    let min = if gpu::get().is_cpu() { 8 } else { 32 };
    cols.div_ceil(ROW_CACHE).next_power_of_two().clamp(min, 256)
}

/// The entry point, override constants and grid of one row kernel in the variant of
/// [`row_kernels`]. The workgroup variant's entry point is `name`, the invocation variant's is
/// `name` + `_rows`. Each workgroup (workgroup variant) or invocation (invocation variant)
/// handles one row unless [`RowDispatch::rows_per_group`] sets more.
pub(super) struct RowDispatch {
    entry: String,
    constants: Vec<(&'static str, f64)>,
    rows_per_group: usize,
    invocation: bool,
}

impl RowDispatch {
    pub(super) fn new(name: &str, cols: usize) -> RowDispatch {
        match row_kernels() {
            RowKernels::Invocation => RowDispatch {
                entry: format!("{name}_rows"),
                constants: Vec::new(),
                rows_per_group: 1,
                invocation: true,
            },
            RowKernels::Workgroup => RowDispatch {
                entry: name.to_string(),
                constants: vec![("WG", row_workgroup(cols) as f64)],
                rows_per_group: 1,
                invocation: false,
            },
        }
    }

    /// Sets the consecutive rows that each workgroup or invocation handles.
    pub(super) fn rows_per_group(self, rows: usize) -> RowDispatch {
        RowDispatch {
            rows_per_group: rows.max(1),
            ..self
        }
    }

    /// Returns true for the invocation variant.
    pub(super) fn is_invocation(&self) -> bool {
        self.invocation
    }

    /// Records the kernel over `rows` rows. A kernel whose invocations handle parts of rows
    /// passes the number of parts instead.
    pub(super) fn dispatch<P: Pod>(
        &self,
        shader: &'static Shader,
        params: &P,
        buffers: &[Binding],
        rows: usize,
    ) -> Result<()> {
        let groups = rows.div_ceil(self.rows_per_group);
        let workgroups = if self.invocation {
            groups.div_ceil(ROW_WG)
        } else {
            groups
        };
        gpu::get().dispatch(
            shader,
            &self.entry,
            &self.constants,
            bytemuck::bytes_of(params),
            buffers,
            grid(workgroups),
        )
    }
}

/// Lays out `groups` workgroups as a 2-D grid numbered x + y * x_count, because each grid
/// dimension is limited to 65535 workgroups.
pub(super) fn grid(groups: usize) -> [u32; 3] {
    let x = groups.clamp(1, 65535);
    [x as u32, groups.div_ceil(x).max(1) as u32, 1]
}

/// Splits `rows` rows into consecutive ranges (start, count) such that a window of `count`
/// rows of each operand fits one storage binding. `row_elems` lists the elements per row of
/// every row-shaped operand; counts are multiples of `multiple` except for the last range.
pub(super) fn row_windows(
    op: &'static str,
    rows: usize,
    row_elems: &[usize],
    multiple: usize,
) -> Result<Vec<(usize, usize)>> {
    let gpu = gpu::get();
    // A window may start up to one alignment unit before its first element.
    let limit = ((gpu.max_binding_bytes() - gpu.binding_alignment()) / 4) as usize;
    let widest = row_elems.iter().copied().max().unwrap_or(1).max(1);
    let fit = limit / widest / multiple * multiple;
    if fit == 0 {
        return Err(Error::shape(
            op,
            format!("{multiple} row(s) of {widest} elements exceed the storage binding limit of {limit} elements"),
        ));
    }
    let mut windows = Vec::new();
    let mut start = 0;
    while start < rows {
        let count = fit.min(rows - start);
        windows.push((start, count));
        start += count;
    }
    Ok(windows)
}

/// Binds rows `start .. start + count` of a tensor with `row_elems` elements per row.
pub(super) fn bind_rows(t: &Tensor, start: usize, count: usize, row_elems: usize) -> (Binding<'_>, u32) {
    t.bind_window(start * row_elems, count * row_elems)
}

fn check_f32(op: &'static str, name: &str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 || t.rank() == 0 {
        return Err(Error::shape(
            op,
            format!(
                "{name} must be an f32 tensor of rank >= 1, got {:?} {:?}",
                t.shape(),
                t.dtype()
            ),
        ));
    }
    Ok(())
}

/// Returns the softmax of `x` over its last axis; the output has the shape of `x`.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    check_f32("softmax", "x", x)?;
    let y = Tensor::empty(x.shape(), DType::F32);
    let cols = x.dim(-1);
    if x.numel() == 0 {
        return Ok(y);
    }
    let rows = x.numel() / cols;
    let kernel = RowDispatch::new("softmax", cols);
    for (start, count) in row_windows("softmax", rows, &[cols], 1)? {
        let (x_bind, x_off) = bind_rows(x, start, count, cols);
        let (y_bind, y_off) = bind_rows(&y, start, count, cols);
        let params = Params {
            rows: count as u32,
            cols: cols as u32,
            off: [x_off, y_off, 0],
            pad: [0; 3],
        };
        kernel.dispatch(&shaders::SOFTMAX, &params, &[x_bind, y_bind], count)?;
    }
    Ok(y)
}

/// Returns the gradient of softmax over the last axis, dx = y * (dy - sum(dy * y)) per row,
/// from the forward output `y` and the output gradient `dy` of the same shape.
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    check_f32("softmax_backward", "y", y)?;
    check_f32("softmax_backward", "dy", dy)?;
    if y.shape() != dy.shape() {
        return Err(Error::shape(
            "softmax_backward",
            format!("y {:?} and dy {:?} differ in shape", y.shape(), dy.shape()),
        ));
    }
    let dx = Tensor::empty(y.shape(), DType::F32);
    let cols = y.dim(-1);
    if y.numel() == 0 {
        return Ok(dx);
    }
    let rows = y.numel() / cols;
    let kernel = RowDispatch::new("softmax_backward", cols);
    for (start, count) in row_windows("softmax_backward", rows, &[cols], 1)? {
        let (y_bind, y_off) = bind_rows(y, start, count, cols);
        let (dy_bind, dy_off) = bind_rows(dy, start, count, cols);
        let (dx_bind, dx_off) = bind_rows(&dx, start, count, cols);
        let params = Params {
            rows: count as u32,
            cols: cols as u32,
            off: [y_off, dy_off, dx_off],
            pad: [0; 3],
        };
        kernel.dispatch(&shaders::SOFTMAX, &params, &[y_bind, dy_bind, dx_bind], count)?;
    }
    Ok(dx)
}
