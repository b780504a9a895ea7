//! Gathered (sparse) attention against the f64 reference with the pruned entries masked out.
//! The cases cover forward and every gradient, random patterns of 10% to 100% kept entries in
//! the per-row and keys-only layouts, and causal patterns. With every entry kept, gathered
//! attention must equal the fused dense kernel. Also the validation of `Pattern`.

mod common;

use common::reference::attention::{Bias, Problem, narrow, widen};
use common::{Rng, assert_close};
use fiak::ops::attention::{
    AttentionConfig, GatheredPath, LogitKernel, Pattern, attention_dense, attention_dense_backward, attention_gathered,
    attention_gathered_backward,
};
use fiak::{DType, Tensor};

/// Tolerances as for dense attention: f32 sums over at most a few hundred keys of values in
/// [-1, 1] against f64, and once more for the gradients.
const FORWARD_ATOL: f32 = 2e-5;
const FORWARD_RTOL: f32 = 1e-4;
const GRAD_ATOL: f32 = 1e-4;
const GRAD_RTOL: f32 = 1e-3;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// Every row keeps its own keys.
    Rows,
    /// All rows of a head keep the same keys.
    Keys,
}

fn config(causal: bool, gaussian: bool) -> AttentionConfig {
    AttentionConfig {
        causal,
        logits: if gaussian {
            LogitKernel::Gaussian
        } else {
            LogitKernel::Dot
        },
        gathered: GatheredPath::Auto,
    }
}

/// Builds a random pattern keeping about `keep_ratio` of the entries; with `causal_only` rows
/// keep no key j > i.
fn random_pattern(
    rng: &mut Rng,
    heads: usize,
    nq: usize,
    nk: usize,
    keep_ratio: f32,
    layout: Layout,
    causal_only: bool,
) -> Pattern {
    match layout {
        Layout::Keys => {
            let lists = (0..heads)
                .map(|_| (0..nk as u32).filter(|_| rng.uniform() < keep_ratio).collect())
                .collect();
            Pattern::keys_only(heads, nq, nk, lists).unwrap()
        }
        Layout::Rows => {
            let mut row_offsets = Vec::new();
            let mut key_index = Vec::new();
            for _ in 0..heads {
                for i in 0..nq {
                    row_offsets.push(key_index.len() as u32);
                    for j in 0..nk {
                        if rng.uniform() < keep_ratio && (!causal_only || j <= i) {
                            key_index.push(j as u32);
                        }
                    }
                }
                row_offsets.push(key_index.len() as u32);
            }
            Pattern::from_csr(heads, nq, nk, row_offsets, key_index).unwrap()
        }
    }
}

/// Returns the kept-entry mask [H, Nq, Nk] of a pattern, and a dense bias [1, H, Nq, Nk] holding the
/// per-entry bias at kept entries and 0 elsewhere.
fn dense_view(pattern: &Pattern, entry_bias: Option<&[f32]>) -> (Vec<bool>, Vec<f64>) {
    let (heads, nq, nk) = (pattern.heads(), pattern.nq(), pattern.nk());
    let mut mask = vec![false; heads * nq * nk];
    let mut bias = vec![0.0; heads * nq * nk];
    let offsets = pattern.row_offsets();
    for h in 0..heads {
        for i in 0..nq {
            let (start, end) = (offsets[h * (nq + 1) + i], offsets[h * (nq + 1) + i + 1]);
            for e in start as usize..end as usize {
                let j = pattern.key_index()[e] as usize;
                mask[(h * nq + i) * nk + j] = true;
                if let Some(entry_bias) = entry_bias {
                    bias[(h * nq + i) * nk + j] = entry_bias[e] as f64;
                }
            }
        }
    }
    (mask, bias)
}

