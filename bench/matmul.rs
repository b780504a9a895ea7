//! Matmul throughput on the default adapter: square f32 products and two transformer shapes.
//! Each iteration waits for the device before the clock stops. Run with
//! `cargo bench --bench matmul`; `FIAK_MATMUL=registers|tiled` forces a variant.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fiak::Tensor;
use fiak::ops::matmul_into;

fn filled(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    Tensor::from_f32(shape, &data).unwrap()
}

fn bench_matmul(c: &mut Criterion) {
    let gpu = fiak::gpu::get();
    println!(
        "adapter: {} ({:?}, {:?}), matmul variant {:?}",
        gpu.info.name, gpu.info.backend, gpu.info.device_type, gpu.matmul_variant
    );

    // (label, M, N, K, trans_b)
    let cases = [
        ("square", 256, 256, 256, false),
        ("square", 512, 512, 512, false),
        ("square", 1024, 1024, 1024, false),
        ("square", 2048, 2048, 2048, false),
        // ViT-S/16-like QKV projection: 8 images x 197 tokens, D = 384 -> 3D, weight [out, in].
        ("vit_qkv", 8 * 197, 3 * 384, 384, true),
        // GPT MLP up-projection: 8 x 128 tokens, D = 384 -> 4D.
        ("gpt_mlp", 8 * 128, 4 * 384, 384, true),
    ];
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10);
    for (label, m, n, k, trans_b) in cases {
        let a = filled(&[m, k]);
        let b = if trans_b { filled(&[n, k]) } else { filled(&[k, n]) };
        let out = Tensor::zeros(&[m, n], fiak::DType::F32);
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let id = BenchmarkId::new(label, format!("{m}x{n}x{k}"));
        group.bench_function(id, |bench| {
            bench.iter(|| {
                matmul_into(&a, &b, false, trans_b, None, &out, 1.0, false).unwrap();
                gpu.synchronize();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_matmul);
criterion_main!(benches);
