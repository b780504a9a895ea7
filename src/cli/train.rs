//! `fiak train`: train a dense or FiAK model, or fine-tune one with `--init`.

use std::path::PathBuf;

use clap::Args;

use super::common::{self, DataArgs, FiakArgs, ModelKind, TrainArgs};
use crate::error::{Error, Result};
use crate::fiak::PriorKind;
use crate::models::Model;
use crate::train;

#[derive(Args, Debug)]
pub struct TrainCmd {
    /// Model family of a new model
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// Preset of a new model (vit: smoke, p7, p4, p2, small-p4; gpt: smoke, byte-64, byte-128, byte-512, small-512)
    #[arg(long)]
    pub preset: Option<String>,
    /// Start from this model directory (a dense baseline, or a pruned model to fine-tune with
    /// its pattern fixed)
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Output directory: checkpoints, metrics.jsonl, resolved options
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the interrupted run in this directory
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub fiak: FiakArgs,
    #[command(flatten)]
    pub train: TrainArgs,
}

pub fn run(cmd: &TrainCmd) -> Result<()> {
    let out = cmd
        .resume
        .clone()
        .or_else(|| cmd.out.clone())
        .expect("clap requires --out or --resume");
    common::check_out_dir(&out)?;
    if cmd.resume.is_some() && !crate::checkpoint::has_training_state(&out) {
        return Err(Error::file(
            &out,
            "holds no training state to resume; start a run with --out",
        ));
    }

    let (mut model, data, preset) = match &cmd.init {
        Some(dir) => {
            let mut model = Model::load(dir)?;
            if let Some(prior) = cmd.fiak.prior
                && prior != PriorKind::None
                && model.fiak().prior == PriorKind::None
            {
                log::info!(
                    "adding {prior:?} priors ({:?}) to {}; outputs are unchanged",
                    cmd.fiak.prior_learning,
                    dir.display()
                );
                model.add_priors(prior, cmd.fiak.prior_learning);
            }
            let (kind, shape, stats) = common::model_data_shape(&model);
            let (data, _, _) = common::load_task(kind, &cmd.data, shape, stats)?;
            (model, data, cmd.preset.clone().unwrap_or_default())
        }
        None => {
            let kind = cmd
                .model
                .ok_or_else(|| Error::invalid("--model", "(missing)", "give --model vit|gpt, or --init DIR"))?;
            let preset = cmd
                .preset
                .clone()
                .unwrap_or_else(|| common::default_preset(kind).to_string());
            let shape = (1, 28);
            let (data, stats, size) = common::load_task(kind, &cmd.data, shape, None)?;
            let model = common::new_model(kind, &preset, size, stats.as_ref(), &cmd.fiak, cmd.train.seed)?;
            (model, data, preset)
        }
    };

    let (kind, _, _) = common::model_data_shape(&model);
    let train_len = match &data {
        train::TaskData::Images { train, .. } => train.len,
        train::TaskData::Text { train, .. } => train.len(),
    };
    let options = common::train_options(kind, &preset, &cmd.train, train_len)?;
    log::info!(
        "training {} ({} parameters) for {} steps of batch {} into {}",
        model.kind(),
        model.params().numel(),
        options.steps,
        options.batch_size,
        out.display()
    );
    let summary = train::train(&mut model, &data, &options, &out)?;
    println!(
        "{}: {} steps in {:.1} s ({:.0} samples/s); held-out {}",
        out.display(),
        summary.steps,
        summary.seconds,
        summary.throughput,
        train::describe(&summary.final_eval)
    );
    Ok(())
}
