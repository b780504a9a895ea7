//! Elementwise kernels against the CPU reference: add with broadcasting, mul, scale, linear
//! combinations, GELU forward and backward in both forms, fused bias + GELU, dropout, and the
//! windowed path that tensors over the binding limit take.

mod common;

use common::reference::elementwise as reference;
use common::{Rng, assert_close};
use fiak::ops::elementwise::{
    GeluKind, add, add_into, add_scaled, bias_gelu, dropout, dropout_backward, gelu, gelu_backward, mul, scale,
    scale_into, with_test_limits,
};
use fiak::{DType, Tensor};

/// Shapes with sizes of 1 and sizes that are not multiples of the workgroup size (256).
const SHAPES: &[&[usize]] = &[&[1], &[7], &[255], &[256], &[257], &[3, 5, 17], &[2, 300], &[4, 1, 33]];

/// One f32 operation against the f64 result rounded once: a few units of f32 rounding.
const ARITH_ATOL: f32 = 1e-7;
const ARITH_RTOL: f32 = 1e-6;
/// GELU in erf form: erf is within 1.5e-7, so gelu within 0.5 |x| 1.5e-7 plus rounding.
const GELU_ERF_ATOL: f32 = 5e-7;
const GELU_ERF_RTOL: f32 = 3e-7;
/// GELU in tanh form and both backward forms: a few f32 roundings of values up to about 5,
/// plus the driver's tanh and exp, which WGSL allows a few ULP of error.
const GELU_ATOL: f32 = 1e-6;
const GELU_RTOL: f32 = 1e-6;

