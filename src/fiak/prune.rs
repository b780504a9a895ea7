//! Pruning patterns from learned priors, built on the CPU once, after the priors are trained.
//!
//! pi_ij = softmax over the visible keys j of (theta_ij + phi_j). `scores` drops the fraction p
//! of visible entries with the smallest pi; `keys` drops the fraction p_k of key positions per
//! head with the smallest key score; `mixed` drops keys first, then scores, to a total fraction
//! p of entries. Every query row keeps at least one visible key.

use crate::error::{Error, Result};

/// Scope of the `scores` ranking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PruneScope {
    /// Across all heads and rows of a layer.
    Layer,
    /// Within each head.
    Head,
    /// Within each query row: every row keeps the same share, a regular layout.
    Row,
}

/// Pruning request: the fractions to drop and the ranking scope.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PruneSpec {
    /// Fraction of visible entries to drop in total, in [0, 1).
    pub scores: f32,
    /// Fraction of key positions per head to drop first, in [0, 1).
    pub keys: f32,
    pub scope: PruneScope,
}

impl PruneSpec {
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [("--scores", self.scores), ("--keys", self.keys)] {
            if !(0.0..1.0).contains(&value) {
                return Err(Error::invalid(name, value, "a pruned fraction must lie in [0, 1)"));
            }
        }
        if self.keys > self.scores && self.scores > 0.0 {
            return Err(Error::invalid(
                "--scores",
                self.scores,
                format!("the total fraction must be at least the key fraction {}", self.keys),
            ));
        }
        Ok(())
    }
}

/// The learned priors of one attention layer, read back to the CPU.
pub struct LayerPriors {
    pub heads: usize,
    pub tokens: usize,
    pub causal: bool,
    /// theta [H, N, N]
    pub entry: Option<Vec<f32>>,
    /// phi [H, N]
    pub key: Option<Vec<f32>>,
}

/// A pattern in CSR form: `row_offsets` [H, N + 1] counting across heads, `key_index` [nnz]
/// with ascending keys per row.
#[derive(Clone, Debug, PartialEq)]
pub struct CsrPattern {
    pub heads: usize,
    pub tokens: usize,
    pub row_offsets: Vec<u32>,
    pub key_index: Vec<u32>,
}

impl CsrPattern {
    pub fn nnz(&self) -> usize {
        self.key_index.len()
    }
}

impl LayerPriors {
    fn visible(&self, i: usize, j: usize) -> bool {
        !self.causal || j <= i
    }

    /// Number of visible entries per head.
    pub fn visible_per_head(&self) -> usize {
        let n = self.tokens;
        if self.causal { n * (n + 1) / 2 } else { n * n }
    }

    /// pi [H, N, N]: the prior of every entry, 0 where masked.
    pub fn prior_probabilities(&self) -> Vec<f64> {
        let (h, n) = (self.heads, self.tokens);
        let mut pi = vec![0.0f64; h * n * n];
        for head in 0..h {
            for i in 0..n {
                let logit = |j: usize| {
                    let theta = self.entry.as_ref().map_or(0.0, |t| t[(head * n + i) * n + j] as f64);
                    let phi = self.key.as_ref().map_or(0.0, |p| p[head * n + j] as f64);
                    theta + phi
                };
                let max = (0..n)
                    .filter(|&j| self.visible(i, j))
                    .map(logit)
                    .fold(f64::MIN, f64::max);
                let row = &mut pi[(head * n + i) * n..(head * n + i + 1) * n];
                let mut total = 0.0;
                for (j, value) in row.iter_mut().enumerate() {
                    if self.visible(i, j) {
                        *value = (logit(j) - max).exp();
                        total += *value;
                    }
                }
                row.iter_mut().for_each(|v| *v /= total);
            }
        }
        pi
    }

    /// Returns whether the priors are uniform over the visible keys of every row. Uniform
    /// priors carry no information to prune by.
    pub fn is_uniform(&self) -> bool {
        let n = self.tokens;
        let pi = self.prior_probabilities();
        pi.chunks(n).enumerate().all(|(row, values)| {
            let i = row % n;
            let visible: Vec<f64> = (0..n).filter(|&j| self.visible(i, j)).map(|j| values[j]).collect();
            let (lo, hi) = visible
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            hi - lo <= 1e-6 * hi.max(1e-30)
        })
    }

