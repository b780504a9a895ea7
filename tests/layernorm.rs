//! Layer norm and its backward against the CPU reference, and the CPU backward against
//! central finite differences.
//!
//! The kernels run in the row-kernel variant of the adapter; `FIAK_ROW_KERNELS=invocation` or
//! `FIAK_ROW_KERNELS=workgroup` forces one, and both must pass.

mod common;

use common::{Rng, assert_close, reference};
use fiak::ops::layernorm::{layer_norm, layer_norm_backward};
use fiak::{DType, Tensor};

/// Normalised outputs are of order 1 to 3 here, and f32 sums over up to 9000 columns lose a few
/// ulps per term, so 1e-4 absolute and relative covers y and dx. The parameter gradients sum
/// over up to a few hundred rows, so their tolerance scales with the row count.
const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-4;

fn check(rng: &mut Rng, lead: &[usize], cols: usize, eps: f32) {
    let mut shape = lead.to_vec();
    shape.push(cols);
    let n: usize = shape.iter().product();
    let rows = n / cols;
    let offset = rng.uniform() * 4.0 - 2.0;
    let x: Vec<f32> = rng.vec(n, 2.0).iter().map(|v| v + offset).collect();
    let weight = rng.vec(cols, 1.5);
    let bias = rng.vec(cols, 1.0);
    let dy = rng.vec(n, 1.0);
    let what = format!("layer_norm {shape:?} eps {eps}");

    let tx = Tensor::from_f32(&shape, &x).unwrap();
    let tw = Tensor::from_f32(&[cols], &weight).unwrap();
    let tb = Tensor::from_f32(&[cols], &bias).unwrap();
    let (y, mean, rstd) = layer_norm(&tx, &tw, &tb, eps).unwrap();
    assert_eq!(y.shape(), &shape[..]);
    assert_eq!(mean.shape(), &[rows]);
    assert_eq!(rstd.shape(), &[rows]);
    let (want_y, want_mean, want_rstd) = reference::layernorm::layer_norm(&x, &weight, &bias, cols, eps);
    assert_close(&format!("{what} y"), &y.to_f32_vec(), &want_y, ATOL, RTOL);
    assert_close(&format!("{what} mean"), &mean.to_f32_vec(), &want_mean, ATOL, RTOL);
    assert_close(&format!("{what} rstd"), &rstd.to_f32_vec(), &want_rstd, ATOL, RTOL);

    let tdy = Tensor::from_f32(&shape, &dy).unwrap();
    let (dx, dweight, dbias) = layer_norm_backward(&tx, &tw, &mean, &rstd, &tdy).unwrap();
    assert_eq!(dx.shape(), &shape[..]);
    assert_eq!(dweight.shape(), &[cols]);
    assert_eq!(dbias.shape(), &[cols]);
    let (want_dx, want_dw, want_db) =
        reference::layernorm::layer_norm_backward(&x, &weight, &mean.to_f32_vec(), &rstd.to_f32_vec(), &dy, cols);
    let rtol_dx = RTOL * 10.0;
    assert_close(&format!("{what} dx"), &dx.to_f32_vec(), &want_dx, ATOL * 10.0, rtol_dx);
    let atol_sum = ATOL * rows as f32;
    assert_close(
        &format!("{what} dweight"),
        &dweight.to_f32_vec(),
        &want_dw,
        atol_sum,
        RTOL,
    );
    assert_close(&format!("{what} dbias"), &dbias.to_f32_vec(), &want_db, atol_sum, RTOL);
}

#[test]
fn layer_norm_widths() {
    let mut rng = Rng::new(21);
    for cols in [1, 3, 64, 384, 1000] {
        check(&mut rng, &[5], cols, 1e-5);
    }
}

#[test]
fn layer_norm_wide_rows_in_blocks() {
    // Wider than one block of 256 invocations x 32 columns, so rows are walked in blocks.
    let mut rng = Rng::new(22);
    check(&mut rng, &[3], 9000, 1e-6);
    // With more rows than backward workgroups, the parameter gradients of the blocks before the
    // last accumulate over several rows in the partials buffer.
    check(&mut rng, &[520], 8300, 1e-6);
}

#[test]
fn layer_norm_random_shapes() {
    let mut rng = Rng::new(23);
    for _ in 0..5 {
        let lead: Vec<usize> = (0..rng.below(3)).map(|_| 1 + rng.below(7)).collect();
        let cols = 1 + rng.below(130);
        check(&mut rng, &lead, cols, 1e-5);
    }
    // More rows than backward workgroups, so each workgroup sums several rows.
    check(&mut rng, &[3, 197], 24, 1e-6);
    check(&mut rng, &[1000], 7, 1e-5);
}

