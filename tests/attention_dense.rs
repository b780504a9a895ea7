//! Fused dense attention and the unfused path against the f64 reference: forward and every
//! gradient, each bias broadcast shape, causal and not, both logit kernels, sequence lengths
//! from 1 to 256 and odd and even head widths. The reference itself is checked against
//! central finite differences first.

mod common;

use common::reference::attention::{Bias, Problem, broadcast_index, narrow, widen};
use common::{Rng, assert_close};
use fiak::ops::attention::{
    AttentionConfig, GatheredPath, LogitKernel, attention_dense, attention_dense_backward, attention_unfused,
    attention_unfused_backward,
};
use fiak::{DType, Tensor};

/// Forward tolerance: f32 dot products and softmax sums over at most 256 keys of values in
/// [-1, 1], against f64.
const FORWARD_ATOL: f32 = 2e-5;
const FORWARD_RTOL: f32 = 1e-4;
/// Gradient tolerance: the backward sums up to 256 such products once more.
const GRAD_ATOL: f32 = 1e-4;
const GRAD_RTOL: f32 = 1e-3;

/// Bias shapes for sizes (B, H, Nq, Nk), every broadcast combination.
fn bias_shapes(b: usize, h: usize, nq: usize, nk: usize) -> Vec<[usize; 4]> {
    let mut shapes = Vec::new();
    for bb in [b, 1] {
        for hh in [h, 1] {
            for qq in [nq, 1] {
                shapes.push([bb, hh, qq, nk]);
            }
        }
    }
    shapes
}

fn config(causal: bool, gaussian: bool) -> AttentionConfig {
    AttentionConfig {
        causal,
        logits: if gaussian {
            LogitKernel::Gaussian
        } else {
            LogitKernel::Dot
        },
        gathered: GatheredPath::Auto,
    }
}

/// Random inputs of one case, in f32 as the kernels see them.
struct Inputs {
    problem: Problem,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    bias: Option<(Vec<f32>, [usize; 4])>,
    dout: Vec<f32>,
}

impl Inputs {
    fn new(rng: &mut Rng, problem: Problem, bias_shape: Option<[usize; 4]>) -> Inputs {
        let Problem {
            batch: b,
            heads: h,
            nq,
            nk,
            d,
            ..
        } = problem;
        Inputs {
            problem,
            q: rng.vec(b * h * nq * d, 1.0),
            k: rng.vec(b * h * nk * d, 1.0),
            v: rng.vec(b * h * nk * d, 1.0),
            bias: bias_shape.map(|s| (rng.vec(s.iter().product(), 2.0), s)),
            dout: rng.vec(b * h * nq * d, 1.0),
        }
    }

    fn tensors(&self) -> (Tensor, Tensor, Tensor, Option<Tensor>, Tensor) {
        let p = &self.problem;
        let q_shape = [p.batch, p.heads, p.nq, p.d];
        let k_shape = [p.batch, p.heads, p.nk, p.d];
        (
            Tensor::from_f32(&q_shape, &self.q).unwrap(),
            Tensor::from_f32(&k_shape, &self.k).unwrap(),
            Tensor::from_f32(&k_shape, &self.v).unwrap(),
            self.bias
                .as_ref()
                .map(|(data, shape)| Tensor::from_f32(shape, data).unwrap()),
            Tensor::from_f32(&q_shape, &self.dout).unwrap(),
        )
    }

    fn cfg(&self) -> AttentionConfig {
        config(self.problem.causal, self.problem.gaussian)
    }
}

/// The reference's outputs of one case: out, lse and the gradients.
struct Expected {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dbias: Option<Vec<f32>>,
}

fn expected(inputs: &Inputs) -> Expected {
    let (q, k, v, dout) = (
        widen(&inputs.q),
        widen(&inputs.k),
        widen(&inputs.v),
        widen(&inputs.dout),
    );
    let bias_data = inputs.bias.as_ref().map(|(data, _)| widen(data));
    let bias = inputs.bias.as_ref().map(|(_, shape)| Bias {
        data: bias_data.as_ref().unwrap(),
        shape: *shape,
    });
    let p = &inputs.problem;
    let (out, lse) = p.forward(&q, &k, &v, bias, None);
    let grads = p.backward(&q, &k, &v, bias, None, &dout);
    Expected {
        out: narrow(&out),
        lse: narrow(&lse),
        dq: narrow(&grads.dq),
        dk: narrow(&grads.dk),
        dv: narrow(&grads.dv),
        dbias: grads.dbias.map(|g| narrow(&g)),
    }
}

