//! CPU reference of the reductions, accumulated in f64.

/// Sums x viewed as [outer, len, inner] over the middle axis: [outer, inner], in f64.
pub fn sum_middle_f64(x: &[f32], outer: usize, len: usize, inner: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; outer * inner];
    for o in 0..outer {
        for r in 0..len {
            for j in 0..inner {
                out[o * inner + j] += x[(o * len + r) * inner + j] as f64;
            }
        }
    }
    out
}

/// Sum of x [.., L, ..] over `axis` of `shape`, rounded to f32; `mean` divides by L.
pub fn sum_axis(x: &[f32], shape: &[usize], axis: usize, mean: bool) -> Vec<f32> {
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let divisor = if mean { len as f64 } else { 1.0 };
    sum_middle_f64(x, outer, len, inner)
        .iter()
        .map(|&s| (s / divisor) as f32)
        .collect()
}

/// Sum of squares of every element of every slice, in f64.
pub fn squared_norm(tensors: &[&[f32]]) -> f64 {
    tensors
        .iter()
        .flat_map(|t| t.iter())
        .map(|&v| v as f64 * v as f64)
        .sum()
}