fn tensor(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(shape, data).unwrap()
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

#[test]
fn add_same_shape() {
    let mut rng = Rng::new(1);
    for shape in SHAPES {
        let a = rng.vec(numel(shape), 2.0);
        let b = rng.vec(numel(shape), 2.0);
        let got = add(&tensor(shape, &a), &tensor(shape, &b)).unwrap();
        assert_eq!(got.shape(), *shape);
        let want = reference::add_broadcast(&a, &b);
        assert_close(
            &format!("add {shape:?}"),
            &got.to_f32_vec(),
            &want,
            ARITH_ATOL,
            ARITH_RTOL,
        );
    }
}

#[test]
fn add_broadcasts_bias_and_tables() {
    let mut rng = Rng::new(2);
    // (a shape, b shape): a bias [N], a position table [T, D] and [1, T, D], a size-1 bias.
    let cases: &[(&[usize], &[usize])] = &[
        (&[4, 7], &[7]),
        (&[2, 3, 300], &[300]),
        (&[3, 5, 6], &[5, 6]),
        (&[2, 17, 33], &[1, 17, 33]),
        (&[5, 1], &[1]),
        (&[9], &[9]),
    ];
    for &(a_shape, b_shape) in cases {
        let a = rng.vec(numel(a_shape), 1.0);
        let b = rng.vec(numel(b_shape), 1.0);
        let want = reference::add_broadcast(&a, &b);
        let (ta, tb) = (tensor(a_shape, &a), tensor(b_shape, &b));

        let got = add(&ta, &tb).unwrap();
        assert_eq!(got.shape(), a_shape);
        let what = format!("add {a_shape:?} + {b_shape:?}");
        assert_close(&what, &got.to_f32_vec(), &want, ARITH_ATOL, ARITH_RTOL);

        // The smaller operand may come first.
        let got = add(&tb, &ta).unwrap();
        assert_eq!(got.shape(), a_shape);
        let what = format!("add {b_shape:?} + {a_shape:?}");
        assert_close(&what, &got.to_f32_vec(), &want, ARITH_ATOL, ARITH_RTOL);
    }
}

#[test]
fn add_rejects_mismatched_shapes() {
    let a = Tensor::zeros(&[2, 3], DType::F32);
    let b = Tensor::zeros(&[2], DType::F32);
    let err = add(&a, &b).unwrap_err().to_string();
    assert!(err.contains("[2, 3]"), "{err}");
    assert!(err.contains("[2]"), "{err}");

    let c = Tensor::zeros(&[3, 2], DType::F32);
    let err = add(&a, &c).unwrap_err().to_string();
    assert!(err.contains("[2, 3]"), "{err}");
    assert!(err.contains("[3, 2]"), "{err}");
}

#[test]
fn add_rejects_u32_operand() {
    let a = Tensor::zeros(&[4], DType::F32);
    let b = Tensor::from_u32(&[4], &[1, 2, 3, 4]).unwrap();
    let err = add(&a, &b).unwrap_err().to_string();
    assert!(err.contains("f32"), "{err}");
    assert!(err.contains("U32"), "{err}");
}

#[test]
fn add_into_accumulates() {
    let mut rng = Rng::new(3);
    for shape in SHAPES {
        let out0 = rng.vec(numel(shape), 1.0);
        let x = rng.vec(numel(shape), 1.0);
        let out = tensor(shape, &out0);
        // Equal element counts suffice; the shapes may differ.
        let tx = tensor(&[numel(shape)], &x);
        add_into(&out, &tx).unwrap();
        add_into(&out, &tx).unwrap();
        let want: Vec<f32> = out0.iter().zip(&x).map(|(o, v)| o + v + v).collect();
        assert_close(
            &format!("add_into {shape:?}"),
            &out.to_f32_vec(),
            &want,
            ARITH_ATOL,
            ARITH_RTOL,
        );
    }
}

#[test]
fn add_into_same_tensor_doubles() {
    let data = [1.0, -2.5, 3.0];
    let t = tensor(&[3], &data);
    add_into(&t, &t).unwrap();
    assert_eq!(t.to_f32_vec(), vec![2.0, -5.0, 6.0]);
}

#[test]
fn add_into_rejects_count_mismatch() {
    let out = Tensor::zeros(&[2, 3], DType::F32);
    let x = Tensor::zeros(&[5], DType::F32);
    let err = add_into(&out, &x).unwrap_err().to_string();
    assert!(err.contains("[2, 3]"), "{err}");
    assert!(err.contains("[5]"), "{err}");
}

#[test]
fn mul_matches_reference() {
    let mut rng = Rng::new(4);
    for shape in SHAPES {
        let a = rng.vec(numel(shape), 3.0);
        let b = rng.vec(numel(shape), 3.0);
        let got = mul(&tensor(shape, &a), &tensor(shape, &b)).unwrap();
        let want = reference::mul(&a, &b);
        assert_close(&format!("mul {shape:?}"), &got.to_f32_vec(), &want, 0.0, ARITH_RTOL);
    }
}

#[test]
fn mul_rejects_mismatched_shapes() {
    let a = Tensor::zeros(&[2, 3], DType::F32);
    let b = Tensor::zeros(&[3, 2], DType::F32);
    let err = mul(&a, &b).unwrap_err().to_string();
    assert!(err.contains("[2, 3]"), "{err}");
    assert!(err.contains("[3, 2]"), "{err}");
}

#[test]
fn scale_and_scale_into() {
    let mut rng = Rng::new(5);
    for shape in SHAPES {
        let x = rng.vec(numel(shape), 2.0);
        let tx = tensor(shape, &x);
        let want: Vec<f32> = x.iter().map(|v| v * -0.75).collect();
        let got = scale(&tx, -0.75).unwrap();
        assert_close(&format!("scale {shape:?}"), &got.to_f32_vec(), &want, 0.0, 0.0);
        scale_into(&tx, -0.75).unwrap();
        assert_close(&format!("scale_into {shape:?}"), &tx.to_f32_vec(), &want, 0.0, 0.0);
    }
}

#[test]
fn add_scaled_matches_reference() {
    let mut rng = Rng::new(6);
    for shape in SHAPES {
        let a = rng.vec(numel(shape), 1.0);
        let b = rng.vec(numel(shape), 1.0);
        let got = add_scaled(&tensor(shape, &a), &tensor(shape, &b), 0.9, -0.3).unwrap();
        let want = reference::add_scaled(&a, &b, 0.9, -0.3);
        assert_close(
            &format!("add_scaled {shape:?}"),
            &got.to_f32_vec(),
            &want,
            ARITH_ATOL,
            ARITH_RTOL,
        );
    }
    let err = add_scaled(
        &Tensor::zeros(&[4], DType::F32),
        &Tensor::zeros(&[2, 2], DType::F32),
        1.0,
        1.0,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("[4]"), "{err}");
    assert!(err.contains("[2, 2]"), "{err}");
}

fn gelu_tolerance(kind: GeluKind) -> (f32, f32) {
    match kind {
        GeluKind::Erf => (GELU_ERF_ATOL, GELU_ERF_RTOL),
        GeluKind::Tanh => (GELU_ATOL, GELU_RTOL),
    }
}

#[test]
fn gelu_forward_matches_reference() {
    let mut rng = Rng::new(7);
    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        let (atol, rtol) = gelu_tolerance(kind);
        for shape in SHAPES {
            let x = rng.vec(numel(shape), 5.0);
            let got = gelu(&tensor(shape, &x), kind).unwrap();
            assert_eq!(got.shape(), *shape);
            let want = reference::gelu_forward(&x, kind);
            assert_close(
                &format!("gelu {kind:?} {shape:?}"),
                &got.to_f32_vec(),
                &want,
                atol,
                rtol,
            );
        }
    }
}

