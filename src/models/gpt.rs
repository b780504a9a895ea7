//! GPT in the GPT-2 style (Radford et al., "Language Models are Unsupervised Multitask
//! Learners", 2019): token and position embeddings, causal pre-norm blocks with LayerNorm eps
//! 1e-5 and tanh GELU, a final norm, and a head tied to the token embedding. Parameter names
//! and layouts follow Hugging Face's GPT-2 (Conv1D weights [in, out]).

use crate::autograd::{ParamGroup, ParamStore, Var, WeightLayout};
use crate::error::{Error, Result};
use crate::fiak::{FiakConfig, PriorKind};
use crate::nn::{Attention, AttentionOptions, Block, LayerNorm, Linear, Mlp, SplitMix64};
use crate::ops::elementwise::GeluKind;
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GptConfig {
    pub vocab_size: usize,
    /// Context length.
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f32,
    /// `byte` (vocabulary 256) or `gpt2` (BPE, vocabulary 50257).
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
    #[serde(default)]
    pub fiak: FiakConfig,
}

fn default_layer_norm_epsilon() -> f32 {
    1e-5
}

fn default_tokenizer() -> String {
    "byte".to_string()
}

impl GptConfig {
    /// Named presets of byte-level models.
    ///
    /// - `smoke`: context 32, width 32, 1 layer, 2 heads: seconds on a CPU driver.
    /// - `byte-64` (default): context 64, width 64, 3 layers, 4 heads.
    /// - `byte-128`: context 128, width 128, 4 layers, 4 heads.
    /// - `byte-512`: context 512, width 128, 4 layers, 4 heads.
    /// - `small-512`: context 512, width 384, 6 layers, 6 heads, for a real GPU.
    pub fn preset(name: &str) -> Result<GptConfig> {
        let (n_positions, n_embd, n_layer, n_head) = match name {
            "smoke" => (32, 32, 1, 2),
            "byte-64" => (64, 64, 3, 4),
            "byte-128" => (128, 128, 4, 4),
            "byte-512" => (512, 128, 4, 4),
            "small-512" => (512, 384, 6, 6),
            _ => {
                return Err(Error::invalid(
                    "preset",
                    name,
                    "GPT presets are smoke, byte-64, byte-128, byte-512 and small-512",
                ));
            }
        };
        Ok(GptConfig {
            vocab_size: 256,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            layer_norm_epsilon: 1e-5,
            tokenizer: "byte".to_string(),
            fiak: FiakConfig::default(),
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::invalid(
                "n_head",
                self.n_head,
                format!("must divide n_embd {}", self.n_embd),
            ));
        }
        Ok(())
    }
}

pub struct Gpt {
    pub config: GptConfig,
    pub params: ParamStore,
    wte: Var,
    wpe: Var,
    pub blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt {
    /// Builds a freshly initialised model (GPT-2's initialisation: normal with std 0.02, output
    /// projections scaled by 1 / sqrt(2 * n_layer)).
    pub fn new(config: GptConfig, seed: u64) -> Result<Gpt> {
        config.validate()?;
        let mut rng = SplitMix64::new(seed);
        let mut params = ParamStore::new();
        let (d, t, v) = (config.n_embd, config.n_positions, config.vocab_size);
        let std = 0.02;
        let proj_std = std / (2.0 * config.n_layer as f32).sqrt();

        let wte = params.add(
            "wte.weight",
            Tensor::from_f32(&[v, d], &rng.normal_vec(v * d, std))?,
            ParamGroup::Decay,
        );
        let wpe = params.add(
            "wpe.weight",
            Tensor::from_f32(&[t, d], &rng.normal_vec(t * d, 0.01))?,
            ParamGroup::NoDecay,
        );

        let eps = config.layer_norm_epsilon;
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let prefix = format!("h.{i}");
            let norm1 = LayerNorm::new(&mut params, &format!("{prefix}.ln_1"), d, eps);
            let mut attn = Attention::new(
                &mut params,
                &format!("{prefix}.attn"),
                ("c_attn", "c_proj"),
                d,
                config.n_head,
                t,
                true,
                config.fiak.logits,
                WeightLayout::InOut,
                (std, proj_std),
                &mut rng,
            );
            if config.fiak.prior != PriorKind::None {
                attn.add_priors(&mut params, config.fiak.prior, config.fiak.learning);
            }
            let norm2 = LayerNorm::new(&mut params, &format!("{prefix}.ln_2"), d, eps);
            let mlp = Mlp {
                fc1: Linear::new(
                    &mut params,
                    &format!("{prefix}.mlp.c_fc"),
                    d,
                    4 * d,
                    true,
                    WeightLayout::InOut,
                    std,
                    &mut rng,
                ),
                fc2: Linear::new(
                    &mut params,
                    &format!("{prefix}.mlp.c_proj"),
                    4 * d,
                    d,
                    true,
                    WeightLayout::InOut,
                    proj_std,
                    &mut rng,
                ),
                gelu: GeluKind::Tanh,
            };
            blocks.push(Block {
                norm1,
                attn,
                norm2,
                mlp,
            });
        }
        let ln_f = LayerNorm::new(&mut params, "ln_f", d, eps);
        Ok(Gpt {
            config,
            params,
            wte,
            wpe,
            blocks,
            ln_f,
        })
    }

    /// Logits [B * T, V] of tokens [B, T] (u32; `tokens_host` is the same on the CPU).
    pub fn forward(&self, tokens: &Tensor, tokens_host: &[u32], options: &AttentionOptions) -> Result<Var> {
        let c = &self.config;
        if tokens.rank() != 2 || tokens.dim(1) > c.n_positions || tokens.dim(1) == 0 {
            return Err(Error::shape(
                "Gpt::forward",
                format!(
                    "tokens must be [B, T] with 1 <= T <= {}, got {:?}",
                    c.n_positions,
                    tokens.shape()
                ),
            ));
        }
        if let Some(bad) = tokens_host.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::invalid(
                "token",
                bad,
                format!("outside the vocabulary of {}", c.vocab_size),
            ));
        }
        let (b, t, d) = (tokens.dim(0), tokens.dim(1), c.n_embd);

        let x = Var::embedding(&self.wte, tokens, tokens_host.to_vec())?; // [B, T, D]
        let positions: Vec<u32> = (0..t as u32).collect();
        let position_ids = Tensor::from_u32(&[t], &positions)?;
        let pos = Var::embedding(&self.wpe, &position_ids, positions)?; // [T, D]
        let mut x = x.add(&pos)?;
        for block in &self.blocks {
            x = block.forward(&x, options)?;
        }
        let x = self.ln_f.forward(&x)?.reshape(&[b * t, d])?;
        x.matmul(&self.wte, false, true) // [B * T, V], tied head
    }

    pub fn attention_layers(&self) -> Vec<&Attention> {
        self.blocks.iter().map(|b| &b.attn).collect()
    }

    pub fn attention_layers_mut(&mut self) -> Vec<&mut Attention> {
        self.blocks.iter_mut().map(|b| &mut b.attn).collect()
    }
}
