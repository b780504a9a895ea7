//! `fiak prune`: build pruning patterns from a model's learned priors.

use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::fiak::{PruneScope, PruneSpec, accounting};
use crate::models::Model;

#[derive(Args, Debug)]
pub struct PruneCmd {
    /// Model directory with learned priors
    #[arg(long)]
    pub model_dir: PathBuf,
    /// Fraction of attention scores to drop in total, in [0, 1)
    #[arg(long, default_value_t = 0.7, allow_negative_numbers = true)]
    pub scores: f32,
    /// Fraction of key positions per head to drop first, in [0, 1)
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub keys: f32,
    /// Ranking scope of score pruning
    #[arg(long, value_enum, default_value_t = PruneScope::Layer)]
    pub scope: PruneScope,
    /// Output model directory
    #[arg(long)]
    pub out: PathBuf,
    /// Prune even when the priors are uniform (untrained), which makes the pattern arbitrary
    #[arg(long)]
    pub force: bool,
}

pub fn run(cmd: &PruneCmd) -> Result<()> {
    let spec = PruneSpec {
        scores: cmd.scores,
        keys: cmd.keys,
        scope: cmd.scope,
    };
    spec.validate()?;
    if cmd.out == cmd.model_dir || cmd.out.join("config.json").exists() {
        return Err(Error::file(
            &cmd.out,
            "contains a model already; choose an empty --out so no model is overwritten",
        ));
    }
    let mut model = Model::load(&cmd.model_dir)?;
    model
        .prune(&spec, cmd.force)
        .map_err(|e| Error::file(&cmd.model_dir, e.to_string()))?;
    model.save(&cmd.out)?;
    let cost = accounting::model_cost(&model.attention_layers());
    println!(
        "{}: kept {:.1}% of scores and {:.1}% of keys; attention {:.3} MFLOPs per sample (dense {:.3})",
        cmd.out.display(),
        100.0 * cost.kept_scores,
        100.0 * cost.kept_keys,
        cost.flops as f64 / 1e6,
        cost.dense_flops as f64 / 1e6
    );
    Ok(())
}