/// Runs gathered attention on random inputs and compares every output with the reference.
fn check_gathered(rng: &mut Rng, problem: Problem, pattern: &Pattern, with_bias: bool) {
    let Problem {
        batch: b,
        heads: h,
        nq,
        nk,
        d,
        ..
    } = problem;
    let q = rng.vec(b * h * nq * d, 1.0);
    let k = rng.vec(b * h * nk * d, 1.0);
    let v = rng.vec(b * h * nk * d, 1.0);
    let dout = rng.vec(b * h * nq * d, 1.0);
    let entry_bias = with_bias.then(|| rng.vec(pattern.nnz(), 2.0));
    let what = format!(
        "{problem:?} {pattern:?} kept {:.2} bias {with_bias}",
        pattern.kept_fraction()
    );

    let (mask, dense_bias) = dense_view(pattern, entry_bias.as_deref());
    let bias_shape = [1, h, nq, nk];
    let reference_bias = with_bias.then_some(Bias {
        data: &dense_bias,
        shape: bias_shape,
    });
    let (qd, kd, vd, gd) = (widen(&q), widen(&k), widen(&v), widen(&dout));
    let (want_out, want_lse) = problem.forward(&qd, &kd, &vd, reference_bias, Some(&mask));
    let grads = problem.backward(&qd, &kd, &vd, reference_bias, Some(&mask), &gd);

    let q_shape = [b, h, nq, d];
    let k_shape = [b, h, nk, d];
    let tq = Tensor::from_f32(&q_shape, &q).unwrap();
    let tk = Tensor::from_f32(&k_shape, &k).unwrap();
    let tv = Tensor::from_f32(&k_shape, &v).unwrap();
    let tdout = Tensor::from_f32(&q_shape, &dout).unwrap();
    let tbias = entry_bias.as_ref().map(|e| Tensor::from_f32(&[e.len()], e).unwrap());
    let cfg = config(problem.causal, problem.gaussian);

    let (out, lse) = attention_gathered(&tq, &tk, &tv, pattern, tbias.as_ref(), &cfg).unwrap();
    assert_close(
        &format!("out {what}"),
        &out.to_f32_vec(),
        &narrow(&want_out),
        FORWARD_ATOL,
        FORWARD_RTOL,
    );
    assert_close(
        &format!("lse {what}"),
        &lse.to_f32_vec(),
        &narrow(&want_lse),
        FORWARD_ATOL,
        FORWARD_RTOL,
    );

    let (dq, dk, dv, dbias) =
        attention_gathered_backward(&tq, &tk, &tv, pattern, tbias.as_ref(), &out, &lse, &tdout, &cfg).unwrap();
    assert_close(
        &format!("dq {what}"),
        &dq.to_f32_vec(),
        &narrow(&grads.dq),
        GRAD_ATOL,
        GRAD_RTOL,
    );
    assert_close(
        &format!("dk {what}"),
        &dk.to_f32_vec(),
        &narrow(&grads.dk),
        GRAD_ATOL,
        GRAD_RTOL,
    );
    assert_close(
        &format!("dv {what}"),
        &dv.to_f32_vec(),
        &narrow(&grads.dv),
        GRAD_ATOL,
        GRAD_RTOL,
    );
    assert_eq!(dbias.is_some(), with_bias, "dbias present iff bias given");
    if let Some(dbias) = dbias {
        // The reference's dense bias gradient, read at the kept entries.
        let dense = grads.dbias.unwrap();
        let mut want = Vec::with_capacity(pattern.nnz());
        let offsets = pattern.row_offsets();
        for hh in 0..h {
            for i in 0..nq {
                let (start, end) = (offsets[hh * (nq + 1) + i], offsets[hh * (nq + 1) + i + 1]);
                for e in start as usize..end as usize {
                    let j = pattern.key_index()[e] as usize;
                    want.push(dense[(hh * nq + i) * nk + j] as f32);
                }
            }
        }
        assert_close(
            &format!("dbias {what}"),
            &dbias.to_f32_vec(),
            &want,
            GRAD_ATOL,
            GRAD_RTOL,
        );
    }
}

fn problem(batch: usize, heads: usize, nq: usize, nk: usize, d: usize, causal: bool, gaussian: bool) -> Problem {
    Problem {
        batch,
        heads,
        nq,
        nk,
        d,
        causal,
        gaussian,
    }
}

#[test]
fn gathered_random_patterns() {
    let mut rng = Rng::new(31);
    let mut case = 0;
    for kept in [0.1, 0.3, 0.7, 1.0] {
        for layout in [Layout::Rows, Layout::Keys] {
            for causal in [false, true] {
                case += 1;
                let gaussian = case % 3 == 0;
                let d = if case % 2 == 0 { 8 } else { 5 };
                let pattern = random_pattern(&mut rng, 2, 23, 23, kept, layout, false);
                if layout == Layout::Keys {
                    assert!(pattern.is_keys_only());
                }
                check_gathered(
                    &mut rng,
                    problem(2, 2, 23, 23, d, causal, gaussian),
                    &pattern,
                    case % 4 != 1,
                );
            }
        }
    }
}

#[test]
fn gathered_long_sequences() {
    let mut rng = Rng::new(32);
    for (n, kept, layout) in [
        (197, 0.3, Layout::Rows),
        (256, 0.5, Layout::Keys),
        (64, 0.7, Layout::Rows),
    ] {
        let pattern = random_pattern(&mut rng, 1, n, n, kept, layout, false);
        check_gathered(&mut rng, problem(1, 1, n, n, 16, false, false), &pattern, true);
    }
}

