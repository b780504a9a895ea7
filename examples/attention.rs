//! The attention ops called directly: prior-weighted dense attention, then key-gathered
//! attention over a pattern that keeps every entry (equal to dense) and one that keeps 30%.
//!
//!     cargo run --release --example attention

use fiak::Tensor;
use fiak::ops::attention::{AttentionConfig, GatheredPath, LogitKernel, Pattern, attention_dense, attention_gathered};

/// Values in [-1, 1) from a hash of the index.
fn random(shape: &[usize], salt: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| ((i * 2654435761 + salt * 97) % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    Tensor::from_f32(shape, &values).expect("length matches the shape")
}

fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    a.to_f32_vec()
        .iter()
        .zip(b.to_f32_vec())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn main() -> fiak::Result<()> {
    let (batch, heads, n, d) = (2, 4, 64, 32);
    let q = random(&[batch, heads, n, d], 1);
    let k = random(&[batch, heads, n, d], 2);
    let v = random(&[batch, heads, n, d], 3);
    let config = AttentionConfig {
        causal: false,
        logits: LogitKernel::Dot,
        gathered: GatheredPath::Auto,
    };

    // A prior bias b = log pi broadcast over the batch: [1, H, N, N].
    let bias_values: Vec<f32> = (0..heads * n * n)
        .map(|e| ((e * 31) % 17) as f32 / 17.0 - 0.5)
        .collect();
    let bias = Tensor::from_f32(&[1, heads, n, n], &bias_values)?;
    let (dense, _) = attention_dense(&q, &k, &v, Some(&bias), &config)?;

    // Every entry kept: the gathered kernel must match dense attention.
    let all = Pattern::dense(heads, n, n, false);
    let kept_bias = Tensor::from_f32(&[heads * n * n], &bias_values)?;
    let (gathered, _) = attention_gathered(&q, &k, &v, &all, Some(&kept_bias), &config)?;
    println!(
        "all entries kept: max |gathered - dense| = {:.2e}",
        max_difference(&gathered, &dense)
    );

    // Keep the 30% of entries with the largest bias in every row.
    let keep = (n * 3).div_ceil(10);
    let (mut offsets, mut keys, mut entry_bias) = (vec![0u32], Vec::new(), Vec::new());
    for h in 0..heads {
        for i in 0..n {
            let row = &bias_values[(h * n + i) * n..(h * n + i + 1) * n];
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let mut kept: Vec<usize> = order[..keep].to_vec();
            kept.sort();
            keys.extend(kept.iter().map(|&j| j as u32));
            entry_bias.extend(kept.iter().map(|&j| row[j]));
            offsets.push(keys.len() as u32);
        }
        if h + 1 < heads {
            offsets.push(keys.len() as u32);
        }
    }
    let pattern = Pattern::from_csr(heads, n, n, offsets, keys)?;
    let entry_bias = Tensor::from_f32(&[entry_bias.len()], &entry_bias)?;
    let (sparse, _) = attention_gathered(&q, &k, &v, &pattern, Some(&entry_bias), &config)?;
    println!(
        "30% kept ({} of {} entries): max |sparse - dense| = {:.3}, the share of attention the pruned entries carried",
        pattern.nnz(),
        heads * n * n,
        max_difference(&sparse, &dense)
    );
    Ok(())
}
