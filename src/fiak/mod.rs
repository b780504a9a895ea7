//! FiAK, the Finite Admixture of Keys: attention read as the posterior of a mixture whose
//! components are the keys and whose data are the queries, with learned mixture priors that
//! decide which attention scores and keys are pruned.

pub mod accounting;
pub mod figures;
pub mod prune;

pub use crate::ops::attention::LogitKernel;
pub use prune::{CsrPattern, LayerPriors, PruneScope, PruneSpec};

/// Mixture priors an attention layer learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PriorKind {
    /// No prior: standard attention.
    None,
    /// Logits theta [H, Nq, Nk]: every query has its own mixing weights over the keys.
    Entry,
    /// Logits phi [H, Nk], shared by all queries.
    Key,
    /// Both: b_ij = theta_ij + phi_j.
    #[serde(rename = "entry+key")]
    #[value(name = "entry+key")]
    EntryKey,
}

impl PriorKind {
    pub fn has_entry(self) -> bool {
        matches!(self, PriorKind::Entry | PriorKind::EntryKey)
    }

    pub fn has_key(self) -> bool {
        matches!(self, PriorKind::Key | PriorKind::EntryKey)
    }
}

impl std::fmt::Display for PriorKind {
    /// Writes the name the command line and config.json use.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PriorKind::None => "none",
            PriorKind::Entry => "entry",
            PriorKind::Key => "key",
            PriorKind::EntryKey => "entry+key",
        })
    }
}

/// Learning mode of the prior logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PriorLearning {
    /// Backpropagation, with their own learning rate and no weight decay.
    Gd,
    /// A soft-EM M-step with momentum after each optimizer step; no gradient.
    Em,
}

impl std::fmt::Display for PriorLearning {
    /// Writes the name the command line and config.json use.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PriorLearning::Gd => "gd",
            PriorLearning::Em => "em",
        })
    }
}

/// The FiAK settings of a model.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FiakConfig {
    pub logits: LogitKernel,
    pub prior: PriorKind,
    pub learning: PriorLearning,
    /// Momentum beta of the EM update pi <- (1 - beta) pi + beta * mean(A).
    pub em_momentum: f32,
}

impl Default for FiakConfig {
    fn default() -> Self {
        FiakConfig {
            logits: LogitKernel::Dot,
            prior: PriorKind::None,
            learning: PriorLearning::Gd,
            em_momentum: 0.1,
        }
    }
}