#[test]
fn gathered_cross_attention() {
    let mut rng = Rng::new(33);
    for layout in [Layout::Rows, Layout::Keys] {
        let pattern = random_pattern(&mut rng, 2, 7, 30, 0.5, layout, false);
        check_gathered(&mut rng, problem(2, 2, 7, 30, 12, false, true), &pattern, true);
    }
}

/// Patterns pruned from a causal model keep no key j > i; with a causal config they stay
/// causal, and a keys-only list under a causal config masks the future keys.
#[test]
fn gathered_causal_patterns() {
    let mut rng = Rng::new(34);
    for kept in [0.3, 0.7] {
        let pattern = random_pattern(&mut rng, 2, 40, 40, kept, Layout::Rows, true);
        check_gathered(&mut rng, problem(1, 2, 40, 40, 16, true, kept > 0.5), &pattern, true);
        let keys = random_pattern(&mut rng, 2, 40, 40, kept, Layout::Keys, false);
        check_gathered(&mut rng, problem(1, 2, 40, 40, 16, true, false), &keys, true);
    }
    let full = Pattern::dense(2, 33, 33, true);
    assert!(!full.is_keys_only());
    check_gathered(&mut rng, problem(2, 2, 33, 33, 8, true, true), &full, true);
}

/// With every entry kept and a per-entry bias equal to a dense bias, gathered attention matches
/// the fused dense kernel.
#[test]
fn gathered_full_pattern_equals_dense() {
    let mut rng = Rng::new(35);
    let (b, h, n, d) = (2, 2, 37, 16);
    for causal in [false, true] {
        let cfg = config(causal, causal);
        let pattern = Pattern::dense(h, n, n, causal);
        let q = Tensor::from_f32(&[b, h, n, d], &rng.vec(b * h * n * d, 1.0)).unwrap();
        let k = Tensor::from_f32(&[b, h, n, d], &rng.vec(b * h * n * d, 1.0)).unwrap();
        let v = Tensor::from_f32(&[b, h, n, d], &rng.vec(b * h * n * d, 1.0)).unwrap();
        let dout = Tensor::from_f32(&[b, h, n, d], &rng.vec(b * h * n * d, 1.0)).unwrap();
        let dense_bias_data = rng.vec(h * n * n, 1.0);
        let dense_bias = Tensor::from_f32(&[1, h, n, n], &dense_bias_data).unwrap();
        // The per-entry bias: the dense bias at the kept entries, in the pattern's order.
        let offsets = pattern.row_offsets();
        let mut entry_bias = Vec::new();
        for hh in 0..h {
            for i in 0..n {
                for e in offsets[hh * (n + 1) + i] as usize..offsets[hh * (n + 1) + i + 1] as usize {
                    entry_bias.push(dense_bias_data[(hh * n + i) * n + pattern.key_index()[e] as usize]);
                }
            }
        }
        let entry_bias_t = Tensor::from_f32(&[entry_bias.len()], &entry_bias).unwrap();

        let (out_d, lse_d) = attention_dense(&q, &k, &v, Some(&dense_bias), &cfg).unwrap();
        let (out_g, lse_g) = attention_gathered(&q, &k, &v, &pattern, Some(&entry_bias_t), &cfg).unwrap();
        assert_close("out", &out_g.to_f32_vec(), &out_d.to_f32_vec(), 1e-6, 1e-5);
        assert_close("lse", &lse_g.to_f32_vec(), &lse_d.to_f32_vec(), 1e-6, 1e-5);

        let (dq_d, dk_d, dv_d, db_d) =
            attention_dense_backward(&q, &k, &v, Some(&dense_bias), &out_d, &lse_d, &dout, &cfg).unwrap();
        let (dq_g, dk_g, dv_g, db_g) =
            attention_gathered_backward(&q, &k, &v, &pattern, Some(&entry_bias_t), &out_g, &lse_g, &dout, &cfg)
                .unwrap();
        assert_close("dq", &dq_g.to_f32_vec(), &dq_d.to_f32_vec(), 1e-5, 1e-4);
        assert_close("dk", &dk_g.to_f32_vec(), &dk_d.to_f32_vec(), 1e-5, 1e-4);
        assert_close("dv", &dv_g.to_f32_vec(), &dv_d.to_f32_vec(), 1e-5, 1e-4);
        let db_d = db_d.unwrap().to_f32_vec();
        let mut want = Vec::new();
        for hh in 0..h {
            for i in 0..n {
                for e in offsets[hh * (n + 1) + i] as usize..offsets[hh * (n + 1) + i + 1] as usize {
                    want.push(db_d[(hh * n + i) * n + pattern.key_index()[e] as usize]);
                }
            }
        }
        assert_close("dbias", &db_g.unwrap().to_f32_vec(), &want, 1e-5, 1e-4);
    }
}

