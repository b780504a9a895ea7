//! Cost accounting of attention: FLOPs, memory of the attention scores, kept fractions, and
//! head diversity.

use crate::nn::Attention;

/// Costs of one attention layer for one sample.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LayerCost {
    pub name: String,
    /// Score entries computed: visible entries when dense, kept entries when pruned.
    pub entries: u64,
    /// Entries a dense layer computes (causal: the lower triangle).
    pub dense_entries: u64,
    /// Kept fraction of the visible entries per head.
    pub kept_per_head: Vec<f64>,
    /// Kept fraction of key positions per head: keys that some query still reads.
    pub kept_keys_per_head: Vec<f64>,
    /// FLOPs of scores and weighted values: 4 d per entry (two multiply-adds for q.k and
    /// for A v) plus 5 per entry for the softmax (max, subtract, exp, sum, scale).
    pub flops: u64,
    /// Bytes of the attention scores if materialised as f32, with the pattern's u32 indices
    /// when pruned.
    pub score_bytes: u64,
}

/// Costs of a whole model for one sample.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ModelCost {
    pub layers: Vec<LayerCost>,
    pub flops: u64,
    pub dense_flops: u64,
    pub score_bytes: u64,
    pub dense_score_bytes: u64,
    /// Kept fraction of visible entries over all layers.
    pub kept_scores: f64,
    /// Mean kept fraction of key positions over all layers and heads.
    pub kept_keys: f64,
}

const FLOPS_PER_ENTRY_SOFTMAX: u64 = 5;

pub fn layer_cost(layer: &Attention) -> LayerCost {
    let (h, n) = (layer.heads, layer.tokens);
    // The output projection is [D, D] in both weight layouts; d is the head width.
    let d = layer.proj.weight.value().dim(0) / h;
    let visible_per_head = if layer.causal { n * (n + 1) / 2 } else { n * n } as u64;
    let dense_entries = visible_per_head * h as u64;

    let (entries, kept_per_head, kept_keys_per_head) = match &layer.pruned {
        Some(pruned) => {
            let p = &pruned.pattern;
            let offsets = p.row_offsets();
            let keys = p.key_index();
            let mut per_head = Vec::with_capacity(h);
            let mut key_share = Vec::with_capacity(h);
            for head in 0..h {
                let start = offsets[head * (n + 1)] as usize;
                let end = offsets[head * (n + 1) + n] as usize;
                per_head.push((end - start) as f64 / visible_per_head as f64);
                let mut read = vec![false; n];
                keys[start..end].iter().for_each(|&j| read[j as usize] = true);
                key_share.push(read.iter().filter(|&&r| r).count() as f64 / n as f64);
            }
            (keys.len() as u64, per_head, key_share)
        }
        None => (dense_entries, vec![1.0; h], vec![1.0; h]),
    };
    let flops = entries * (4 * d as u64 + FLOPS_PER_ENTRY_SOFTMAX);
    let score_bytes = match &layer.pruned {
        Some(_) => entries * 8 + (h * (n + 1)) as u64 * 4,
        None => dense_entries * 4,
    };
    LayerCost {
        name: layer.name.clone(),
        entries,
        dense_entries,
        kept_per_head,
        kept_keys_per_head,
        flops,
        score_bytes,
    }
}

pub fn model_cost(layers: &[&Attention]) -> ModelCost {
    let costs: Vec<LayerCost> = layers.iter().map(|l| layer_cost(l)).collect();
    let entries: u64 = costs.iter().map(|c| c.entries).sum();
    let dense_entries: u64 = costs.iter().map(|c| c.dense_entries).sum();
    let dense_flops: u64 = costs
        .iter()
        .map(|c| {
            c.flops
                .checked_div(c.entries)
                .map_or(0, |per_entry| per_entry * c.dense_entries)
        })
        .sum();
    let key_shares: Vec<f64> = costs
        .iter()
        .flat_map(|c| c.kept_keys_per_head.iter().copied())
        .collect();
    ModelCost {
        flops: costs.iter().map(|c| c.flops).sum(),
        dense_flops,
        score_bytes: costs.iter().map(|c| c.score_bytes).sum(),
        dense_score_bytes: dense_entries * 4,
        kept_scores: entries as f64 / dense_entries.max(1) as f64,
        kept_keys: key_shares.iter().sum::<f64>() / key_shares.len().max(1) as f64,
        layers: costs,
    }
}

/// Mean pairwise Jensen-Shannon divergence (natural log, in [0, ln 2]) between the heads'
/// average attention maps `maps` [H, N, N], each map read as one distribution over (i, j).
pub fn head_diversity(maps: &[f32], heads: usize) -> f64 {
    if heads < 2 {
        return 0.0;
    }
    let size = maps.len() / heads;
    let distributions: Vec<Vec<f64>> = (0..heads)
        .map(|h| {
            let map = &maps[h * size..(h + 1) * size];
            let total: f64 = map.iter().map(|&v| v.max(0.0) as f64).sum();
            map.iter().map(|&v| v.max(0.0) as f64 / total.max(1e-30)).collect()
        })
        .collect();
    let kl = |p: &[f64], q: &[f64]| -> f64 {
        p.iter()
            .zip(q)
            .filter(|(a, _)| **a > 0.0)
            .map(|(a, b)| a * (a / b).ln())
            .sum()
    };
    let mut sum = 0.0;
    let mut pairs = 0;
    for a in 0..heads {
        for b in a + 1..heads {
            let mixture: Vec<f64> = distributions[a]
                .iter()
                .zip(&distributions[b])
                .map(|(x, y)| 0.5 * (x + y))
                .collect();
            sum += 0.5 * kl(&distributions[a], &mixture) + 0.5 * kl(&distributions[b], &mixture);
            pairs += 1;
        }
    }
    sum / pairs as f64
}

#[cfg(test)]
mod tests {
    use super::head_diversity;

    #[test]
    fn identical_heads_have_zero_diversity() {
        let maps = [0.25f32, 0.75, 0.5, 0.5, 0.25, 0.75, 0.5, 0.5];
        assert!(head_diversity(&maps, 2).abs() < 1e-12);
    }

    #[test]
    fn disjoint_heads_reach_ln_two() {
        let maps = [1.0f32, 0.0, 0.0, 1.0];
        assert!((head_diversity(&maps, 2) - std::f64::consts::LN_2).abs() < 1e-12);
    }
}