    /// Key score per head [H, N]: phi_j, or the mean over rows of pi_ij without a key prior.
    fn key_scores(&self, pi: &[f64]) -> Vec<f64> {
        let (h, n) = (self.heads, self.tokens);
        if let Some(phi) = &self.key {
            return phi.iter().map(|&v| v as f64).collect();
        }
        let mut scores = vec![0.0; h * n];
        for head in 0..h {
            for i in 0..n {
                for j in 0..n {
                    scores[head * n + j] += pi[(head * n + i) * n + j] / n as f64;
                }
            }
        }
        scores
    }

    /// Builds the kept pattern for `spec`.
    pub fn prune(&self, spec: &PruneSpec) -> Result<CsrPattern> {
        spec.validate()?;
        let (h, n) = (self.heads, self.tokens);
        let pi = self.prior_probabilities();
        let mut kept: Vec<bool> = (0..h * n * n).map(|e| self.visible((e / n) % n, e % n)).collect();

        // pass 1: drop the key positions with the smallest key score, per head.
        if spec.keys > 0.0 {
            let scores = self.key_scores(&pi);
            let drop = (spec.keys * n as f32).floor() as usize;
            for head in 0..h {
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&a, &b| scores[head * n + a].total_cmp(&scores[head * n + b]).then(a.cmp(&b)));
                for &j in order.iter().take(drop) {
                    for i in 0..n {
                        kept[(head * n + i) * n + j] = false;
                    }
                }
            }
        }

        // pass 2: drop entries with the smallest prior until the total fraction is reached.
        if spec.scores > 0.0 {
            let groups: Vec<Vec<usize>> = match spec.scope {
                PruneScope::Layer => vec![(0..h * n * n).collect()],
                PruneScope::Head => (0..h)
                    .map(|head| (head * n * n..(head + 1) * n * n).collect())
                    .collect(),
                PruneScope::Row => (0..h * n).map(|row| (row * n..(row + 1) * n).collect()).collect(),
            };
            for group in groups {
                let visible = group.iter().filter(|&&e| self.visible((e / n) % n, e % n)).count();
                let target_drop = (spec.scores as f64 * visible as f64).round() as usize;
                let already = visible - group.iter().filter(|&&e| kept[e]).count();
                let mut candidates: Vec<usize> = group.iter().copied().filter(|&e| kept[e]).collect();
                candidates.sort_by(|&a, &b| pi[a].total_cmp(&pi[b]).then(a.cmp(&b)));
                for &e in candidates.iter().take(target_drop.saturating_sub(already)) {
                    kept[e] = false;
                }
            }
        }

        // pass 3: every row keeps at least one visible key, its most probable one.
        for row in 0..h * n {
            let i = row % n;
            let entries = row * n..(row + 1) * n;
            if !kept[entries.clone()].iter().any(|&k| k) {
                let best = entries
                    .filter(|&e| self.visible(i, e % n))
                    .max_by(|&a, &b| pi[a].total_cmp(&pi[b]).then(b.cmp(&a)))
                    .expect("every row has a visible key");
                kept[best] = true;
            }
        }

