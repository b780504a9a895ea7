//! Attention on the default adapter: the unfused path, the fused dense kernels, and gathered
//! attention over pruning patterns, forward and forward + backward, at B = 8, H = 4, d = 32.
//! Each iteration waits for the device before the clock stops. After criterion's runs, a table
//! gives the mean time of a few extra runs, the speed-up over the fused dense kernels and the
//! peak of pooled GPU memory during forward + backward, beyond the inputs.
//!
//! Run with `cargo bench --bench attention`; criterion's options follow `--`, for example
//! `-- --warm-up-time 1 --measurement-time 2`.

use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput};
use fiak::Tensor;
use fiak::ops::attention::{
    AttentionConfig, GatheredPath, LogitKernel, Pattern, attention_dense, attention_dense_backward, attention_gathered,
    attention_gathered_backward, attention_unfused, attention_unfused_backward,
};

const BATCH: usize = 8;
const HEADS: usize = 4;
const WIDTH: usize = 32;
const LENGTHS: [usize; 4] = [64, 197, 256, 512];
/// Runs per variant for the summary table.
const TABLE_RUNS: usize = 3;

/// Deterministic data in [-0.5, 0.5).
fn filled(shape: &[usize], seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| (((i + seed) * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    Tensor::from_f32(shape, &data).unwrap()
}

/// A small generator (SplitMix64) for the random patterns.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `count` distinct keys below `n`, ascending.
    fn keys(&mut self, n: usize, count: usize) -> Vec<u32> {
        let mut all: Vec<u32> = (0..n as u32).collect();
        for i in 0..count {
            let j = i + (self.next() % (n - i) as u64) as usize;
            all.swap(i, j);
        }
        let mut kept = all[..count].to_vec();
        kept.sort_unstable();
        kept
    }
}

/// Scores pruned per row: every query row keeps the same number of random keys.
fn row_pattern(n: usize, keep_ratio: f64, seed: u64) -> Pattern {
    let mut rng = Rng(seed);
    let count = ((n as f64 * keep_ratio).round() as usize).max(1);
    let mut row_offsets = Vec::with_capacity(HEADS * (n + 1));
    let mut key_index = Vec::new();
    for _ in 0..HEADS {
        for _ in 0..n {
            row_offsets.push(key_index.len() as u32);
            key_index.extend(rng.keys(n, count));
        }
        row_offsets.push(key_index.len() as u32);
    }
    Pattern::from_csr(HEADS, n, n, row_offsets, key_index).unwrap()
}

/// Keys pruned per head: all rows keep the same random keys.
fn key_pattern(n: usize, keep_ratio: f64, seed: u64) -> Pattern {
    let mut rng = Rng(seed);
    let count = ((n as f64 * keep_ratio).round() as usize).max(1);
    let lists = (0..HEADS).map(|_| rng.keys(n, count)).collect();
    Pattern::keys_only(HEADS, n, n, lists).unwrap()
}

#[derive(Clone, Copy)]
enum Path<'p> {
    Unfused,
    Dense,
    Gathered(&'p Pattern),
}

struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dout: Tensor,
    cfg: AttentionConfig,
}

impl Inputs {
    fn new(n: usize) -> Inputs {
        let shape = [BATCH, HEADS, n, WIDTH];
        Inputs {
            q: filled(&shape, 1),
            k: filled(&shape, 2),
            v: filled(&shape, 3),
            dout: filled(&shape, 4),
            cfg: AttentionConfig {
                causal: false,
                logits: LogitKernel::Dot,
                gathered: GatheredPath::Auto,
            },
        }
    }

    fn forward(&self, path: Path) {
        let (q, k, v, cfg) = (&self.q, &self.k, &self.v, &self.cfg);
        match path {
            Path::Unfused => drop(attention_unfused(q, k, v, None, cfg).unwrap()),
            Path::Dense => drop(attention_dense(q, k, v, None, cfg).unwrap()),
            Path::Gathered(pattern) => drop(attention_gathered(q, k, v, pattern, None, cfg).unwrap()),
        }
    }

    fn forward_backward(&self, path: Path) {
        let (q, k, v, dout, cfg) = (&self.q, &self.k, &self.v, &self.dout, &self.cfg);
        match path {
            Path::Unfused => {
                let (_, probs) = attention_unfused(q, k, v, None, cfg).unwrap();
                drop(attention_unfused_backward(q, k, v, &probs, dout, cfg, None).unwrap());
            }
            Path::Dense => {
                let (out, lse) = attention_dense(q, k, v, None, cfg).unwrap();
                drop(attention_dense_backward(q, k, v, None, &out, &lse, dout, cfg).unwrap());
            }
            Path::Gathered(pattern) => {
                let (out, lse) = attention_gathered(q, k, v, pattern, None, cfg).unwrap();
                drop(attention_gathered_backward(q, k, v, pattern, None, &out, &lse, dout, cfg).unwrap());
            }
        }
    }
}

