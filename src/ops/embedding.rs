//! Embedding gather and its deterministic backward.
//!
//! Tables larger than the device's storage binding limit (a GPT-2 token table is 154 MB;
//! lavapipe binds at most 128 MiB) are bound in windows of rows: one dispatch per window.

use bytemuck::{Pod, Zeroable};

use super::softmax::{ROW_CACHE, RowDispatch, row_windows};
use crate::error::{Error, Result};
use crate::shaders;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GatherParams {
    positions: u32,
    dim: u32,
    vocab: u32,
    row0: u32,
    rows: u32,
    off_table: u32,
    off_ids: u32,
    off_out: u32,
    zero_invalid: u32,
    pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ScatterParams {
    dim: u32,
    row0: u32,
    rows: u32,
    pos0: u32,
    pos_count: u32,
    off_dy: u32,
    off_dtable: u32,
    accumulate: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DistinctParams {
    positions: u32,
    dim: u32,
    row0: u32,
    rows: u32,
    off_dy: u32,
    off_ids: u32,
    off_out: u32,
    pad: u32,
}

/// Looks up the rows of `table` [V, D] (f32) at `ids` (u32, any shape S) and returns them as
/// [S.., D].
///
/// An id >= V reads nothing and yields a row of zeros, so a bad id cannot read out of bounds;
/// it is not reported, because that would need a readback.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    if table.dtype() != DType::F32 || table.rank() != 2 {
        return Err(Error::shape(
            OP,
            format!("table must be f32 [V, D], got {:?} {:?}", table.shape(), table.dtype()),
        ));
    }
    if ids.dtype() != DType::U32 {
        return Err(Error::shape(
            OP,
            format!("ids must be u32, got {:?} {:?}", ids.shape(), ids.dtype()),
        ));
    }
    let (vocab, dim) = (table.shape()[0], table.shape()[1]);
    let positions = ids.numel();
    let mut shape = ids.shape().to_vec();
    shape.push(dim);
    if positions == 0 || dim == 0 {
        return Ok(Tensor::empty(&shape, DType::F32));
    }
    if vocab == 0 {
        return Ok(Tensor::zeros(&shape, DType::F32));
    }
    let out = Tensor::empty(&shape, DType::F32);
    let kernel = RowDispatch::new(OP, dim);

    let table_windows = row_windows(OP, vocab, &[dim], 1)?;
    for (pos0, pos_count) in row_windows(OP, positions, &[dim], 1)? {
        let (ids_bind, off_ids) = ids.bind_window(pos0, pos_count);
        let (out_bind, off_out) = out.bind_window(pos0 * dim, pos_count * dim);
        for (i, &(row0, rows)) in table_windows.iter().enumerate() {
            let (table_bind, off_table) = table.bind_window(row0 * dim, rows * dim);
            let params = GatherParams {
                positions: pos_count as u32,
                dim: dim as u32,
                vocab: vocab as u32,
                row0: row0 as u32,
                rows: rows as u32,
                off_table,
                off_ids,
                off_out,
                // The last window writes the zero rows of invalid ids.
                zero_invalid: (i + 1 == table_windows.len()) as u32,
                pad: [0; 3],
            };
            kernel.dispatch(
                &shaders::EMBEDDING,
                &params,
                &[table_bind, ids_bind, out_bind],
                pos_count,
            )?;
        }
    }
    Ok(out)
}

/// Position lists per id in CSR form: the positions of id v are
/// `positions[offsets[v] .. offsets[v + 1]]`, in ascending order.
fn positions_by_id(ids: &[u32], vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32; vocab + 1];
    for &id in ids {
        if (id as usize) < vocab {
            offsets[id as usize + 1] += 1;
        }
    }
    for v in 0..vocab {
        offsets[v + 1] += offsets[v];
    }
    let mut cursor = offsets.clone();
    let mut positions = vec![0u32; offsets[vocab] as usize];
    for (position, &id) in ids.iter().enumerate() {
        if (id as usize) < vocab {
            positions[cursor[id as usize] as usize] = position as u32;
            cursor[id as usize] += 1;
        }
    }
    (offsets, positions)
}

