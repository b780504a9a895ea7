//! Softmax over the last axis and its backward against the CPU reference, and the CPU backward
//! against central finite differences.
//!
//! The kernels run in the row-kernel variant of the adapter; `FIAK_ROW_KERNELS=invocation` or
//! `FIAK_ROW_KERNELS=workgroup` forces one, and both must pass.

mod common;

use common::{Rng, assert_close, reference};
use fiak::Tensor;
use fiak::ops::softmax::{RowKernels, row_kernels, softmax, softmax_backward};

/// Outputs are probabilities up to 1, and f32 exp and sums of up to 9000 terms stay within a
/// few ulps of 1e-7 per term, so 1e-6 absolute plus 1e-4 relative is ample.
const ATOL: f32 = 1e-6;
const RTOL: f32 = 1e-4;

fn check(rng: &mut Rng, shape: &[usize], scale: f32) {
    let n: usize = shape.iter().product();
    let cols = *shape.last().unwrap();
    let x = rng.vec(n, scale);
    let dy = rng.vec(n, 1.0);

    let tx = Tensor::from_f32(shape, &x).unwrap();
    let y = softmax(&tx).unwrap();
    assert_eq!(y.shape(), shape);
    let want_y = reference::softmax::softmax(&x, cols);
    let got_y = y.to_f32_vec();
    assert_close(&format!("softmax {shape:?} scale {scale}"), &got_y, &want_y, ATOL, RTOL);

    let tdy = Tensor::from_f32(shape, &dy).unwrap();
    let dx = softmax_backward(&y, &tdy).unwrap();
    assert_eq!(dx.shape(), shape);
    let want_dx = reference::softmax::softmax_backward(&got_y, &dy, cols);
    assert_close(
        &format!("softmax_backward {shape:?}"),
        &dx.to_f32_vec(),
        &want_dx,
        ATOL,
        RTOL,
    );
}

#[test]
fn softmax_row_lengths() {
    let mut rng = Rng::new(11);
    // 9000 columns exceed one block of 256 invocations x 32 columns.
    for cols in [1, 7, 197, 1000, 5000, 9000] {
        check(&mut rng, &[3, cols], 4.0);
    }
}

#[test]
fn softmax_random_shapes() {
    let mut rng = Rng::new(12);
    for _ in 0..6 {
        let rank = 1 + rng.below(4);
        let shape: Vec<usize> = (0..rank).map(|_| 1 + rng.below(9)).collect();
        check(&mut rng, &shape, 3.0);
    }
    check(&mut rng, &[2, 3, 5, 33], 3.0);
    check(&mut rng, &[8193], 3.0);
}

#[test]
fn softmax_large_logits_finite() {
    let mut rng = Rng::new(13);
    let cols = 300;
    let mut x = rng.vec(2 * cols, 1.0);
    for v in &mut x {
        *v = 1e4 + *v * 10.0;
    }
    x[cols + 5] = -1e4;
    let y = softmax(&Tensor::from_f32(&[2, cols], &x).unwrap())
        .unwrap()
        .to_f32_vec();
    let want = reference::softmax::softmax(&x, cols);
    assert_close("softmax of logits near 1e4", &y, &want, ATOL, RTOL);
}

#[test]
fn softmax_many_rows() {
    // More workgroups than one grid dimension holds, so the 2-D grid is exercised: one row per
    // workgroup, or 16 rows per workgroup in the invocation variant.
    let mut rng = Rng::new(14);
    let rows = match row_kernels() {
        RowKernels::Workgroup => 70_000,
        RowKernels::Invocation => 65_535 * 16 + 1000,
    };
    check(&mut rng, &[rows, 2], 2.0);
}

#[test]
fn row_kernel_variant_follows_environment() {
    let expected = match std::env::var("FIAK_ROW_KERNELS").as_deref() {
        Ok("invocation") => RowKernels::Invocation,
        Ok("workgroup") => RowKernels::Workgroup,
        _ if fiak::gpu::get().is_cpu() => RowKernels::Invocation,
        _ => RowKernels::Workgroup,
    };
    assert_eq!(row_kernels(), expected);
}

#[test]
fn softmax_rejects_mismatched_gradient() {
    let y = Tensor::zeros(&[2, 3], fiak::DType::F32);
    let dy = Tensor::zeros(&[3, 2], fiak::DType::F32);
    assert!(softmax_backward(&y, &dy).is_err());
}

/// The CPU backward against central differences of sum(dy * softmax(x)) in f64.
#[test]
fn softmax_reference_backward_matches_finite_differences() {
    let mut rng = Rng::new(15);
    let cols = 6;
    let x: Vec<f64> = rng.vec(2 * cols, 2.0).iter().map(|&v| v as f64).collect();
    let dy: Vec<f64> = rng.vec(2 * cols, 1.0).iter().map(|&v| v as f64).collect();
    let softmax64 = |x: &[f64]| -> Vec<f64> {
        let mut y = Vec::new();
        for row in x.chunks(cols) {
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            y.extend(row.iter().map(|v| (v - max).exp() / sum));
        }
        y
    };
    let objective = |x: &[f64]| -> f64 { softmax64(x).iter().zip(&dy).map(|(a, b)| a * b).sum() };

    let y: Vec<f32> = softmax64(&x).iter().map(|&v| v as f32).collect();
    let dy32: Vec<f32> = dy.iter().map(|&v| v as f32).collect();
    let analytic = reference::softmax::softmax_backward(&y, &dy32, cols);
    let h = 1e-6;
    for i in 0..x.len() {
        let mut plus = x.clone();
        let mut minus = x.clone();
        plus[i] += h;
        minus[i] -= h;
        let numeric = (objective(&plus) - objective(&minus)) / (2.0 * h);
        assert!(
            (numeric - analytic[i] as f64).abs() < 1e-5,
            "dx[{i}]: finite difference {numeric}, reference {}",
            analytic[i]
        );
    }
}
