//! Reductions against the f64 CPU reference: sum and mean over every axis, bias-gradient sums,
//! sums of all elements, long rows, the squared global norm, windowed dispatch and
//! determinism.

mod common;

use common::reference::reduce as reference;
use common::{Rng, assert_close};
use fiak::ops::elementwise::with_test_limits;
use fiak::ops::reduce::{mean_axis, squared_norm, sum_all, sum_axis, sum_to_last};
use fiak::{DType, Tensor};

/// Sums of up to a few hundred values in [-1, 1] in blocked f32: a few units of f32 rounding
/// of the partial sums, which stay below about 30 in magnitude.
const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-5;

fn tensor(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(shape, data).unwrap()
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn check_every_axis(rng: &mut Rng, shape: &[usize]) {
    let x = rng.vec(numel(shape), 1.0);
    let tx = tensor(shape, &x);
    for axis in 0..shape.len() {
        let mut out_shape = shape.to_vec();
        out_shape.remove(axis);

        let got = sum_axis(&tx, axis).unwrap();
        assert_eq!(got.shape(), &out_shape[..], "sum_axis {shape:?} axis {axis}");
        let want = reference::sum_axis(&x, shape, axis, false);
        let what = format!("sum_axis {shape:?} axis {axis}");
        assert_close(&what, &got.to_f32_vec(), &want, ATOL, RTOL);

        let got = mean_axis(&tx, axis).unwrap();
        assert_eq!(got.shape(), &out_shape[..], "mean_axis {shape:?} axis {axis}");
        let want = reference::sum_axis(&x, shape, axis, true);
        let what = format!("mean_axis {shape:?} axis {axis}");
        assert_close(&what, &got.to_f32_vec(), &want, ATOL, RTOL);
    }
}

#[test]
fn sum_and_mean_every_axis() {
    let mut rng = Rng::new(1);
    // Sizes of 1, sizes around the workgroup (256) and the sequential chunk (256), and rows
    // long enough for the workgroup tree.
    let shapes: &[&[usize]] = &[
        &[1],
        &[1, 1],
        &[7],
        &[257],
        &[3, 5],
        &[4, 1, 9],
        &[2, 300, 3],
        &[3, 2049],
        &[600, 2],
        &[5, 257, 1],
    ];
    for shape in shapes {
        check_every_axis(&mut rng, shape);
    }
}

#[test]
fn sum_axis_random_shapes() {
    let mut rng = Rng::new(2);
    let sizes = [1usize, 2, 3, 17, 64, 255, 257, 513];
    for _ in 0..12 {
        let rank = 1 + rng.below(3);
        let mut shape: Vec<usize> = (0..rank).map(|_| sizes[rng.below(sizes.len())]).collect();
        // Keep tensors small for a software GPU.
        while numel(&shape) > 200_000 {
            shape[0] = 1;
        }
        check_every_axis(&mut rng, &shape);
    }
}

#[test]
fn sum_axis_rank_one_gives_scalar_shape() {
    let t = tensor(&[4], &[1.0, 2.0, 3.0, 4.5]);
    let s = sum_axis(&t, 0).unwrap();
    assert_eq!(s.shape(), &[] as &[usize]);
    assert_eq!(s.to_f32_vec(), vec![10.5]);
}

#[test]
fn sum_axis_rejects_axis_out_of_range() {
    let t = Tensor::zeros(&[2, 3], DType::F32);
    let err = sum_axis(&t, 2).unwrap_err().to_string();
    assert!(
        err.contains("axis") && err.contains('2') && err.contains("[2, 3]"),
        "{err}"
    );
    let err = mean_axis(&t, 5).unwrap_err().to_string();
    assert!(err.contains('5'), "{err}");
    assert!(err.contains("[2, 3]"), "{err}");
}

#[test]
fn mean_rejects_empty_axis() {
    let t = Tensor::zeros(&[3, 0], DType::F32);
    let err = mean_axis(&t, 1).unwrap_err().to_string();
    assert!(err.contains("[3, 0]"), "{err}");
    // A sum over an empty axis is 0.
    assert_eq!(sum_axis(&t, 1).unwrap().to_f32_vec(), vec![0.0; 3]);
}

/// Asserts |got - want| <= 2e-7 * sum |x|: a few units of f32 rounding of the whole magnitude,
/// far below the error of one f32 running sum over 10^5 terms.
fn assert_long_sum(what: &str, got: f32, want: f64, abs_sum: f64) {
    let bound = 2e-7 * abs_sum;
    assert!(
        (got as f64 - want).abs() <= bound,
        "{what}: got {got}, f64 sum {want}, difference {} over the bound {bound}",
        (got as f64 - want).abs()
    );
}

#[test]
fn long_row_matches_f64() {
    let mut rng = Rng::new(3);
    let n = 100_000;
    // Values in [0, 1) with a positive mean, so the sum grows to about 5e4 and a running f32
    // sum would drift.
    let x: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
    let want = reference::sum_middle_f64(&x, 1, n, 1)[0];
    let abs_sum: f64 = x.iter().map(|&v| v.abs() as f64).sum();

    // The bound is tighter than one running f32 sum over the row achieves.
    let running = x.iter().fold(0.0f32, |acc, &v| acc + v);
    assert!(
        (running as f64 - want).abs() > 2e-7 * abs_sum,
        "a running f32 sum already meets the bound; the test would not detect one"
    );

    let got = sum_all(&tensor(&[n], &x)).unwrap();
    assert_eq!(got.shape(), &[1]);
    assert_long_sum("sum_all of 100000", got.item(), want, abs_sum);

    let got = sum_axis(&tensor(&[1, n], &x), 1).unwrap().item();
    assert_long_sum("sum_axis over a row of 100000", got, want, abs_sum);

    let got = mean_axis(&tensor(&[n, 1], &x), 0).unwrap().item();
    let mean = want / n as f64;
    assert!(
        (got as f64 - mean).abs() <= 4e-7 * mean,
        "mean of 100000: got {got}, f64 mean {mean}"
    );

    // The same elements as three columns of a [33334, 3] matrix (the last row padded with 0).
    let mut padded = x.clone();
    padded.resize(33_334 * 3, 0.0);
    let got = sum_axis(&tensor(&[33_334, 3], &padded), 0).unwrap().to_f32_vec();
    let want_columns = reference::sum_middle_f64(&padded, 1, 33_334, 3);
    for (j, (&g, &w)) in got.iter().zip(&want_columns).enumerate() {
        assert_long_sum(&format!("column {j} of [33334, 3]"), g, w, w.abs());
    }
}

#[test]
fn sum_to_last_bias_gradients() {
    let mut rng = Rng::new(4);
    // (x shape, n): a bias over [B, T, D], over [M, N], a size-1 bias, and n = T * D.
    let cases: &[(&[usize], usize)] = &[
        (&[2, 3, 5], 5),
        (&[300, 7], 7),
        (&[1, 1], 1),
        (&[17, 1], 1),
        (&[2, 5, 257], 257),
        (&[4, 3, 5], 15),
        (&[6], 6),
    ];
    for &(shape, n) in cases {
        let x = rng.vec(numel(shape), 1.0);
        let got = sum_to_last(&tensor(shape, &x), n).unwrap();
        assert_eq!(got.shape(), &[n]);
        let want: Vec<f32> = reference::sum_middle_f64(&x, 1, numel(shape) / n, n)
            .iter()
            .map(|&v| v as f32)
            .collect();
        assert_close(
            &format!("sum_to_last {shape:?} -> [{n}]"),
            &got.to_f32_vec(),
            &want,
            ATOL,
            RTOL,
        );
    }
}

#[test]
fn sum_to_last_rejects_mismatch() {
    let x = Tensor::zeros(&[4, 6], DType::F32);
    let err = sum_to_last(&x, 4).unwrap_err().to_string();
    assert!(err.contains("[4, 6]"), "{err}");
    assert!(err.contains("[4]"), "{err}");
}

#[test]
fn sum_all_small_sizes() {
    let mut rng = Rng::new(5);
    for n in [1usize, 2, 255, 256, 257, 2047, 2049] {
        let x = rng.vec(n, 1.0);
        let got = sum_all(&tensor(&[n], &x)).unwrap();
        let want = reference::sum_middle_f64(&x, 1, n, 1)[0] as f32;
        assert_close(&format!("sum_all [{n}]"), &got.to_f32_vec(), &[want], ATOL, RTOL);
    }
}

#[test]
fn squared_norm_matches_f64() {
    let mut rng = Rng::new(6);
    // Nine tensors take two dispatches of seven; 10000 elements span three partial blocks.
    let sizes = [1usize, 255, 5000, 10_000, 3, 4096, 4097, 17, 1];
    let data: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 1.0)).collect();
    let tensors: Vec<Tensor> = data.iter().map(|d| tensor(&[d.len()], d)).collect();
    let refs: Vec<&Tensor> = tensors.iter().collect();
    let slices: Vec<&[f32]> = data.iter().map(|d| &d[..]).collect();
    let want = reference::squared_norm(&slices);

    let got = squared_norm(&refs).unwrap();
    assert_eq!(got.shape(), &[1]);
    let got = got.item();
    assert!(
        (got as f64 - want).abs() <= 1e-6 * want,
        "squared norm {got}, f64 {want}"
    );

    // One tensor, and a subset.
    let got = squared_norm(&refs[3..4]).unwrap().item();
    let want = reference::squared_norm(&slices[3..4]);
    assert!(
        (got as f64 - want).abs() <= 1e-6 * want,
        "squared norm {got}, f64 {want}"
    );
}

