//! Attention reference in f64, one query row at a time, with the probabilities written out.
//!
//! Scores: s_ij = q_i . k_j / sqrt(d), minus |k_j|^2 / (2 sqrt(d)) for Gaussian logits, plus
//! bias_ij. Row i attends to key j when j < Nk, the optional mask keeps (h, i, j), and j <= i
//! if causal. A row without such a key yields out = 0, lse = 0 and zero gradients.
//!
//! Shapes: q [B, H, Nq, d], k and v [B, H, Nk, d], out and dout [B, H, Nq, d], lse [B, H, Nq],
//! bias [B|1, H|1, Nq|1, Nk] broadcast, mask [H, Nq, Nk] shared by the batch.

/// Sizes and options of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Problem {
    pub batch: usize,
    pub heads: usize,
    pub nq: usize,
    pub nk: usize,
    pub d: usize,
    pub causal: bool,
    pub gaussian: bool,
}

/// A bias and its shape [B|1, H|1, Nq|1, Nk].
#[derive(Clone, Copy)]
pub struct Bias<'a> {
    pub data: &'a [f64],
    pub shape: [usize; 4],
}

/// Index of element (b, h, i, j) in a tensor of `shape` that broadcasts over its axes of size 1.
pub fn broadcast_index(shape: [usize; 4], b: usize, h: usize, i: usize, j: usize) -> usize {
    let pick = |axis: usize, index: usize| if shape[axis] == 1 { 0 } else { index };
    ((pick(0, b) * shape[1] + pick(1, h)) * shape[2] + pick(2, i)) * shape[3] + j
}

/// Gradients of sum(out * dout) with respect to each input.
pub struct Grads {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    /// In the bias's shape, summed over its broadcast axes.
    pub dbias: Option<Vec<f64>>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Problem {
    fn scale(&self) -> f64 {
        1.0 / (self.d as f64).sqrt()
    }

    fn visible(&self, mask: Option<&[bool]>, h: usize, i: usize, j: usize) -> bool {
        let kept = mask.is_none_or(|m| m[(h * self.nq + i) * self.nk + j]);
        kept && (!self.causal || j <= i)
    }

    /// Probabilities of row (b, h, i) over all Nk keys, zero where not visible, and the row's
    /// log-sum-exp; None when the row has no visible key.
    fn row_probs(
        &self,
        q: &[f64],
        k: &[f64],
        bias: Option<Bias>,
        mask: Option<&[bool]>,
        (b, h, i): (usize, usize, usize),
    ) -> Option<(Vec<f64>, f64)> {
        let (d, bh) = (self.d, b * self.heads + h);
        let qi = &q[(bh * self.nq + i) * d..][..d];
        let mut scores = vec![f64::NEG_INFINITY; self.nk];
        for (j, score) in scores.iter_mut().enumerate() {
            if !self.visible(mask, h, i, j) {
                continue;
            }
            let kj = &k[(bh * self.nk + j) * d..][..d];
            let mut s = dot(qi, kj) * self.scale();
            if self.gaussian {
                s -= 0.5 * self.scale() * dot(kj, kj);
            }
            if let Some(bias) = bias {
                s += bias.data[broadcast_index(bias.shape, b, h, i, j)];
            }
            *score = s;
        }
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            return None;
        }
        let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
        let probs = scores.iter().map(|s| (s - max).exp() / sum).collect();
        Some((probs, max + sum.ln()))
    }

    /// Returns out [B, H, Nq, d] and lse [B, H, Nq].
    pub fn forward(
        &self,
        q: &[f64],
        k: &[f64],
        v: &[f64],
        bias: Option<Bias>,
        mask: Option<&[bool]>,
    ) -> (Vec<f64>, Vec<f64>) {
        let d = self.d;
        let mut out = vec![0.0; self.batch * self.heads * self.nq * d];
        let mut lse = vec![0.0; self.batch * self.heads * self.nq];
        for b in 0..self.batch {
            for h in 0..self.heads {
                let bh = b * self.heads + h;
                for i in 0..self.nq {
                    let Some((probs, row_lse)) = self.row_probs(q, k, bias, mask, (b, h, i)) else {
                        continue;
                    };
                    lse[bh * self.nq + i] = row_lse;
                    let oi = &mut out[(bh * self.nq + i) * d..][..d];
                    for (j, pj) in probs.iter().enumerate() {
                        let vj = &v[(bh * self.nk + j) * d..][..d];
                        for c in 0..d {
                            oi[c] += pj * vj[c];
                        }
                    }
                }
            }
        }
        (out, lse)
    }

    /// Gradients of sum(out * dout).
    pub fn backward(
        &self,
        q: &[f64],
        k: &[f64],
        v: &[f64],
        bias: Option<Bias>,
        mask: Option<&[bool]>,
        dout: &[f64],
    ) -> Grads {
        let (d, scale) = (self.d, self.scale());
        let mut dq = vec![0.0; q.len()];
        let mut dk = vec![0.0; k.len()];
        let mut dv = vec![0.0; v.len()];
        let mut dbias = bias.map(|b| vec![0.0; b.data.len()]);
        for b in 0..self.batch {
            for h in 0..self.heads {
                let bh = b * self.heads + h;
                for i in 0..self.nq {
                    let Some((probs, _)) = self.row_probs(q, k, bias, mask, (b, h, i)) else {
                        continue;
                    };
                    let row = (bh * self.nq + i) * d;
                    let (qi, gi) = (&q[row..][..d], &dout[row..][..d]);
                    // dP_ij = dout_i . v_j, then dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij').
                    let dp: Vec<f64> = (0..self.nk)
                        .map(|j| dot(gi, &v[(bh * self.nk + j) * d..][..d]))
                        .collect();
                    let row_delta: f64 = probs.iter().zip(&dp).map(|(p, g)| p * g).sum();
                    for j in 0..self.nk {
                        let ds = probs[j] * (dp[j] - row_delta);
                        let key = (bh * self.nk + j) * d;
                        for c in 0..d {
                            dv[key + c] += probs[j] * gi[c];
                            dq[row + c] += scale * ds * k[key + c];
                            let mut ds_dk = scale * qi[c];
                            if self.gaussian {
                                ds_dk -= scale * k[key + c];
                            }
                            dk[key + c] += ds * ds_dk;
                        }
                        if let (Some(dbias), Some(bias)) = (dbias.as_mut(), bias) {
                            dbias[broadcast_index(bias.shape, b, h, i, j)] += ds;
                        }
                    }
                }
            }
        }
        Grads { dq, dk, dv, dbias }
    }
}

/// f32 data widened to f64.
pub fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// f64 results narrowed to f32 for comparison with a kernel.
pub fn narrow(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}
