//! Fused log-softmax and negative log-likelihood over the last axis of the logits, with label
//! smoothing and an ignore index, as `torch.nn.functional.cross_entropy` with mean reduction.
//!
//! The loss stays on the GPU: the mean over valid rows, and its count, are computed there, so
//! a training step reads back nothing unless it logs the loss.

use bytemuck::{Pod, Zeroable};

use super::softmax::{RowDispatch, bind_rows, row_windows};
use crate::error::{Error, Result};
use crate::gpu;
use crate::shaders;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    row0: u32,
    ignore_index: u32,
    has_ignore: u32,
    smoothing: f32,
    off_logits: u32,
    off_dlogits: u32,
}

/// Shapes after validation: `rows` rows of `cols` classes.
struct Problem {
    rows: usize,
    cols: usize,
}

fn validate(op: &'static str, logits: &Tensor, targets: &Tensor, label_smoothing: f32) -> Result<Problem> {
    if logits.dtype() != DType::F32 || logits.rank() == 0 {
        return Err(Error::shape(
            op,
            format!(
                "logits must be an f32 tensor [N, C], got {:?} {:?}",
                logits.shape(),
                logits.dtype()
            ),
        ));
    }
    let cols = logits.dim(-1);
    if cols == 0 {
        return Err(Error::shape(op, format!("logits {:?} have no classes", logits.shape())));
    }
    let rows = logits.numel() / cols;
    if targets.dtype() != DType::U32 || targets.numel() != rows {
        return Err(Error::shape(
            op,
            format!(
                "targets must be u32 with one entry per row of logits {:?} ({rows}), got {:?} {:?}",
                logits.shape(),
                targets.shape(),
                targets.dtype()
            ),
        ));
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::invalid("label_smoothing", label_smoothing, "must lie in [0, 1]"));
    }
    Ok(Problem { rows, cols })
}

fn params(problem: &Problem, label_smoothing: f32, ignore_index: Option<u32>) -> Params {
    Params {
        rows: problem.rows as u32,
        cols: problem.cols as u32,
        row0: 0,
        ignore_index: ignore_index.unwrap_or(0),
        has_ignore: ignore_index.is_some() as u32,
        smoothing: label_smoothing,
        off_logits: 0,
        off_dlogits: 0,
    }
}

/// Returns the mean cross-entropy loss [1] of `logits` [N, C] (or [..., C]) against class
/// indices `targets` (u32, one per row), and the row log-sum-exp `lse` [N] for the backward.
///
/// With smoothing eps, a row's loss is (1 - eps) * nll + eps * mean_c(-log p_c). Rows whose
/// target equals `ignore_index` are left out of the loss and of the count it divides by. When
/// every row is ignored, the loss is 0.
///
/// NOTE: a target >= C that is not the ignore index cannot be reported without a readback, so
/// such a row is treated as ignored instead of failing as in PyTorch.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    label_smoothing: f32,
    ignore_index: Option<u32>,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "cross_entropy";
    let problem = validate(OP, logits, targets, label_smoothing)?;
    let (rows, cols) = (problem.rows, problem.cols);
    let lse = Tensor::empty(&[rows], DType::F32);
    if rows == 0 {
        return Ok((Tensor::zeros(&[1], DType::F32), lse));
    }
    let gpu = gpu::get();
    let kernel = RowDispatch::new(OP, cols);

    // Pass 1: lse and the loss of every row.
    let row_loss = Tensor::empty(&[rows], DType::F32);
    for (start, count) in row_windows(OP, rows, &[cols], 1)? {
        let (logits_bind, off_logits) = bind_rows(logits, start, count, cols);
        let p = Params {
            rows: count as u32,
            row0: start as u32,
            off_logits,
            ..params(&problem, label_smoothing, ignore_index)
        };
        kernel.dispatch(
            &shaders::CROSS_ENTROPY,
            &p,
            &[logits_bind, targets.bind(), lse.bind(), row_loss.bind()],
            count,
        )?;
    }

    // Pass 2: the mean over valid rows, in one workgroup.
    let loss = Tensor::empty(&[1], DType::F32);
    gpu.dispatch(
        &shaders::CROSS_ENTROPY,
        "cross_entropy_mean",
        &[],
        bytemuck::bytes_of(&params(&problem, label_smoothing, ignore_index)),
        &[targets.bind(), row_loss.bind(), loss.bind()],
        [1, 1, 1],
    )?;
    Ok((loss, lse))
}

/// Returns dlogits (shape of `logits`) of [`cross_entropy`] for the loss gradient `dloss` [1],
/// from the forward's inputs and its saved `lse` [N]. Ignored rows get zero gradient.
pub fn cross_entropy_backward(
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    label_smoothing: f32,
    ignore_index: Option<u32>,
    dloss: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy_backward";
    let problem = validate(OP, logits, targets, label_smoothing)?;
    let (rows, cols) = (problem.rows, problem.cols);
    if lse.dtype() != DType::F32 || lse.numel() != rows {
        return Err(Error::shape(
            OP,
            format!("lse must be f32 [{rows}], got {:?} {:?}", lse.shape(), lse.dtype()),
        ));
    }
    if dloss.dtype() != DType::F32 || dloss.numel() != 1 {
        return Err(Error::shape(
            OP,
            format!("dloss must be f32 [1], got {:?} {:?}", dloss.shape(), dloss.dtype()),
        ));
    }
    let dlogits = Tensor::empty(logits.shape(), DType::F32);
    if rows == 0 {
        return Ok(dlogits);
    }
    let gpu = gpu::get();

    // Pass 1: scale = dloss / count of valid rows, in one workgroup.
    let scale = Tensor::empty(&[1], DType::F32);
    gpu.dispatch(
        &shaders::CROSS_ENTROPY,
        "cross_entropy_scale",
        &[],
        bytemuck::bytes_of(&params(&problem, label_smoothing, ignore_index)),
        &[targets.bind(), dloss.bind(), scale.bind()],
        [1, 1, 1],
    )?;

    // Pass 2: the gradient of every logit.
    let kernel = RowDispatch::new(OP, cols);
    for (start, count) in row_windows(OP, rows, &[cols], 1)? {
        let (logits_bind, off_logits) = bind_rows(logits, start, count, cols);
        let (dlogits_bind, off_dlogits) = bind_rows(&dlogits, start, count, cols);
        let p = Params {
            rows: count as u32,
            row0: start as u32,
            off_logits,
            off_dlogits,
            ..params(&problem, label_smoothing, ignore_index)
        };
        kernel.dispatch(
            &shaders::CROSS_ENTROPY,
            &p,
            &[logits_bind, targets.bind(), lse.bind(), scale.bind(), dlogits_bind],
            count,
        )?;
    }
    Ok(dlogits)
}
