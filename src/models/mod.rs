//! The models: a DeiT-style ViT and a GPT-2-style GPT.

pub mod gpt;
mod io;
pub mod vit;

pub use gpt::{Gpt, GptConfig};
pub use io::{Model, pattern_from_csr};
pub use vit::{Vit, VitConfig, patchify};