#[test]
fn gelu_dense_grid_and_extremes() {
    // Every 1/1024 on [-8, 8], where the erf approximation switches range at |x| / sqrt(2) = 1
    // and 4, plus values far outside that must saturate to 0 or x.
    let mut x: Vec<f32> = (-8192..=8192).map(|i| i as f32 / 1024.0).collect();
    x.extend([-1e30, -1e6, -30.0, 30.0, 1e6, 1e30]);
    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        let (atol, rtol) = gelu_tolerance(kind);
        let tx = tensor(&[x.len()], &x);
        let got = gelu(&tx, kind).unwrap().to_f32_vec();
        let want = reference::gelu_forward(&x, kind);
        assert_close(&format!("gelu {kind:?} grid"), &got, &want, atol, rtol);

        let dy = vec![1.0f32; x.len()];
        let got = gelu_backward(&tx, &tensor(&[x.len()], &dy), kind).unwrap().to_f32_vec();
        let want = reference::gelu_backward(&x, &dy, kind);
        assert_close(
            &format!("gelu_backward {kind:?} grid"),
            &got,
            &want,
            GELU_ATOL,
            GELU_RTOL,
        );
    }
}

#[test]
fn gelu_backward_matches_reference() {
    let mut rng = Rng::new(8);
    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        for shape in SHAPES {
            let x = rng.vec(numel(shape), 5.0);
            let dy = rng.vec(numel(shape), 1.0);
            let got = gelu_backward(&tensor(shape, &x), &tensor(shape, &dy), kind).unwrap();
            let want = reference::gelu_backward(&x, &dy, kind);
            let what = format!("gelu_backward {kind:?} {shape:?}");
            assert_close(&what, &got.to_f32_vec(), &want, GELU_ATOL, GELU_RTOL);
        }
    }
    let x = Tensor::zeros(&[3], DType::F32);
    let dy = Tensor::zeros(&[4], DType::F32);
    let err = gelu_backward(&x, &dy, GeluKind::Erf).unwrap_err().to_string();
    assert!(err.contains("[3]"), "{err}");
    assert!(err.contains("[4]"), "{err}");
}

#[test]
fn erf_reference_known_values() {
    // Values of erf to 16 digits, from mpmath 1.3 at 30 significant digits.
    let cases = [
        (0.0, 0.0),
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (3.0, 0.999_977_909_503_001_4),
        (-1.0, -0.842_700_792_949_714_9),
    ];
    for (x, want) in cases {
        let got = reference::erf(x);
        assert!((got - want).abs() < 1e-15, "erf({x}) = {got}, expected {want}");
    }
}