/// Runs the fused kernels on one case and compares every output with the reference.
fn check_fused(rng: &mut Rng, problem: Problem, bias_shape: Option<[usize; 4]>) {
    let inputs = Inputs::new(rng, problem, bias_shape);
    let want = expected(&inputs);
    let (q, k, v, bias, dout) = inputs.tensors();
    let cfg = inputs.cfg();
    let what = format!("{problem:?} bias {bias_shape:?}");

    let (out, lse) = attention_dense(&q, &k, &v, bias.as_ref(), &cfg).unwrap();
    assert_close(
        &format!("out {what}"),
        &out.to_f32_vec(),
        &want.out,
        FORWARD_ATOL,
        FORWARD_RTOL,
    );
    assert_close(
        &format!("lse {what}"),
        &lse.to_f32_vec(),
        &want.lse,
        FORWARD_ATOL,
        FORWARD_RTOL,
    );

    let (dq, dk, dv, dbias) = attention_dense_backward(&q, &k, &v, bias.as_ref(), &out, &lse, &dout, &cfg).unwrap();
    assert_close(&format!("dq {what}"), &dq.to_f32_vec(), &want.dq, GRAD_ATOL, GRAD_RTOL);
    assert_close(&format!("dk {what}"), &dk.to_f32_vec(), &want.dk, GRAD_ATOL, GRAD_RTOL);
    assert_close(&format!("dv {what}"), &dv.to_f32_vec(), &want.dv, GRAD_ATOL, GRAD_RTOL);
    assert_eq!(dbias.is_some(), bias_shape.is_some(), "dbias present iff bias given");
    if let (Some(got), Some(want)) = (dbias, want.dbias) {
        assert_eq!(got.shape(), &bias_shape.unwrap());
        assert_close(&format!("dbias {what}"), &got.to_f32_vec(), &want, GRAD_ATOL, GRAD_RTOL);
    }
}

/// Runs the unfused path on one case and compares with the reference.
fn check_unfused(rng: &mut Rng, problem: Problem, bias_shape: Option<[usize; 4]>) {
    let inputs = Inputs::new(rng, problem, bias_shape);
    let want = expected(&inputs);
    let (q, k, v, bias, dout) = inputs.tensors();
    let cfg = inputs.cfg();
    let what = format!("unfused {problem:?} bias {bias_shape:?}");

    let (out, probs) = attention_unfused(&q, &k, &v, bias.as_ref(), &cfg).unwrap();
    assert_eq!(probs.shape(), &[problem.batch, problem.heads, problem.nq, problem.nk]);
    assert_close(
        &format!("out {what}"),
        &out.to_f32_vec(),
        &want.out,
        FORWARD_ATOL,
        FORWARD_RTOL,
    );

    let (dq, dk, dv, dbias) =
        attention_unfused_backward(&q, &k, &v, &probs, &dout, &cfg, bias_shape.as_ref().map(|s| &s[..])).unwrap();
    assert_close(&format!("dq {what}"), &dq.to_f32_vec(), &want.dq, GRAD_ATOL, GRAD_RTOL);
    assert_close(&format!("dk {what}"), &dk.to_f32_vec(), &want.dk, GRAD_ATOL, GRAD_RTOL);
    assert_close(&format!("dv {what}"), &dv.to_f32_vec(), &want.dv, GRAD_ATOL, GRAD_RTOL);
    if let (Some(got), Some(want)) = (dbias, want.dbias) {
        assert_close(&format!("dbias {what}"), &got.to_f32_vec(), &want, GRAD_ATOL, GRAD_RTOL);
    }
}

fn problem(batch: usize, heads: usize, nq: usize, nk: usize, d: usize, causal: bool, gaussian: bool) -> Problem {
    Problem {
        batch,
        heads,
        nq,
        nk,
        d,
        causal,
        gaussian,
    }
}

