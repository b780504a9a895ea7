//! Buffer growth of a training loop. Alone in its test binary, because the pool's counters are
//! process-wide and tests of one binary run in parallel.

use fiak::Tensor;
use fiak::autograd::{ParamGroup, ParamStore, Var};
use fiak::ops::elementwise::GeluKind;
use fiak::optim::{AdamW, AdamWConfig};

fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(salt) % 1000) as f32 / 1000.0 - 0.5) * 0.5)
        .collect()
}

#[test]
fn training_loop_does_not_grow_buffers() {
    let (n, input, hidden, classes) = (16, 12, 24, 5);
    let mut store = ParamStore::new();
    let w1 = store.add(
        "fc1.weight",
        Tensor::from_f32(&[hidden, input], &values(hidden * input, 1)).unwrap(),
        ParamGroup::Decay,
    );
    let b1 = store.add(
        "fc1.bias",
        Tensor::zeros(&[hidden], fiak::DType::F32),
        ParamGroup::NoDecay,
    );
    let g = store.add("norm.weight", Tensor::full(&[hidden], 1.0), ParamGroup::NoDecay);
    let beta = store.add(
        "norm.bias",
        Tensor::zeros(&[hidden], fiak::DType::F32),
        ParamGroup::NoDecay,
    );
    let w2 = store.add(
        "fc2.weight",
        Tensor::from_f32(&[classes, hidden], &values(classes * hidden, 2)).unwrap(),
        ParamGroup::Decay,
    );
    let b2 = store.add(
        "fc2.bias",
        Tensor::zeros(&[classes], fiak::DType::F32),
        ParamGroup::NoDecay,
    );
    let mut optimizer = AdamW::new(AdamWConfig::default(), &store);

    let x = Var::constant(Tensor::from_f32(&[n, input], &values(n * input, 3)).unwrap());
    let targets: Vec<u32> = (0..n as u32).map(|i| i % classes as u32).collect();
    let t = Tensor::from_u32(&[n], &targets).unwrap();
    let gpu = fiak::gpu::get();

    let mut after_first = 0;
    let mut losses = Vec::new();
    for step in 0..50 {
        let h = x
            .linear(&w1, Some(&b1))
            .unwrap()
            .layer_norm(&g, &beta, 1e-5)
            .unwrap()
            .gelu(GeluKind::Erf)
            .unwrap();
        let loss = h.linear(&w2, Some(&b2)).unwrap().cross_entropy(&t, 0.0, None).unwrap();
        loss.backward().unwrap();
        optimizer.step(&store, 1.0).unwrap();
        store.zero_grad();
        if step % 10 == 0 {
            losses.push(loss.value().item());
        }
        drop((h, loss));
        if step == 0 {
            after_first = gpu.pool_stats().buffers;
        }
    }
    let last = gpu.pool_stats().buffers;
    assert_eq!(
        last, after_first,
        "GPU buffers grew from {after_first} to {last} over 50 steps"
    );
    assert!(losses.last().unwrap() < &losses[0], "loss did not fall: {losses:?}");
}
