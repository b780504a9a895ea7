//! Gathered attention against the fused dense kernel with the pruned entries masked by a bias
//! of -1e9 (exactly zero weight in f32), forward and backward: random patterns of 10%, 30%,
//! 70% and 100% kept entries, keys-only layouts, causal patterns, and edge cases. Patterns that
//! are not keys-only run through both paths: the row kernels and the key-union grid.

mod common;

use common::{Rng, assert_close};
use fiak::Tensor;
use fiak::ops::attention::{
    AttentionConfig, GatheredPath, LogitKernel, Pattern, attention_dense, attention_dense_backward, attention_gathered,
    attention_gathered_backward,
};

/// f32 sums over at most a few hundred keys of values in [-1, 1].
const ATOL: f32 = 2e-5;
const RTOL: f32 = 1e-4;
const MASK: f32 = -1e9;

/// A random CSR pattern keeping about `keep` of the visible entries, at least one per row.
fn random_pattern(rng: &mut Rng, heads: usize, n: usize, keep: f32, causal: bool) -> (Vec<u32>, Vec<u32>) {
    let (mut offsets, mut keys) = (Vec::new(), Vec::new());
    for _ in 0..heads {
        for i in 0..n {
            offsets.push(keys.len() as u32);
            let visible = if causal { i + 1 } else { n };
            let mut row: Vec<u32> = (0..visible as u32).filter(|_| rng.uniform() < keep).collect();
            if row.is_empty() {
                row.push(rng.below(visible) as u32);
            }
            keys.extend(row);
        }
        offsets.push(keys.len() as u32);
    }
    (offsets, keys)
}

struct Case {
    batch: usize,
    heads: usize,
    n: usize,
    d: usize,
    causal: bool,
    logits: LogitKernel,
    path: GatheredPath,
}

/// Runs gathered attention with per-entry biases and dense attention with the same biases
/// plus the mask, and compares outputs and all gradients.
fn compare(rng: &mut Rng, case: &Case, pattern: &Pattern, what: &str) {
    let Case {
        batch,
        heads,
        n,
        d,
        causal,
        logits,
        path,
    } = *case;
    let cfg = AttentionConfig {
        causal,
        logits,
        gathered: path,
    };
    let what = format!("{what}, {path:?}");
    let shape = [batch, heads, n, d];
    let count = batch * heads * n * d;
    let q = Tensor::from_f32(&shape, &rng.vec(count, 1.0)).unwrap();
    let k = Tensor::from_f32(&shape, &rng.vec(count, 1.0)).unwrap();
    let v = Tensor::from_f32(&shape, &rng.vec(count, 1.0)).unwrap();
    let dout = Tensor::from_f32(&shape, &rng.vec(count, 1.0)).unwrap();
    let entry_bias = rng.vec(pattern.nnz(), 1.0);

    // The dense bias: the entry's bias where kept, the mask elsewhere.
    let mut dense_bias = vec![MASK; heads * n * n];
    let offsets = pattern.row_offsets();
    for h in 0..heads {
        for i in 0..n {
            for e in offsets[h * (n + 1) + i] as usize..offsets[h * (n + 1) + i + 1] as usize {
                dense_bias[(h * n + i) * n + pattern.key_index()[e] as usize] = entry_bias[e];
            }
        }
    }
    let bias_t = Tensor::from_f32(&[pattern.nnz()], &entry_bias).unwrap();
    let dense_t = Tensor::from_f32(&[1, heads, n, n], &dense_bias).unwrap();

    let (out_g, lse_g) = attention_gathered(&q, &k, &v, pattern, Some(&bias_t), &cfg).unwrap();
    let (out_d, lse_d) = attention_dense(&q, &k, &v, Some(&dense_t), &cfg).unwrap();
    assert_close(
        &format!("{what}: out"),
        &out_g.to_f32_vec(),
        &out_d.to_f32_vec(),
        ATOL,
        RTOL,
    );
    assert_close(
        &format!("{what}: lse"),
        &lse_g.to_f32_vec(),
        &lse_d.to_f32_vec(),
        ATOL,
        RTOL,
    );

    let (dq_g, dk_g, dv_g, db_g) =
        attention_gathered_backward(&q, &k, &v, pattern, Some(&bias_t), &out_g, &lse_g, &dout, &cfg).unwrap();
    let (dq_d, dk_d, dv_d, db_d) =
        attention_dense_backward(&q, &k, &v, Some(&dense_t), &out_d, &lse_d, &dout, &cfg).unwrap();
    assert_close(
        &format!("{what}: dq"),
        &dq_g.to_f32_vec(),
        &dq_d.to_f32_vec(),
        ATOL,
        RTOL,
    );
    assert_close(
        &format!("{what}: dk"),
        &dk_g.to_f32_vec(),
        &dk_d.to_f32_vec(),
        ATOL,
        RTOL,
    );
    assert_close(
        &format!("{what}: dv"),
        &dv_g.to_f32_vec(),
        &dv_d.to_f32_vec(),
        ATOL,
        RTOL,
    );
    let db_d = db_d.expect("dense bias gradient").to_f32_vec();
    let mut want = Vec::with_capacity(pattern.nnz());
    for h in 0..heads {
        for i in 0..n {
            for e in offsets[h * (n + 1) + i] as usize..offsets[h * (n + 1) + i + 1] as usize {
                want.push(db_d[(h * n + i) * n + pattern.key_index()[e] as usize]);
            }
        }
    }
    assert_close(
        &format!("{what}: dbias"),
        &db_g.expect("gathered bias gradient").to_f32_vec(),
        &want,
        ATOL,
        RTOL,
    );
}

