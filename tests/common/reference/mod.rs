//! Plain CPU references for every kernel. They favour clarity over speed and compute in f64
//! where a sum is long. Each function states the shapes of its arguments.
#![allow(dead_code)]

pub mod attention;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod optim;
pub mod permute;
pub mod reduce;
pub mod softmax;

/// C [batch, M, N] = op(A) @ op(B) + bias, with A [batch, M, K] (or [batch, K, M] when
/// `trans_a`) and B [batch, K, N] (or [batch, N, K] when `trans_b`); `b_batched` false shares
/// one B across the batch.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    b_batched: bool,
) -> Vec<f32> {
    let mut c = vec![0.0f32; batch * m * n];
    for bi in 0..batch {
        let a = &a[bi * m * k..];
        let b = if b_batched { &b[bi * k * n..] } else { b };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for l in 0..k {
                    let av = if trans_a { a[l * m + i] } else { a[i * k + l] };
                    let bv = if trans_b { b[j * k + l] } else { b[l * n + j] };
                    acc += av as f64 * bv as f64;
                }
                if let Some(bias) = bias {
                    acc += bias[j] as f64;
                }
                c[bi * m * n + i * n + j] = acc as f32;
            }
        }
    }
    c
}