#[test]
fn gelu_reference_gradient_matches_finite_differences() {
    // Central differences in f64 with h = 1e-5 have truncation error h^2 |f'''| / 6 < 1e-10.
    let h = 1e-5;
    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        for i in -120..=120 {
            let x = i as f64 / 20.0 + 0.013;
            let fd = (reference::gelu_f64(x + h, kind) - reference::gelu_f64(x - h, kind)) / (2.0 * h);
            let analytic = reference::gelu_grad_f64(x, kind);
            assert!(
                (fd - analytic).abs() < 1e-8,
                "gelu {kind:?} at {x}: analytic derivative {analytic}, finite difference {fd}"
            );
        }
    }
}

#[test]
fn bias_gelu_matches_reference() {
    let mut rng = Rng::new(9);
    let shapes: &[&[usize]] = &[&[1, 1], &[3, 7], &[2, 5, 257], &[300, 4]];
    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        let (atol, rtol) = gelu_tolerance(kind);
        for shape in shapes {
            let n = *shape.last().unwrap();
            let x = rng.vec(numel(shape), 3.0);
            let bias = rng.vec(n, 1.0);
            let (pre, y) = bias_gelu(&tensor(shape, &x), &tensor(&[n], &bias), kind).unwrap();
            assert_eq!(pre.shape(), *shape);
            assert_eq!(y.shape(), *shape);
            let want_pre: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + bias[i % n]).collect();
            let what = format!("bias_gelu {kind:?} {shape:?}");
            assert_close(&format!("{what} pre"), &pre.to_f32_vec(), &want_pre, 0.0, 0.0);
            let want_y = reference::gelu_forward(&want_pre, kind);
            assert_close(&format!("{what} y"), &y.to_f32_vec(), &want_y, atol, rtol);
        }
    }
    let x = Tensor::zeros(&[2, 3], DType::F32);
    let bias = Tensor::zeros(&[2], DType::F32);
    let err = bias_gelu(&x, &bias, GeluKind::Erf).unwrap_err().to_string();
    assert!(err.contains("[2, 3]"), "{err}");
    assert!(err.contains("[2]"), "{err}");
}

#[test]
fn dropout_matches_reference_mask() {
    let mut rng = Rng::new(10);
    for shape in SHAPES {
        let x = rng.vec(numel(shape), 1.0);
        let got = dropout(&tensor(shape, &x), 0.3, 1234).unwrap();
        let want = reference::dropout(&x, 0.3, 1234);
        assert_close(&format!("dropout {shape:?}"), &got.to_f32_vec(), &want, 0.0, 1e-7);
    }
}

#[test]
fn dropout_same_seed_same_mask() {
    let x = Tensor::full(&[5000], 1.0);
    let first = dropout(&x, 0.5, 42).unwrap().to_f32_vec();
    let second = dropout(&x, 0.5, 42).unwrap().to_f32_vec();
    assert_eq!(first, second);
}

#[test]
fn dropout_different_seed_different_mask() {
    let x = Tensor::full(&[5000], 1.0);
    let base = dropout(&x, 0.5, 42).unwrap().to_f32_vec();
    // Seeds that differ in the low word, the high word, and by one.
    for seed in [43u64, 42 + (1 << 32), 7_000_000_000] {
        let other = dropout(&x, 0.5, seed).unwrap().to_f32_vec();
        let differing = base.iter().zip(&other).filter(|(a, b)| a != b).count();
        // Independent masks with p = 0.5 differ in half the elements (2500 +- 35).
        assert!(
            (2300..2700).contains(&differing),
            "seed {seed}: {differing} of 5000 elements differ from seed 42"
        );
    }
}

#[test]
fn dropout_kept_fraction_and_scale() {
    let n = 100_000;
    let x = Tensor::full(&[n], 1.0);
    for p in [0.1f32, 0.5, 0.9] {
        let y = dropout(&x, p, 7).unwrap().to_f32_vec();
        let kept = y.iter().filter(|&&v| v != 0.0).count();
        let fraction = kept as f64 / n as f64;
        // The standard deviation of the kept fraction is sqrt(p (1 - p) / n) <= 0.0016.
        assert!(
            (fraction - (1.0 - p as f64)).abs() < 0.01,
            "p = {p}: kept fraction {fraction}, expected {}",
            1.0 - p
        );
        let scale = 1.0 / (1.0 - p);
        assert!(
            y.iter().all(|&v| v == 0.0 || v == scale),
            "p = {p}: kept values must equal 1 / (1 - p) = {scale}"
        );
    }
}