#[test]
fn gathered_matches_masked_dense() {
    let mut rng = Rng::new(21);
    for keep in [0.1f32, 0.3, 0.7, 1.0] {
        for (n, d) in [(7usize, 16usize), (64, 32), (50, 24)] {
            for causal in [false, true] {
                let (offsets, keys) = random_pattern(&mut rng, 3, n, keep, causal);
                let pattern = Pattern::from_csr(3, n, n, offsets, keys).unwrap();
                for path in [GatheredPath::Rows, GatheredPath::KeyUnion] {
                    let case = Case {
                        batch: 2,
                        heads: 3,
                        n,
                        d,
                        causal,
                        logits: LogitKernel::Dot,
                        path,
                    };
                    compare(
                        &mut rng,
                        &case,
                        &pattern,
                        &format!("keep {keep}, n {n}, d {d}, causal {causal}"),
                    );
                }
            }
        }
    }
}

#[test]
fn gathered_gaussian_logits() {
    let mut rng = Rng::new(22);
    let (offsets, keys) = random_pattern(&mut rng, 2, 33, 0.3, false);
    let pattern = Pattern::from_csr(2, 33, 33, offsets, keys).unwrap();
    for path in [GatheredPath::Rows, GatheredPath::KeyUnion] {
        let case = Case {
            batch: 2,
            heads: 2,
            n: 33,
            d: 16,
            causal: false,
            logits: LogitKernel::Gaussian,
            path,
        };
        compare(&mut rng, &case, &pattern, "gaussian");
    }
}

#[test]
fn keys_only_pattern() {
    let mut rng = Rng::new(23);
    let kept = vec![vec![0, 3, 4, 9, 15], vec![1, 2, 8]];
    let pattern = Pattern::keys_only(2, 16, 16, kept).unwrap();
    assert_eq!(pattern.nnz(), 16 * 8);
    let case = Case {
        batch: 1,
        heads: 2,
        n: 16,
        d: 32,
        causal: false,
        logits: LogitKernel::Dot,
        path: GatheredPath::Auto,
    };
    compare(&mut rng, &case, &pattern, "keys only");
}

#[test]
fn all_kept_equals_dense_without_bias() {
    let mut rng = Rng::new(24);
    for causal in [false, true] {
        let (b, h, n, d) = (2, 2, 40, 16);
        let cfg = AttentionConfig {
            causal,
            logits: LogitKernel::Dot,
            gathered: GatheredPath::Auto,
        };
        let shape = [b, h, n, d];
        let q = Tensor::from_f32(&shape, &rng.vec(b * h * n * d, 1.0)).unwrap();
        let k = Tensor::from_f32(&shape, &rng.vec(b * h * n * d, 1.0)).unwrap();
        let v = Tensor::from_f32(&shape, &rng.vec(b * h * n * d, 1.0)).unwrap();
        let pattern = Pattern::dense(h, n, n, causal);
        let (g, _) = attention_gathered(&q, &k, &v, &pattern, None, &cfg).unwrap();
        let (dense, _) = attention_dense(&q, &k, &v, None, &cfg).unwrap();
        assert_close(
            &format!("all kept, causal {causal}"),
            &g.to_f32_vec(),
            &dense.to_f32_vec(),
            ATOL,
            RTOL,
        );
    }
}