/// Central differences of L = sum(out * dout) in f64 against the reference's gradients.
#[test]
fn reference_matches_finite_differences() {
    let mut rng = Rng::new(7);
    let eps = 1e-6;
    for (case, (causal, gaussian)) in [(false, false), (true, false), (false, true), (true, true)]
        .into_iter()
        .enumerate()
    {
        let p = problem(2, 2, 3, 4, 3, causal, gaussian);
        let shapes = bias_shapes(2, 2, 3, 4);
        let shape = shapes[case * 2 % shapes.len()];
        let q = widen(&rng.vec(2 * 2 * 3 * 3, 1.0));
        let k = widen(&rng.vec(2 * 2 * 4 * 3, 1.0));
        let v = widen(&rng.vec(2 * 2 * 4 * 3, 1.0));
        let bias = widen(&rng.vec(shape.iter().product(), 1.0));
        let dout = widen(&rng.vec(2 * 2 * 3 * 3, 1.0));
        // Prune a few entries, keeping at least one key per row.
        let mask: Vec<bool> = (0..2 * 3 * 4).map(|e| e % 4 == 0 || rng.below(3) > 0).collect();

        let loss = |q: &[f64], k: &[f64], v: &[f64], bias: &[f64]| -> f64 {
            let b = Bias { data: bias, shape };
            let (out, _) = p.forward(q, k, v, Some(b), Some(&mask));
            out.iter().zip(&dout).map(|(o, g)| o * g).sum()
        };
        let grads = p.backward(&q, &k, &v, Some(Bias { data: &bias, shape }), Some(&mask), &dout);

        let inputs = [("q", &q, &grads.dq), ("k", &k, &grads.dk), ("v", &v, &grads.dv)];
        let dbias = grads.dbias.as_ref().unwrap();
        for (name, x, analytic) in inputs.into_iter().chain([("bias", &bias, dbias)]) {
            for e in 0..x.len() {
                let mut plus = x.clone();
                let mut minus = x.clone();
                plus[e] += eps;
                minus[e] -= eps;
                let args = |t: &Vec<f64>| match name {
                    "q" => loss(t, &k, &v, &bias),
                    "k" => loss(&q, t, &v, &bias),
                    "v" => loss(&q, &k, t, &bias),
                    _ => loss(&q, &k, &v, t),
                };
                let numeric = (args(&plus) - args(&minus)) / (2.0 * eps);
                assert!(
                    (numeric - analytic[e]).abs() < 1e-7 + 1e-6 * numeric.abs(),
                    "d{name}[{e}] causal={causal} gaussian={gaussian} bias {shape:?}: \
                     finite difference {numeric}, analytic {}",
                    analytic[e]
                );
            }
        }
    }
}

#[test]
fn dense_sequence_lengths() {
    let mut rng = Rng::new(11);
    // (B, H, Nq, Nk, d): small batches and widths for the long sequences.
    let sizes = [
        (2, 3, 1, 1, 16),
        (2, 2, 7, 7, 5),
        (2, 2, 64, 64, 32),
        (1, 2, 197, 197, 16),
        (1, 1, 256, 256, 16),
        (2, 2, 7, 64, 33),
        (1, 2, 64, 7, 16),
    ];
    for (n, &(b, h, nq, nk, d)) in sizes.iter().enumerate() {
        for (causal, gaussian) in [(false, false), (true, false), (false, true), (true, true)] {
            let shapes = bias_shapes(b, h, nq, nk);
            let bias = if (n + causal as usize).is_multiple_of(3) {
                None
            } else {
                Some(shapes[rng.below(shapes.len())])
            };
            check_fused(&mut rng, problem(b, h, nq, nk, d, causal, gaussian), bias);
        }
    }
}

#[test]
fn dense_bias_broadcast_shapes() {
    let mut rng = Rng::new(12);
    let (b, h, nq, nk) = (2, 3, 9, 13);
    for shape in bias_shapes(b, h, nq, nk) {
        for (causal, gaussian) in [(false, false), (true, true)] {
            check_fused(&mut rng, problem(b, h, nq, nk, 8, causal, gaussian), Some(shape));
        }
    }
}

#[test]
fn dense_head_widths() {
    let mut rng = Rng::new(13);
    for d in [1, 16, 31, 32, 48, 64, 96, 128, 160] {
        let gaussian = d % 2 == 1;
        check_fused(
            &mut rng,
            problem(1, 2, 19, 23, d, d == 48, gaussian),
            Some([1, 2, 19, 23]),
        );
    }
}

#[test]
fn dense_size_one() {
    let mut rng = Rng::new(14);
    check_fused(&mut rng, problem(1, 1, 1, 1, 1, false, false), None);
    check_fused(&mut rng, problem(1, 1, 1, 1, 4, true, true), Some([1, 1, 1, 1]));
    check_fused(&mut rng, problem(1, 1, 1, 40, 4, true, false), None);
}

