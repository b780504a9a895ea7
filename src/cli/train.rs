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
    /// Continue the interrupted run in this directory with the options it was started with
    #[arg(long, conflicts_with_all = ["out", "init", "model", "preset"])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub fiak: FiakArgs,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// Data source of a run, saved beside its checkpoints so `--resume` finds the data.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunSource {
    data: Option<PathBuf>,
    tokenizer: String,
}

const RUN_SOURCE: &str = "run_source.json";

pub fn run(cmd: &TrainCmd) -> Result<()> {
    if let Some(dir) = &cmd.resume {
        return resume(cmd, dir);
    }
    let out = cmd.out.clone().expect("clap requires --out or --resume");
    common::check_out_dir(&out)?;
    if crate::checkpoint::has_training_state(&out) || out.join("config.json").exists() {
        return Err(Error::file(
            &out,
            "contains an earlier run or model; continue it with `fiak train --resume DIR`, or choose another --out",
        ));
    }

    let (mut model, data, preset) = match &cmd.init {
        Some(dir) => {
            if cmd.model.is_some() || cmd.preset.is_some() {
                log::warn!(
                    "--model and --preset are ignored with --init: the model comes from {}",
                    dir.display()
                );
            }
            let mut model = Model::load(dir)?;
            if let Some(prior) = cmd.fiak.prior
                && model.fiak().prior != PriorKind::None
                && prior != model.fiak().prior
            {
                log::warn!(
                    "--prior {prior} is ignored: {} has {} priors already",
                    dir.display(),
                    model.fiak().prior
                );
            }
            if let Some(prior) = cmd.fiak.prior
                && prior != PriorKind::None
                && model.fiak().prior == PriorKind::None
            {
                log::info!(
                    "adding {prior} priors ({}) to {}; outputs are unchanged",
                    cmd.fiak.prior_learning,
                    dir.display()
                );
                model.add_priors(prior, cmd.fiak.prior_learning);
            }
            let (kind, shape, stats) = common::model_data_shape(&model);
            let (data, _, size) = common::load_task(kind, &cmd.data, shape, stats)?;
            common::check_data_fits(&model, &data, size, &cmd.data)?;
            (model, data, cmd.preset.clone().unwrap_or_default())
        }
        None => {
            let kind = cmd
                .model
                .ok_or_else(|| Error::invalid("--model", "", "is missing: give --model vit|gpt, or --init DIR"))?;
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
    std::fs::create_dir_all(&out).map_err(|e| Error::file(&out, format!("cannot create the output folder: {e}")))?;
    let source = RunSource {
        data: cmd.data.data.clone(),
        tokenizer: format!("{:?}", cmd.data.tokenizer).to_lowercase(),
    };
    crate::checkpoint::write_atomic(
        &out.join(RUN_SOURCE),
        serde_json::to_string_pretty(&source).expect("plain fields").as_bytes(),
    )?;
    let summary = train::train(&mut model, &data, &options, &out)?;
    print_summary(&out, &model, &summary);
    Ok(())
}

fn print_summary(out: &std::path::Path, model: &Model, summary: &train::TrainSummary) {
    let unit = match model {
        Model::Vit(_) => "images",
        Model::Gpt(_) => "tokens",
    };
    println!(
        "{}: at step {} after {:.1} s of training ({:.0} {unit}/s); held-out {}",
        out.display(),
        summary.steps,
        summary.seconds,
        summary.throughput,
        train::describe(&summary.final_eval)
    );
}

/// Continues the run in `dir` with the options it was started with.
fn resume(cmd: &TrainCmd, dir: &std::path::Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::file(
            dir,
            "not found; --resume takes the --out folder of an earlier run",
        ));
    }
    if !crate::checkpoint::has_training_state(dir) {
        return Err(Error::file(
            dir,
            "contains no training state to resume; start a run with --out",
        ));
    }
    let (state, _) = crate::checkpoint::load_training_state(dir)?;
    let mut options: train::TrainOptions = serde_json::from_value(state["options"].clone())
        .map_err(|e| Error::file(dir.join("training_state.json"), format!("invalid options: {e}")))?;
    options.progress = !cmd.train.quiet;
    options.stop_after = cmd.train.stop_after;

    let mut data_args = cmd.data.clone();
    if data_args.data.is_none()
        && let Ok(text) = std::fs::read_to_string(dir.join(RUN_SOURCE))
        && let Ok(source) = serde_json::from_str::<RunSource>(&text)
    {
        data_args.data = source.data;
        if source.tokenizer == "gpt2" {
            data_args.tokenizer = common::TokenizerArg::Gpt2;
        }
    }
    let mut model = Model::load(dir)?;
    let (kind, shape, stats) = common::model_data_shape(&model);
    let (data, _, _) = common::load_task(kind, &data_args, shape, stats)?;
    let summary = train::train(&mut model, &data, &options, dir)?;
    print_summary(dir, &model, &summary);
    Ok(())
}
