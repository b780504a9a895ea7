#![allow(unused)]
use super::AttentionConfig;
use crate::{Result, Tensor};
pub struct Pattern;
impl Pattern {
    pub fn from_csr(h: usize, nq: usize, nk: usize, o: Vec<u32>, k: Vec<u32>) -> Result<Pattern> {
        todo!()
    }
    pub fn dense(h: usize, nq: usize, nk: usize, c: bool) -> Result<Pattern> {
        todo!()
    }
    pub fn heads(&self) -> usize {
        todo!()
    }
    pub fn nq(&self) -> usize {
        todo!()
    }
    pub fn nk(&self) -> usize {
        todo!()
    }
    pub fn nnz(&self) -> usize {
        todo!()
    }
    pub fn row_offsets(&self) -> &[u32] {
        todo!()
    }
    pub fn key_index(&self) -> &[u32] {
        todo!()
    }
}
pub fn attention_gathered(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &Pattern,
    b: Option<&Tensor>,
    c: &AttentionConfig,
) -> Result<(Tensor, Tensor)> {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn attention_gathered_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &Pattern,
    b: Option<&Tensor>,
    o: &Tensor,
    l: &Tensor,
    d: &Tensor,
    c: &AttentionConfig,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    todo!()
}
