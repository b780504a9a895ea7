//! `fiak run`: the whole FiAK pipeline on one data set. A dense baseline, then FiAK priors
//! (learned from the baseline, or from scratch), then pruning (70% of scores, and a mixed run
//! of 15% of keys then scores to 70%), fine-tuning with the patterns fixed, and an evaluation
//! of all of them into `report.md` and `report.json`. Each phase resumes from its checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;

use super::bench::random;
use super::common::{self, DataArgs, FiakArgs, ModelKind, TrainArgs};
use crate::autograd::no_grad;
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::fiak::{PriorKind, PruneScope, PruneSpec, accounting, figures};
use crate::models::Model;
use crate::nn::AttentionOptions;
use crate::ops::attention;
use crate::tensor::Tensor;
use crate::train::{self, EvalResult, TaskData};

#[derive(Args, Debug)]
pub struct RunCmd {
    /// Model family
    #[arg(value_enum)]
    pub model: ModelKind,
    /// Preset (vit: smoke, p7, p4, p2, small-p4; gpt: smoke, byte-64, byte-128, byte-512, small-512)
    #[arg(long)]
    pub preset: Option<String>,
    /// Output directory (default: runs/MODEL-PRESET)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Train the FiAK model from scratch instead of from the dense baseline
    #[arg(long)]
    pub from_scratch: bool,
    /// Steps of learning the priors from the baseline (default: a third of --steps)
    #[arg(long)]
    pub prior_steps: Option<usize>,
    /// Steps of fine-tuning each pruned model (default: a third of --steps)
    #[arg(long)]
    pub finetune_steps: Option<usize>,
    /// Fraction of attention scores pruned
    #[arg(long, default_value_t = 0.7)]
    pub scores: f32,
    /// Fraction of keys pruned first in the mixed run
    #[arg(long, default_value_t = 0.15)]
    pub mixed_keys: f32,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub fiak: FiakArgs,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// One row of the report.
#[derive(Clone, Debug, serde::Serialize)]
struct Row {
    name: String,
    prior: String,
    kept_scores: f64,
    kept_keys: f64,
    eval: EvalResult,
    attention_gflops_per_sample: f64,
    attention_score_bytes: u64,
    /// Forward time of the attention kernels of all layers for one batch, in milliseconds.
    attention_ms: f64,
    head_diversity: f64,
    dir: PathBuf,
}

pub fn run(cmd: &RunCmd) -> Result<()> {
    let kind = cmd.model;
    let preset = cmd
        .preset
        .clone()
        .unwrap_or_else(|| common::default_preset(kind).to_string());
    let kind_name = match kind {
        ModelKind::Vit => "vit",
        ModelKind::Gpt => "gpt",
    };
    let out = cmd
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/{kind_name}-{preset}")));
    common::check_out_dir(&out)?;
    let spec_scores = PruneSpec {
        scores: cmd.scores,
        keys: 0.0,
        scope: PruneScope::Layer,
    };
    let spec_mixed = PruneSpec {
        scores: cmd.scores,
        keys: cmd.mixed_keys,
        scope: PruneScope::Layer,
    };
    spec_scores.validate()?;
    spec_mixed.validate()?;
    let prior = cmd.fiak.prior.unwrap_or(PriorKind::EntryKey);
    if prior == PriorKind::None {
        return Err(Error::invalid(
            "--prior",
            "none",
            "the pipeline learns priors; choose entry, key or entry+key",
        ));
    }
    if cmd.train.stop_after.is_some() {
        return Err(Error::invalid(
            "--stop-after",
            cmd.train.stop_after.unwrap_or(0),
            "is for `fiak train`; an interrupted `fiak run` resumes by running it again with the same --out",
        ));
    }
    let started = Instant::now();

    let (data, stats, size) = common::load_task(kind, &cmd.data, (1, 28), None)?;
    let train_len = match &data {
        TaskData::Images { train, .. } => train.len,
        TaskData::Text { train, .. } => train.len(),
    };
    let base = common::train_options(kind, &preset, &cmd.train, train_len)?;
    let phase_steps = |given: Option<usize>| given.unwrap_or((base.steps / 3).max(1));
    let phase_options = |steps: usize| {
        let mut o = base.clone();
        o.steps = steps;
        o.warmup_steps = (steps / 20).max(1);
        o.eval_every = steps;
        o
    };
    let no_prior = FiakArgs {
        prior: None,
        prior_learning: cmd.fiak.prior_learning,
        logits: cmd.fiak.logits,
    };
    let with_prior = FiakArgs {
        prior: Some(prior),
        ..no_prior.clone()
    };

    // phase 1: dense baseline.
    let dense_dir = out.join("dense");
    log::info!("phase 1/4: dense baseline, {} steps", base.steps);
    let mut dense = common::new_model(kind, &preset, size, stats.as_ref(), &no_prior, cmd.train.seed)?;
    train::train(&mut dense, &data, &base, &dense_dir)?;

    // phase 2: FiAK priors.
    let fiak_dir = out.join("fiak");
    if cmd.from_scratch {
        log::info!(
            "phase 2/4: FiAK ({prior}, {}) from scratch, {} steps",
            cmd.fiak.prior_learning,
            base.steps
        );
        let mut m = common::new_model(kind, &preset, size, stats.as_ref(), &with_prior, cmd.train.seed)?;
        train::train(&mut m, &data, &base, &fiak_dir)?;
    } else {
        let steps = phase_steps(cmd.prior_steps);
        log::info!(
            "phase 2/4: FiAK priors ({prior}, {}) from the baseline, {steps} steps",
            cmd.fiak.prior_learning
        );
        let mut m = Model::load(&dense_dir)?;
        m.add_priors(prior, cmd.fiak.prior_learning);
        train::train(&mut m, &data, &phase_options(steps), &fiak_dir)?;
    }

    // phases 3 and 4: prune and fine-tune.
    let finetune = phase_options(phase_steps(cmd.finetune_steps));
    let mut pruned_dirs = Vec::new();
    for (name, spec) in [
        (format!("pruned-s{:.0}", 100.0 * cmd.scores), spec_scores),
        (
            format!("pruned-k{:.0}-s{:.0}", 100.0 * cmd.mixed_keys, 100.0 * cmd.scores),
            spec_mixed,
        ),
    ] {
        log::info!(
            "phase 3-4/4: {name}: prune {:.0}% of the scores ({:.0}% of the keys first, scope {}), fine-tune {} steps",
            100.0 * spec.scores,
            100.0 * spec.keys,
            format!("{:?}", spec.scope).to_lowercase(),
            finetune.steps
        );
        let mut model = Model::load(&fiak_dir)?;
        model
            .prune(&spec, false)
            .map_err(|e| Error::file(&fiak_dir, e.to_string()))?;
        let dir = out.join(&name);
        train::train(&mut model, &data, &finetune, &dir)?;
        pruned_dirs.push((name, dir));
    }

    // Evaluation of all models, figures and the report.
    log::info!("evaluating all models");
    let figures_dir = out.join("figures");
    std::fs::create_dir_all(&figures_dir).map_err(|e| Error::file(&figures_dir, e.to_string()))?;
    let mut rows = Vec::new();
    let mut entries = vec![
        ("dense".to_string(), dense_dir.clone()),
        ("fiak".to_string(), fiak_dir.clone()),
    ];
    entries.extend(pruned_dirs);
    for (name, dir) in &entries {
        let model = Model::load(dir)?;
        rows.push(evaluate_row(name, dir, &model, &data, &base, &figures_dir)?);
        if name == "fiak" {
            draw_priors(&model, &figures_dir)?;
        }
        if name.starts_with("pruned") {
            draw_patterns(name, &model, &figures_dir)?;
        }
    }
    let curves: Vec<(String, Vec<(f64, f64)>)> = entries
        .iter()
        .filter_map(|(name, dir)| {
            figures::read_losses(&dir.join("metrics.jsonl"))
                .ok()
                .map(|p| (name.clone(), p))
        })
        .collect();
    let loss_caption = figures::loss_curves(&figures_dir.join("loss_curves.png"), &curves)?;

    let report = render_report(
        kind,
        &preset,
        &rows,
        started.elapsed().as_secs_f64(),
        &figures_dir,
        &out,
        &loss_caption,
    );
    checkpoint::write_atomic(&out.join("report.md"), report.as_bytes())?;
    let json = serde_json::json!({
        "model": kind_name, "preset": preset, "prior": prior.to_string(), "learning": cmd.fiak.prior_learning.to_string(),
        "from_scratch": cmd.from_scratch, "seconds": started.elapsed().as_secs_f64(),
        "device": crate::gpu::get().info.name, "rows": rows,
    });
    checkpoint::write_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(&json).expect("plain values").as_bytes(),
    )?;
    println!("{report}");
    println!(
        "wrote {} and {}",
        out.join("report.md").display(),
        out.join("report.json").display()
    );
    Ok(())
}

