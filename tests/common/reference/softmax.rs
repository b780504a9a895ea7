//! CPU reference of softmax over the last axis and its backward, in f64.

/// y [rows, cols] = softmax of each row of x [rows, cols].
pub fn softmax(x: &[f32], cols: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    for (x_row, y_row) in x.chunks(cols).zip(y.chunks_mut(cols)) {
        let max = x_row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
        let sum: f64 = x_row.iter().map(|&v| (v as f64 - max).exp()).sum();
        for (out, &v) in y_row.iter_mut().zip(x_row) {
            *out = ((v as f64 - max).exp() / sum) as f32;
        }
    }
    y
}

/// dx [rows, cols] = y * (dy - sum(dy * y)) per row, from the softmax output y and the output
/// gradient dy, both [rows, cols].
pub fn softmax_backward(y: &[f32], dy: &[f32], cols: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; y.len()];
    for ((y_row, dy_row), dx_row) in y.chunks(cols).zip(dy.chunks(cols)).zip(dx.chunks_mut(cols)) {
        let dot: f64 = y_row.iter().zip(dy_row).map(|(&a, &b)| a as f64 * b as f64).sum();
        for ((out, &yv), &dyv) in dx_row.iter_mut().zip(y_row).zip(dy_row) {
            *out = (yv as f64 * (dyv as f64 - dot)) as f32;
        }
    }
    dx
}
