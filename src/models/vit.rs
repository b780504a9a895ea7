//! Vision Transformer in the DeiT style (Touvron et al., "Training data-efficient image
//! transformers & distillation through attention", 2021): patch embedding, class token,
//! learned position embedding, pre-norm blocks with LayerNorm eps 1e-6 and exact GELU, a final
//! norm and a linear head on the class token. Parameter names follow timm.

use crate::autograd::{ParamStore, Var, WeightLayout};
use crate::error::{Error, Result};
use crate::fiak::{FiakConfig, PriorKind};
use crate::nn::{Attention, AttentionOptions, Block, LayerNorm, Linear, Mlp, SplitMix64};
use crate::ops::elementwise::GeluKind;
use crate::tensor::{DType, Tensor};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VitConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub num_classes: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f32,
    /// Per-channel pixel mean and standard deviation of the training set, applied to inputs
    /// before patching; empty for none.
    #[serde(default)]
    pub pixel_mean: Vec<f32>,
    #[serde(default)]
    pub pixel_std: Vec<f32>,
    #[serde(default)]
    pub fiak: FiakConfig,
}

impl VitConfig {
    /// Named presets for 28 x 28 grey images (Fashion-MNIST, MNIST).
    ///
    /// - `smoke`: patch 7 (17 tokens), width 32, 1 block, 2 heads: seconds on a CPU driver.
    /// - `p7` (default): patch 7 (17 tokens), width 64, 4 blocks, 4 heads, MLP ratio 2.
    /// - `p4`: patch 4 (50 tokens), width 64, 4 blocks, 4 heads, MLP ratio 2.
    /// - `p2`: patch 2 (197 tokens, DeiT's token count), width 64, 4 blocks, 4 heads.
    /// - `small-p4`: patch 4, width 192, 6 blocks, 3 heads, MLP ratio 4, for a real GPU.
    pub fn preset(name: &str, num_classes: usize) -> Result<VitConfig> {
        let (patch_size, embed_dim, depth, num_heads, mlp_ratio) = match name {
            "smoke" => (7, 32, 1, 2, 2.0),
            "p7" => (7, 64, 4, 4, 2.0),
            "p4" => (4, 64, 4, 4, 2.0),
            "p2" => (2, 64, 4, 4, 2.0),
            "small-p4" => (4, 192, 6, 3, 4.0),
            _ => {
                return Err(Error::invalid(
                    "preset",
                    name,
                    "ViT presets are smoke, p7, p4, p2 and small-p4",
                ));
            }
        };
        Ok(VitConfig {
            img_size: 28,
            patch_size,
            in_chans: 1,
            num_classes,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio,
            pixel_mean: Vec::new(),
            pixel_std: Vec::new(),
            fiak: FiakConfig::default(),
        })
    }

    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Sequence length with the class token.
    pub fn tokens(&self) -> usize {
        self.num_patches() + 1
    }

    pub fn patch_dim(&self) -> usize {
        self.in_chans * self.patch_size * self.patch_size
    }

    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            return Err(Error::invalid(
                "patch_size",
                self.patch_size,
                format!("must divide img_size {}", self.img_size),
            ));
        }
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(Error::invalid(
                "num_heads",
                self.num_heads,
                format!("must divide embed_dim {}", self.embed_dim),
            ));
        }
        Ok(())
    }
}

pub struct Vit {
    pub config: VitConfig,
    pub params: ParamStore,
    /// Patch embedding as a linear map of flattened patches: weight [D, C * P * P], which is
    /// timm's convolution weight [D, C, P, P] read row by row.
    patch_weight: Var,
    patch_bias: Var,
    cls_token: Var,
    pos_embed: Var,
    pub blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
}