fn evaluate_row(
    name: &str,
    dir: &Path,
    model: &Model,
    data: &TaskData,
    options: &train::TrainOptions,
    figures_dir: &Path,
) -> Result<Row> {
    let eval = train::evaluate(model, data, options.batch_size, options.eval_batches, options.attention)?;
    let cost = accounting::model_cost(&model.attention_layers());
    let attention_ms = attention_time_ms(model, options.batch_size)?;
    let diversity = capture_diversity(name, model, data, options.batch_size, figures_dir)?;
    Ok(Row {
        name: name.to_string(),
        prior: serde_json::to_value(model.fiak().prior)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        kept_scores: cost.kept_scores,
        kept_keys: cost.kept_keys,
        eval,
        attention_gflops_per_sample: cost.flops as f64 / 1e9,
        attention_score_bytes: cost.score_bytes,
        attention_ms,
        head_diversity: diversity,
        dir: dir.to_path_buf(),
    })
}

/// Runs one batch with attention capture on, draws the mean attention maps of the first layer
/// and returns the head diversity averaged over layers.
fn capture_diversity(name: &str, model: &Model, data: &TaskData, batch_size: usize, figures_dir: &Path) -> Result<f64> {
    let options = AttentionOptions {
        capture: true,
        ..AttentionOptions::default()
    };
    no_grad(|| -> Result<()> {
        match (model, data) {
            (Model::Vit(m), TaskData::Images { test, .. }) => {
                let batch = crate::data::image_eval_batches(test, batch_size.min(test.len))
                    .next()
                    .expect("one batch");
                let patches = crate::models::patchify(
                    &batch.images,
                    batch.shape[0],
                    batch.shape[1],
                    batch.shape[2],
                    m.config.patch_size,
                );
                let patches = Tensor::from_f32(
                    &[batch.shape[0], m.config.num_patches(), m.config.patch_dim()],
                    &patches,
                )?;
                m.forward(&patches, &options)?;
            }
            (Model::Gpt(m), TaskData::Text { validation, .. }) => {
                let context = m.config.n_positions;
                let batch = crate::data::text_eval_batches(validation, batch_size, context)
                    .next()
                    .expect("one batch");
                let ids = Tensor::from_u32(&[batch.batch_size, batch.context], &batch.inputs)?;
                m.forward(&ids, &batch.inputs, &options)?;
            }
            _ => {
                return Err(Error::invalid(
                    "data",
                    "mismatch",
                    "image data needs a ViT and text data a GPT",
                ));
            }
        }
        Ok(())
    })?;

    let mut total = 0.0;
    let layers = model.attention_layers();
    for (index, layer) in layers.iter().enumerate() {
        let maps = layer
            .captured
            .borrow_mut()
            .take()
            .expect("captured in the forward above")
            .to_f32_vec();
        total += accounting::head_diversity(&maps, layer.heads);
        if index == 0 {
            let n = layer.tokens;
            let panels: Vec<Vec<f32>> = maps.chunks(n * n).map(|c| c.to_vec()).collect();
            figures::heatmaps(
                &figures_dir.join(format!("attention_{name}_layer0.png")),
                &panels,
                n,
                n,
                figures::cell_size(n),
            )?;
        }
    }
    Ok(total / layers.len().max(1) as f64)
}