/// Returns the table gradient [vocab, D] of [`embedding`] for the output gradient `dy`
/// [S.., D] and the `ids` (flattened S) that the forward looked up.
///
/// The ids come from the host, so the positions of each id are grouped on the CPU and every
/// table element sums its positions in ascending order on the GPU: deterministic, without
/// atomics. Rows of ids that never occur are zero, and ids >= vocab (zero rows in the forward)
/// contribute nothing.
pub fn embedding_backward(dy: &Tensor, ids: &[u32], vocab: usize) -> Result<Tensor> {
    const OP: &str = "embedding_backward";
    if dy.dtype() != DType::F32 || dy.rank() == 0 {
        return Err(Error::shape(
            OP,
            format!(
                "dy must be an f32 tensor [S.., D], got {:?} {:?}",
                dy.shape(),
                dy.dtype()
            ),
        ));
    }
    let dim = dy.dim(-1);
    if dy.numel() != ids.len() * dim {
        return Err(Error::shape(
            OP,
            format!(
                "dy {:?} does not hold one row of {dim} per id ({} ids)",
                dy.shape(),
                ids.len()
            ),
        ));
    }
    if vocab >= u32::MAX as usize || ids.len() > u32::MAX as usize {
        return Err(Error::shape(
            OP,
            format!(
                "{vocab} ids and {} positions exceed the u32 indices of the kernel",
                ids.len()
            ),
        ));
    }
    if vocab == 0 || dim == 0 {
        return Ok(Tensor::empty(&[vocab, dim], DType::F32));
    }
    let (offsets, positions) = positions_by_id(ids, vocab);
    if positions.is_empty() {
        return Ok(Tensor::zeros(&[vocab, dim], DType::F32));
    }
    let offsets = Tensor::from_u32(&[vocab + 1], &offsets)?;
    let positions = Tensor::from_u32(&[positions.len()], &positions)?;
    let dtable = Tensor::empty(&[vocab, dim], DType::F32);
    let kernel = RowDispatch::new(OP, dim);
    // The invocation variant splits each table row into chunks of ROW_CACHE columns.
    let chunks = if kernel.is_invocation() {
        dim.div_ceil(ROW_CACHE)
    } else {
        1
    };

    let dy_windows = row_windows(OP, ids.len(), &[dim], 1)?;
    for (row0, rows) in row_windows(OP, vocab, &[dim], 1)? {
        let (dtable_bind, off_dtable) = dtable.bind_window(row0 * dim, rows * dim);
        // Windows of dy after the first add onto the sums of the earlier ones.
        for (j, &(pos0, pos_count)) in dy_windows.iter().enumerate() {
            let (dy_bind, off_dy) = dy.bind_window(pos0 * dim, pos_count * dim);
            let params = ScatterParams {
                dim: dim as u32,
                row0: row0 as u32,
                rows: rows as u32,
                pos0: pos0 as u32,
                pos_count: pos_count as u32,
                off_dy,
                off_dtable,
                accumulate: (j > 0) as u32,
            };
            kernel.dispatch(
                &shaders::EMBEDDING,
                &params,
                &[dy_bind, offsets.bind(), positions.bind(), dtable_bind],
                rows * chunks,
            )?;
        }
    }
    Ok(dtable)
}

/// Returns the table gradient [vocab, D] of [`embedding`] when the `ids` (u32 on the device,
/// flattened S) are pairwise distinct: row ids[s] of the gradient is dy[s], the other rows
/// are zero, and ids >= vocab contribute nothing.
///
/// The kernel makes one pass over the positions and needs no host work per call. The
/// general [`embedding_backward`] passes over every row of the table, which costs far more
/// when the ids pick a few of many rows, as a pruning pattern's kept prior logits do. Repeated
/// ids would make two invocations write the same row, so the caller must pass distinct ids.
/// A pattern's flat entry indices are distinct.
pub fn embedding_backward_distinct(dy: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
    const OP: &str = "embedding_backward_distinct";
    if dy.dtype() != DType::F32 || dy.rank() == 0 || ids.dtype() != DType::U32 {
        return Err(Error::shape(
            OP,
            format!(
                "dy must be f32 [S.., D] and ids u32 [S..], got dy {:?} {:?} and ids {:?} {:?}",
                dy.shape(),
                dy.dtype(),
                ids.shape(),
                ids.dtype()
            ),
        ));
    }
    let dim = dy.dim(-1);
    let positions = ids.numel();
    if dy.numel() != positions * dim {
        return Err(Error::shape(
            OP,
            format!(
                "dy {:?} does not hold one row of {dim} per id ({positions} ids)",
                dy.shape()
            ),
        ));
    }
    if vocab >= u32::MAX as usize {
        return Err(Error::shape(
            OP,
            format!("{vocab} ids exceed the u32 indices of the kernel"),
        ));
    }
    let dtable = Tensor::zeros(&[vocab, dim], DType::F32);
    if vocab == 0 || dim == 0 || positions == 0 {
        return Ok(dtable);
    }
    let kernel = RowDispatch::new(OP, dim);

    let table_windows = row_windows(OP, vocab, &[dim], 1)?;
    for (pos0, pos_count) in row_windows(OP, positions, &[dim], 1)? {
        let (ids_bind, off_ids) = ids.bind_window(pos0, pos_count);
        let (dy_bind, off_dy) = dy.bind_window(pos0 * dim, pos_count * dim);
        for &(row0, rows) in &table_windows {
            let (out_bind, off_out) = dtable.bind_window(row0 * dim, rows * dim);
            let params = DistinctParams {
                positions: pos_count as u32,
                dim: dim as u32,
                row0: row0 as u32,
                rows: rows as u32,
                off_dy,
                off_ids,
                off_out,
                pad: 0,
            };
            kernel.dispatch(&shaders::EMBEDDING, &params, &[dy_bind, ids_bind, out_bind], pos_count)?;
        }
    }
    Ok(dtable)
}