/// A constant per-entry bias is a uniform prior over the kept keys: no change to the output.
#[test]
fn gathered_uniform_bias_is_standard_attention() {
    let mut rng = Rng::new(36);
    let (b, h, n, d) = (1, 2, 20, 8);
    let cfg = config(false, false);
    for layout in [Layout::Rows, Layout::Keys] {
        let pattern = random_pattern(&mut rng, h, n, n, 0.5, layout, false);
        let q = Tensor::from_f32(&[b, h, n, d], &rng.vec(b * h * n * d, 1.0)).unwrap();
        let k = Tensor::from_f32(&[b, h, n, d], &rng.vec(b * h * n * d, 1.0)).unwrap();
        let bias = Tensor::full(&[pattern.nnz()], 2.5);
        let (plain, _) = attention_gathered(&q, &k, &k, &pattern, None, &cfg).unwrap();
        let (prior, _) = attention_gathered(&q, &k, &k, &pattern, Some(&bias), &cfg).unwrap();
        assert_close(
            &format!("{layout:?}"),
            &prior.to_f32_vec(),
            &plain.to_f32_vec(),
            1e-6,
            1e-5,
        );
    }
}

/// Rows with one kept key, an empty row, and size-one problems.
#[test]
fn gathered_edge_cases() {
    let mut rng = Rng::new(37);
    // Head 0: row 0 keeps key 3 only, row 1 keeps nothing, row 2 keeps keys 0 and 4.
    // Head 1: row 0 keeps nothing, rows 1 and 2 keep key 1.
    let pattern = Pattern::from_csr(2, 3, 5, vec![0, 1, 1, 3, 3, 3, 4, 5], vec![3, 0, 4, 1, 1]).unwrap();
    assert!(!pattern.is_keys_only());
    for causal in [false, true] {
        check_gathered(&mut rng, problem(2, 2, 3, 5, 4, causal, true), &pattern, true);
    }

    // The empty rows give exact zeros and finite gradients.
    let (b, h, nq, nk, d) = (1, 2, 3, 5, 4);
    let q = Tensor::from_f32(&[b, h, nq, d], &rng.vec(b * h * nq * d, 1.0)).unwrap();
    let k = Tensor::from_f32(&[b, h, nk, d], &rng.vec(b * h * nk * d, 1.0)).unwrap();
    let cfg = config(false, false);
    let (out, lse) = attention_gathered(&q, &k, &k, &pattern, None, &cfg).unwrap();
    let (out, lse) = (out.to_f32_vec(), lse.to_f32_vec());
    for (h, i) in [(0, 1), (1, 0)] {
        let row = h * nq + i;
        assert!(
            out[row * d..(row + 1) * d].iter().all(|&x| x == 0.0),
            "row ({h}, {i}) is not zero"
        );
        assert_eq!(lse[row], 0.0, "lse of empty row ({h}, {i})");
    }
    let out_t = Tensor::from_f32(&[b, h, nq, d], &out).unwrap();
    let lse_t = Tensor::from_f32(&[b, h, nq], &lse).unwrap();
    let (dq, dk, dv, _) = attention_gathered_backward(&q, &k, &k, &pattern, None, &out_t, &lse_t, &q, &cfg).unwrap();
    for (name, g) in [("dq", dq), ("dk", dk), ("dv", dv)] {
        assert!(g.to_f32_vec().iter().all(|x| x.is_finite()), "{name} is not finite");
    }

    // B = 1, H = 1, N = 1 in both layouts, and a pattern without any entry.
    check_gathered(
        &mut rng,
        problem(1, 1, 1, 1, 3, false, false),
        &Pattern::dense(1, 1, 1, false),
        true,
    );
    let single = Pattern::from_csr(1, 1, 1, vec![0, 1], vec![0]).unwrap();
    check_gathered(&mut rng, problem(1, 1, 1, 1, 4, true, true), &single, true);
    let empty = Pattern::from_csr(1, 4, 4, vec![0; 5], vec![]).unwrap();
    check_gathered(&mut rng, problem(1, 1, 4, 4, 4, false, false), &empty, false);
}

