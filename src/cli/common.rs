//! Data and model setup shared by the commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};

use crate::autograd::AttentionPath;
use crate::data::{ChannelStats, Split, TokenizerKind, load_image_dataset, load_text};
use crate::error::{Error, Result};
use crate::fiak::{LogitKernel, PriorKind, PriorLearning};
use crate::models::{Gpt, GptConfig, Model, Vit, VitConfig};
use crate::optim::AdamWConfig;
use crate::train::{TaskData, TrainOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum ModelKind {
    Vit,
    Gpt,
}

/// Training flags shared by `fiak train` and `fiak run`.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Optimizer steps [default: 1600 for a ViT, 1500 for a GPT, 60 for the smoke presets]
    #[arg(long)]
    pub steps: Option<usize>,
    /// Passes over the training set (images); overrides --steps
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Batch size in images or sequences [default: 32 for a ViT (64 for smoke), 16 for a GPT]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate [default: 2e-3 for a ViT, 3e-3 for a GPT]
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// Peak learning rate of the prior logits
    #[arg(long, default_value_t = 1e-2)]
    pub prior_lr: f32,
    /// Decoupled weight decay of weight matrices
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub weight_decay: f32,
    /// Warmup steps of the learning-rate schedule [default: 5% of the steps]
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Evaluate and save a checkpoint every N steps [default: a quarter of the steps]
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Evaluate on at most N batches [default: the whole test split for a ViT, 16 batches for a GPT]
    #[arg(long)]
    pub eval_batches: Option<usize>,
    /// Label smoothing of the classification loss
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    /// Mirror training images left to right at random (images only)
    #[arg(long)]
    pub flip: bool,
    /// Shift training images by up to N pixels at random, filling with zeros (images only)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub shift: usize,
    /// Seed of initialisation and data order
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Dense attention implementation
    #[arg(long, value_enum, default_value_t = AttentionPath::Fused)]
    pub attention: AttentionPath,
    /// Hide the progress bar
    #[arg(long)]
    pub quiet: bool,
    /// Save a checkpoint and stop after N steps; `fiak train --resume DIR` continues
    #[arg(long)]
    pub stop_after: Option<usize>,
}

/// Data source flags.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data set: an IDX, CIFAR-10 or image-class folder (ViT), or a text file or folder (GPT);
    /// default: the bundled Fashion-MNIST subset or Moby-Dick
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Tokenizer of text data
    #[arg(long, value_enum, default_value_t = TokenizerArg::Byte)]
    pub tokenizer: TokenizerArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenizerArg {
    Byte,
    Gpt2,
}

impl TokenizerArg {
    pub fn kind(self) -> TokenizerKind {
        match self {
            TokenizerArg::Byte => TokenizerKind::Byte,
            TokenizerArg::Gpt2 => TokenizerKind::Gpt2,
        }
    }
}

/// FiAK flags of a model.
#[derive(Args, Debug, Clone)]
pub struct FiakArgs {
    /// Prior of every attention layer
    #[arg(long, value_enum)]
    pub prior: Option<PriorKind>,
    /// Learning mode of the priors
    #[arg(long, value_enum, default_value_t = PriorLearning::Gd)]
    pub prior_learning: PriorLearning,
    /// Logit kernel of new models
    #[arg(long, value_enum, default_value_t = LogitArg::Dot)]
    pub logits: LogitArg,
}

/// The logit kernel as a command-line value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogitArg {
    /// q.k / sqrt(d): standard softmax attention
    Dot,
    /// -|q - k|^2 / (2 sqrt(d)): the Gaussian-mixture form
    Gaussian,
}

impl LogitArg {
    pub fn kernel(self) -> LogitKernel {
        match self {
            LogitArg::Dot => LogitKernel::Dot,
            LogitArg::Gaussian => LogitKernel::Gaussian,
        }
    }
}