#[test]
fn squared_norm_of_nothing_is_zero() {
    assert_eq!(squared_norm(&[]).unwrap().to_f32_vec(), vec![0.0]);
    let empty = Tensor::zeros(&[0], DType::F32);
    assert_eq!(squared_norm(&[&empty]).unwrap().to_f32_vec(), vec![0.0]);
}

#[test]
fn reductions_are_deterministic() {
    let mut rng = Rng::new(7);
    let x = tensor(&[3, 7001], &rng.vec(3 * 7001, 1.0));
    let y = tensor(&[9000], &rng.vec(9000, 1.0));
    let first = (
        sum_axis(&x, 1).unwrap().to_f32_vec(),
        sum_axis(&x, 0).unwrap().to_f32_vec(),
        squared_norm(&[&x, &y]).unwrap().to_f32_vec(),
    );
    for _ in 0..3 {
        assert_eq!(sum_axis(&x, 1).unwrap().to_f32_vec(), first.0);
        assert_eq!(sum_axis(&x, 0).unwrap().to_f32_vec(), first.1);
        assert_eq!(squared_norm(&[&x, &y]).unwrap().to_f32_vec(), first.2);
    }
}

#[test]
fn windowed_reductions_match_reference() {
    let mut rng = Rng::new(8);
    let shape = [7usize, 100, 5];
    let x = rng.vec(numel(&shape), 1.0);
    let tx = tensor(&shape, &x);
    let long = rng.vec(20_000, 1.0);
    let tlong = tensor(&[20_000], &long);
    // Windows of 1600 elements split every pass into several windows, and squared_norm then
    // sums split tensors. Two workgroups per grid row force two-dimensional grids.
    with_test_limits(1600, 2, || {
        for axis in 0..3 {
            let got = sum_axis(&tx, axis).unwrap().to_f32_vec();
            let want = reference::sum_axis(&x, &shape, axis, false);
            assert_close(&format!("windowed sum_axis axis {axis}"), &got, &want, ATOL, RTOL);
        }
        let got = sum_all(&tlong).unwrap().item();
        let want = reference::sum_middle_f64(&long, 1, long.len(), 1)[0] as f32;
        assert_close("windowed sum_all", &[got], &[want], 1e-4, RTOL);

        let got = squared_norm(&[&tx, &tlong]).unwrap().item();
        let want = reference::squared_norm(&[&x, &long]);
        assert!(
            (got as f64 - want).abs() <= 1e-6 * want,
            "windowed squared norm {got}, f64 {want}"
        );
    });
    // Two rows after the reduced axis must fit one window: x [2, 1000] over axis 0 has rows of
    // 1000 elements.
    let wide = Tensor::zeros(&[2, 1000], DType::F32);
    let err = with_test_limits(1600, 2, || sum_axis(&wide, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1000"), "{err}");
    assert!(err.contains("1600"), "{err}");
}