#[test]
fn pattern_accessors() {
    let pattern = Pattern::from_csr(2, 2, 4, vec![0, 2, 3, 3, 4, 6], vec![0, 3, 1, 2, 0, 2]).unwrap();
    assert_eq!(pattern.heads(), 2);
    assert_eq!(pattern.nq(), 2);
    assert_eq!(pattern.nk(), 4);
    assert_eq!(pattern.nnz(), 6);
    assert!((pattern.kept_fraction() - 6.0 / 16.0).abs() < 1e-12);
    assert_eq!(pattern.row_offsets(), &[0, 2, 3, 3, 4, 6]);
    assert_eq!(pattern.key_index(), &[0, 3, 1, 2, 0, 2]);
    assert!(!pattern.is_keys_only());
    assert_eq!(pattern.kept_keys(0), None);

    let keys = Pattern::keys_only(2, 3, 5, vec![vec![1, 4], vec![0]]).unwrap();
    assert!(keys.is_keys_only());
    assert_eq!(keys.nnz(), 9);
    assert_eq!(keys.kept_keys(0), Some(&[1u32, 4][..]));
    assert_eq!(keys.kept_keys(1), Some(&[0u32][..]));
    assert_eq!(keys.row_offsets(), &[0, 2, 4, 6, 6, 7, 8, 9]);
    assert_eq!(keys.key_index(), &[1, 4, 1, 4, 1, 4, 0, 0, 0]);

    // CSR input whose rows repeat per head is recognised as keys-only.
    let same = Pattern::from_csr(1, 2, 3, vec![0, 2, 4], vec![0, 2, 0, 2]).unwrap();
    assert!(same.is_keys_only());
    assert_eq!(same.kept_keys(0), Some(&[0u32, 2][..]));

    let causal = Pattern::dense(1, 4, 3, true);
    assert_eq!(causal.nnz(), 1 + 2 + 3 + 3);
    let full = Pattern::dense(3, 4, 5, false);
    assert_eq!(full.nnz(), 60);
    assert_eq!(full.kept_fraction(), 1.0);
}

#[test]
fn pattern_tensors_match_host_copies() {
    let pattern = Pattern::from_csr(1, 2, 3, vec![0, 1, 3], vec![2, 0, 1]).unwrap();
    assert_eq!(pattern.row_offsets_tensor().to_u32_vec(), vec![0, 1, 3]);
    assert_eq!(pattern.row_offsets_tensor().shape(), &[1, 3]);
    assert_eq!(pattern.key_index_tensor().to_u32_vec(), vec![2, 0, 1]);
    assert_eq!(pattern.key_index_tensor().dtype(), DType::U32);
}

#[test]
fn pattern_rejects_invalid_csr() {
    let cases: [(&str, Vec<u32>, Vec<u32>, &str); 6] = [
        ("offsets length", vec![0, 1], vec![0], "row_offsets has 2 values"),
        ("decreasing offsets", vec![0, 2, 1], vec![0, 1], "outside"),
        ("key out of range", vec![0, 1, 2], vec![0, 3], "key 3"),
        (
            "keys not ascending",
            vec![0, 2, 2],
            vec![1, 0],
            "not strictly ascending",
        ),
        ("duplicate keys", vec![0, 2, 2], vec![1, 1], "not strictly ascending"),
        ("offsets past the end", vec![0, 1, 3], vec![0, 1], "outside"),
    ];
    for (name, offsets, keys, expected) in cases {
        let err = Pattern::from_csr(1, 2, 3, offsets, keys).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err}");
    }
    // Head 1 must start where head 0 ends.
    let err = Pattern::from_csr(2, 1, 3, vec![0, 1, 0, 1], vec![0, 1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("head 1 starts at entry 0"), "{err}");
    let err = Pattern::keys_only(2, 1, 3, vec![vec![0]]).unwrap_err().to_string();
    assert!(err.contains("lists for 1 heads"), "{err}");
    let err = Pattern::keys_only(1, 1, 3, vec![vec![2, 1]]).unwrap_err().to_string();
    assert!(err.contains("not strictly ascending"), "{err}");
}

#[test]
fn gathered_rejects_mismatched_pattern() {
    let q = Tensor::zeros(&[1, 2, 4, 8], DType::F32);
    let cfg = config(false, false);
    let pattern = Pattern::dense(2, 4, 5, false);
    let err = attention_gathered(&q, &q, &q, &pattern, None, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not fit"), "{err}");
    let pattern = Pattern::dense(2, 4, 4, false);
    let bias = Tensor::zeros(&[3], DType::F32);
    let err = attention_gathered(&q, &q, &q, &pattern, Some(&bias), &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bias must be f32 [32]"), "{err}");
}
