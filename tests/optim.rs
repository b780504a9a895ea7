//! AdamW against the CPU reference over three steps, with and without weight decay and
//! clipping by a global norm computed on the GPU, plus argument checks and the windowed path.

mod common;

use common::reference::optim as reference;
use common::{Rng, assert_close};
use fiak::ops::elementwise::with_test_limits;
use fiak::ops::optim::{AdamW, adamw_step};
use fiak::ops::reduce::squared_norm;
use fiak::{DType, Tensor};

/// Three steps of f32 updates of size up to lr = 1e-2, with the f32 rounding of sqrt, the
/// division and the stored moments: well under 1e-6 absolute for parameters in [-1, 1].
const ATOL: f32 = 1e-6;
const RTOL: f32 = 1e-5;

fn hp(weight_decay: f32) -> AdamW {
    AdamW {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
    }
}

fn reference_hp(hp: &AdamW) -> reference::AdamW {
    reference::AdamW {
        lr: hp.lr as f64,
        beta1: hp.beta1 as f64,
        beta2: hp.beta2 as f64,
        eps: hp.eps as f64,
        weight_decay: hp.weight_decay as f64,
    }
}

/// One parameter tensor on the GPU and its CPU mirror.
struct State {
    shape: Vec<usize>,
    param: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    gpu: [Tensor; 3],
}

impl State {
    fn new(rng: &mut Rng, shape: &[usize]) -> State {
        let n: usize = shape.iter().product();
        let param = rng.vec(n, 1.0);
        let gpu = [
            Tensor::from_f32(shape, &param).unwrap(),
            Tensor::zeros(shape, DType::F32),
            Tensor::zeros(shape, DType::F32),
        ];
        State {
            shape: shape.to_vec(),
            param,
            m: vec![0.0; n],
            v: vec![0.0; n],
            gpu,
        }
    }

    fn check(&self, what: &str) {
        let names = ["param", "m", "v"];
        let want = [&self.param, &self.m, &self.v];
        for ((name, tensor), want) in names.iter().zip(&self.gpu).zip(want) {
            let what = format!("{what} {:?} {name}", self.shape);
            assert_close(&what, &tensor.to_f32_vec(), want, ATOL, RTOL);
        }
    }
}

/// Runs three steps on every tensor of `shapes`; with `max_norm`, gradients are clipped by the
/// global norm over all of them.
fn run_three_steps(seed: u64, shapes: &[&[usize]], weight_decay: f32, max_norm: Option<f32>, grad_scale: f32) {
    let mut rng = Rng::new(seed);
    let hp = hp(weight_decay);
    let cpu_hp = reference_hp(&hp);
    let mut states: Vec<State> = shapes.iter().map(|s| State::new(&mut rng, s)).collect();
    let what = format!("adamw wd={weight_decay} max_norm={max_norm:?} grad_scale={grad_scale}");

    for step in 1..=3u32 {
        let grads: Vec<Vec<f32>> = states.iter().map(|s| rng.vec(s.param.len(), grad_scale)).collect();
        let grad_tensors: Vec<Tensor> = states
            .iter()
            .zip(&grads)
            .map(|(s, g)| Tensor::from_f32(&s.shape, g).unwrap())
            .collect();

        let norm: f64 = grads.iter().flatten().map(|&g| g as f64 * g as f64).sum::<f64>().sqrt();
        let clip = max_norm.map_or(1.0, |max| reference::clip_scale(norm, max as f64));
        let sq = squared_norm(&grad_tensors.iter().collect::<Vec<_>>()).unwrap();

        for (state, (grad, grad_tensor)) in states.iter_mut().zip(grads.iter().zip(&grad_tensors)) {
            let [param, m, v] = &state.gpu;
            let clip_arg = max_norm.map(|max| (&sq, max));
            adamw_step(param, grad_tensor, m, v, &hp, step, clip_arg).unwrap();
            reference::adamw_step(&cpu_hp, &mut state.param, grad, &mut state.m, &mut state.v, step, clip);
        }
    }
    for state in &states {
        state.check(&what);
    }
}

/// Shapes with sizes of 1 and sizes that are not multiples of the workgroup size (256).
const SHAPES: &[&[usize]] = &[&[1], &[257], &[3, 100], &[2, 2, 65]];

#[test]
fn adamw_plain() {
    run_three_steps(1, SHAPES, 0.0, None, 1.0);
}

#[test]
fn adamw_weight_decay() {
    run_three_steps(2, SHAPES, 0.1, None, 1.0);
}

#[test]
fn adamw_clipping_active() {
    // The 818 gradients in [-3, 3] have a global norm of about sqrt(818 * 3) = 50, so
    // max_norm 1 scales them by about 0.02. Adam's update hardly changes under a common
    // scale, but the checked moments m and v do.
    run_three_steps(3, SHAPES, 0.0, Some(1.0), 3.0);
    run_three_steps(4, SHAPES, 0.05, Some(1.0), 3.0);
}

