//! The engine core: shader validation, adapter errors, the buffer pool and tensors larger than
//! the device's storage-binding limit.

mod common;

use common::{Rng, assert_close, reference};
use fiak::ops::matmul;
use fiak::{DType, Tensor};

#[test]
fn shaders_validate_with_naga() {
    for shader in fiak::shaders::all() {
        let module = naga::front::wgsl::parse_str(shader.source)
            .unwrap_or_else(|e| panic!("{} does not parse:\n{}", shader.file, e.emit_to_string(shader.source)));
        let mut validator =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        if let Err(e) = validator.validate(&module) {
            panic!(
                "{} does not validate:\n{}",
                shader.file,
                e.emit_to_string(shader.source)
            );
        }
    }
}

#[test]
fn every_shader_file_is_registered() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let registered: Vec<&str> = fiak::shaders::all().iter().map(|s| s.file).collect();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".wgsl") {
            assert!(
                registered.contains(&name.as_str()),
                "shaders/{name} is not in fiak::shaders::all()"
            );
        }
    }
}

#[test]
fn missing_adapter_fails_with_install_hint() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fiak"))
        .args(["--backend", "vulkan", "devices"])
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .output()
        .expect("the fiak binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exit status was success; stderr:\n{stderr}");
    if cfg!(target_os = "linux") {
        assert!(stderr.contains("mesa-vulkan-drivers"), "no install hint in:\n{stderr}");
    }
}

#[test]
fn invalid_backend_is_rejected() {
    let err = fiak::gpu::parse_backend("opengl-es").unwrap_err().to_string();
    assert!(err.contains("opengl-es"), "{err}");
    assert!(err.contains("vulkan"), "{err}");
}

#[test]
fn pool_reuses_buffers() {
    let gpu = fiak::gpu::get();
    // Warm the size class, then allocate and drop repeatedly.
    drop(Tensor::zeros(&[1000, 37], DType::F32));
    let before = gpu.pool_stats().buffers;
    for _ in 0..20 {
        let t = Tensor::zeros(&[1000, 37], DType::F32);
        assert_eq!(t.numel(), 37_000);
    }
    assert_eq!(
        gpu.pool_stats().buffers,
        before,
        "the pool created new buffers for a repeated size"
    );
}

#[test]
fn tensor_round_trip_and_reshape() {
    let data: Vec<f32> = (0..35).map(|i| i as f32 * 0.5 - 3.0).collect();
    let t = Tensor::from_f32(&[5, 7], &data).unwrap();
    assert_eq!(t.to_f32_vec(), data);
    let r = t.reshape(&[7, 5]).unwrap();
    assert_eq!(r.shape(), &[7, 5]);
    assert!(r.same_buffer(&t));
    assert!(t.reshape(&[6, 6]).is_err());
    assert!(Tensor::from_f32(&[2, 2], &[1.0]).is_err());
    let ids: Vec<u32> = vec![0, 7, u32::MAX];
    assert_eq!(Tensor::from_u32(&[3], &ids).unwrap().to_u32_vec(), ids);
}

/// Values in [-1, 1) from a cheap hash of the index, for tensors too large to draw one by one.
fn hashed(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i.wrapping_mul(2654435761).wrapping_add(salt * 40503)) % 2001;
            h as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[test]
fn matmul_operand_over_binding_limit() {
    let gpu = fiak::gpu::get();
    let limit = gpu.max_binding_bytes() as usize;

    // A [M, K] larger than one binding: split along M.
    let k = 256;
    let m = limit / (4 * k) + 1000;
    let n = 8;
    let a = hashed(m * k, 1);
    let b = hashed(k * n, 2);
    let ta = Tensor::from_f32(&[m, k], &a).unwrap();
    assert!(ta.byte_len() as usize > limit);
    let tb = Tensor::from_f32(&[k, n], &b).unwrap();
    let got = matmul(&ta, &tb, false, false, None).unwrap().to_f32_vec();
    for row in [0, 1, m / 2, m - 1] {
        let want = reference::matmul(&a[row * k..(row + 1) * k], &b, None, 1, 1, n, k, false, false, true);
        assert_close(
            &format!("row {row} of the split A"),
            &got[row * n..(row + 1) * n],
            &want,
            1e-3,
            1e-4,
        );
    }
    drop((ta, a));

    // B stored [N, K] and used transposed, as a tied embedding head: split along N.
    let k = 1024;
    let n = limit / (4 * k) + 300;
    let m = 3;
    let a = hashed(m * k, 3);
    let b = hashed(n * k, 4);
    let ta = Tensor::from_f32(&[m, k], &a).unwrap();
    let tb = Tensor::from_f32(&[n, k], &b).unwrap();
    assert!(tb.byte_len() as usize > limit);
    let got = matmul(&ta, &tb, false, true, None).unwrap().to_f32_vec();
    let mut rng = Rng::new(5);
    for _ in 0..8 {
        let col = rng.below(n);
        for row in 0..m {
            let want: f64 = (0..k).map(|l| a[row * k + l] as f64 * b[col * k + l] as f64).sum();
            let g = got[row * n + col];
            assert!((g as f64 - want).abs() < 1e-2, "C[{row}, {col}] = {g}, expected {want}");
        }
    }
}