/// Loads the data of a model kind. Image data is normalised with the training set's channel
/// statistics, or with `stats` when given (a trained model's).
pub fn load_task(
    kind: ModelKind,
    data: &DataArgs,
    image_shape: (usize, usize),
    stats: Option<ChannelStats>,
) -> Result<(TaskData, Option<ChannelStats>, usize)> {
    match kind {
        ModelKind::Vit => {
            let (channels, size) = image_shape;
            let mut train = load_image_dataset(data.data.as_deref(), Split::Train, channels, size, size)?;
            let mut test = load_image_dataset(data.data.as_deref(), Split::Test, channels, size, size)?;
            let stats = stats.unwrap_or_else(|| train.channel_stats());
            train.normalize(&stats)?;
            test.normalize(&stats)?;
            log::info!(
                "images: {} training, {} test, {} classes, [{}, {}, {}]",
                train.len,
                test.len,
                train.classes,
                train.channels,
                train.height,
                train.width
            );
            let classes = train.classes;
            Ok((
                TaskData::Images {
                    train: Arc::new(train),
                    test: Arc::new(test),
                },
                Some(stats),
                classes,
            ))
        }
        ModelKind::Gpt => {
            let corpus = load_text(data.data.as_deref(), data.tokenizer.kind())?;
            log::info!(
                "text: {} training and {} validation tokens ({}) from {}",
                corpus.train.len(),
                corpus.validation.len(),
                corpus.tokenizer,
                corpus.source.display()
            );
            let vocab = corpus.vocab_size;
            Ok((
                TaskData::Text {
                    train: Arc::new(corpus.train),
                    validation: Arc::new(corpus.validation),
                },
                None,
                vocab,
            ))
        }
    }
}

/// Builds a new model of a preset, sized for the data.
pub fn new_model(
    kind: ModelKind,
    preset: &str,
    classes_or_vocab: usize,
    stats: Option<&ChannelStats>,
    fiak: &FiakArgs,
    seed: u64,
) -> Result<Model> {
    match kind {
        ModelKind::Vit => {
            let mut config = VitConfig::preset(preset, classes_or_vocab)?;
            if let Some(stats) = stats {
                config.pixel_mean = stats.mean.clone();
                config.pixel_std = stats.std.clone();
            }
            config.fiak.logits = fiak.logits.kernel();
            if let Some(prior) = fiak.prior {
                config.fiak.prior = prior;
                config.fiak.learning = fiak.prior_learning;
            }
            Ok(Model::Vit(Vit::new(config, seed)?))
        }
        ModelKind::Gpt => {
            let mut config = GptConfig::preset(preset)?;
            config.vocab_size = classes_or_vocab;
            if classes_or_vocab != 256 {
                config.tokenizer = "gpt2".to_string();
            }
            config.fiak.logits = fiak.logits.kernel();
            if let Some(prior) = fiak.prior {
                config.fiak.prior = prior;
                config.fiak.learning = fiak.prior_learning;
            }
            Ok(Model::Gpt(Gpt::new(config, seed)?))
        }
    }
}

pub fn default_preset(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Vit => "p7",
        ModelKind::Gpt => "byte-64",
    }
}

