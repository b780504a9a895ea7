//! GPU ops: each file contains the forward dispatch of its kernels and the backward kernels beside
//! it. The autograd composes them.

pub mod attention;
pub mod cross_entropy;
pub mod elementwise;
pub mod em_prior;
pub mod embedding;
pub mod layernorm;
pub mod matmul;
pub mod optim;
pub mod permute;
pub mod reduce;
pub mod softmax;
pub mod transpose;

pub use matmul::{matmul, matmul_into};
pub use transpose::transpose;

/// Workgroup count covering `n` items at `per_group` items a workgroup.
pub(crate) fn groups(n: usize, per_group: usize) -> u32 {
    n.div_ceil(per_group).max(1) as u32
}
