//! Saving and loading models as a directory with `config.json` and `model.safetensors`.
//! Pruned layers add `L.pattern.row_offsets` [H, N + 1] and `L.pattern.key_index` [nnz].

use std::collections::BTreeMap;
use std::path::Path;

use super::{Gpt, GptConfig, Vit, VitConfig};
use crate::autograd::ParamStore;
use crate::checkpoint::{self, TensorData};
use crate::error::{Error, Result};
use crate::fiak::{FiakConfig, PriorKind, PriorLearning, PruneSpec};
use crate::nn::{Attention, attention::Pruned};
use crate::ops::attention::Pattern;
use crate::tensor::DType;

/// A ViT or a GPT, for code that handles both.
pub enum Model {
    Vit(Vit),
    Gpt(Gpt),
}

impl Model {
    pub fn params(&self) -> &ParamStore {
        match self {
            Model::Vit(m) => &m.params,
            Model::Gpt(m) => &m.params,
        }
    }

    pub fn attention_layers(&self) -> Vec<&Attention> {
        match self {
            Model::Vit(m) => m.attention_layers(),
            Model::Gpt(m) => m.attention_layers(),
        }
    }

    pub fn fiak(&self) -> FiakConfig {
        match self {
            Model::Vit(m) => m.config.fiak,
            Model::Gpt(m) => m.config.fiak,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Model::Vit(_) => "vit",
            Model::Gpt(_) => "gpt",
        }
    }

    pub fn config_json(&self) -> serde_json::Value {
        let (model_type, value) = match self {
            Model::Vit(m) => ("vit", serde_json::to_value(&m.config)),
            Model::Gpt(m) => ("gpt2", serde_json::to_value(&m.config)),
        };
        let mut value = value.expect("a configuration of plain fields serialises");
        value["model_type"] = serde_json::Value::from(model_type);
        value
    }

    /// Adds zero-initialised priors to every attention layer (a uniform prior), which leaves
    /// the outputs unchanged, and records the setting in the model's configuration.
    pub fn add_priors(&mut self, kind: PriorKind, learning: PriorLearning) {
        let (params, layers, fiak) = match self {
            Model::Vit(m) => (
                &mut m.params,
                m.blocks.iter_mut().map(|b| &mut b.attn).collect::<Vec<_>>(),
                &mut m.config.fiak,
            ),
            Model::Gpt(m) => (
                &mut m.params,
                m.blocks.iter_mut().map(|b| &mut b.attn).collect::<Vec<_>>(),
                &mut m.config.fiak,
            ),
        };
        for layer in layers {
            layer.add_priors(params, kind, learning);
        }
        fiak.prior = kind;
        fiak.learning = learning;
    }

    /// Installs one pruning pattern per attention layer, in layer order.
    pub fn set_patterns(&mut self, patterns: Vec<Pattern>) -> Result<()> {
        let layers: Vec<&mut Attention> = match self {
            Model::Vit(m) => m.attention_layers_mut(),
            Model::Gpt(m) => m.attention_layers_mut(),
        };
        if layers.len() != patterns.len() {
            return Err(Error::invalid(
                "patterns",
                patterns.len(),
                format!("the model has {} attention layers", layers.len()),
            ));
        }
        for (layer, pattern) in layers.into_iter().zip(patterns) {
            layer.pruned = Some(Pruned::new(pattern)?);
        }
        Ok(())
    }