/// A constant bias is a uniform prior: the output equals plain attention and lse shifts by the
/// constant.
#[test]
fn dense_uniform_bias_is_standard_attention() {
    let mut rng = Rng::new(15);
    let (b, h, n, d) = (2, 2, 21, 16);
    let inputs = Inputs::new(&mut rng, problem(b, h, n, n, d, true, false), None);
    let (q, k, v, _, dout) = inputs.tensors();
    let cfg = inputs.cfg();
    let constant = -3.5;
    let bias = Tensor::full(&[1, h, n, n], constant);

    let (plain, plain_lse) = attention_dense(&q, &k, &v, None, &cfg).unwrap();
    let (prior, prior_lse) = attention_dense(&q, &k, &v, Some(&bias), &cfg).unwrap();
    assert_close("out", &prior.to_f32_vec(), &plain.to_f32_vec(), 1e-6, 1e-5);
    let shifted: Vec<f32> = plain_lse.to_f32_vec().iter().map(|l| l + constant).collect();
    assert_close("lse", &prior_lse.to_f32_vec(), &shifted, 1e-5, 1e-5);

    let (dq0, dk0, dv0, _) = attention_dense_backward(&q, &k, &v, None, &plain, &plain_lse, &dout, &cfg).unwrap();
    let (dq1, dk1, dv1, dbias) =
        attention_dense_backward(&q, &k, &v, Some(&bias), &prior, &prior_lse, &dout, &cfg).unwrap();
    assert_close("dq", &dq1.to_f32_vec(), &dq0.to_f32_vec(), 1e-5, 1e-4);
    assert_close("dk", &dk1.to_f32_vec(), &dk0.to_f32_vec(), 1e-5, 1e-4);
    assert_close("dv", &dv1.to_f32_vec(), &dv0.to_f32_vec(), 1e-5, 1e-4);
    // The bias gradient of each row sums to zero, because the softmax is shift invariant.
    let dbias = dbias.unwrap().to_f32_vec();
    for (row, chunk) in dbias.chunks(n).enumerate() {
        let sum: f32 = chunk.iter().sum();
        assert!(sum.abs() < 1e-5, "dbias row {row} sums to {sum}");
    }
}

/// A bias of -1e9 masks entries as a pruned prior would, without NaN.
#[test]
fn dense_large_negative_bias_masks() {
    let mut rng = Rng::new(16);
    let (h, n, d) = (2, 12, 8);
    let p = problem(1, h, n, n, d, false, false);
    let inputs = Inputs::new(&mut rng, p, None);
    let (q, k, v, _, dout) = inputs.tensors();
    let mut mask = vec![false; h * n * n];
    let mut bias = vec![0.0f32; h * n * n];
    for (e, kept) in mask.iter_mut().enumerate() {
        *kept = e % n == 0 || rng.below(2) == 0;
        if !*kept {
            bias[e] = -1e9;
        }
    }
    let bias_t = Tensor::from_f32(&[1, h, n, n], &bias).unwrap();
    let cfg = inputs.cfg();
    let (out, lse) = attention_dense(&q, &k, &v, Some(&bias_t), &cfg).unwrap();
    let (dq, dk, dv, _) = attention_dense_backward(&q, &k, &v, Some(&bias_t), &out, &lse, &dout, &cfg).unwrap();

    let (qd, kd, vd, gd) = (
        widen(&inputs.q),
        widen(&inputs.k),
        widen(&inputs.v),
        widen(&inputs.dout),
    );
    let (want_out, _) = p.forward(&qd, &kd, &vd, None, Some(&mask));
    let grads = p.backward(&qd, &kd, &vd, None, Some(&mask), &gd);
    assert_close("out", &out.to_f32_vec(), &narrow(&want_out), FORWARD_ATOL, FORWARD_RTOL);
    assert_close("dq", &dq.to_f32_vec(), &narrow(&grads.dq), GRAD_ATOL, GRAD_RTOL);
    assert_close("dk", &dk.to_f32_vec(), &narrow(&grads.dk), GRAD_ATOL, GRAD_RTOL);
    assert_close("dv", &dv.to_f32_vec(), &narrow(&grads.dv), GRAD_ATOL, GRAD_RTOL);
}