#[test]
fn edge_cases() {
    let mut rng = Rng::new(25);
    // N = 1, B = 1, H = 1, one kept key.
    let case = Case {
        batch: 1,
        heads: 1,
        n: 1,
        d: 8,
        causal: false,
        logits: LogitKernel::Dot,
        path: GatheredPath::Auto,
    };
    compare(&mut rng, &case, &Pattern::dense(1, 1, 1, false), "n = 1");
    // Every row keeps exactly one key.
    let offsets: Vec<u32> = (0..=9).collect();
    let keys: Vec<u32> = (0..9).map(|i| (i * 5 % 9) as u32).collect();
    let pattern = Pattern::from_csr(1, 9, 9, offsets, keys).unwrap();
    for path in [GatheredPath::Rows, GatheredPath::KeyUnion] {
        let case = Case {
            batch: 1,
            heads: 1,
            n: 9,
            d: 16,
            causal: false,
            logits: LogitKernel::Dot,
            path,
        };
        compare(&mut rng, &case, &pattern, "one key per row");
    }
}

#[test]
fn empty_row_gives_zeros() {
    let mut rng = Rng::new(26);
    // Row 1 keeps nothing; row 0 keeps a key; causal row 2 keeps only a future key.
    let pattern = Pattern::from_csr(1, 3, 3, vec![0, 1, 1, 2], vec![0, 2]).unwrap();
    // The key-union grid cannot mask such rows, so asking for it falls back to the row kernels.
    for path in [GatheredPath::Rows, GatheredPath::KeyUnion] {
        empty_rows_with(&mut rng, &pattern, path);
    }
}

fn empty_rows_with(rng: &mut Rng, pattern: &Pattern, path: GatheredPath) {
    let cfg = AttentionConfig {
        causal: true,
        logits: LogitKernel::Dot,
        gathered: path,
    };
    let shape = [1, 1, 3, 8];
    let q = Tensor::from_f32(&shape, &rng.vec(24, 1.0)).unwrap();
    let k = Tensor::from_f32(&shape, &rng.vec(24, 1.0)).unwrap();
    let v = Tensor::from_f32(&shape, &rng.vec(24, 1.0)).unwrap();
    let (out, lse) = attention_gathered(&q, &k, &v, pattern, None, &cfg).unwrap();
    let out = out.to_f32_vec();
    assert!(
        out[8..16].iter().all(|&x| x == 0.0),
        "the empty row is not zero ({path:?}): {:?}",
        &out[8..16]
    );
    let dout = Tensor::from_f32(&shape, &rng.vec(24, 1.0)).unwrap();
    let out_t = Tensor::from_f32(&shape, &out).unwrap();
    let (dq, dk, dv, _) = attention_gathered_backward(&q, &k, &v, pattern, None, &out_t, &lse, &dout, &cfg).unwrap();
    for (name, t) in [("dq", dq), ("dk", dk), ("dv", dv)] {
        assert!(t.to_f32_vec().iter().all(|x| x.is_finite()), "{name} is not finite");
    }
    assert!(lse.to_f32_vec().iter().all(|x| x.is_finite()));
}

#[test]
fn invalid_patterns_are_rejected() {
    let err = Pattern::from_csr(1, 2, 2, vec![0, 1, 2], vec![1, 2])
        .unwrap_err()
        .to_string();
    assert!(err.contains("key 2"), "{err}");
    let err = Pattern::from_csr(1, 2, 3, vec![0, 2, 2], vec![2, 1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("ascending"), "{err}");
    let err = Pattern::from_csr(2, 2, 2, vec![0, 1, 2], vec![0, 1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("row_offsets"), "{err}");
}