/// Steps, batch size, learning rate and evaluation interval: the flags where given, else the
/// defaults of the model kind and preset.
pub fn train_options(kind: ModelKind, preset: &str, args: &TrainArgs, train_len: usize) -> Result<TrainOptions> {
    let smoke = preset == "smoke";
    // Defaults sized for a CPU driver: about ten minutes of training on two cores with the
    // default presets (see docs/BENCHMARKS.md for step times).
    let (batch, steps, lr) = match kind {
        // Small batches and many steps learn the small bundled subset best in the time.
        ModelKind::Vit if smoke => (64, 60, 2e-3),
        ModelKind::Vit => (32, 1600, 2e-3),
        ModelKind::Gpt => (16, if smoke { 60 } else { 1500 }, 3e-3),
    };
    let batch_size = args.batch_size.unwrap_or(batch);
    if batch_size == 0 {
        return Err(Error::invalid("--batch-size", 0, "must be at least 1"));
    }
    let steps = match (args.epochs, kind) {
        (Some(epochs), ModelKind::Vit) => {
            if epochs.is_nan() || epochs <= 0.0 {
                return Err(Error::invalid("--epochs", epochs, "must be positive"));
            }
            ((epochs * train_len as f64) / batch_size as f64).ceil() as usize
        }
        (Some(_), ModelKind::Gpt) => {
            return Err(Error::invalid(
                "--epochs",
                "for gpt",
                "text training counts --steps; drop --epochs",
            ));
        }
        (None, _) => args.steps.unwrap_or(steps),
    };
    if steps == 0 {
        return Err(Error::invalid("--steps", 0, "must be at least 1"));
    }
    if args.eval_batches == Some(0) {
        return Err(Error::invalid("--eval-batches", 0, "must be at least 1"));
    }
    if args.eval_every == Some(0) {
        return Err(Error::invalid("--eval-every", 0, "must be at least 1"));
    }
    if !(0.0..1.0).contains(&args.label_smoothing) {
        return Err(Error::invalid(
            "--label-smoothing",
            args.label_smoothing,
            "must lie in [0, 1)",
        ));
    }
    if args.weight_decay.is_nan() || args.weight_decay < 0.0 {
        return Err(Error::invalid("--weight-decay", args.weight_decay, "must be 0 or more"));
    }
    let lr = args.lr.unwrap_or(lr);
    if lr.is_nan() || lr <= 0.0 || lr.is_infinite() {
        return Err(Error::invalid("--lr", lr, "must be a positive number"));
    }
    Ok(TrainOptions {
        steps,
        batch_size,
        optimizer: AdamWConfig {
            lr,
            prior_lr: args.prior_lr,
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
        warmup_steps: args.warmup.unwrap_or((steps / 20).max(1)),
        eval_every: args.eval_every.unwrap_or(steps.div_ceil(4)).max(1),
        log_every: 10.min(steps),
        // Text validation splits run to a hundred thousand tokens and more: 16 batches by default.
        eval_batches: args.eval_batches.or(match kind {
            ModelKind::Vit => None,
            ModelKind::Gpt => Some(16),
        }),
        seed: args.seed,
        label_smoothing: args.label_smoothing,
        augment: crate::data::Augment {
            flip: args.flip,
            shift: args.shift,
        },
        attention: args.attention,
        progress: !args.quiet,
        stop_after: args.stop_after,
    })
}

/// Checks that the data fit a loaded model: its class count or vocabulary.
pub fn check_data_fits(model: &Model, data: &TaskData, classes_or_vocab: usize, source: &DataArgs) -> Result<()> {
    let (expected, what) = match (model, data) {
        (Model::Vit(m), TaskData::Images { .. }) => (m.config.num_classes, "classes"),
        (Model::Gpt(m), TaskData::Text { .. }) => (m.config.vocab_size, "vocabulary entries"),
        _ => return Ok(()),
    };
    if classes_or_vocab > expected {
        let name = source
            .data
            .as_ref()
            .map_or("the bundled data".to_string(), |p| p.display().to_string());
        return Err(Error::invalid(
            "--data",
            name,
            format!(
                "has {classes_or_vocab} {what} but the model was built for {expected}; train a new model on this data"
            ),
        ));
    }
    Ok(())
}

/// Returns the kind and image shape of a saved model, for loading its data.
pub fn model_data_shape(model: &Model) -> (ModelKind, (usize, usize), Option<ChannelStats>) {
    match model {
        Model::Vit(m) => {
            let stats = (!m.config.pixel_mean.is_empty()).then(|| ChannelStats {
                mean: m.config.pixel_mean.clone(),
                std: m.config.pixel_std.clone(),
            });
            (ModelKind::Vit, (m.config.in_chans, m.config.img_size), stats)
        }
        Model::Gpt(_) => (ModelKind::Gpt, (0, 0), None),
    }
}

pub fn check_out_dir(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(Error::file(out, "exists and is not a folder; choose another --out"));
    }
    Ok(())
}