        let mut row_offsets = Vec::with_capacity(h * (n + 1));
        let mut key_index = Vec::new();
        for head in 0..h {
            for i in 0..n {
                row_offsets.push(key_index.len() as u32);
                for j in 0..n {
                    if kept[(head * n + i) * n + j] {
                        key_index.push(j as u32);
                    }
                }
            }
            row_offsets.push(key_index.len() as u32);
        }
        Ok(CsrPattern {
            heads: h,
            tokens: n,
            row_offsets,
            key_index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn priors(causal: bool, seed: u32) -> LayerPriors {
        let (h, n) = (2, 6);
        let entry = (0..h * n * n)
            .map(|e| (((e as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 250.0)
            .collect();
        LayerPriors {
            heads: h,
            tokens: n,
            causal,
            entry: Some(entry),
            key: None,
        }
    }

    fn kept_rows(p: &CsrPattern) -> Vec<usize> {
        let n = p.tokens;
        (0..p.heads)
            .flat_map(|h| (0..n).map(move |i| (h, i)))
            .map(|(h, i)| (p.row_offsets[h * (n + 1) + i + 1] - p.row_offsets[h * (n + 1) + i]) as usize)
            .collect()
    }

    #[test]
    fn scores_layer_scope_keeps_the_fraction() {
        let p = priors(false, 1);
        let pattern = p
            .prune(&PruneSpec {
                scores: 0.7,
                keys: 0.0,
                scope: PruneScope::Layer,
            })
            .unwrap();
        let total = 2 * 36;
        let expected = total - (0.7f64 * total as f64).round() as usize;
        assert!(
            pattern.nnz() >= expected && pattern.nnz() <= expected + 12,
            "nnz {}",
            pattern.nnz()
        );
        assert!(kept_rows(&pattern).iter().all(|&k| k >= 1));
    }

    #[test]
    fn scores_drop_smallest_priors() {
        let p = priors(false, 2);
        let pi = p.prior_probabilities();
        let pattern = p
            .prune(&PruneSpec {
                scores: 0.5,
                keys: 0.0,
                scope: PruneScope::Row,
            })
            .unwrap();
        let n = 6;
        for row in 0..2 * n {
            let (h, i) = (row / n, row % n);
            let start = pattern.row_offsets[h * (n + 1) + i] as usize;
            let end = pattern.row_offsets[h * (n + 1) + i + 1] as usize;
            let kept: Vec<usize> = pattern.key_index[start..end].iter().map(|&j| j as usize).collect();
            assert_eq!(kept.len(), 3, "row scope keeps half of every row");
            let min_kept = kept.iter().map(|&j| pi[row * n + j]).fold(f64::MAX, f64::min);
            let max_dropped = (0..n)
                .filter(|j| !kept.contains(j))
                .map(|j| pi[row * n + j])
                .fold(f64::MIN, f64::max);
            assert!(
                min_kept >= max_dropped,
                "row {row}: kept {min_kept} < dropped {max_dropped}"
            );
        }
    }

    #[test]
    fn causal_rows_keep_a_visible_key() {
        let p = priors(true, 3);
        for spec in [
            PruneSpec {
                scores: 0.9,
                keys: 0.0,
                scope: PruneScope::Layer,
            },
            PruneSpec {
                scores: 0.0,
                keys: 0.5,
                scope: PruneScope::Layer,
            },
            PruneSpec {
                scores: 0.7,
                keys: 0.15,
                scope: PruneScope::Head,
            },
        ] {
            let pattern = p.prune(&spec).unwrap();
            let n = 6;
            for h in 0..2 {
                for i in 0..n {
                    let start = pattern.row_offsets[h * (n + 1) + i] as usize;
                    let end = pattern.row_offsets[h * (n + 1) + i + 1] as usize;
                    let keys = &pattern.key_index[start..end];
                    assert!(!keys.is_empty(), "{spec:?}: head {h} row {i} is empty");
                    assert!(keys.iter().all(|&j| j as usize <= i), "{spec:?}: a future key is kept");
                    assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys not ascending");
                }
            }
        }
    }

    #[test]
    fn keys_mode_drops_whole_columns() {
        let mut p = priors(false, 4);
        p.key = Some((0..12).map(|j| j as f32).collect());
        let pattern = p
            .prune(&PruneSpec {
                scores: 0.0,
                keys: 0.5,
                scope: PruneScope::Layer,
            })
            .unwrap();
        // phi increases with j, so keys 0, 1, 2 of each head go.
        assert_eq!(pattern.nnz(), 2 * 6 * 3);
        assert!(pattern.key_index.iter().all(|&j| j >= 3));
    }

    #[test]
    fn uniform_priors_are_detected() {
        let p = LayerPriors {
            heads: 1,
            tokens: 4,
            causal: true,
            entry: Some(vec![0.0; 16]),
            key: None,
        };
        assert!(p.is_uniform());
        assert!(!priors(false, 5).is_uniform());
    }

    #[test]
    fn out_of_range_fractions_are_rejected() {
        let p = priors(false, 6);
        let err = p
            .prune(&PruneSpec {
                scores: 1.2,
                keys: 0.0,
                scope: PruneScope::Layer,
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("1.2"), "{err}");
        assert!(err.contains("--scores"), "{err}");
    }
}