impl Vit {
    /// Builds a freshly initialised model (timm's initialisation: truncated normal, std 0.02).
    pub fn new(config: VitConfig, seed: u64) -> Result<Vit> {
        config.validate()?;
        let mut rng = SplitMix64::new(seed);
        let mut params = ParamStore::new();
        let (d, n) = (config.embed_dim, config.tokens());
        let std = 0.02;

        let patch = config.patch_size;
        let patch_values = rng.trunc_normal(d * config.patch_dim(), std);
        let patch_weight = params.add(
            "patch_embed.proj.weight",
            Tensor::from_f32(&[d, config.in_chans, patch, patch], &patch_values)?,
            crate::autograd::ParamGroup::Decay,
        );
        let patch_bias = params.add(
            "patch_embed.proj.bias",
            Tensor::zeros(&[d], DType::F32),
            crate::autograd::ParamGroup::NoDecay,
        );
        let cls_token = params.add(
            "cls_token",
            Tensor::from_f32(&[1, 1, d], &rng.trunc_normal(d, std))?,
            crate::autograd::ParamGroup::NoDecay,
        );
        let pos_embed = params.add(
            "pos_embed",
            Tensor::from_f32(&[1, n, d], &rng.trunc_normal(n * d, std))?,
            crate::autograd::ParamGroup::NoDecay,
        );

        let hidden = (d as f32 * config.mlp_ratio) as usize;
        let mut blocks = Vec::with_capacity(config.depth);
        for i in 0..config.depth {
            let prefix = format!("blocks.{i}");
            let norm1 = LayerNorm::new(&mut params, &format!("{prefix}.norm1"), d, 1e-6);
            let mut attn = Attention::new(
                &mut params,
                &format!("{prefix}.attn"),
                ("qkv", "proj"),
                d,
                config.num_heads,
                n,
                false,
                config.fiak.logits,
                WeightLayout::OutIn,
                (std, std),
                &mut rng,
            );
            if config.fiak.prior != PriorKind::None {
                attn.add_priors(&mut params, config.fiak.prior, config.fiak.learning);
            }
            let norm2 = LayerNorm::new(&mut params, &format!("{prefix}.norm2"), d, 1e-6);
            let mlp = Mlp {
                fc1: Linear::new(
                    &mut params,
                    &format!("{prefix}.mlp.fc1"),
                    d,
                    hidden,
                    true,
                    WeightLayout::OutIn,
                    std,
                    &mut rng,
                ),
                fc2: Linear::new(
                    &mut params,
                    &format!("{prefix}.mlp.fc2"),
                    hidden,
                    d,
                    true,
                    WeightLayout::OutIn,
                    std,
                    &mut rng,
                ),
                gelu: GeluKind::Erf,
            };
            blocks.push(Block {
                norm1,
                attn,
                norm2,
                mlp,
            });
        }
        let norm = LayerNorm::new(&mut params, "norm", d, 1e-6);
        let head = Linear::new(
            &mut params,
            "head",
            d,
            config.num_classes,
            true,
            WeightLayout::OutIn,
            std,
            &mut rng,
        );

        Ok(Vit {
            config,
            params,
            patch_weight,
            patch_bias,
            cls_token,
            pos_embed,
            blocks,
            norm,
            head,
        })
    }

    /// Logits [B, classes] of patches [B, num_patches, C * P * P] (see [`patchify`]).
    pub fn forward(&self, patches: &Tensor, options: &AttentionOptions) -> Result<Var> {
        let c = &self.config;
        let (d, n) = (c.embed_dim, c.tokens());
        if patches.rank() != 3 || patches.dim(1) != c.num_patches() || patches.dim(2) != c.patch_dim() {
            return Err(Error::shape(
                "Vit::forward",
                format!(
                    "patches must be [B, {}, {}], got {:?}",
                    c.num_patches(),
                    c.patch_dim(),
                    patches.shape()
                ),
            ));
        }
        let weight = self.patch_weight.reshape(&[d, c.patch_dim()])?;
        let x = Var::constant(patches.clone()).linear(&weight, Some(&self.patch_bias))?; // [B, Np, D]
        let x = Var::concat_cls(&self.cls_token, &x)?; // [B, N, D]
        let mut x = x.add(&self.pos_embed.reshape(&[n, d])?)?;
        for block in &self.blocks {
            x = block.forward(&x, options)?;
        }
        let x = self.norm.forward(&x)?;
        let cls = x.select_token(0)?; // [B, D]
        self.head.forward(&cls) // [B, classes]
    }

    pub fn attention_layers(&self) -> Vec<&Attention> {
        self.blocks.iter().map(|b| &b.attn).collect()
    }

    pub fn attention_layers_mut(&mut self) -> Vec<&mut Attention> {
        self.blocks.iter_mut().map(|b| &mut b.attn).collect()
    }
}

/// Cuts images [B, C, H, W] into flattened patches [B, (H/P) * (W/P), C * P * P], ordered
/// (channel, row, column) inside a patch as a convolution weight [D, C, P, P] reads them.
/// With kernel = stride = P the patch embedding is then a matmul.
pub fn patchify(images: &[f32], batch: usize, channels: usize, size: usize, patch: usize) -> Vec<f32> {
    let grid = size / patch;
    let patch_dim = channels * patch * patch;
    let mut out = vec![0.0; batch * grid * grid * patch_dim];
    for b in 0..batch {
        for gy in 0..grid {
            for gx in 0..grid {
                let base = ((b * grid + gy) * grid + gx) * patch_dim;
                for ch in 0..channels {
                    for py in 0..patch {
                        let row = gy * patch + py;
                        let src = ((b * channels + ch) * size + row) * size + gx * patch;
                        let dst = base + (ch * patch + py) * patch;
                        out[dst..dst + patch].copy_from_slice(&images[src..src + patch]);
                    }
                }
            }
        }
    }
    out
}
