//! Fused cross-entropy and its backward against the CPU reference, with label smoothing and
//! an ignore index, and the CPU backward against central finite differences.
//!
//! The kernels run in the row-kernel variant of the adapter; `FIAK_ROW_KERNELS=invocation` or
//! `FIAK_ROW_KERNELS=workgroup` forces one, and both must pass.

mod common;

use common::{Rng, assert_close, reference};
use fiak::ops::cross_entropy::{cross_entropy, cross_entropy_backward};
use fiak::{DType, Tensor};

/// The loss and lse are of order 1 to 10 and sum at most a few thousand f32 terms: 1e-4
/// relative. Gradients are probabilities divided by the row count: 1e-6 absolute.
const RTOL: f32 = 1e-4;
const ATOL_GRAD: f32 = 1e-6;

struct Case {
    rows: usize,
    cols: usize,
    scale: f32,
    smoothing: f32,
    ignore_index: Option<u32>,
    /// Fraction of rows whose target is set to the ignore index.
    ignored: f32,
}

fn check(rng: &mut Rng, case: &Case) {
    let Case {
        rows,
        cols,
        scale,
        smoothing,
        ignore_index,
        ignored,
    } = *case;
    let logits = rng.vec(rows * cols, scale);
    let targets: Vec<u32> = (0..rows)
        .map(|_| match ignore_index {
            Some(ignore) if rng.uniform() < ignored => ignore,
            _ => rng.below(cols) as u32,
        })
        .collect();
    let dloss = 0.5 + rng.uniform();
    let what = format!("cross_entropy [{rows}, {cols}] smoothing {smoothing} ignore {ignore_index:?}");

    let tl = Tensor::from_f32(&[rows, cols], &logits).unwrap();
    let tt = Tensor::from_u32(&[rows], &targets).unwrap();
    let (loss, lse) = cross_entropy(&tl, &tt, smoothing, ignore_index).unwrap();
    assert_eq!(loss.shape(), &[1]);
    assert_eq!(lse.shape(), &[rows]);
    let (want_loss, want_lse) =
        reference::cross_entropy::cross_entropy(&logits, &targets, cols, smoothing, ignore_index);
    assert_close(&format!("{what} loss"), &[loss.item()], &[want_loss], 1e-5, RTOL);
    assert_close(&format!("{what} lse"), &lse.to_f32_vec(), &want_lse, 1e-5, RTOL);

    let tdloss = Tensor::from_f32(&[1], &[dloss]).unwrap();
    let dlogits = cross_entropy_backward(&tl, &tt, &lse, smoothing, ignore_index, &tdloss).unwrap();
    assert_eq!(dlogits.shape(), &[rows, cols]);
    let want =
        reference::cross_entropy::cross_entropy_backward(&logits, &targets, cols, smoothing, ignore_index, dloss);
    assert_close(
        &format!("{what} dlogits"),
        &dlogits.to_f32_vec(),
        &want,
        ATOL_GRAD,
        RTOL * 10.0,
    );
}

#[test]
fn cross_entropy_class_counts() {
    let mut rng = Rng::new(31);
    for cols in [1, 2, 7, 197, 1000, 5000] {
        let case = Case {
            rows: 5,
            cols,
            scale: 3.0,
            smoothing: 0.0,
            ignore_index: None,
            ignored: 0.0,
        };
        check(&mut rng, &case);
    }
}

#[test]
fn cross_entropy_smoothing_and_ignore() {
    let mut rng = Rng::new(32);
    for (smoothing, ignore_index) in [(0.1, None), (0.0, Some(0)), (0.2, Some(u32::MAX)), (1.0, Some(3))] {
        for (rows, cols) in [(1, 1), (9, 10), (130, 33), (4, 9000)] {
            let case = Case {
                rows,
                cols,
                scale: 2.0,
                smoothing,
                ignore_index,
                ignored: 0.3,
            };
            check(&mut rng, &case);
        }
    }
}

#[test]
fn cross_entropy_all_rows_ignored() {
    let logits = Tensor::from_f32(&[3, 4], &[1.0; 12]).unwrap();
    let targets = Tensor::from_u32(&[3], &[7, 7, 7]).unwrap();
    let (loss, lse) = cross_entropy(&logits, &targets, 0.1, Some(7)).unwrap();
    assert_eq!(loss.item(), 0.0);
    let dloss = Tensor::full(&[1], 1.0);
    let dlogits = cross_entropy_backward(&logits, &targets, &lse, 0.1, Some(7), &dloss).unwrap();
    assert!(
        dlogits.to_f32_vec().iter().all(|&g| g == 0.0),
        "ignored rows must get zero gradient"
    );
}

