//! CPU reference of the axis permutation and the attention layout ops.

/// Returns x (row-major, `shape`) with its axes reordered: out.shape[i] = shape[perm[i]].
pub fn permute(x: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let rank = shape.len();
    let mut in_strides = vec![1usize; rank];
    for a in (0..rank.saturating_sub(1)).rev() {
        in_strides[a] = in_strides[a + 1] * shape[a + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    let mut out = Vec::with_capacity(x.len());
    for i in 0..x.len() {
        // Output coordinates of element i, innermost last.
        let mut rest = i;
        let mut src = 0;
        for a in (0..rank).rev() {
            src += (rest % out_shape[a]) * in_strides[perm[a]];
            rest /= out_shape[a];
        }
        out.push(x[src]);
    }
    out
}

/// qkv [b, n, 3 * h * dh] -> (q, k, v), each [b, h, n, dh].
pub fn split_qkv(qkv: &[f32], b: usize, n: usize, h: usize, dh: usize) -> [Vec<f32>; 3] {
    let mut parts = [Vec::new(), Vec::new(), Vec::new()];
    for (which, part) in parts.iter_mut().enumerate() {
        for bi in 0..b {
            for hi in 0..h {
                for ni in 0..n {
                    for d in 0..dh {
                        part.push(qkv[((bi * n + ni) * 3 + which) * h * dh + hi * dh + d]);
                    }
                }
            }
        }
    }
    parts
}

/// cls [d] and x [b, n, d] -> [b, n + 1, d] with the class token first.
pub fn concat_cls(cls: &[f32], x: &[f32], b: usize, n: usize, d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(b * (n + 1) * d);
    for bi in 0..b {
        out.extend_from_slice(cls);
        out.extend_from_slice(&x[bi * n * d..(bi + 1) * n * d]);
    }
    out
}

/// dy [b, n + 1, d] -> (dcls [d] summed over b, dx [b, n, d]).
pub fn concat_cls_backward(dy: &[f32], b: usize, n: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut dcls = vec![0.0f64; d];
    let mut dx = Vec::with_capacity(b * n * d);
    for bi in 0..b {
        let seq = &dy[bi * (n + 1) * d..(bi + 1) * (n + 1) * d];
        for (acc, &g) in dcls.iter_mut().zip(&seq[..d]) {
            *acc += g as f64;
        }
        dx.extend_from_slice(&seq[d..]);
    }
    (dcls.into_iter().map(|v| v as f32).collect(), dx)
}

/// x [b, n, d] -> x[:, index, :] as [b, d].
pub fn select_token(x: &[f32], b: usize, n: usize, d: usize, index: usize) -> Vec<f32> {
    (0..b)
        .flat_map(|bi| x[(bi * n + index) * d..(bi * n + index + 1) * d].to_vec())
        .collect()
}

/// dy [b, d] -> [b, n, d] with dy at token `index` and zeros elsewhere.
pub fn select_token_backward(dy: &[f32], b: usize, n: usize, d: usize, index: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; b * n * d];
    for bi in 0..b {
        out[(bi * n + index) * d..(bi * n + index + 1) * d].copy_from_slice(&dy[bi * d..(bi + 1) * d]);
    }
    out
}
