//! Matmul against the CPU reference: every transpose combination, bias, batching and
//! broadcasting, sizes of 1 and sizes that are not multiples of the tiles.

mod common;

use common::{Rng, assert_close, reference};
use fiak::Tensor;
use fiak::ops::{matmul, matmul_into};

/// Relative tolerance for f32 sums of up to a few hundred terms of values in [-1, 1].
const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-4;

#[allow(clippy::too_many_arguments)]
fn check(
    rng: &mut Rng,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    with_bias: bool,
    b_batched: bool,
) {
    let a = rng.vec(batch * m * k, 1.0);
    let b_count = if b_batched { batch } else { 1 };
    let b = rng.vec(b_count * k * n, 1.0);
    let bias = rng.vec(n, 1.0);

    let a_shape = if trans_a { vec![batch, k, m] } else { vec![batch, m, k] };
    let b_inner = if trans_b { [n, k] } else { [k, n] };
    let b_shape: Vec<usize> = if b_batched {
        vec![batch, b_inner[0], b_inner[1]]
    } else {
        b_inner.to_vec()
    };
    let ta = Tensor::from_f32(&a_shape, &a).unwrap();
    let tb = Tensor::from_f32(&b_shape, &b).unwrap();
    let tbias = Tensor::from_f32(&[n], &bias).unwrap();

    let got = matmul(&ta, &tb, trans_a, trans_b, with_bias.then_some(&tbias)).unwrap();
    assert_eq!(got.shape(), &[batch, m, n]);
    let want = reference::matmul(
        &a,
        &b,
        with_bias.then_some(&bias[..]),
        batch,
        m,
        n,
        k,
        trans_a,
        trans_b,
        b_batched,
    );
    let what = format!(
        "matmul b={batch} m={m} n={n} k={k} ta={trans_a} tb={trans_b} bias={with_bias} shared_b={}",
        !b_batched
    );
    assert_close(&what, &got.to_f32_vec(), &want, ATOL * k as f32, RTOL);
}

#[test]
fn matmul_random_shapes() {
    let mut rng = Rng::new(1);
    let sizes = [1usize, 3, 8, 17, 64, 65, 130];
    for trans_a in [false, true] {
        for trans_b in [false, true] {
            for _ in 0..6 {
                let m = sizes[rng.below(sizes.len())];
                let n = sizes[rng.below(sizes.len())];
                let k = sizes[rng.below(sizes.len())];
                let batch = 1 + rng.below(3);
                let with_bias = rng.below(2) == 1;
                let b_batched = rng.below(2) == 1;
                check(&mut rng, batch, m, n, k, trans_a, trans_b, with_bias, b_batched);
            }
        }
    }
}

/// Shapes whose rows are multiples of 4 take the vec4 and subgroup kernels of CPU adapters. These
/// shapes leave partial register blocks (64 x 32 and 8 x 16) on every side.
#[test]
fn matmul_vec4_shapes_with_partial_blocks() {
    let mut rng = Rng::new(4);
    for (m, n, k) in [(4, 4, 4), (60, 36, 12), (68, 28, 68), (132, 100, 20), (64, 32, 8)] {
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                let batch = 1 + rng.below(2);
                let with_bias = rng.below(2) == 1;
                let b_batched = rng.below(2) == 1;
                check(&mut rng, batch, m, n, k, trans_a, trans_b, with_bias, b_batched);
            }
        }
    }
}

#[test]
fn matmul_size_one() {
    let mut rng = Rng::new(2);
    check(&mut rng, 1, 1, 1, 1, false, false, true, true);
    check(&mut rng, 1, 1, 200, 1, false, true, false, true);
    check(&mut rng, 2, 200, 1, 33, true, false, true, false);
}

#[test]
fn matmul_accumulate_and_alpha() {
    let mut rng = Rng::new(3);
    let (m, n, k) = (19, 23, 29);
    let a = rng.vec(m * k, 1.0);
    let b = rng.vec(k * n, 1.0);
    let c0 = rng.vec(m * n, 1.0);
    let out = Tensor::from_f32(&[m, n], &c0).unwrap();
    let ta = Tensor::from_f32(&[m, k], &a).unwrap();
    let tb = Tensor::from_f32(&[k, n], &b).unwrap();
    matmul_into(&ta, &tb, false, false, None, &out, 0.5, true).unwrap();
    let product = reference::matmul(&a, &b, None, 1, m, n, k, false, false, true);
    let want: Vec<f32> = c0.iter().zip(&product).map(|(c, p)| c + 0.5 * p).collect();
    assert_close("accumulate", &out.to_f32_vec(), &want, 1e-3, 1e-4);
}

#[test]
fn matmul_rejects_mismatched_inner_dimension() {
    let a = Tensor::zeros(&[4, 5], fiak::DType::F32);
    let b = Tensor::zeros(&[6, 7], fiak::DType::F32);
    let err = matmul(&a, &b, false, false, None).unwrap_err().to_string();
    assert!(err.contains("inner dimensions differ"), "{err}");
}