/// One line of the summary table.
struct Row {
    n: usize,
    label: String,
    forward_ms: f64,
    both_ms: f64,
    peak_bytes: u64,
}

/// Mean milliseconds of `TABLE_RUNS` runs after one warm-up run, device synchronised.
fn mean_ms(run: impl Fn()) -> f64 {
    let gpu = fiak::gpu::get();
    run();
    gpu.synchronize();
    let start = Instant::now();
    for _ in 0..TABLE_RUNS {
        run();
        gpu.synchronize();
    }
    start.elapsed().as_secs_f64() * 1e3 / TABLE_RUNS as f64
}

/// Peak pooled bytes during one forward + backward, beyond what was live before it.
fn peak_bytes(inputs: &Inputs, path: Path) -> u64 {
    let gpu = fiak::gpu::get();
    gpu.synchronize();
    gpu.reset_peak_memory();
    let before = gpu.pool_stats().live_bytes;
    inputs.forward_backward(path);
    gpu.synchronize();
    gpu.pool_stats().peak_live_bytes - before
}

fn bench_attention(c: &mut Criterion, rows: &mut Vec<Row>) {
    let gpu = fiak::gpu::get();
    println!(
        "adapter: {} ({:?}, {:?}); B = {BATCH}, H = {HEADS}, d = {WIDTH}, not causal, dot logits",
        gpu.info.name, gpu.info.backend, gpu.info.device_type
    );

    for n in LENGTHS {
        let inputs = Inputs::new(n);
        let patterns = [
            ("gathered 70% entries", row_pattern(n, 0.7, 1)),
            ("gathered 50% entries", row_pattern(n, 0.5, 2)),
            ("gathered 30% entries", row_pattern(n, 0.3, 3)),
            ("gathered 50% keys", key_pattern(n, 0.5, 4)),
        ];
        let mut paths: Vec<(String, Path, usize)> = vec![
            ("unfused".to_string(), Path::Unfused, HEADS * n * n),
            ("fused dense".to_string(), Path::Dense, HEADS * n * n),
        ];
        for (label, pattern) in &patterns {
            paths.push((label.to_string(), Path::Gathered(pattern), pattern.nnz()));
        }

        let mut group = c.benchmark_group(format!("attention/N={n}"));
        group.sample_size(10);
        for (label, path, entries) in &paths {
            // Forward FLOPs: 2 d for q . k and 2 d for the weighted sum of v, per kept entry.
            group.throughput(Throughput::Elements((4 * BATCH * entries * WIDTH) as u64));
            group.bench_function(BenchmarkId::new("forward", label), |bench| {
                bench.iter(|| {
                    inputs.forward(*path);
                    gpu.synchronize();
                })
            });
            group.bench_function(BenchmarkId::new("forward+backward", label), |bench| {
                bench.iter(|| {
                    inputs.forward_backward(*path);
                    gpu.synchronize();
                })
            });
        }
        group.finish();

        for (label, path, _) in &paths {
            rows.push(Row {
                n,
                label: label.clone(),
                forward_ms: mean_ms(|| inputs.forward(*path)),
                both_ms: mean_ms(|| inputs.forward_backward(*path)),
                peak_bytes: peak_bytes(&inputs, *path),
            });
        }
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n| N | path | forward ms | speed-up | fwd+bwd ms | speed-up | peak MiB over inputs |\n\
         |---|---|---|---|---|---|---|"
    );
    for row in rows {
        let dense = rows
            .iter()
            .find(|r| r.n == row.n && r.label == "fused dense")
            .expect("dense row measured");
        println!(
            "| {} | {} | {:.2} | {:.2}x | {:.2} | {:.2}x | {:.2} |",
            row.n,
            row.label,
            row.forward_ms,
            dense.forward_ms / row.forward_ms,
            row.both_ms,
            dense.both_ms / row.both_ms,
            row.peak_bytes as f64 / (1 << 20) as f64
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let mut rows = Vec::new();
    bench_attention(&mut criterion, &mut rows);
    criterion.final_summary();
    print_table(&rows);
}