/// Milliseconds of the attention kernels of every layer, forward, for one batch of random
/// queries, keys and values of the model's shapes; the median of five runs after a warmup.
fn attention_time_ms(model: &Model, batch: usize) -> Result<f64> {
    let gpu = crate::gpu::get();
    let mut inputs = Vec::new();
    for layer in model.attention_layers() {
        let d = layer.proj.weight.value().dim(0) / layer.heads;
        let shape = [batch, layer.heads, layer.tokens, d];
        let bias = layer.dense_bias()?.map(|b| b.value().clone());
        inputs.push((random(&shape, 1)?, random(&shape, 2)?, random(&shape, 3)?, bias));
    }
    let run = || -> Result<()> {
        for (layer, (q, k, v, bias)) in model.attention_layers().iter().zip(&inputs) {
            match &layer.pruned {
                Some(p) => {
                    attention::attention_gathered(q, k, v, &p.pattern, None, &layer.config())?;
                }
                None => {
                    let h = layer.heads;
                    let n = layer.tokens;
                    let b = bias.as_ref().map(|b| b.reshape(&[1, h, n, n])).transpose()?;
                    attention::attention_dense(q, k, v, b.as_ref(), &layer.config())?;
                }
            }
        }
        Ok(())
    };
    run()?;
    gpu.synchronize();
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        run()?;
        gpu.synchronize();
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[2])
}