#[test]
fn adamw_clipping_inactive() {
    // A max_norm above the global norm leaves the gradients unchanged.
    run_three_steps(5, SHAPES, 0.05, Some(1e4), 1.0);
}

#[test]
fn adamw_clipping_changes_the_update() {
    // Guards the clipping tests: with clipping, the first moments end elsewhere than without.
    let mut rng = Rng::new(6);
    let n = 300;
    let p0 = rng.vec(n, 1.0);
    let g = rng.vec(n, 3.0);
    let grad = Tensor::from_f32(&[n], &g).unwrap();
    let sq = squared_norm(&[&grad]).unwrap();
    let mut results = Vec::new();
    for clip in [None, Some((&sq, 0.5f32))] {
        let param = Tensor::from_f32(&[n], &p0).unwrap();
        let m = Tensor::zeros(&[n], DType::F32);
        let v = Tensor::zeros(&[n], DType::F32);
        adamw_step(&param, &grad, &m, &v, &hp(0.0), 1, clip).unwrap();
        adamw_step(&param, &grad, &m, &v, &hp(0.0), 2, clip).unwrap();
        results.push(m.to_f32_vec());
    }
    let differing = results[0].iter().zip(&results[1]).filter(|(a, b)| a != b).count();
    assert!(
        differing > n / 2,
        "clipping changed only {differing} of {n} first moments"
    );
}

#[test]
fn adamw_windowed_matches_whole() {
    let mut rng = Rng::new(7);
    let n = 5000;
    let p0 = rng.vec(n, 1.0);
    let g = rng.vec(n, 1.0);
    let grad = Tensor::from_f32(&[n], &g).unwrap();
    let sq = squared_norm(&[&grad]).unwrap();
    let run = || {
        let param = Tensor::from_f32(&[n], &p0).unwrap();
        let m = Tensor::zeros(&[n], DType::F32);
        let v = Tensor::zeros(&[n], DType::F32);
        for step in 1..=2 {
            adamw_step(&param, &grad, &m, &v, &hp(0.1), step, Some((&sq, 2.0))).unwrap();
        }
        [param.to_f32_vec(), m.to_f32_vec(), v.to_f32_vec()]
    };
    let whole = run();
    // Windows of 700 elements and three workgroups per grid row.
    let windowed = with_test_limits(700, 3, run);
    assert_eq!(whole, windowed);
}

#[test]
fn adamw_rejects_step_zero() {
    let t = Tensor::zeros(&[4], DType::F32);
    let (g, m, v) = (t.deep_clone(), t.deep_clone(), t.deep_clone());
    let err = adamw_step(&t, &g, &m, &v, &hp(0.0), 0, None).unwrap_err().to_string();
    assert!(err.contains("step"), "{err}");
    assert!(err.contains('0'), "{err}");
}

#[test]
fn adamw_rejects_invalid_hyperparameters() {
    let t = Tensor::zeros(&[4], DType::F32);
    let (g, m, v) = (t.deep_clone(), t.deep_clone(), t.deep_clone());
    let cases = [
        (AdamW { lr: -1.0, ..hp(0.0) }, "lr", "-1"),
        (AdamW { beta1: 1.0, ..hp(0.0) }, "beta1", "1"),
        (AdamW { beta2: -0.5, ..hp(0.0) }, "beta2", "-0.5"),
        (AdamW { eps: 0.0, ..hp(0.0) }, "eps", "0"),
        (
            AdamW {
                weight_decay: -0.1,
                ..hp(0.0)
            },
            "weight_decay",
            "-0.1",
        ),
    ];
    for (bad, name, value) in cases {
        let err = adamw_step(&t, &g, &m, &v, &bad, 1, None).unwrap_err().to_string();
        assert!(err.contains(name), "{name}: {err}");
        assert!(err.contains(value), "{name}: {err}");
    }
    let sq = Tensor::zeros(&[1], DType::F32);
    let err = adamw_step(&t, &g, &m, &v, &hp(0.0), 1, Some((&sq, 0.0)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_norm"), "{err}");
}

#[test]
fn adamw_rejects_mismatched_shapes() {
    let p = Tensor::zeros(&[4], DType::F32);
    let g = Tensor::zeros(&[2, 3], DType::F32);
    let (m, v) = (p.deep_clone(), p.deep_clone());
    let err = adamw_step(&p, &g, &m, &v, &hp(0.0), 1, None).unwrap_err().to_string();
    assert!(err.contains("[4]"), "{err}");
    assert!(err.contains("[2, 3]"), "{err}");

    let g = p.deep_clone();
    let sq = Tensor::zeros(&[2], DType::F32);
    let err = adamw_step(&p, &g, &m, &v, &hp(0.0), 1, Some((&sq, 1.0)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[2]"), "{err}");
}

#[test]
fn adamw_rejects_shared_buffers() {
    let p = Tensor::zeros(&[4], DType::F32);
    let g = p.deep_clone();
    let m = p.deep_clone();
    let err = adamw_step(&p, &g, &m, &m, &hp(0.0), 1, None).unwrap_err().to_string();
    assert!(err.contains("share"), "{err}");
}
