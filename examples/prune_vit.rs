//! The FiAK pipeline on the bundled Fashion-MNIST subset in library calls: a dense ViT
//! baseline, learned priors, pruning of 70% of the attention scores, fine-tuning with the
//! pattern fixed, and a comparison. Minutes on a laptop GPU; about ten on a CPU driver.
//!
//!     cargo run --release --example prune_vit [-- PRESET]

use std::sync::Arc;

use fiak::autograd::AttentionPath;
use fiak::data::{Split, load_image_dataset};
use fiak::fiak::{PriorKind, PriorLearning, PruneScope, PruneSpec, accounting};
use fiak::models::{Model, Vit, VitConfig};
use fiak::train::{self, TaskData, TrainOptions};

fn main() -> fiak::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,wgpu_hal=off,wgpu_core=warn"))
        .init();
    let preset = std::env::args().nth(1).unwrap_or_else(|| "smoke".to_string());
    let out = std::env::temp_dir().join(format!("fiak-example-{preset}"));

    // Data: 28 x 28 grey images, normalised with the training set's statistics.
    let mut train_set = load_image_dataset(None, Split::Train, 1, 28, 28)?;
    let mut test_set = load_image_dataset(None, Split::Test, 1, 28, 28)?;
    let stats = train_set.channel_stats();
    train_set.normalize(&stats)?;
    test_set.normalize(&stats)?;
    let data = TaskData::Images {
        train: Arc::new(train_set),
        test: Arc::new(test_set),
    };

    let steps = if preset == "smoke" { 150 } else { 1500 };
    let options = |steps: usize| TrainOptions {
        steps,
        batch_size: 64,
        warmup_steps: steps / 20,
        eval_every: steps,
        eval_batches: Some(8),
        ..TrainOptions::default()
    };

    // 1. Dense baseline.
    let mut config = VitConfig::preset(&preset, 10)?;
    config.pixel_mean = stats.mean.clone();
    config.pixel_std = stats.std.clone();
    let mut model = Model::Vit(Vit::new(config, 0)?);
    let dense = train::train(&mut model, &data, &options(steps), &out.join("dense"))?;

    // 2. FiAK priors, zero-initialised so the outputs do not change, learned from the baseline.
    model.add_priors(PriorKind::EntryKey, PriorLearning::Gd);
    train::train(&mut model, &data, &options(steps / 3), &out.join("fiak"))?;

    // 3. Prune 70% of the scores, ranked across each layer, and 4. fine-tune.
    model.prune(
        &PruneSpec {
            scores: 0.7,
            keys: 0.0,
            scope: PruneScope::Layer,
        },
        false,
    )?;
    let pruned = train::train(&mut model, &data, &options(steps / 3), &out.join("pruned"))?;

    // 5. Compare.
    let cost = accounting::model_cost(&model.attention_layers());
    let full = train::evaluate(&model, &data, 64, None, AttentionPath::Fused)?;
    println!("dense baseline: {}", train::describe(&dense.final_eval));
    println!(
        "pruned, fine-tuned: {} (whole test set: {})",
        train::describe(&pruned.final_eval),
        train::describe(&full)
    );
    println!(
        "attention: {:.1}% of scores kept, {:.5} GFLOPs per image instead of {:.5}",
        100.0 * cost.kept_scores,
        cost.flops as f64 / 1e9,
        cost.dense_flops as f64 / 1e9
    );
    Ok(())
}
