//! Key-gathered sparse attention over a pruning [`Pattern`]: each query row reads only its
//! kept keys, so work is O(nnz d) and memory O(nnz), never O(Nq Nk). Kernels in
//! `shaders/attention_csr.wgsl` and `shaders/attention_csr_backward.wgsl`.

use bytemuck::{Pod, Zeroable};

use super::{AttentionConfig, LogitKernel, MAX_HEAD_WIDTH};
use crate::error::{Error, Result};
use crate::gpu;
use crate::shaders;
use crate::tensor::{DType, Tensor};

/// Which attention entries a pruned layer keeps, per head, in CSR form. Row `i` of head `h`
/// owns `key_index[row_offsets[h * (nq + 1) + i] .. row_offsets[h * (nq + 1) + i + 1]]`, keys
/// ascending; offsets count across heads. The transposed pattern (entries by key) is kept
/// too, for the backward of the keys and values.
pub struct Pattern {
    heads: usize,
    nq: usize,
    nk: usize,
    row_offsets: Vec<u32>,
    key_index: Vec<u32>,
    gpu_row_offsets: Tensor,
    gpu_key_index: Tensor,
    /// Entries by key: offsets [H, Nk + 1], query rows [nnz] and entry indices [nnz].
    gpu_col_offsets: Tensor,
    gpu_col_rows: Tensor,
    gpu_col_entries: Tensor,
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Pattern(heads {}, {} x {}, nnz {})",
            self.heads,
            self.nq,
            self.nk,
            self.nnz()
        )
    }
}

