//! fiak: training and pruning transformers on any GPU with the Finite Admixture of Keys
//! (FiAK; Nguyen et al., "A Probabilistic Framework for Pruning Transformers via a Finite
//! Admixture of Keys", ICASSP 2023), through wgpu on Vulkan, Metal and DX12.

pub mod autograd;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod error;
pub mod fiak;
pub mod gpu;
pub mod models;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod shaders;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
