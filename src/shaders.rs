//! The WGSL sources of `shaders/`, embedded at build time.

use crate::gpu::Shader;

macro_rules! shader {
    ($name:ident, $file:literal) => {
        pub static $name: Shader = Shader {
            file: $file,
            source: include_str!(concat!("../shaders/", $file)),
        };
    };
}

shader!(MATMUL, "matmul.wgsl");
shader!(MATMUL_VEC4, "matmul_vec4.wgsl");
shader!(MATMUL_SUBGROUP, "matmul_subgroup.wgsl");
shader!(TRANSPOSE, "transpose.wgsl");
shader!(ELEMENTWISE, "elementwise.wgsl");
shader!(EM_PRIOR, "em_prior.wgsl");
shader!(REDUCE, "reduce.wgsl");
shader!(OPTIM, "optim.wgsl");
shader!(SOFTMAX, "softmax.wgsl");
shader!(LAYERNORM, "layernorm.wgsl");
shader!(EMBEDDING, "embedding.wgsl");
shader!(CROSS_ENTROPY, "cross_entropy.wgsl");
shader!(PERMUTE, "permute.wgsl");
/// Fused dense attention with plain tile loads.
pub static ATTENTION_DENSE: Shader = Shader {
    file: "attention_dense.wgsl",
    source: concat!(
        include_str!("../shaders/attention_dense.wgsl"),
        include_str!("../shaders/parts/attention_tiles.wgsl")
    ),
};
/// Fused dense attention with the kernels for 8-lane subgroups (entry points `*_subgroup`),
/// whose tiles the lanes load together.
pub static ATTENTION_DENSE_SUBGROUP: Shader = Shader {
    file: "attention_dense.wgsl+subgroup",
    source: concat!(
        include_str!("../shaders/attention_dense.wgsl"),
        include_str!("../shaders/parts/attention_tiles_subgroup.wgsl"),
        include_str!("../shaders/parts/attention_kernels_subgroup.wgsl")
    ),
};
shader!(ATTENTION_GATHERED, "attention_gathered.wgsl");

/// Returns every shader, for validation tests.
pub fn all() -> Vec<&'static Shader> {
    vec![
        &MATMUL,
        &MATMUL_VEC4,
        &MATMUL_SUBGROUP,
        &TRANSPOSE,
        &ELEMENTWISE,
        &EM_PRIOR,
        &REDUCE,
        &OPTIM,
        &SOFTMAX,
        &LAYERNORM,
        &EMBEDDING,
        &CROSS_ENTROPY,
        &PERMUTE,
        &ATTENTION_DENSE,
        &ATTENTION_DENSE_SUBGROUP,
        &ATTENTION_GATHERED,
    ]
}
