//! Training and evaluation loops for both models: one step is record, backward and optimizer
//! update, with no readback but the loss on logged steps. Every run appends one JSON object a
//! logged step to `metrics.jsonl`, saves checkpoints atomically, and resumes from them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::autograd::{AttentionPath, Var, no_grad};
use crate::checkpoint::{self, TensorData};
use crate::data::{Augment, ImageDataset, ImageLoader, LoaderState, TextLoader, image_eval_batches, text_eval_batches};
use crate::error::{Error, Result};
use crate::models::{Model, patchify};
use crate::nn::AttentionOptions;
use crate::optim::{AdamW, AdamWConfig, Schedule};
use crate::tensor::Tensor;

/// The data a model trains and evaluates on.
pub enum TaskData {
    Images {
        train: Arc<ImageDataset>,
        test: Arc<ImageDataset>,
    },
    Text {
        train: Arc<Vec<u32>>,
        validation: Arc<Vec<u32>>,
    },
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainOptions {
    pub steps: usize,
    pub batch_size: usize,
    pub optimizer: AdamWConfig,
    pub warmup_steps: usize,
    /// Evaluate and save a checkpoint every this many steps, and at the end.
    pub eval_every: usize,
    /// Read back and log the loss every this many steps.
    pub log_every: usize,
    /// Evaluate on at most this many batches; `None` uses the whole held-out split.
    pub eval_batches: Option<usize>,
    pub seed: u64,
    pub label_smoothing: f32,
    /// Random flips and shifts of training images.
    #[serde(default)]
    pub augment: Augment,
    pub attention: AttentionPath,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Save a checkpoint and stop after this many steps; a later run resumes from it.
    #[serde(default)]
    pub stop_after: Option<usize>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            steps: 1000,
            batch_size: 64,
            optimizer: AdamWConfig::default(),
            warmup_steps: 50,
            eval_every: 250,
            log_every: 10,
            eval_batches: None,
            seed: 0,
            label_smoothing: 0.0,
            augment: Augment::NONE,
            attention: AttentionPath::Fused,
            progress: true,
            stop_after: None,
        }
    }
}

/// Held-out figures of a model.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct EvalResult {
    /// Mean cross-entropy per image or token.
    pub loss: f64,
    /// Top-1 accuracy of an image classifier, in [0, 1].
    pub accuracy: Option<f64>,
    /// exp(loss) of a language model.
    pub perplexity: Option<f64>,
    /// Images or tokens evaluated.
    pub samples: usize,
    /// Images or tokens per second through the forward pass, the loss readback included.
    pub throughput: f64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub final_eval: EvalResult,
    pub seconds: f64,
    /// Images or tokens per second over the training steps.
    pub throughput: f64,
}

/// Saved with every checkpoint so training resumes where it stopped.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct TrainingState {
    step: usize,
    optimizer_steps: u32,
    loader: LoaderState,
    options: TrainOptions,
}

/// Samples per batch: images, or tokens for text.
fn samples_per_batch(data: &TaskData, model: &Model, batch_size: usize) -> usize {
    match (data, model) {
        (TaskData::Text { .. }, Model::Gpt(m)) => batch_size * m.config.n_positions,
        _ => batch_size,
    }
}

/// Loss of one batch: the forward pass and the mean cross-entropy.
fn batch_loss(
    model: &Model,
    batch: &Batch,
    smoothing: f32,
    options: &AttentionOptions,
) -> Result<(Var, Option<Tensor>)> {
    match (model, batch) {
        (Model::Vit(m), Batch::Images { patches, labels, .. }) => {
            let logits = m.forward(patches, options)?; // [B, classes]
            let loss = logits.cross_entropy(labels, smoothing, None)?;
            Ok((loss, Some(logits.value().clone())))
        }
        (
            Model::Gpt(m),
            Batch::Text {
                inputs,
                inputs_host,
                targets,
            },
        ) => {
            let logits = m.forward(inputs, inputs_host, options)?; // [B * T, V]
            let loss = logits.cross_entropy(targets, smoothing, None)?;
            Ok((loss, None))
        }
        _ => Err(Error::invalid(
            "data",
            "mismatch",
            "image data needs a ViT and text data a GPT",
        )),
    }
}

