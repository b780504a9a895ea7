//! `fiak bench`: a fixed suite, dense against pruned, without criterion. Kernel times come
//! from timestamp queries where the adapter has them, whole-model figures from wall-clock
//! time with the device synchronised; peak memory is the buffer pool's high-water mark.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::autograd::AttentionPath;
use crate::error::{Error, Result};
use crate::fiak::{PriorKind, PriorLearning, PruneScope, PruneSpec, accounting};
use crate::gpu;
use crate::models::{Gpt, GptConfig, Model, Vit, VitConfig};
use crate::nn::AttentionOptions;
use crate::ops::attention::{
    AttentionConfig, GatheredPath, LogitKernel, attention_dense, attention_dense_backward, attention_gathered,
    attention_gathered_backward,
};
use crate::optim::{AdamW, AdamWConfig};
use crate::tensor::Tensor;

#[derive(Args, Debug)]
pub struct BenchCmd {
    /// A short suite: fewer repetitions and no 197-token or 512-token model
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One measured case.
#[derive(Clone, Debug, serde::Serialize)]
struct Case {
    group: String,
    name: String,
    /// Kept fraction of attention entries (1 when dense).
    kept: f64,
    /// Milliseconds per iteration: GPU time from timestamps for kernels, wall-clock time with
    /// synchronisation for models.
    ms: f64,
    /// Images or tokens per second for models.
    throughput: Option<f64>,
    peak_bytes: u64,
    /// Dense time over this case's time, within the group.
    speedup: f64,
    /// 1 / kept: the speed-up if cost fell in proportion to the kept entries.
    ideal_speedup: f64,
}

/// Fills a tensor with values in [-1, 1) from a hash of the index and `salt`.
pub(super) fn random(shape: &[usize], salt: usize) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| ((i * 2654435761 + salt * 40503) % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    Tensor::from_f32(shape, &values)
}

/// Runs `f` `reps` times after one warmup and returns milliseconds per run: the GPU time of
/// the kernels when profiling works, else wall-clock time, and the pool's peak bytes.
fn measure(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, u64)> {
    let gpu = gpu::get();
    f()?;
    gpu.synchronize();
    gpu.reset_profile();
    gpu.reset_peak_memory();
    let start = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    gpu.synchronize();
    let wall = start.elapsed().as_secs_f64() * 1e3 / reps as f64;
    let kernels: f64 = gpu.kernel_times().iter().map(|k| k.total_ms).sum::<f64>() / reps as f64;
    let ms = if gpu.profiling() && kernels > 0.0 {
        kernels
    } else {
        wall
    };
    Ok((ms, gpu.pool_stats().peak_live_bytes))
}

fn attention_cases(quick: bool) -> Result<Vec<Case>> {
    let (batch, heads, d) = (8, 4, 32);
    let sizes: &[usize] = if quick { &[64, 197] } else { &[64, 197, 256, 512] };
    let reps = if quick { 2 } else { 5 };
    let config = AttentionConfig {
        causal: false,
        logits: LogitKernel::Dot,
        gathered: GatheredPath::Auto,
    };
    let mut cases = Vec::new();
    for &n in sizes {
        log::info!("measuring attention at N = {n}");
        let q = random(&[batch, heads, n, d], 1)?;
        let k = random(&[batch, heads, n, d], 2)?;
        let v = random(&[batch, heads, n, d], 3)?;
        let dout = random(&[batch, heads, n, d], 4)?;
        let group = format!("attention B={batch} H={heads} d={d} N={n}, forward+backward");
        let (dense_ms, dense_peak) = measure(reps, || {
            let (o, lse) = attention_dense(&q, &k, &v, None, &config)?;
            attention_dense_backward(&q, &k, &v, None, &o, &lse, &dout, &config)?;
            Ok(())
        })?;
        cases.push(Case {
            group: group.clone(),
            name: "dense fused".into(),
            kept: 1.0,
            ms: dense_ms,
            throughput: None,
            peak_bytes: dense_peak,
            speedup: 1.0,
            ideal_speedup: 1.0,
        });

        for (name, spec) in [
            (
                "gathered, 30% of scores kept",
                PruneSpec {
                    scores: 0.7,
                    keys: 0.0,
                    scope: PruneScope::Row,
                },
            ),
            (
                "gathered, 50% of keys kept",
                PruneSpec {
                    scores: 0.0,
                    keys: 0.5,
                    scope: PruneScope::Layer,
                },
            ),
        ] {
            let priors = crate::fiak::LayerPriors {
                heads,
                tokens: n,
                causal: false,
                entry: Some(
                    (0..heads * n * n)
                        .map(|e| ((e * 7919) % 1009) as f32 / 1009.0)
                        .collect(),
                ),
                key: None,
            };
            let pattern = crate::models::pattern_from_csr(&priors.prune(&spec)?)?;
            let kept = pattern.nnz() as f64 / (heads * n * n) as f64;
            let (ms, peak) = measure(reps, || {
                let (o, lse) = attention_gathered(&q, &k, &v, &pattern, None, &config)?;
                attention_gathered_backward(&q, &k, &v, &pattern, None, &o, &lse, &dout, &config)?;
                Ok(())
            })?;
            cases.push(Case {
                group: group.clone(),
                name: name.into(),
                kept,
                ms,
                throughput: None,
                peak_bytes: peak,
                speedup: dense_ms / ms,
                ideal_speedup: 1.0 / kept,
            });
        }
    }
    Ok(cases)
}

/// A model with random priors, pruned by `spec` when given.
fn bench_model(vit: bool, preset: &str, spec: Option<&PruneSpec>) -> Result<Model> {
    let mut model = if vit {
        Model::Vit(Vit::new(VitConfig::preset(preset, 10)?, 0)?)
    } else {
        Model::Gpt(Gpt::new(GptConfig::preset(preset)?, 0)?)
    };
    if let Some(spec) = spec {
        model.add_priors(PriorKind::Entry, PriorLearning::Gd);
        for layer in model.attention_layers() {
            let prior = layer.entry_prior.as_ref().expect("just added");
            let n = prior.value().numel();
            prior
                .value()
                .write_f32(&(0..n).map(|e| ((e * 7919) % 1009) as f32 / 1009.0).collect::<Vec<_>>())?;
        }
        model.prune(spec, false)?;
    }
    Ok(model)
}

fn model_cases(quick: bool) -> Result<Vec<Case>> {
    let reps = if quick { 2 } else { 4 };
    let batch = 16;
    let mut setups: Vec<(bool, &str)> = vec![(true, "p4"), (false, "byte-128")];
    if !quick {
        setups.extend([(true, "p2"), (false, "byte-512")]);
    }
    let variants: [(&str, Option<PruneSpec>); 4] = [
        ("dense", None),
        (
            "70% scores pruned",
            Some(PruneSpec {
                scores: 0.7,
                keys: 0.0,
                scope: PruneScope::Layer,
            }),
        ),
        (
            "50% keys pruned",
            Some(PruneSpec {
                scores: 0.0,
                keys: 0.5,
                scope: PruneScope::Layer,
            }),
        ),
        (
            "mixed 15% keys, 70% total",
            Some(PruneSpec {
                scores: 0.7,
                keys: 0.15,
                scope: PruneScope::Layer,
            }),
        ),
    ];
    let mut cases = Vec::new();
    for (vit, preset) in setups {
        let group = format!(
            "{} {preset}, batch {batch}, training step",
            if vit { "ViT" } else { "GPT" }
        );
        let mut dense_ms = 0.0;
        let variant_count = if quick { 2 } else { variants.len() };
        for (name, spec) in variants.iter().take(variant_count) {
            log::info!("measuring {group}: {name}");
            let model = bench_model(vit, preset, spec.as_ref())?;
            let kept = accounting::model_cost(&model.attention_layers()).kept_scores;
            let mut optimizer = AdamW::new(AdamWConfig::default(), model.params());
            let options = AttentionOptions {
                path: AttentionPath::Fused,
                capture: false,
            };
            let (inputs, host, labels, samples) = match &model {
                Model::Vit(m) => {
                    let c = &m.config;
                    let patches = random(&[batch, c.num_patches(), c.patch_dim()], 5)?;
                    let labels = Tensor::from_u32(&[batch], &(0..batch as u32).map(|i| i % 10).collect::<Vec<_>>())?;
                    (patches, Vec::new(), labels, batch)
                }
                Model::Gpt(m) => {
                    let t = m.config.n_positions;
                    let host: Vec<u32> = (0..batch * t).map(|i| (i * 31 % 256) as u32).collect();
                    let ids = Tensor::from_u32(&[batch, t], &host)?;
                    let targets = Tensor::from_u32(&[batch * t], &host)?;
                    (ids, host, targets, batch * t)
                }
            };
            let step = || -> Result<()> {
                let logits = match &model {
                    Model::Vit(m) => m.forward(&inputs, &options)?,
                    Model::Gpt(m) => m.forward(&inputs, &host, &options)?,
                };
                let loss = logits.cross_entropy(&labels, 0.0, None)?;
                loss.backward()?;
                Ok(())
            };
            // Wall-clock time: a training step includes CPU recording and submission.
            let gpu = gpu::get();
            step()?;
            optimizer.step(model.params(), 1.0)?;
            model.params().zero_grad();
            gpu.synchronize();
            gpu.reset_peak_memory();
            let start = Instant::now();
            for _ in 0..reps {
                step()?;
                optimizer.step(model.params(), 1.0)?;
                model.params().zero_grad();
            }
            gpu.synchronize();
            let ms = start.elapsed().as_secs_f64() * 1e3 / reps as f64;
            if spec.is_none() {
                dense_ms = ms;
            }
            cases.push(Case {
                group: group.clone(),
                name: name.to_string(),
                kept,
                ms,
                throughput: Some(samples as f64 / (ms / 1e3)),
                peak_bytes: gpu.pool_stats().peak_live_bytes,
                speedup: dense_ms / ms,
                ideal_speedup: 1.0 / kept,
            });
        }
    }
    Ok(cases)
}

pub fn run(cmd: &BenchCmd) -> Result<()> {
    let gpu = gpu::get();
    let started = Instant::now();
    println!(
        "fiak bench on {} ({:?}, {:?}, {}){}",
        gpu.info.name,
        gpu.info.backend,
        gpu.info.device_type,
        gpu.info.driver_info,
        if cmd.quick { ", quick" } else { "" }
    );
    if !gpu.profiling() {
        println!("(no timestamp queries: kernel times are wall-clock)");
    }

    // Matmul throughput first: the engine's hot loop.
    let n = if cmd.quick { 512 } else { 1024 };
    let a = random(&[n, n], 6)?;
    let b = random(&[n, n], 7)?;
    let out = Tensor::zeros(&[n, n], crate::DType::F32);
    let (matmul_ms, _) = measure(2, || {
        crate::ops::matmul_into(&a, &b, false, false, None, &out, 1.0, false)
    })?;
    println!(
        "matmul {n}x{n}x{n}: {matmul_ms:.1} ms, {:.2} GFLOP/s\n",
        2.0 * (n as f64).powi(3) / (matmul_ms / 1e3) / 1e9
    );

    let mut cases = attention_cases(cmd.quick)?;
    cases.extend(model_cases(cmd.quick)?);

    let mut group = String::new();
    for c in &cases {
        if c.group != group {
            group = c.group.clone();
            println!(
                "\n{group}\n{:<28} {:>7} {:>11} {:>14} {:>10} {:>8} {:>7}",
                "variant", "kept", "ms", "throughput", "peak MiB", "speedup", "ideal"
            );
        }
        println!(
            "{:<28} {:>6.1}% {:>11.2} {:>14} {:>10.1} {:>7.2}x {:>6.2}x",
            c.name,
            100.0 * c.kept,
            c.ms,
            c.throughput.map_or("-".to_string(), |t| format!("{t:.0}/s")),
            c.peak_bytes as f64 / (1024.0 * 1024.0),
            c.speedup,
            c.ideal_speedup
        );
    }
    println!("\nsuite time {:.0} s", started.elapsed().as_secs_f64());

    if let Some(path) = &cmd.json {
        let value = serde_json::json!({
            "device": gpu.info.name, "backend": format!("{:?}", gpu.info.backend), "driver": gpu.info.driver_info,
            "quick": cmd.quick, "matmul_gflops": 2.0 * (n as f64).powi(3) / (matmul_ms / 1e3) / 1e9, "cases": cases,
        });
        crate::checkpoint::write_atomic(
            path,
            serde_json::to_string_pretty(&value).expect("plain values").as_bytes(),
        )
        .map_err(|e| Error::file(path, e.to_string()))?;
    }
    Ok(())
}