#[test]
fn layer_norm_partial_row_blocks() {
    // Row counts that are not multiples of the invocation variant's blocks of 8 rows or of
    // its 16-invocation workgroups.
    let mut rng = Rng::new(26);
    for rows in [9, 127, 1037] {
        check(&mut rng, &[rows], 33, 1e-5);
    }
    // Over 4096 blocks of 8 rows, so the invocation variant walks several blocks per
    // invocation and adds to its partial parameter gradients.
    check(&mut rng, &[33_001], 3, 1e-5);
}

#[test]
fn layer_norm_backward_deterministic() {
    let mut rng = Rng::new(24);
    let (rows, cols) = (600, 48);
    let x = Tensor::from_f32(&[rows, cols], &rng.vec(rows * cols, 1.0)).unwrap();
    let w = Tensor::from_f32(&[cols], &rng.vec(cols, 1.0)).unwrap();
    let b = Tensor::zeros(&[cols], DType::F32);
    let dy = Tensor::from_f32(&[rows, cols], &rng.vec(rows * cols, 1.0)).unwrap();
    let (_, mean, rstd) = layer_norm(&x, &w, &b, 1e-5).unwrap();
    let (_, dw1, db1) = layer_norm_backward(&x, &w, &mean, &rstd, &dy).unwrap();
    let (_, dw2, db2) = layer_norm_backward(&x, &w, &mean, &rstd, &dy).unwrap();
    assert_eq!(dw1.to_f32_vec(), dw2.to_f32_vec());
    assert_eq!(db1.to_f32_vec(), db2.to_f32_vec());
}

#[test]
fn layer_norm_rejects_bad_weight() {
    let x = Tensor::zeros(&[2, 4], DType::F32);
    let w = Tensor::zeros(&[3], DType::F32);
    let b = Tensor::zeros(&[4], DType::F32);
    assert!(layer_norm(&x, &w, &b, 1e-5).is_err());
    assert!(layer_norm(&x, &b, &w, 1e-5).is_err());
}

/// The CPU backward against central differences of sum(dy * y) in f64, for x, weight and bias.
#[test]
fn layer_norm_reference_backward_matches_finite_differences() {
    let mut rng = Rng::new(25);
    let (rows, cols, eps) = (3, 5, 1e-5);
    let to64 = |v: Vec<f32>| -> Vec<f64> { v.iter().map(|&a| a as f64).collect() };
    let x = to64(rng.vec(rows * cols, 2.0));
    let weight = to64(rng.vec(cols, 1.5));
    let bias = to64(rng.vec(cols, 1.0));
    let dy = to64(rng.vec(rows * cols, 1.0));

    let forward = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
        let mut total = 0.0;
        for (r, row) in x.chunks(cols).enumerate() {
            let mean = row.iter().sum::<f64>() / cols as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            for c in 0..cols {
                total += ((row[c] - mean) * rstd * w[c] + b[c]) * dy[r * cols + c];
            }
        }
        total
    };
    let to32 = |v: &[f64]| -> Vec<f32> { v.iter().map(|&a| a as f32).collect() };
    let (_, mean, rstd) = reference::layernorm::layer_norm(&to32(&x), &to32(&weight), &to32(&bias), cols, eps as f32);
    let (dx, dw, db) =
        reference::layernorm::layer_norm_backward(&to32(&x), &to32(&weight), &mean, &rstd, &to32(&dy), cols);

    let h = 1e-6;
    let numeric = |which: usize, i: usize| -> f64 {
        let mut args = [x.clone(), weight.clone(), bias.clone()];
        args[which][i] += h;
        let plus = forward(&args[0], &args[1], &args[2]);
        args[which][i] -= 2.0 * h;
        let minus = forward(&args[0], &args[1], &args[2]);
        (plus - minus) / (2.0 * h)
    };
    // The reference keeps mean, rstd and its outputs in f32, so agreement is to about 1e-6.
    for (i, &g) in dx.iter().enumerate() {
        let fd = numeric(0, i);
        assert!(
            (fd - g as f64).abs() < 1e-5,
            "dx[{i}]: finite difference {fd}, reference {g}"
        );
    }
    for c in 0..cols {
        let fd = numeric(1, c);
        assert!(
            (fd - dw[c] as f64).abs() < 1e-5,
            "dweight[{c}]: finite difference {fd}, reference {}",
            dw[c]
        );
        let fd = numeric(2, c);
        assert!(
            (fd - db[c] as f64).abs() < 1e-5,
            "dbias[{c}]: finite difference {fd}, reference {}",
            db[c]
        );
    }
}
