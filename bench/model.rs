//! Whole-model throughput, dense against FiAK-pruned: a ViT forward and training step on the
//! 50- and 197-token presets and a GPT on contexts of 128 and 512, pruned at 70% of scores,
//! 50% of keys, and 15% of keys then scores to 70%. Each iteration waits for the device before
//! the clock stops. Run with `cargo bench --bench model`; `FIAK_BENCH_QUICK=1` keeps only the
//! smaller presets.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fiak::Tensor;
use fiak::autograd::no_grad;
use fiak::fiak::{PriorKind, PriorLearning, PruneScope, PruneSpec};
use fiak::models::{Gpt, GptConfig, Model, Vit, VitConfig};
use fiak::nn::AttentionOptions;
use fiak::optim::{AdamW, AdamWConfig};

/// A model of `preset`, with deterministic non-uniform priors and pruned by `spec` when given.
fn build(vit: bool, preset: &str, spec: Option<&PruneSpec>) -> Model {
    let mut model = if vit {
        Model::Vit(Vit::new(VitConfig::preset(preset, 10).unwrap(), 0).unwrap())
    } else {
        Model::Gpt(Gpt::new(GptConfig::preset(preset).unwrap(), 0).unwrap())
    };
    if let Some(spec) = spec {
        model.add_priors(PriorKind::Entry, PriorLearning::Gd);
        for layer in model.attention_layers() {
            let prior = layer.entry_prior.as_ref().unwrap();
            let n = prior.value().numel();
            prior
                .value()
                .write_f32(&(0..n).map(|e| ((e * 7919) % 1009) as f32 / 1009.0).collect::<Vec<_>>())
                .unwrap();
        }
        model.prune(spec, false).unwrap();
    }
    model
}

/// Inputs and targets of one batch, and the images or tokens it holds.
fn batch(model: &Model, size: usize) -> (Tensor, Vec<u32>, Tensor, u64) {
    match model {
        Model::Vit(m) => {
            let c = &m.config;
            let n = size * c.num_patches() * c.patch_dim();
            let patches = Tensor::from_f32(
                &[size, c.num_patches(), c.patch_dim()],
                &(0..n).map(|i| (i % 97) as f32 / 97.0).collect::<Vec<_>>(),
            )
            .unwrap();
            let labels = Tensor::from_u32(&[size], &(0..size as u32).map(|i| i % 10).collect::<Vec<_>>()).unwrap();
            (patches, Vec::new(), labels, size as u64)
        }
        Model::Gpt(m) => {
            let t = m.config.n_positions;
            let host: Vec<u32> = (0..size * t).map(|i| (i * 31 % 256) as u32).collect();
            let ids = Tensor::from_u32(&[size, t], &host).unwrap();
            let targets = Tensor::from_u32(&[size * t], &host).unwrap();
            (ids, host, targets, (size * t) as u64)
        }
    }
}

fn bench_models(c: &mut Criterion) {
    let gpu = fiak::gpu::get();
    println!(
        "adapter: {} ({:?}, {:?})",
        gpu.info.name, gpu.info.backend, gpu.info.device_type
    );
    let quick = std::env::var("FIAK_BENCH_QUICK").is_ok_and(|v| v == "1");
    let mut setups = vec![(true, "p4", 16), (false, "byte-128", 4)];
    if !quick {
        setups.extend([(true, "p2", 8), (false, "byte-512", 2)]);
    }
    let variants = [
        ("dense", None),
        (
            "scores70",
            Some(PruneSpec {
                scores: 0.7,
                keys: 0.0,
                scope: PruneScope::Layer,
            }),
        ),
        (
            "keys50",
            Some(PruneSpec {
                scores: 0.0,
                keys: 0.5,
                scope: PruneScope::Layer,
            }),
        ),
        (
            "mixed15-70",
            Some(PruneSpec {
                scores: 0.7,
                keys: 0.15,
                scope: PruneScope::Layer,
            }),
        ),
    ];
    let options = AttentionOptions::default();

    for (vit, preset, size) in setups {
        let mut group = c.benchmark_group(format!("model/{}-{preset}", if vit { "vit" } else { "gpt" }));
        group.sample_size(10);
        for (name, spec) in &variants {
            let model = build(vit, preset, spec.as_ref());
            let (inputs, host, targets, samples) = batch(&model, size);
            group.throughput(Throughput::Elements(samples));
            let logits = |m: &Model| match m {
                Model::Vit(v) => v.forward(&inputs, &options).unwrap(),
                Model::Gpt(g) => g.forward(&inputs, &host, &options).unwrap(),
            };
            group.bench_function(BenchmarkId::new("forward", name), |b| {
                b.iter(|| {
                    no_grad(|| logits(&model));
                    gpu.synchronize();
                })
            });
            let mut optimizer = AdamW::new(AdamWConfig::default(), model.params());
            group.bench_function(BenchmarkId::new("train_step", name), |b| {
                b.iter(|| {
                    let loss = logits(&model).cross_entropy(&targets, 0.0, None).unwrap();
                    loss.backward().unwrap();
                    optimizer.step(model.params(), 1.0).unwrap();
                    model.params().zero_grad();
                    gpu.synchronize();
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_models);
criterion_main!(benches);