#[test]
fn dense_without_keys_is_zero() {
    let q = Tensor::full(&[1, 2, 3, 4], 0.5);
    let k = Tensor::zeros(&[1, 2, 0, 4], DType::F32);
    let cfg = config(false, false);
    let (out, lse) = attention_dense(&q, &k, &k, None, &cfg).unwrap();
    assert!(out.to_f32_vec().iter().all(|&x| x == 0.0));
    assert!(lse.to_f32_vec().iter().all(|&x| x == 0.0));
    let (dq, _, _, _) = attention_dense_backward(&q, &k, &k, None, &out, &lse, &q, &cfg).unwrap();
    assert!(dq.to_f32_vec().iter().all(|&x| x == 0.0));
}

#[test]
fn dense_rejects_bad_shapes() {
    let q = Tensor::zeros(&[2, 2, 5, 8], DType::F32);
    let k = Tensor::zeros(&[2, 2, 6, 8], DType::F32);
    let narrow_k = Tensor::zeros(&[2, 2, 6, 4], DType::F32);
    let cfg = config(false, false);

    let err = attention_dense(&q, &narrow_k, &narrow_k, None, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("attention_dense"), "{err}");
    assert!(err.contains("[2, 2, 6, 4]"), "{err}");

    let bias = Tensor::zeros(&[2, 2, 5, 5], DType::F32);
    let err = attention_dense(&q, &k, &k, Some(&bias), &cfg).unwrap_err().to_string();
    assert!(err.contains("does not broadcast"), "{err}");
}

#[test]
fn unfused_matches_reference() {
    let mut rng = Rng::new(21);
    let sizes = [(2, 2, 7, 7, 5), (1, 2, 64, 64, 16), (2, 1, 9, 30, 8), (1, 1, 1, 1, 3)];
    for (n, &(b, h, nq, nk, d)) in sizes.iter().enumerate() {
        for (causal, gaussian) in [(false, false), (true, false), (false, true), (true, true)] {
            let shapes = bias_shapes(b, h, nq, nk);
            let bias = if n % 2 == 0 {
                Some(shapes[rng.below(shapes.len())])
            } else {
                None
            };
            check_unfused(&mut rng, problem(b, h, nq, nk, d, causal, gaussian), bias);
        }
    }
    // Every bias broadcast shape once.
    for shape in bias_shapes(2, 3, 5, 6) {
        check_unfused(&mut rng, problem(2, 3, 5, 6, 4, true, true), Some(shape));
    }
}

/// The unfused path keeps probabilities that match the fused log-sum-exp: P = exp(s - lse).
#[test]
fn unfused_probabilities_match_fused_lse() {
    let mut rng = Rng::new(22);
    let (b, h, n, d) = (1, 2, 10, 8);
    let p = problem(b, h, n, n, d, true, true);
    let shape = [1, h, n, n];
    let inputs = Inputs::new(&mut rng, p, Some(shape));
    let (q, k, v, bias, _) = inputs.tensors();
    let cfg = inputs.cfg();

    let (_, probs) = attention_unfused(&q, &k, &v, bias.as_ref(), &cfg).unwrap();
    let (_, lse) = attention_dense(&q, &k, &v, bias.as_ref(), &cfg).unwrap();
    let (probs, lse) = (probs.to_f32_vec(), lse.to_f32_vec());

    let (qd, kd) = (widen(&inputs.q), widen(&inputs.k));
    let bias_data = &inputs.bias.as_ref().unwrap().0;
    let scale = 1.0 / (d as f64).sqrt();
    for hh in 0..h {
        for i in 0..n {
            for j in 0..n {
                let got = probs[(hh * n + i) * n + j];
                if j > i {
                    assert_eq!(got, 0.0, "masked probability ({hh}, {i}, {j})");
                    continue;
                }
                let qi = &qd[(hh * n + i) * d..][..d];
                let kj = &kd[(hh * n + j) * d..][..d];
                let dot: f64 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                let norm: f64 = kj.iter().map(|x| x * x).sum();
                let s = dot * scale - 0.5 * scale * norm + bias_data[broadcast_index(shape, 0, hh, i, j)] as f64;
                let want = (s - lse[hh * n + i] as f64).exp() as f32;
                assert!(
                    (got - want).abs() < 1e-5,
                    "P({hh}, {i}, {j}) = {got}, exp(s - lse) = {want}"
                );
            }
        }
    }
}