    /// Writes `config.json` and `model.safetensors` into `dir`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut tensors = Vec::new();
        for (name, var, _) in self.params().iter() {
            let value = var.value();
            tensors.push((
                name.to_string(),
                TensorData::from_f32(value.shape(), &value.to_f32_vec())?,
            ));
        }
        for layer in self.attention_layers() {
            if let Some(pruned) = &layer.pruned {
                let p = &pruned.pattern;
                tensors.push((
                    format!("{}.pattern.row_offsets", layer.name),
                    TensorData::from_u32(&[p.heads(), p.nq() + 1], p.row_offsets())?,
                ));
                tensors.push((
                    format!("{}.pattern.key_index", layer.name),
                    TensorData::from_u32(&[p.nnz()], p.key_index())?,
                ));
            }
        }
        checkpoint::save_model(dir, &self.config_json(), &tensors)
    }

    /// Reads a model directory written by [`Model::save`] or by the ecosystem (timm names for
    /// ViT, Hugging Face GPT-2 names). Shapes and names must fit the configuration.
    pub fn load(dir: &Path) -> Result<Model> {
        let (config, tensors) = checkpoint::load_model(dir)?;
        let config_path = dir.join("config.json");
        let model_type = config.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        let mut model = match model_type {
            "vit" => {
                let c: VitConfig = serde_json::from_value(config.clone())
                    .map_err(|e| Error::file(&config_path, format!("invalid ViT configuration: {e}")))?;
                Model::Vit(Vit::new(c, 0)?)
            }
            "gpt2" | "gpt" => {
                let c: GptConfig = serde_json::from_value(config.clone())
                    .map_err(|e| Error::file(&config_path, format!("invalid GPT configuration: {e}")))?;
                Model::Gpt(Gpt::new(c, 0)?)
            }
            other => {
                return Err(Error::file(
                    &config_path,
                    format!("model_type `{other}` is not `vit` or `gpt2`"),
                ));
            }
        };

        // Pattern tensors are not parameters: split them off.
        let (pattern_tensors, mut parameters): (BTreeMap<_, _>, BTreeMap<_, _>) =
            tensors.into_iter().partition(|(name, _)| name.contains(".pattern."));
        if let Model::Gpt(_) = &model {
            // Hugging Face GPT-2 files also hold the causal-mask buffers `h.{i}.attn.bias` and
            // `h.{i}.attn.masked_bias`, and some the tied `lm_head.weight`; none is a parameter.
            parameters.retain(|name, _| {
                let mask_buffer =
                    name.starts_with("h.") && (name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias"));
                !mask_buffer && name != "lm_head.weight"
            });
        }
        let mut patterns = Vec::new();
        for layer in model.attention_layers() {
            let name = &layer.name;
            let offsets = pattern_tensors.get(&format!("{name}.pattern.row_offsets"));
            let keys = pattern_tensors.get(&format!("{name}.pattern.key_index"));
            match (offsets, keys) {
                (Some(o), Some(k)) => {
                    let pattern = Pattern::from_csr(layer.heads, layer.tokens, layer.tokens, o.to_u32()?, k.to_u32()?)
                        .map_err(|e| Error::file(dir.join("model.safetensors"), format!("{name}.pattern: {e}")))?;
                    patterns.push(Some(pattern));
                }
                (None, None) => patterns.push(None),
                _ => {
                    return Err(Error::file(
                        dir.join("model.safetensors"),
                        format!("{name}: a pattern needs both row_offsets and key_index"),
                    ));
                }
            }
        }

        let expected: Vec<(String, Vec<usize>, DType)> = model
            .params()
            .iter()
            .map(|(n, v, _)| (n.to_string(), v.shape().to_vec(), DType::F32))
            .collect();
        checkpoint::check_tensors(&parameters, &expected)
            .map_err(|e| Error::file(dir.join("model.safetensors"), e.to_string()))?;
        for (name, var, _) in model.params().iter() {
            let data = &parameters[name];
            var.value().write_f32(&data.to_f32()?)?;
        }

        if patterns.iter().any(Option::is_some) {
            if patterns.iter().any(Option::is_none) {
                return Err(Error::file(
                    dir.join("model.safetensors"),
                    "some attention layers have a pattern and others not",
                ));
            }
            model.set_patterns(patterns.into_iter().map(Option::unwrap).collect())?;
        }
        Ok(model)
    }

    /// Reads the prior logits of every layer back to the CPU, for pruning and figures.
    pub fn layer_priors(&self) -> Vec<crate::fiak::LayerPriors> {
        self.attention_layers()
            .iter()
            .map(|l| crate::fiak::LayerPriors {
                heads: l.heads,
                tokens: l.tokens,
                causal: l.causal,
                entry: l.entry_prior.as_ref().map(|v| v.value().to_f32_vec()),
                key: l.key_prior.as_ref().map(|v| v.value().to_f32_vec()),
            })
            .collect()
    }
}

impl Model {
    /// Replaces every layer's pattern with one built from its learned priors. Uniform
    /// (untrained) priors carry no information and are rejected unless `force`.
    pub fn prune(&mut self, spec: &PruneSpec, force: bool) -> Result<()> {
        spec.validate()?;
        if self.attention_layers().iter().any(|l| l.pruned.is_some()) {
            return Err(Error::invalid(
                "model",
                "pruned",
                "is pruned already; prune the model its priors were learned in",
            ));
        }
        let priors = self.layer_priors();
        if priors.iter().all(|p| p.entry.is_none() && p.key.is_none()) {
            return Err(Error::invalid(
                "model",
                "without priors",
                "has no FiAK priors; train them first, e.g. `fiak train --init DIR --prior entry --out DIR2`",
            ));
        }
        if priors.iter().all(|p| p.is_uniform()) {
            if !force {
                return Err(Error::invalid(
                    "priors",
                    "uniform",
                    "untrained priors carry no information to prune by; train the priors first, or pass --force",
                ));
            }
            log::warn!("pruning uniform priors: the pattern is arbitrary");
        }
        let mut patterns = Vec::with_capacity(priors.len());
        for layer in &priors {
            patterns.push(pattern_from_csr(&layer.prune(spec)?)?);
        }
        self.set_patterns(patterns)
    }
}

/// Uploads a host pattern to the GPU.
pub fn pattern_from_csr(csr: &crate::fiak::CsrPattern) -> Result<Pattern> {
    Pattern::from_csr(
        csr.heads,
        csr.tokens,
        csr.tokens,
        csr.row_offsets.clone(),
        csr.key_index.clone(),
    )
}
