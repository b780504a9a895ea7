//! `fiak eval`: held-out accuracy or perplexity, throughput, and attention costs.

use std::path::PathBuf;

use clap::Args;

use super::common::{self, DataArgs};
use crate::autograd::AttentionPath;
use crate::error::{Error, Result};
use crate::fiak::accounting;
use crate::models::Model;
use crate::train;

#[derive(Args, Debug)]
pub struct EvalCmd {
    /// Model directory with config.json and model.safetensors
    #[arg(long)]
    pub model_dir: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Batch size in images or sequences
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Evaluate on at most N batches
    #[arg(long)]
    pub max_batches: Option<usize>,
    /// Dense attention implementation
    #[arg(long, value_enum, default_value_t = AttentionPath::Fused)]
    pub attention: AttentionPath,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: &EvalCmd) -> Result<()> {
    if cmd.batch_size == 0 {
        return Err(Error::invalid("--batch-size", 0, "must be at least 1"));
    }
    if cmd.max_batches == Some(0) {
        return Err(Error::invalid("--max-batches", 0, "must be at least 1"));
    }
    let model = Model::load(&cmd.model_dir)?;
    let (kind, shape, stats) = common::model_data_shape(&model);
    let (data, _, size) = common::load_task(kind, &cmd.data, shape, stats)?;
    common::check_data_fits(&model, &data, size, &cmd.data)?;
    let result = train::evaluate(&model, &data, cmd.batch_size, cmd.max_batches, cmd.attention)?;
    let cost = accounting::model_cost(&model.attention_layers());

    if cmd.json {
        let value = serde_json::json!({ "model_dir": cmd.model_dir, "eval": result, "attention": cost });
        println!("{}", serde_json::to_string_pretty(&value).expect("plain values"));
        return Ok(());
    }
    let unit = if matches!(model, Model::Vit(_)) {
        "images"
    } else {
        "tokens"
    };
    println!("{}: {}", cmd.model_dir.display(), train::describe(&result));
    println!(
        "throughput: {:.1} {unit}/s over {} {unit}",
        result.throughput, result.samples
    );
    println!(
        "attention per sample: {:.3} MFLOPs (dense {:.3}), scores memory {:.1} KiB (dense {:.1} KiB), kept scores {:.1}%, kept keys {:.1}%",
        cost.flops as f64 / 1e6,
        cost.dense_flops as f64 / 1e6,
        cost.score_bytes as f64 / 1024.0,
        cost.dense_score_bytes as f64 / 1024.0,
        100.0 * cost.kept_scores,
        100.0 * cost.kept_keys
    );
    Ok(())
}