#[test]
fn dropout_backward_uses_forward_mask() {
    let mut rng = Rng::new(11);
    let n = 3001;
    let x = rng.vec(n, 1.0);
    let dy = rng.vec(n, 1.0);
    let (p, seed) = (0.25, 99);
    let y = dropout(&tensor(&[n], &x), p, seed).unwrap().to_f32_vec();
    let dx = dropout_backward(&tensor(&[n], &dy), p, seed).unwrap().to_f32_vec();
    let scale = 1.0 / (1.0 - p);
    for i in 0..n {
        let kept = y[i] != 0.0;
        let want = if kept { dy[i] * scale } else { 0.0 };
        assert_eq!(dx[i], want, "element {i}: kept {kept}");
    }
}

#[test]
fn dropout_zero_probability_is_identity() {
    let mut rng = Rng::new(12);
    let x = rng.vec(777, 1.0);
    let tx = tensor(&[777], &x);
    assert_eq!(dropout(&tx, 0.0, 5).unwrap().to_f32_vec(), x);
    assert_eq!(dropout_backward(&tx, 0.0, 5).unwrap().to_f32_vec(), x);
}

#[test]
fn dropout_rejects_invalid_probability() {
    let x = Tensor::zeros(&[4], DType::F32);
    for p in [1.0f32, 1.5, -0.1, f32::NAN] {
        let err = dropout(&x, p, 0).unwrap_err().to_string();
        assert!(err.contains(&p.to_string()), "p = {p}: {err}");
        let err = dropout_backward(&x, p, 0).unwrap_err().to_string();
        assert!(err.contains(&p.to_string()), "p = {p}: {err}");
    }
}

#[test]
fn windowed_dispatch_matches_whole() {
    let mut rng = Rng::new(13);
    let a_shape = [5, 7, 61];
    let a = rng.vec(numel(&a_shape), 1.0);
    let table = rng.vec(7 * 61, 1.0);
    let bias = rng.vec(61, 1.0);
    let (ta, ttable, tbias) = (tensor(&a_shape, &a), tensor(&[7, 61], &table), tensor(&[61], &bias));

    let whole_table = add(&ta, &ttable).unwrap().to_f32_vec();
    let whole_bias = add(&ta, &tbias).unwrap().to_f32_vec();
    let whole_dropout = dropout(&ta, 0.4, 3).unwrap().to_f32_vec();
    let (whole_pre, whole_y) = bias_gelu(&ta, &tbias, GeluKind::Erf).unwrap();

    // Windows of 100 elements: the table [7, 61] (427 elements) no longer fits one window, but
    // the bias does. Three workgroups per grid row force two-dimensional grids.
    with_test_limits(100, 3, || {
        assert_eq!(add(&ta, &ttable).unwrap().to_f32_vec(), whole_table);
        assert_eq!(add(&ta, &tbias).unwrap().to_f32_vec(), whole_bias);
        assert_eq!(dropout(&ta, 0.4, 3).unwrap().to_f32_vec(), whole_dropout);
        let (pre, y) = bias_gelu(&ta, &tbias, GeluKind::Erf).unwrap();
        assert_eq!(pre.to_f32_vec(), whole_pre.to_f32_vec());
        assert_eq!(y.to_f32_vec(), whole_y.to_f32_vec());
    });
    // Windows larger than a workgroup but with a grid of one workgroup per row.
    with_test_limits(1000, 1, || {
        let out = tensor(&a_shape, &a);
        add_into(&out, &ta).unwrap();
        let want: Vec<f32> = a.iter().map(|v| v + v).collect();
        assert_eq!(out.to_f32_vec(), want);
        assert_eq!(add(&ta, &ttable).unwrap().to_f32_vec(), whole_table);
    });
    assert_close(
        "add with table",
        &whole_table,
        &reference::add_broadcast(&a, &table),
        ARITH_ATOL,
        ARITH_RTOL,
    );
}
