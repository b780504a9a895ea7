//! Transpose of the last two axes.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu;
use crate::shaders;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    pad: [u32; 2],
}

/// Returns x with its last two axes swapped: [..., R, C] -> [..., C, R].
pub fn transpose(x: &Tensor) -> Result<Tensor> {
    if x.rank() < 2 || x.dtype() != DType::F32 {
        return Err(Error::shape(
            "transpose",
            format!("needs an f32 tensor of rank >= 2, got {:?} {:?}", x.shape(), x.dtype()),
        ));
    }
    let rank = x.rank();
    let (rows, cols) = (x.shape()[rank - 2], x.shape()[rank - 1]);
    let batch = x.numel() / (rows * cols).max(1);
    let mut shape = x.shape().to_vec();
    shape.swap(rank - 2, rank - 1);
    let out = Tensor::empty(&shape, DType::F32);
    if x.numel() == 0 {
        return Ok(out);
    }
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
        pad: [0; 2],
    };
    gpu::get().dispatch(
        &shaders::TRANSPOSE,
        "transpose",
        &[],
        bytemuck::bytes_of(&params),
        &[x.bind(), out.bind()],
        [super::groups(cols, 16), super::groups(rows, 16), batch as u32],
    )?;
    Ok(out)
}
