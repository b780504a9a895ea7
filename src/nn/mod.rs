//! Layers with named parameters: Linear, LayerNorm, Mlp, Attention and the pre-norm Block.
//! Each constructor registers its parameters in a [`ParamStore`] under the ecosystem's names.

pub mod attention;

use crate::autograd::{ParamGroup, ParamStore, Var, WeightLayout};
use crate::error::Result;
use crate::ops::elementwise::GeluKind;
use crate::tensor::{DType, Tensor};

/// The seeded generator of parameter initialisation, shared with the data loaders.
pub use crate::data::SplitMix64;
pub use attention::{Attention, AttentionOptions};

/// An affine layer. `layout` is the storage order of the weight: [out, in] (PyTorch Linear, timm)
/// or [in, out] (GPT-2 Conv1D).
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
    pub layout: WeightLayout,
}

impl Linear {
    /// Registers `NAME.weight` (normal, std `std`) and, when `bias`, `NAME.bias` (zeros).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        layout: WeightLayout,
        std: f32,
        rng: &mut SplitMix64,
    ) -> Linear {
        let shape = match layout {
            WeightLayout::OutIn => [out_features, in_features],
            WeightLayout::InOut => [in_features, out_features],
        };
        let values = rng.trunc_normal(in_features * out_features, std);
        let weight = store.add(
            format!("{name}.weight"),
            Tensor::from_f32(&shape, &values).expect("shape"),
            ParamGroup::Decay,
        );
        let bias = bias.then(|| {
            store.add(
                format!("{name}.bias"),
                Tensor::zeros(&[out_features], DType::F32),
                ParamGroup::NoDecay,
            )
        });
        Linear { weight, bias, layout }
    }

    pub fn forward(&self, x: &Var) -> Result<Var> {
        x.affine(&self.weight, self.bias.as_ref(), self.layout)
    }

    /// `gelu(forward(x))` with bias and activation fused; needs a bias.
    pub fn forward_gelu(&self, x: &Var, kind: GeluKind) -> Result<Var> {
        let bias = self.bias.as_ref().expect("forward_gelu needs a bias");
        x.affine_gelu(&self.weight, bias, self.layout, kind)
    }
}

pub struct LayerNorm {
    pub weight: Var,
    pub bias: Var,
    pub eps: f32,
}

impl LayerNorm {
    /// Registers `NAME.weight` (ones) and `NAME.bias` (zeros) of width `dim`.
    pub fn new(store: &mut ParamStore, name: &str, dim: usize, eps: f32) -> LayerNorm {
        LayerNorm {
            weight: store.add(format!("{name}.weight"), Tensor::full(&[dim], 1.0), ParamGroup::NoDecay),
            bias: store.add(
                format!("{name}.bias"),
                Tensor::zeros(&[dim], DType::F32),
                ParamGroup::NoDecay,
            ),
            eps,
        }
    }

    pub fn forward(&self, x: &Var) -> Result<Var> {
        x.layer_norm(&self.weight, &self.bias, self.eps)
    }
}

/// The transformer MLP: fc1, GELU, fc2.
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub gelu: GeluKind,
}

impl Mlp {
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let hidden = self.fc1.forward_gelu(x, self.gelu)?; // [B, N, hidden]
        self.fc2.forward(&hidden) // [B, N, D]
    }
}

/// A pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn forward(&self, x: &Var, options: &AttentionOptions) -> Result<Var> {
        let x = x.add(&self.attn.forward(&self.norm1.forward(x)?, options)?)?;
        x.add(&self.mlp.forward(&self.norm2.forward(&x)?)?)
    }
}