fn draw_priors(model: &Model, figures_dir: &Path) -> Result<()> {
    for (index, (layer, priors)) in model.attention_layers().iter().zip(model.layer_priors()).enumerate() {
        let n = layer.tokens;
        if priors.entry.is_some() {
            let pi = priors.prior_probabilities();
            let panels: Vec<Vec<f32>> = pi
                .chunks(n * n)
                .map(|c| c.iter().map(|&v| v as f32).collect())
                .collect();
            figures::heatmaps(
                &figures_dir.join(format!("entry_prior_layer{index}.png")),
                &panels,
                n,
                n,
                figures::cell_size(n),
            )?;
        }
        if let Some(phi) = &priors.key {
            // A ViT's key prior without the class token lies on the patch grid.
            let model_grid = match model {
                Model::Vit(m) => Some(m.config.grid()),
                Model::Gpt(_) => None,
            };
            let panels: Vec<Vec<f32>> = phi
                .chunks(n)
                .map(|row| match model_grid {
                    Some(_) => row[1..].to_vec(),
                    None => row.to_vec(),
                })
                .collect();
            let (rows, cols) = match model_grid {
                Some(g) => (g, g),
                None => (1, n),
            };
            figures::heatmaps(
                &figures_dir.join(format!("key_prior_layer{index}.png")),
                &panels,
                rows,
                cols,
                if rows == 1 { 4 } else { 16 },
            )?;
        }
    }
    Ok(())
}

fn draw_patterns(name: &str, model: &Model, figures_dir: &Path) -> Result<()> {
    for (index, layer) in model.attention_layers().iter().enumerate() {
        let Some(pruned) = &layer.pruned else { continue };
        let (h, n) = (layer.heads, layer.tokens);
        let p = &pruned.pattern;
        let mut panels = vec![vec![0.0f32; n * n]; h];
        for (head, panel) in panels.iter_mut().enumerate() {
            for i in 0..n {
                let start = p.row_offsets()[head * (n + 1) + i] as usize;
                let end = p.row_offsets()[head * (n + 1) + i + 1] as usize;
                for &j in &p.key_index()[start..end] {
                    panel[i * n + j as usize] = 1.0;
                }
            }
        }
        figures::heatmaps(
            &figures_dir.join(format!("pattern_{name}_layer{index}.png")),
            &panels,
            n,
            n,
            figures::cell_size(n),
        )?;
    }
    Ok(())
}

fn render_report(
    kind: ModelKind,
    preset: &str,
    rows: &[Row],
    seconds: f64,
    figures_dir: &Path,
    out: &Path,
    loss_caption: &str,
) -> String {
    let gpu = crate::gpu::get();
    let metric = match kind {
        ModelKind::Vit => "test accuracy",
        ModelKind::Gpt => "val. perplexity",
    };
    let unit = match kind {
        ModelKind::Vit => "images/s",
        ModelKind::Gpt => "tokens/s",
    };
    let mut md = format!(
        "# fiak run: {} `{preset}`\n\nDevice: {} ({:?}, {}). Time of this invocation {:.0} s (phases resumed from checkpoints are not counted).\n\n",
        match kind {
            ModelKind::Vit => "ViT",
            ModelKind::Gpt => "GPT",
        },
        gpu.info.name,
        gpu.info.backend,
        gpu.info.driver_info,
        seconds
    );
    md.push_str(&format!(
        "| model | prior | kept scores | kept keys | {metric} | attention GFLOPs/sample | attention scores memory | attention ms/batch | {unit} | head diversity |\n"
    ));
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let quality = match (r.eval.accuracy, r.eval.perplexity) {
            (Some(a), _) => format!("{:.2}%", 100.0 * a),
            (_, Some(p)) => format!("{p:.3}"),
            _ => "-".to_string(),
        };
        md.push_str(&format!(
            "| {} | {} | {:.1}% | {:.1}% | {quality} | {:.5} | {:.1} KiB | {:.2} | {:.0} | {:.4} |\n",
            r.name,
            r.prior,
            100.0 * r.kept_scores,
            100.0 * r.kept_keys,
            r.attention_gflops_per_sample,
            r.attention_score_bytes as f64 / 1024.0,
            r.attention_ms,
            r.eval.throughput,
            r.head_diversity
        ));
    }
    md.push_str("\nHead diversity is the mean pairwise Jensen-Shannon divergence (nats) between the heads' batch-mean attention maps, averaged over layers. Attention time is the forward of all layers' attention kernels on one batch of random inputs (median of 5).\n\n## Figures\n\n");
    let mut names: Vec<String> = std::fs::read_dir(figures_dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .filter(|n| n.ends_with(".png"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for name in names {
        let relative = figures_dir.strip_prefix(out).unwrap_or(figures_dir).join(&name);
        md.push_str(&format!("- ![{name}]({})", relative.display()));
        if name == "loss_curves.png" {
            md.push_str(&format!(": {loss_caption}"));
        }
        md.push('\n');
    }
    md
}