impl Pattern {
    /// Validates and uploads a CSR pattern: offsets [H, Nq + 1] non-decreasing and ending at
    /// the key count, keys below `nk` and ascending within a row. An empty row is allowed;
    /// it attends to nothing and returns zeros.
    pub fn from_csr(heads: usize, nq: usize, nk: usize, row_offsets: Vec<u32>, key_index: Vec<u32>) -> Result<Pattern> {
        const OP: &str = "Pattern::from_csr";
        if row_offsets.len() != heads * (nq + 1) {
            return Err(Error::shape(
                OP,
                format!(
                    "row_offsets has {} entries, expected H * (Nq + 1) = {}",
                    row_offsets.len(),
                    heads * (nq + 1)
                ),
            ));
        }
        let mut previous_end = 0u32;
        for h in 0..heads {
            let rows = &row_offsets[h * (nq + 1)..(h + 1) * (nq + 1)];
            if rows[0] != previous_end {
                return Err(Error::shape(
                    OP,
                    format!(
                        "head {h} starts at offset {} but head {} ended at {previous_end}",
                        rows[0],
                        h.saturating_sub(1)
                    ),
                ));
            }
            for i in 0..nq {
                let (start, end) = (rows[i] as usize, rows[i + 1] as usize);
                if end < start || end > key_index.len() {
                    return Err(Error::shape(
                        OP,
                        format!(
                            "head {h} row {i}: offsets {start}..{end} are invalid for {} keys",
                            key_index.len()
                        ),
                    ));
                }
                let keys = &key_index[start..end];
                if let Some(&bad) = keys.iter().find(|&&j| j as usize >= nk) {
                    return Err(Error::shape(
                        OP,
                        format!("head {h} row {i}: key {bad} is not below Nk = {nk}"),
                    ));
                }
                if keys.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Error::shape(
                        OP,
                        format!("head {h} row {i}: keys are not strictly ascending"),
                    ));
                }
            }
            previous_end = rows[nq];
        }
        if previous_end as usize != key_index.len() {
            return Err(Error::shape(
                OP,
                format!(
                    "offsets end at {previous_end} but key_index has {} entries",
                    key_index.len()
                ),
            ));
        }

        // The transposed pattern, entries grouped by key in row order.
        let mut col_counts = vec![0u32; heads * nk];
        for h in 0..heads {
            let (start, end) = (
                row_offsets[h * (nq + 1)] as usize,
                row_offsets[h * (nq + 1) + nq] as usize,
            );
            for &j in &key_index[start..end] {
                col_counts[h * nk + j as usize] += 1;
            }
        }
        let mut col_offsets = Vec::with_capacity(heads * (nk + 1));
        let mut running = 0u32;
        for h in 0..heads {
            for j in 0..nk {
                col_offsets.push(running);
                running += col_counts[h * nk + j];
            }
            col_offsets.push(running);
        }
        let mut fill: Vec<u32> = (0..heads)
            .flat_map(|h| (0..nk).map(move |j| (h, j)))
            .map(|(h, j)| col_offsets[h * (nk + 1) + j])
            .collect();
        let mut col_rows = vec![0u32; key_index.len()];
        let mut col_entries = vec![0u32; key_index.len()];
        for h in 0..heads {
            for i in 0..nq {
                let (start, end) = (
                    row_offsets[h * (nq + 1) + i] as usize,
                    row_offsets[h * (nq + 1) + i + 1] as usize,
                );
                for (e, &j) in key_index.iter().enumerate().take(end).skip(start) {
                    let slot = &mut fill[h * nk + j as usize];
                    col_rows[*slot as usize] = i as u32;
                    col_entries[*slot as usize] = e as u32;
                    *slot += 1;
                }
            }
        }

        // An empty pattern still needs a non-empty buffer to bind.
        let upload = |values: &[u32]| -> Result<Tensor> {
            if values.is_empty() {
                Tensor::from_u32(&[1], &[0])
            } else {
                Tensor::from_u32(&[values.len()], values)
            }
        };
        Ok(Pattern {
            gpu_row_offsets: upload(&row_offsets)?,
            gpu_key_index: upload(&key_index)?,
            gpu_col_offsets: upload(&col_offsets)?,
            gpu_col_rows: upload(&col_rows)?,
            gpu_col_entries: upload(&col_entries)?,
            heads,
            nq,
            nk,
            row_offsets,
            key_index,
        })
    }

    /// A keys-only pattern: every query row of head h keeps the keys `kept[h]`.
    pub fn keys_only(heads: usize, nq: usize, nk: usize, kept: Vec<Vec<u32>>) -> Result<Pattern> {
        if kept.len() != heads {
            return Err(Error::shape(
                "Pattern::keys_only",
                format!("{} key lists for {heads} heads", kept.len()),
            ));
        }
        let mut offsets = Vec::with_capacity(heads * (nq + 1));
        let mut keys = Vec::new();
        for list in &kept {
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            for _ in 0..nq {
                offsets.push(keys.len() as u32);
                keys.extend_from_slice(&sorted);
            }
            offsets.push(keys.len() as u32);
        }
        Pattern::from_csr(heads, nq, nk, offsets, keys)
    }

    /// Every entry kept (every visible entry when `causal`).
    pub fn dense(heads: usize, nq: usize, nk: usize, causal: bool) -> Result<Pattern> {
        let mut offsets = Vec::with_capacity(heads * (nq + 1));
        let mut keys = Vec::new();
        for _ in 0..heads {
            for i in 0..nq {
                offsets.push(keys.len() as u32);
                let visible = if causal { (i + 1).min(nk) } else { nk };
                keys.extend(0..visible as u32);
            }
            offsets.push(keys.len() as u32);
        }
        Pattern::from_csr(heads, nq, nk, offsets, keys)
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    pub fn nq(&self) -> usize {
        self.nq
    }

    pub fn nk(&self) -> usize {
        self.nk
    }

    /// Number of kept entries over all heads.
    pub fn nnz(&self) -> usize {
        self.key_index.len()
    }

    /// Kept entries over all Nq x Nk entries of all heads.
    pub fn kept_fraction(&self) -> f64 {
        self.nnz() as f64 / (self.heads * self.nq * self.nk).max(1) as f64
    }

    pub fn row_offsets(&self) -> &[u32] {
        &self.row_offsets
    }

    pub fn key_index(&self) -> &[u32] {
        &self.key_index
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    heads: u32,
    nq: u32,
    nk: u32,
    d: u32,
    flags: u32,
    scale: f32,
    pad: u32,
}

/// Shapes of q [B, H, Nq, d] and k, v [B, H, Nk, d] against the pattern.
fn check(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pattern: &Pattern,
    bias: Option<&Tensor>,
) -> Result<(usize, usize)> {
    let (qs, ks) = (q.shape(), k.shape());
    if qs.len() != 4 || ks.len() != 4 || v.shape() != ks || qs[0] != ks[0] || qs[1] != ks[1] || qs[3] != ks[3] {
        return Err(Error::shape(
            op,
            format!(
                "q {qs:?}, k {ks:?} and v {:?} must be [B, H, N, d] with equal B, H and d",
                v.shape()
            ),
        ));
    }
    if qs[1] != pattern.heads || qs[2] != pattern.nq || ks[2] != pattern.nk {
        return Err(Error::shape(
            op,
            format!("q {qs:?} and k {ks:?} do not fit the {pattern:?}"),
        ));
    }
    if qs[3] == 0 || qs[3] > MAX_HEAD_WIDTH {
        return Err(Error::shape(
            op,
            format!("head width {} is outside 1..={MAX_HEAD_WIDTH}", qs[3]),
        ));
    }
    if let Some(b) = bias
        && b.numel() != pattern.nnz()
    {
        return Err(Error::shape(
            op,
            format!(
                "bias {:?} needs one value per kept entry ({})",
                b.shape(),
                pattern.nnz()
            ),
        ));
    }
    for t in [q, k, v] {
        if t.byte_len() > gpu::get().max_binding_bytes() {
            return Err(Error::shape(
                op,
                format!("tensor {:?} exceeds one storage binding; split the batch", t.shape()),
            ));
        }
    }
    Ok((qs[0], qs[3]))
}

fn params(batch: usize, d: usize, pattern: &Pattern, cfg: &AttentionConfig, has_bias: bool) -> Params {
    let mut flags = 0;
    if cfg.causal {
        flags |= 1;
    }
    if cfg.logits == LogitKernel::Gaussian {
        flags |= 2;
    }
    if has_bias {
        flags |= 4;
    }
    Params {
        batch: batch as u32,
        heads: pattern.heads as u32,
        nq: pattern.nq as u32,
        nk: pattern.nk as u32,
        d: d as u32,
        flags,
        scale: 1.0 / (d as f32).sqrt(),
        pad: 0,
    }
}

/// Attention of q [B, H, Nq, d] over the kept keys of k, v [B, H, Nk, d], with an optional
/// bias per kept entry [nnz] shared by the batch. Returns (out [B, H, Nq, d], lse [B, H, Nq]).
pub fn attention_gathered(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pattern: &Pattern,
    bias: Option<&Tensor>,
    cfg: &AttentionConfig,
) -> Result<(Tensor, Tensor)> {
    let (batch, d) = check("attention_gathered", q, k, v, pattern, bias)?;
    let out = Tensor::empty(q.shape(), DType::F32);
    let lse = Tensor::empty(&[batch, pattern.heads, pattern.nq], DType::F32);
    if q.numel() == 0 {
        return Ok((out, lse));
    }
    let p = params(batch, d, pattern, cfg, bias.is_some());
    let bias_bind = bias.unwrap_or(q);
    gpu::get().dispatch(
        &shaders::ATTENTION_CSR,
        "forward",
        &[],
        bytemuck::bytes_of(&p),
        &[
            q.bind(),
            k.bind(),
            v.bind(),
            pattern.gpu_row_offsets.bind(),
            pattern.gpu_key_index.bind(),
            bias_bind.bind(),
            out.bind(),
            lse.bind(),
        ],
        [crate::ops::groups(pattern.nq, 64), pattern.heads as u32, batch as u32],
    )?;
    Ok((out, lse))
}

/// Gradients of [`attention_gathered`]: (dq, dk, dv, dbias [nnz] summed over the batch).
#[allow(clippy::too_many_arguments)]
pub fn attention_gathered_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pattern: &Pattern,
    bias: Option<&Tensor>,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    cfg: &AttentionConfig,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    let (batch, d) = check("attention_gathered_backward", q, k, v, pattern, bias)?;
    if out.shape() != q.shape() || dout.shape() != q.shape() || lse.numel() != batch * pattern.heads * pattern.nq {
        return Err(Error::shape(
            "attention_gathered_backward",
            format!(
                "out {:?}, dout {:?} and lse {:?} do not fit q {:?}",
                out.shape(),
                dout.shape(),
                lse.shape(),
                q.shape()
            ),
        ));
    }
    let dq = Tensor::empty(q.shape(), DType::F32);
    let dk = Tensor::empty(k.shape(), DType::F32);
    let dv = Tensor::empty(v.shape(), DType::F32);
    let delta = Tensor::empty(&[batch, pattern.heads, pattern.nq], DType::F32);
    let dbias = Tensor::empty(&[pattern.nnz().max(1)], DType::F32);
    if q.numel() == 0 {
        return Ok((dq, dk, dv, bias.map(|_| dbias)));
    }
    let p = params(batch, d, pattern, cfg, bias.is_some());
    let bias_bind = bias.unwrap_or(q);
    let gpu = gpu::get();

    // pass 1: dq, delta and dbias by query row.
    gpu.dispatch(
        &shaders::ATTENTION_CSR_BACKWARD,
        "backward_dq",
        &[],
        bytemuck::bytes_of(&p),
        &[
            q.bind(),
            k.bind(),
            v.bind(),
            pattern.gpu_row_offsets.bind(),
            pattern.gpu_key_index.bind(),
            bias_bind.bind(),
            out.bind(),
            lse.bind(),
            dout.bind(),
            dq.bind(),
            delta.bind(),
            dbias.bind(),
        ],
        [crate::ops::groups(pattern.nq, 64), pattern.heads as u32, 1],
    )?;
    // pass 2: dk and dv by key, over the transposed pattern.
    gpu.dispatch(
        &shaders::ATTENTION_CSR_BACKWARD,
        "backward_dkdv",
        &[],
        bytemuck::bytes_of(&p),
        &[
            q.bind(),
            k.bind(),
            v.bind(),
            pattern.gpu_col_offsets.bind(),
            pattern.gpu_col_rows.bind(),
            bias_bind.bind(),
            pattern.gpu_col_entries.bind(),
            lse.bind(),
            dout.bind(),
            dk.bind(),
            dv.bind(),
            delta.bind(),
        ],
        [crate::ops::groups(pattern.nk, 64), pattern.heads as u32, batch as u32],
    )?;
    let dbias = bias.map(|b| dbias.reshape(b.shape()).unwrap_or(dbias));
    Ok((dq, dk, dv, dbias))
}
