//! Named parameters. The optimizer and the checkpoint code walk this registry; names follow
//! the ecosystem's checkpoints (timm for ViT, Hugging Face for GPT-2).

use super::Var;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Optimizer treatment of a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ParamGroup {
    /// Weights of linear layers and embeddings: weight decay applies.
    Decay,
    /// Biases, norms, class token and position embeddings: no weight decay.
    NoDecay,
    /// FiAK prior logits: their own learning rate and no weight decay.
    Prior,
}

#[derive(Default)]
pub struct ParamStore {
    entries: Vec<(String, Var, ParamGroup)>,
}

impl ParamStore {
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// Registers `value` under `name` and returns its var.
    ///
    /// # Panics
    /// When the name is taken: model code builds names, so a repeat is a bug.
    pub fn add(&mut self, name: impl Into<String>, value: Tensor, group: ParamGroup) -> Var {
        let name = name.into();
        assert!(self.get(&name).is_none(), "parameter {name} registered twice");
        let var = Var::parameter(value);
        self.entries.push((name, var.clone(), group));
        var
    }

    /// Registers state that is saved with the model but takes no gradient, such as priors
    /// learned by EM (PyTorch calls these buffers).
    pub fn add_buffer(&mut self, name: impl Into<String>, value: Tensor) -> Var {
        let name = name.into();
        assert!(self.get(&name).is_none(), "parameter {name} registered twice");
        let var = Var::constant(value);
        self.entries.push((name, var.clone(), ParamGroup::Prior));
        var
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.entries.iter().find(|(n, _, _)| n == name).map(|(_, v, _)| v)
    }

    /// Replaces the contents of parameter `name`, checking the shape.
    pub fn set(&self, name: &str, value: &Tensor) -> Result<()> {
        let var = self
            .get(name)
            .ok_or_else(|| Error::invalid("parameter", name, "no parameter of that name"))?;
        if var.shape() != value.shape() {
            return Err(Error::shape(
                "ParamStore::set",
                format!(
                    "parameter {name} has shape {:?}, the new value {:?}",
                    var.shape(),
                    value.shape()
                ),
            ));
        }
        var.value().copy_from(value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var, ParamGroup)> {
        self.entries.iter().map(|(n, v, g)| (n.as_str(), v, *g))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|(_, v, _)| v.value().numel()).sum()
    }

    pub fn zero_grad(&self) {
        for (_, var, _) in &self.entries {
            var.zero_grad();
        }
    }
}