/// A batch uploaded to the GPU.
enum Batch {
    Images {
        patches: Tensor,
        labels: Tensor,
    },
    Text {
        inputs: Tensor,
        inputs_host: Vec<u32>,
        targets: Tensor,
    },
}

fn image_batch(model: &Model, images: &[f32], labels: &[u32], shape: [usize; 4]) -> Result<Batch> {
    let Model::Vit(m) = model else {
        return Err(Error::invalid("data", "images", "image data needs a ViT"));
    };
    let c = &m.config;
    let [b, channels, h, w] = shape;
    if channels != c.in_chans || h != c.img_size || w != c.img_size {
        return Err(Error::shape(
            "image batch",
            format!(
                "images are [{channels}, {h}, {w}] but the model takes [{}, {}, {}]",
                c.in_chans, c.img_size, c.img_size
            ),
        ));
    }
    let patches = patchify(images, b, channels, h, c.patch_size);
    Ok(Batch::Images {
        patches: Tensor::from_f32(&[b, c.num_patches(), c.patch_dim()], &patches)?,
        labels: Tensor::from_u32(&[b], labels)?,
    })
}

fn text_batch(inputs: Vec<u32>, targets: &[u32], batch_size: usize, context: usize) -> Result<Batch> {
    Ok(Batch::Text {
        inputs: Tensor::from_u32(&[batch_size, context], &inputs)?,
        inputs_host: inputs,
        targets: Tensor::from_u32(&[batch_size * context], targets)?,
    })
}

/// Evaluates on the held-out split without recording a tape.
pub fn evaluate(
    model: &Model,
    data: &TaskData,
    batch_size: usize,
    max_batches: Option<usize>,
    path: AttentionPath,
) -> Result<EvalResult> {
    let options = AttentionOptions { path, capture: false };
    let limit = max_batches.unwrap_or(usize::MAX);
    let start = Instant::now();
    let (mut loss_sum, mut correct, mut samples) = (0.0f64, 0usize, 0usize);

    no_grad(|| -> Result<()> {
        match data {
            TaskData::Images { test, .. } => {
                for batch in image_eval_batches(test, batch_size).take(limit) {
                    let uploaded = image_batch(model, &batch.images, &batch.labels, batch.shape)?;
                    let (loss, logits) = batch_loss(model, &uploaded, 0.0, &options)?;
                    let n = batch.labels.len();
                    loss_sum += loss.value().item() as f64 * n as f64;
                    let logits = logits.expect("a ViT returns logits").to_f32_vec();
                    let classes = logits.len() / n;
                    for (row, &label) in logits.chunks(classes).zip(&batch.labels) {
                        let predicted = row
                            .iter()
                            .enumerate()
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .map_or(0, |(i, _)| i);
                        correct += usize::from(predicted == label as usize);
                    }
                    samples += n;
                }
            }
            TaskData::Text { validation, .. } => {
                let Model::Gpt(m) = model else {
                    return Err(Error::invalid("data", "text", "text data needs a GPT"));
                };
                let context = m.config.n_positions;
                for batch in text_eval_batches(validation, batch_size, context).take(limit) {
                    let tokens = batch.batch_size * batch.context;
                    let uploaded = text_batch(batch.inputs, &batch.targets, batch.batch_size, batch.context)?;
                    let (loss, _) = batch_loss(model, &uploaded, 0.0, &options)?;
                    loss_sum += loss.value().item() as f64 * tokens as f64;
                    samples += tokens;
                }
            }
        }
        Ok(())
    })?;

    if samples == 0 {
        return Err(Error::invalid(
            "evaluation data",
            0,
            "the held-out split is smaller than one batch",
        ));
    }
    let loss = loss_sum / samples as f64;
    let is_images = matches!(data, TaskData::Images { .. });
    Ok(EvalResult {
        loss,
        accuracy: is_images.then(|| correct as f64 / samples as f64),
        perplexity: (!is_images).then(|| loss.exp()),
        samples,
        throughput: samples as f64 / start.elapsed().as_secs_f64(),
    })
}

