//! The tape: a composed graph (two-layer MLP with layer norm and GELU, cross-entropy loss)
//! against a hand-written f64 CPU forward and backward, which is itself checked against
//! central finite differences; no-grad mode; and the buffer count of a training loop.

#![allow(clippy::needless_range_loop)]
mod common;

use common::{Rng, assert_close};
use fiak::Tensor;
use fiak::autograd::{ParamGroup, ParamStore, Var, no_grad};
use fiak::ops::elementwise::GeluKind;

const EPS: f64 = 1e-5;

/// The MLP's parameters on the CPU, in f64.
#[derive(Clone)]
struct Mlp {
    w1: Vec<f64>,   // [H, I]
    b1: Vec<f64>,   // [H]
    g: Vec<f64>,    // [H]
    beta: Vec<f64>, // [H]
    w2: Vec<f64>,   // [C, H]
    b2: Vec<f64>,   // [C]
}

struct Dims {
    n: usize,
    i: usize,
    h: usize,
    c: usize,
}

fn erf(x: f64) -> f64 {
    // Series for |x| < 3, asymptotic 1 beyond: exact to double precision on the test range.
    if x.abs() > 5.0 {
        return x.signum();
    }
    let mut sum = x;
    let mut term = x;
    for k in 1..200 {
        term *= -x * x / k as f64;
        let add = term / (2 * k + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

fn gelu_grad(x: f64) -> f64 {
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2)) + x * pdf
}

/// Loss of the MLP on inputs x [N, I] with targets [N], and the gradients of every parameter.
fn reference(p: &Mlp, d: &Dims, x: &[f64], targets: &[u32]) -> (f64, Mlp) {
    let (n, i_dim, h, c) = (d.n, d.i, d.h, d.c);
    let mut grads = Mlp {
        w1: vec![0.0; h * i_dim],
        b1: vec![0.0; h],
        g: vec![0.0; h],
        beta: vec![0.0; h],
        w2: vec![0.0; c * h],
        b2: vec![0.0; c],
    };
    let mut loss = 0.0;
    for r in 0..n {
        let xr = &x[r * i_dim..(r + 1) * i_dim];
        // pass 1: forward, h1 = x W1^T + b1
        let h1: Vec<f64> = (0..h)
            .map(|j| p.b1[j] + (0..i_dim).map(|k| xr[k] * p.w1[j * i_dim + k]).sum::<f64>())
            .collect();
        let mean = h1.iter().sum::<f64>() / h as f64;
        let var = h1.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
        let rstd = 1.0 / (var + EPS).sqrt();
        let xhat: Vec<f64> = h1.iter().map(|v| (v - mean) * rstd).collect();
        let ln: Vec<f64> = (0..h).map(|j| xhat[j] * p.g[j] + p.beta[j]).collect();
        let act: Vec<f64> = ln.iter().map(|&v| gelu(v)).collect();
        let logits: Vec<f64> = (0..c)
            .map(|o| p.b2[o] + (0..h).map(|j| act[j] * p.w2[o * h + j]).sum::<f64>())
            .collect();
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        let t = targets[r] as usize;
        loss += (lse - logits[t]) / n as f64;

        // pass 2: backward of the row's share of the mean loss
        let dlogits: Vec<f64> = (0..c)
            .map(|o| ((logits[o] - lse).exp() - if o == t { 1.0 } else { 0.0 }) / n as f64)
            .collect();
        let mut dact = vec![0.0; h];
        for o in 0..c {
            grads.b2[o] += dlogits[o];
            for j in 0..h {
                grads.w2[o * h + j] += dlogits[o] * act[j];
                dact[j] += dlogits[o] * p.w2[o * h + j];
            }
        }
        let dln: Vec<f64> = (0..h).map(|j| dact[j] * gelu_grad(ln[j])).collect();
        let mut dxhat = vec![0.0; h];
        for j in 0..h {
            grads.g[j] += dln[j] * xhat[j];
            grads.beta[j] += dln[j];
            dxhat[j] = dln[j] * p.g[j];
        }
        let mean_dxhat = dxhat.iter().sum::<f64>() / h as f64;
        let mean_dxhat_xhat = (0..h).map(|j| dxhat[j] * xhat[j]).sum::<f64>() / h as f64;
        for j in 0..h {
            let dh1 = rstd * (dxhat[j] - mean_dxhat - xhat[j] * mean_dxhat_xhat);
            grads.b1[j] += dh1;
            for k in 0..i_dim {
                grads.w1[j * i_dim + k] += dh1 * xr[k];
            }
        }
    }
    (loss, grads)
}

fn random_mlp(rng: &mut Rng, d: &Dims) -> Mlp {
    let to64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    Mlp {
        w1: to64(rng.vec(d.h * d.i, 0.5)),
        b1: to64(rng.vec(d.h, 0.5)),
        g: to64(rng.vec(d.h, 0.5)).into_iter().map(|v| 1.0 + v).collect(),
        beta: to64(rng.vec(d.h, 0.5)),
        w2: to64(rng.vec(d.c * d.h, 0.5)),
        b2: to64(rng.vec(d.c, 0.5)),
    }
}

fn fields(p: &Mlp) -> [(&'static str, &Vec<f64>); 6] {
    [
        ("w1", &p.w1),
        ("b1", &p.b1),
        ("g", &p.g),
        ("beta", &p.beta),
        ("w2", &p.w2),
        ("b2", &p.b2),
    ]
}

#[test]
fn reference_mlp_matches_finite_differences() {
    let d = Dims { n: 3, i: 5, h: 6, c: 4 };
    let mut rng = Rng::new(11);
    let p = random_mlp(&mut rng, &d);
    let x: Vec<f64> = rng.vec(d.n * d.i, 1.0).into_iter().map(f64::from).collect();
    let targets = [0u32, 3, 1];
    let (_, grads) = reference(&p, &d, &x, &targets);

    let h = 1e-6;
    for (field, analytic) in fields(&grads) {
        for index in 0..analytic.len() {
            let perturbed = |delta: f64| {
                let mut q = p.clone();
                let v = match field {
                    "w1" => &mut q.w1,
                    "b1" => &mut q.b1,
                    "g" => &mut q.g,
                    "beta" => &mut q.beta,
                    "w2" => &mut q.w2,
                    _ => &mut q.b2,
                };
                v[index] += delta;
                reference(&q, &d, &x, &targets).0
            };
            let numeric = (perturbed(h) - perturbed(-h)) / (2.0 * h);
            let diff = (numeric - analytic[index]).abs();
            assert!(
                diff < 1e-6,
                "{field}[{index}]: analytic {} numeric {numeric}",
                analytic[index]
            );
        }
    }
}

struct GpuMlp {
    _store: ParamStore,
    w1: Var,
    b1: Var,
    g: Var,
    beta: Var,
    w2: Var,
    b2: Var,
}

fn upload(p: &Mlp, d: &Dims) -> GpuMlp {
    let t =
        |shape: &[usize], v: &[f64]| Tensor::from_f32(shape, &v.iter().map(|&x| x as f32).collect::<Vec<_>>()).unwrap();
    let mut store = ParamStore::new();
    let w1 = store.add("fc1.weight", t(&[d.h, d.i], &p.w1), ParamGroup::Decay);
    let b1 = store.add("fc1.bias", t(&[d.h], &p.b1), ParamGroup::NoDecay);
    let g = store.add("norm.weight", t(&[d.h], &p.g), ParamGroup::NoDecay);
    let beta = store.add("norm.bias", t(&[d.h], &p.beta), ParamGroup::NoDecay);
    let w2 = store.add("fc2.weight", t(&[d.c, d.h], &p.w2), ParamGroup::Decay);
    let b2 = store.add("fc2.bias", t(&[d.c], &p.b2), ParamGroup::NoDecay);
    GpuMlp {
        _store: store,
        w1,
        b1,
        g,
        beta,
        w2,
        b2,
    }
}

fn forward(m: &GpuMlp, x: &Tensor, targets: &Tensor) -> Var {
    let x = Var::constant(x.clone());
    let h1 = x.linear(&m.w1, Some(&m.b1)).unwrap();
    let ln = h1.layer_norm(&m.g, &m.beta, EPS as f32).unwrap();
    let act = ln.gelu(GeluKind::Erf).unwrap();
    let logits = act.linear(&m.w2, Some(&m.b2)).unwrap();
    logits.cross_entropy(targets, 0.0, None).unwrap()
}

#[test]
fn mlp_gradients_match_reference() {
    // Sizes that are not multiples of any tile, batch of 1 included.
    for (seed, d) in [
        (
            1u64,
            Dims {
                n: 7,
                i: 13,
                h: 33,
                c: 10,
            },
        ),
        (2, Dims { n: 1, i: 4, h: 5, c: 3 }),
    ] {
        let mut rng = Rng::new(seed);
        let p = random_mlp(&mut rng, &d);
        let x32 = rng.vec(d.n * d.i, 1.0);
        let x: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
        let targets: Vec<u32> = (0..d.n).map(|_| rng.below(d.c) as u32).collect();
        let (loss_ref, grads_ref) = reference(&p, &d, &x, &targets);

        let m = upload(&p, &d);
        let xt = Tensor::from_f32(&[d.n, d.i], &x32).unwrap();
        let tt = Tensor::from_u32(&[d.n], &targets).unwrap();
        let loss = forward(&m, &xt, &tt);
        loss.backward().unwrap();

        // f32 sums of a few dozen terms: 1e-4 relative plus a small absolute floor.
        assert_close("loss", &[loss.value().item()], &[loss_ref as f32], 1e-5, 1e-4);
        let vars = [&m.w1, &m.b1, &m.g, &m.beta, &m.w2, &m.b2];
        for ((name, want), var) in fields(&grads_ref).into_iter().zip(vars) {
            let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            let got = var
                .grad()
                .unwrap_or_else(|| panic!("{name} has no gradient"))
                .to_f32_vec();
            assert_close(&format!("d{name} (n={})", d.n), &got, &want, 1e-5, 1e-3);
        }
    }
}

#[test]
fn no_grad_records_nothing() {
    let d = Dims { n: 2, i: 3, h: 4, c: 2 };
    let mut rng = Rng::new(3);
    let m = upload(&random_mlp(&mut rng, &d), &d);
    let x = Tensor::from_f32(&[2, 3], &rng.vec(6, 1.0)).unwrap();
    let t = Tensor::from_u32(&[2], &[0, 1]).unwrap();
    let loss = no_grad(|| forward(&m, &x, &t));
    assert!(!loss.requires_grad());
    loss.backward().unwrap();
    assert!(m.w1.grad().is_none(), "a no-grad forward produced a gradient");
}
