//! CPU reference of the fused cross-entropy loss (log-softmax + NLL with label smoothing and an
//! ignore index, mean over valid rows) and its backward, in f64.

/// Returns whether a row with target `t` counts: a class index below `cols` that is not ignored.
fn valid(t: u32, cols: usize, ignore_index: Option<u32>) -> bool {
    (t as usize) < cols && Some(t) != ignore_index
}

fn log_sum_exp(row: &[f64]) -> f64 {
    let max = row.iter().cloned().fold(f64::MIN, f64::max);
    max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// Returns (loss, lse [rows]) for logits [rows, cols] in f64 and targets [rows].
pub fn cross_entropy64(
    logits: &[f64],
    targets: &[u32],
    cols: usize,
    smoothing: f64,
    ignore_index: Option<u32>,
) -> (f64, Vec<f64>) {
    let mut total = 0.0;
    let mut count = 0usize;
    let mut lses = Vec::new();
    for (row, &t) in logits.chunks(cols).zip(targets) {
        let lse = log_sum_exp(row);
        lses.push(lse);
        if !valid(t, cols, ignore_index) {
            continue;
        }
        let nll = lse - row[t as usize];
        let smooth = lse - row.iter().sum::<f64>() / cols as f64;
        total += (1.0 - smoothing) * nll + smoothing * smooth;
        count += 1;
    }
    let loss = if count == 0 { 0.0 } else { total / count as f64 };
    (loss, lses)
}

/// Returns (loss, lse [rows]) for logits [rows, cols] and targets [rows].
pub fn cross_entropy(
    logits: &[f32],
    targets: &[u32],
    cols: usize,
    smoothing: f32,
    ignore_index: Option<u32>,
) -> (f32, Vec<f32>) {
    let logits: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
    let (loss, lse) = cross_entropy64(&logits, targets, cols, smoothing as f64, ignore_index);
    (loss as f32, lse.into_iter().map(|v| v as f32).collect())
}

/// Returns dlogits [rows, cols] of [`cross_entropy`] for the loss gradient `dloss`.
pub fn cross_entropy_backward(
    logits: &[f32],
    targets: &[u32],
    cols: usize,
    smoothing: f32,
    ignore_index: Option<u32>,
    dloss: f32,
) -> Vec<f32> {
    let smoothing = smoothing as f64;
    let count = targets.iter().filter(|&&t| valid(t, cols, ignore_index)).count();
    let mut dlogits = vec![0.0f32; logits.len()];
    for ((row, &t), out) in logits.chunks(cols).zip(targets).zip(dlogits.chunks_mut(cols)) {
        if !valid(t, cols, ignore_index) {
            continue;
        }
        let row: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        let lse = log_sum_exp(&row);
        let scale = dloss as f64 / count as f64;
        for c in 0..cols {
            let target = if c == t as usize { 1.0 - smoothing } else { 0.0 };
            out[c] = (scale * ((row[c] - lse).exp() - target - smoothing / cols as f64)) as f32;
        }
    }
    dlogits
}