#[test]
fn cross_entropy_large_logits_finite() {
    let mut rng = Rng::new(33);
    let (rows, cols) = (6, 300);
    let mut logits: Vec<f32> = rng.vec(rows * cols, 20.0).iter().map(|v| 1e4 + v).collect();
    logits[cols + 3] = -1e4;
    let targets: Vec<u32> = (0..rows as u32).map(|r| r * 37 % cols as u32).collect();
    let tl = Tensor::from_f32(&[rows, cols], &logits).unwrap();
    let tt = Tensor::from_u32(&[rows], &targets).unwrap();
    let (loss, lse) = cross_entropy(&tl, &tt, 0.1, None).unwrap();
    let (want_loss, _) = reference::cross_entropy::cross_entropy(&logits, &targets, cols, 0.1, None);
    assert_close("loss of logits near 1e4", &[loss.item()], &[want_loss], 1e-3, 1e-4);

    let dloss = Tensor::full(&[1], 1.0);
    let dlogits = cross_entropy_backward(&tl, &tt, &lse, 0.1, None, &dloss)
        .unwrap()
        .to_f32_vec();
    let want = reference::cross_entropy::cross_entropy_backward(&logits, &targets, cols, 0.1, None, 1.0);
    // lse near 1e4 is stored with an f32 ulp of about 1e-3, which shifts every probability by
    // up to 0.1% relative.
    assert_close("dlogits of logits near 1e4", &dlogits, &want, 1e-6, 2e-3);
}

#[test]
fn cross_entropy_out_of_range_target_ignored() {
    let logits = Tensor::from_f32(&[2, 3], &[0.5, 1.0, -1.0, 2.0, 0.0, 1.0]).unwrap();
    let targets = Tensor::from_u32(&[2], &[1, 3]).unwrap();
    let (loss, _) = cross_entropy(&logits, &targets, 0.0, None).unwrap();
    let (want, _) = reference::cross_entropy::cross_entropy(&logits.to_f32_vec(), &[1, 3], 3, 0.0, None);
    assert_close("loss with a target out of range", &[loss.item()], &[want], 1e-6, 1e-5);
}

#[test]
fn cross_entropy_rejects_bad_arguments() {
    let logits = Tensor::zeros(&[2, 3], DType::F32);
    let targets = Tensor::from_u32(&[2], &[0, 1]).unwrap();
    assert!(
        cross_entropy(&logits, &targets, 1.5, None).is_err(),
        "smoothing above 1"
    );
    let wrong_rows = Tensor::from_u32(&[3], &[0, 1, 2]).unwrap();
    assert!(cross_entropy(&logits, &wrong_rows, 0.0, None).is_err(), "target count");
    let float_targets = Tensor::zeros(&[2], DType::F32);
    assert!(
        cross_entropy(&logits, &float_targets, 0.0, None).is_err(),
        "f32 targets"
    );
}

/// The CPU backward against central differences of dloss * loss in f64, with smoothing and an
/// ignored row.
#[test]
fn cross_entropy_reference_backward_matches_finite_differences() {
    let mut rng = Rng::new(34);
    let (rows, cols, smoothing, dloss) = (4, 5, 0.15, 0.7);
    let logits: Vec<f64> = rng.vec(rows * cols, 2.0).iter().map(|&v| v as f64).collect();
    let targets = [2u32, 9, 0, 4];
    let ignore = Some(9);
    let logits32: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
    let logits: Vec<f64> = logits32.iter().map(|&v| v as f64).collect();
    let analytic =
        reference::cross_entropy::cross_entropy_backward(&logits32, &targets, cols, smoothing, ignore, dloss);

    let h = 1e-6;
    for i in 0..logits.len() {
        let mut plus = logits.clone();
        let mut minus = logits.clone();
        plus[i] += h;
        minus[i] -= h;
        let f = |x: &[f64]| {
            reference::cross_entropy::cross_entropy64(x, &targets, cols, smoothing as f64, ignore).0 * dloss as f64
        };
        let numeric = (f(&plus) - f(&minus)) / (2.0 * h);
        assert!(
            (numeric - analytic[i] as f64).abs() < 1e-6,
            "dlogits[{i}]: finite difference {numeric}, reference {}",
            analytic[i]
        );
    }
}

#[test]
fn cross_entropy_logits_over_binding_limit() {
    // [660, 51000] f32 is 134.6 MB, over the 128 MiB storage binding limit of lavapipe, so the
    // logits and dlogits are bound in row windows on such devices.
    let mut rng = Rng::new(35);
    let (rows, cols) = (660, 51_000);
    let logits = rng.vec(rows * cols, 4.0);
    let targets: Vec<u32> = (0..rows)
        .map(|r| if r % 5 == 0 { 0 } else { rng.below(cols) as u32 })
        .collect();
    let tl = Tensor::from_f32(&[rows, cols], &logits).unwrap();
    let tt = Tensor::from_u32(&[rows], &targets).unwrap();
    let (loss, lse) = cross_entropy(&tl, &tt, 0.1, Some(0)).unwrap();
    let (want_loss, want_lse) = reference::cross_entropy::cross_entropy(&logits, &targets, cols, 0.1, Some(0));
    assert_close("loss over the binding limit", &[loss.item()], &[want_loss], 1e-5, RTOL);
    assert_close("lse over the binding limit", &lse.to_f32_vec(), &want_lse, 1e-5, RTOL);

    let dloss = Tensor::full(&[1], 1.0);
    let dlogits = cross_entropy_backward(&tl, &tt, &lse, 0.1, Some(0), &dloss).unwrap();
    drop(tl);
    let got = dlogits.to_f32_vec();
    let want = reference::cross_entropy::cross_entropy_backward(&logits, &targets, cols, 0.1, Some(0), 1.0);
    assert_close("dlogits over the binding limit", &got, &want, ATOL_GRAD, RTOL * 10.0);
}
