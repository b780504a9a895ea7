//! `fiak generate`: sample text from a GPT model.

use std::path::PathBuf;

use clap::Args;

use crate::autograd::no_grad;
use crate::data::TokenizerKind;
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::{AttentionOptions, SplitMix64};
use crate::tensor::Tensor;

#[derive(Args, Debug)]
pub struct GenerateCmd {
    /// GPT model directory
    #[arg(long)]
    pub model_dir: PathBuf,
    /// Text the sample continues
    #[arg(long, default_value = "The ")]
    pub prompt: String,
    /// Tokens to generate
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// Softmax temperature; lower is more conservative (use --top-k 1 for greedy decoding)
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only (0: all)
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Seed of the sampler
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(cmd: &GenerateCmd) -> Result<()> {
    if cmd.temperature.is_nan() || cmd.temperature <= 0.0 {
        return Err(Error::invalid("--temperature", cmd.temperature, "must be positive"));
    }
    let model = Model::load(&cmd.model_dir)?;
    let Model::Gpt(gpt) = &model else {
        return Err(Error::invalid(
            "--model-dir",
            cmd.model_dir.display(),
            "contains a ViT; generate needs a GPT model",
        ));
    };
    let tokenizer = match gpt.config.tokenizer.as_str() {
        "gpt2" => TokenizerKind::Gpt2,
        _ => TokenizerKind::Byte,
    };
    let mut tokens = tokenizer.encode(&cmd.prompt);
    if tokens.is_empty() {
        return Err(Error::invalid("--prompt", "\"\"", "needs at least one token"));
    }
    let text = generate(&model, &mut tokens, cmd.tokens, cmd.temperature, cmd.top_k, cmd.seed)?;
    let decoded = tokenizer
        .decode(&text)
        .unwrap_or_else(|_| String::from_utf8_lossy(&tokenizer.decode_bytes(&text).unwrap_or_default()).into_owned());
    println!("{}{}", cmd.prompt, decoded);
    Ok(())
}

/// Appends `count` sampled tokens to `tokens` and returns the new ones.
pub fn generate(
    model: &Model,
    tokens: &mut Vec<u32>,
    count: usize,
    temperature: f32,
    top_k: usize,
    seed: u64,
) -> Result<Vec<u32>> {
    let Model::Gpt(gpt) = model else {
        return Err(Error::invalid("model", model.kind(), "generation needs a GPT"));
    };
    let context = gpt.config.n_positions;
    let vocab = gpt.config.vocab_size;
    // Priors and patterns are sized for the full context: pad on the right, which the causal
    // mask hides from every earlier position.
    let fixed_length = gpt
        .attention_layers()
        .iter()
        .any(|l| l.entry_prior.is_some() || l.key_prior.is_some() || l.pruned.is_some());
    let mut rng = SplitMix64::new(seed);
    let mut generated = Vec::with_capacity(count);

    for _ in 0..count {
        let window: Vec<u32> = tokens[tokens.len().saturating_sub(context)..].to_vec();
        let last = window.len() - 1;
        let mut input = window.clone();
        if fixed_length {
            input.resize(context, 0);
        }
        let t = input.len();
        let logits = no_grad(|| -> Result<Vec<f32>> {
            let ids = Tensor::from_u32(&[1, t], &input)?;
            let out = gpt.forward(&ids, &input, &AttentionOptions::default())?; // [t, V]
            Ok(out.value().to_f32_vec())
        })?;
        let row = &logits[last * vocab..(last + 1) * vocab];
        let next = sample(row, temperature, top_k, &mut rng);
        tokens.push(next);
        generated.push(next);
    }
    Ok(generated)
}

fn sample(logits: &[f32], temperature: f32, top_k: usize, rng: &mut SplitMix64) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let keep = if top_k == 0 {
        logits.len()
    } else {
        top_k.min(logits.len())
    };
    let max = logits[order[0]];
    let weights: Vec<f64> = order[..keep]
        .iter()
        .map(|&i| (((logits[i] - max) / temperature) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut draw = rng.uniform() * total;
    for (w, &i) in weights.iter().zip(&order) {
        if draw < *w {
            return i as u32;
        }
        draw -= w;
    }
    order[keep - 1] as u32
}
