//! The soft-EM update of FiAK priors (see `shaders/em_prior.wgsl`).

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu;
use crate::shaders;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    heads: u32,
    n: u32,
    causal: u32,
    beta: f32,
}

/// Updates entry-prior logits theta [H, N, N] in place towards the batch-mean attention
/// probabilities `mean_probs` [H, N, N] with momentum `beta`.
pub fn em_update_entry(theta: &Tensor, mean_probs: &Tensor, causal: bool, beta: f32) -> Result<()> {
    let (h, n) = check(theta, mean_probs, 3, beta)?;
    let params = Params {
        heads: h as u32,
        n: n as u32,
        causal: causal as u32,
        beta,
    };
    gpu::get().dispatch(
        &shaders::EM_PRIOR,
        "em_entry",
        &[],
        bytemuck::bytes_of(&params),
        &[mean_probs.bind(), theta.bind()],
        [super::groups(h * n, 64), 1, 1],
    )
}

/// Updates key-prior logits phi [H, N] in place towards the attention probabilities of
/// `mean_probs` [H, N, N] averaged over the query rows.
pub fn em_update_key(phi: &Tensor, mean_probs: &Tensor, beta: f32) -> Result<()> {
    let (h, n) = check(phi, mean_probs, 2, beta)?;
    let params = Params {
        heads: h as u32,
        n: n as u32,
        causal: 0,
        beta,
    };
    gpu::get().dispatch(
        &shaders::EM_PRIOR,
        "em_key",
        &[],
        bytemuck::bytes_of(&params),
        &[mean_probs.bind(), phi.bind()],
        [super::groups(h, 64), 1, 1],
    )
}

fn check(logits: &Tensor, mean_probs: &Tensor, rank: usize, beta: f32) -> Result<(usize, usize)> {
    if !(0.0..=1.0).contains(&beta) {
        return Err(Error::invalid("EM momentum", beta, "must lie in [0, 1]"));
    }
    let shape = mean_probs.shape();
    if shape.len() != 3
        || shape[1] != shape[2]
        || logits.rank() != rank
        || logits.dim(0) != shape[0]
        || logits.dim(-1) != shape[2]
    {
        return Err(Error::shape(
            "em_update",
            format!(
                "logits {:?} do not fit the mean probabilities {shape:?}",
                logits.shape()
            ),
        ));
    }
    Ok((shape[0], shape[1]))
}