/// Appends JSON lines to `metrics.jsonl`.
struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    fn open(dir: &Path, append: bool) -> Result<MetricsLog> {
        let path = dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&path)
            .map_err(|e| Error::file(&path, format!("cannot open for writing: {e}")))?;
        Ok(MetricsLog { file, path })
    }

    fn write(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}").map_err(|e| Error::file(&self.path, format!("write failed: {e}")))
    }
}

enum Loader {
    Images(crate::data::Prefetcher<ImageLoader>),
    Text(crate::data::Prefetcher<TextLoader>),
}

/// Trains `model` for `options.steps` steps, writing metrics and checkpoints into `out`.
/// When `out` contains the training state of an earlier run, the run resumes after its last
/// checkpoint with the same batches, optimizer moments and schedule.
pub fn train(model: &mut Model, data: &TaskData, options: &TrainOptions, out: &Path) -> Result<TrainSummary> {
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, format!("cannot create the output folder: {e}")))?;
    let mut optimizer = AdamW::new(options.optimizer.clone(), model.params());
    let schedule = Schedule {
        warmup_steps: options.warmup_steps,
        total_steps: options.steps,
        min_ratio: 0.05,
    };

    // Resume from the last checkpoint in `out`, if any.
    let resumed = if checkpoint::has_training_state(out) {
        let (state, tensors) = checkpoint::load_training_state(out)?;
        let state: TrainingState = serde_json::from_value(state)
            .map_err(|e| Error::file(out.join("training_state.json"), format!("invalid training state: {e}")))?;
        *model = Model::load(out)?;
        let mut moments = std::collections::HashMap::new();
        for (name, data) in &tensors {
            moments.insert(name.clone(), Tensor::from_f32(&data.shape, &data.to_f32()?)?);
        }
        optimizer = AdamW::new(options.optimizer.clone(), model.params());
        optimizer.load_state(state.optimizer_steps, &moments)?;
        log::info!("resuming {} at step {} of {}", out.display(), state.step, options.steps);
        Some(state)
    } else {
        None
    };
    let start_step = resumed.as_ref().map_or(0, |s| s.step);
    let mut metrics = MetricsLog::open(out, resumed.is_some())?;
    std::fs::write(
        out.join("train_options.json"),
        serde_json::to_string_pretty(options).expect("plain fields"),
    )
    .map_err(|e| Error::file(out.join("train_options.json"), e.to_string()))?;

    let mut loader = match data {
        TaskData::Images { train, .. } => {
            let l = match &resumed {
                Some(s) => ImageLoader::restore(train.clone(), options.batch_size, true, &s.loader)?,
                None => ImageLoader::new(train.clone(), options.batch_size, true, options.seed)?,
            }
            .with_augment(options.augment);
            Loader::Images(l.prefetch(2))
        }
        TaskData::Text { train, .. } => {
            let Model::Gpt(m) = &*model else {
                return Err(Error::invalid("data", "text", "text data needs a GPT"));
            };
            let context = m.config.n_positions;
            let l = match &resumed {
                Some(s) => TextLoader::restore(train.clone(), options.batch_size, context, &s.loader)?,
                None => TextLoader::new(train.clone(), options.batch_size, context, options.seed)?,
            };
            Loader::Text(l.prefetch(2))
        }
    };

    let progress = progress_bar(options, start_step);
    let em =
        model.fiak().learning == crate::fiak::PriorLearning::Em && model.fiak().prior != crate::fiak::PriorKind::None;
    let em_momentum = model.fiak().em_momentum;
    // EM learns the priors from the attention probabilities, captured in each forward.
    let attention = AttentionOptions {
        path: options.attention,
        capture: em,
    };
    let per_batch = samples_per_batch(data, model, options.batch_size);
    let started = Instant::now();
    let mut last_eval = EvalResult::default();
    let mut last_loss = f32::NAN;

    for step in start_step..options.steps {
        let batch = match &mut loader {
            Loader::Images(l) => {
                let b = l.next_batch();
                image_batch(model, &b.images, &b.labels, b.shape)?
            }
            Loader::Text(l) => {
                let b = l.next_batch();
                text_batch(b.inputs, &b.targets, b.batch_size, b.context)?
            }
        };
        let (loss, _) = batch_loss(model, &batch, options.label_smoothing, &attention)?;
        loss.backward()?;
        let lr_factor = schedule.factor(step);
        optimizer.step(model.params(), lr_factor)?;
        model.params().zero_grad();
        if em {
            for layer in model.attention_layers() {
                layer.em_update(em_momentum)?;
            }
        }

        let done = step + 1;
        if done % options.log_every == 0 || done == options.steps {
            last_loss = loss.value().item();
            if !last_loss.is_finite() {
                return Err(Error::invalid(
                    "loss",
                    last_loss,
                    format!(
                        "training diverged at step {done}; lower --lr (now {})",
                        options.optimizer.lr
                    ),
                ));
            }
            let elapsed = started.elapsed().as_secs_f64();
            let throughput = (done - start_step) as f64 * per_batch as f64 / elapsed;
            metrics.write(serde_json::json!({
                "step": done, "loss": last_loss, "lr": options.optimizer.lr * lr_factor,
                "elapsed_s": elapsed, "throughput": throughput,
            }))?;
            if let Some(bar) = &progress {
                bar.set_message(format!("loss {last_loss:.4}, {throughput:.0} {}/s", unit(data)));
            }
        }
        drop((loss, batch));
        if let Some(bar) = &progress {
            bar.set_position(done as u64);
        }

        let stopping = options.stop_after == Some(done);
        if done % options.eval_every == 0 || done == options.steps || stopping {
            last_eval = evaluate(model, data, options.batch_size, options.eval_batches, options.attention)?;
            metrics.write(serde_json::json!({ "step": done, "eval": last_eval }))?;
            log::info!("step {done}: held-out {}", describe(&last_eval));
            let loader_state = match &loader {
                Loader::Images(l) => l.state(),
                Loader::Text(l) => l.state(),
            };
            save_checkpoint(model, &optimizer, out, done, loader_state, options)?;
        }
        if stopping {
            log::info!(
                "stopped after step {done} of {}; resume with `fiak train --resume {}`",
                options.steps,
                out.display()
            );
            break;
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    let trained = options
        .stop_after
        .unwrap_or(options.steps)
        .min(options.steps)
        .saturating_sub(start_step);
    if trained == 0 {
        // Nothing left to train: report the checkpoint's figures.
        log::info!("{} is complete at step {start_step}", out.display());
        last_eval = evaluate(model, data, options.batch_size, options.eval_batches, options.attention)?;
    } else {
        log::info!("trained {trained} steps in {seconds:.1} s, last training loss {last_loss:.4}");
    }
    Ok(TrainSummary {
        steps: start_step + trained,
        final_eval: last_eval,
        seconds,
        throughput: trained as f64 * per_batch as f64 / seconds.max(1e-9),
    })
}

fn save_checkpoint(
    model: &Model,
    optimizer: &AdamW,
    out: &Path,
    step: usize,
    loader: LoaderState,
    options: &TrainOptions,
) -> Result<()> {
    model.save(out)?;
    let (optimizer_steps, moments) = optimizer.state();
    let mut tensors = Vec::with_capacity(moments.len());
    for (name, tensor) in moments {
        tensors.push((name, TensorData::from_f32(tensor.shape(), &tensor.to_f32_vec())?));
    }
    let state = TrainingState {
        step,
        optimizer_steps,
        loader,
        options: options.clone(),
    };
    checkpoint::save_training_state(out, &serde_json::to_value(&state).expect("plain fields"), &tensors)
}

fn unit(data: &TaskData) -> &'static str {
    match data {
        TaskData::Images { .. } => "images",
        TaskData::Text { .. } => "tokens",
    }
}

/// Formats the held-out figures as one line.
pub fn describe(eval: &EvalResult) -> String {
    match (eval.accuracy, eval.perplexity) {
        (Some(acc), _) => format!("accuracy {:.2}%, loss {:.4}", 100.0 * acc, eval.loss),
        (_, Some(ppl)) => format!("loss {:.4}, perplexity {ppl:.3}", eval.loss),
        _ => format!("loss {:.4}", eval.loss),
    }
}

fn progress_bar(options: &TrainOptions, start: usize) -> Option<indicatif::ProgressBar> {
    if !options.progress {
        return None;
    }
    let bar = indicatif::ProgressBar::new(options.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]")
            .expect("valid template"),
    );
    bar.set_position(start as u64);
    Some(bar)
}
