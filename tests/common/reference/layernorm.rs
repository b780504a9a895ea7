//! CPU reference of layer norm over the last axis and its backward, accumulating in f64.

/// Normalises each row of x [rows, cols]: y = (x - mean) * rstd * weight + bias, with weight and
/// bias [cols] and rstd = 1 / sqrt(biased variance + eps). Returns (y, mean [rows], rstd [rows]).
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], cols: usize, eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut y = vec![0.0f32; x.len()];
    let mut means = Vec::new();
    let mut rstds = Vec::new();
    for (x_row, y_row) in x.chunks(cols).zip(y.chunks_mut(cols)) {
        let mean = x_row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        let var = x_row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for c in 0..cols {
            y_row[c] = ((x_row[c] as f64 - mean) * rstd * weight[c] as f64 + bias[c] as f64) as f32;
        }
        means.push(mean as f32);
        rstds.push(rstd as f32);
    }
    (y, means, rstds)
}

/// Backward of [`layer_norm`] from x [rows, cols], weight [cols], the saved mean and rstd
/// [rows] and dy [rows, cols]. Returns (dx [rows, cols], dweight [cols], dbias [cols]).
pub fn layer_norm_backward(
    x: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    cols: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0.0f32; x.len()];
    let mut dweight = vec![0.0f64; cols];
    let mut dbias = vec![0.0f64; cols];
    for (r, ((x_row, dy_row), dx_row)) in x.chunks(cols).zip(dy.chunks(cols)).zip(dx.chunks_mut(cols)).enumerate() {
        let (mean, rstd) = (mean[r] as f64, rstd[r] as f64);
        let xhat: Vec<f64> = x_row.iter().map(|&v| (v as f64 - mean) * rstd).collect();
        let g: Vec<f64> = dy_row.iter().zip(weight).map(|(&d, &w)| d as f64 * w as f64).collect();
        let mean_g = g.iter().sum::<f64>() / cols as f64;
        let mean_gx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
        for c in 0..cols {
            dx_row[c] = (rstd * (g[c] - mean_g - xhat[c] * mean_gx)) as f32;
            dweight[c] += dy_row[c] as f64 * xhat[c];
            dbias[c] += dy_row[c] as f64;
        }
    }
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
    (dx, to_f32(dweight), to_f32(dbias))
}
