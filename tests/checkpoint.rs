//! Checkpoints: safetensors and config.json round trips, Hugging Face name prefixes and dtypes,
//! shape checks, damaged files and interrupted writes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::Rng;
use fiak::DType;
use fiak::checkpoint::{
    TensorData, check_tensors, has_training_state, load_model, load_training_state, save_model, save_training_state,
    write_atomic,
};
use serde_json::json;

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("fiak-checkpoint-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn error_text<T: std::fmt::Debug>(result: fiak::Result<T>) -> String {
    result.expect_err("expected an error").to_string()
}

fn sample_tensors(seed: u64) -> Vec<(String, TensorData)> {
    let mut rng = Rng::new(seed);
    vec![
        (
            "wte.weight".to_string(),
            TensorData::from_f32(&[5, 3], &rng.vec(15, 1.0)).unwrap(),
        ),
        (
            "h.0.attn.c_attn.bias".to_string(),
            TensorData::from_f32(&[9], &rng.vec(9, 1.0)).unwrap(),
        ),
        (
            "h.0.attn.pattern.key_index".to_string(),
            TensorData::from_u32(&[4], &[0, 2, 1, 3]).unwrap(),
        ),
        ("scalar".to_string(), TensorData::from_f32(&[], &[2.5]).unwrap()),
    ]
}

fn expected_layout() -> Vec<(String, Vec<usize>, DType)> {
    vec![
        ("wte.weight".into(), vec![5, 3], DType::F32),
        ("h.0.attn.c_attn.bias".into(), vec![9], DType::F32),
        ("h.0.attn.pattern.key_index".into(), vec![4], DType::U32),
        ("scalar".into(), vec![], DType::F32),
    ]
}

#[test]
fn model_round_trip() {
    let dir = TempDir::new("round-trip");
    let model_dir = dir.path().join("nested/model");
    let config = json!({"model_type": "gpt2", "n_embd": 3, "n_layer": 1});
    let tensors = sample_tensors(1);
    save_model(&model_dir, &config, &tensors).unwrap();
    assert!(model_dir.join("config.json").is_file());
    assert!(model_dir.join("model.safetensors").is_file());

    let (loaded_config, loaded) = load_model(&model_dir).unwrap();
    assert_eq!(loaded_config, config);
    assert_eq!(loaded.len(), tensors.len());
    for (name, tensor) in &tensors {
        assert_eq!(&loaded[name], tensor, "tensor {name}");
    }
    assert_eq!(loaded["h.0.attn.pattern.key_index"].to_u32().unwrap(), vec![0, 2, 1, 3]);
    assert_eq!(loaded["scalar"].to_f32().unwrap(), vec![2.5]);
    assert!(loaded["scalar"].to_u32().is_err());
    check_tensors(&loaded, &expected_layout()).unwrap();

    // Leftover temporary files would mean the rename did not happen.
    let names: Vec<String> = std::fs::read_dir(&model_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

#[test]
fn tensor_data_rejects_wrong_length() {
    let message = error_text(TensorData::from_f32(&[2, 3], &[0.0; 5]));
    assert!(message.contains("[2, 3]"), "{message}");
    assert!(message.contains("5 values"), "{message}");
}

#[test]
fn transformer_prefix_stripped() {
    let dir = TempDir::new("prefix");
    let tensors = vec![
        (
            "transformer.wte.weight".to_string(),
            TensorData::from_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap(),
        ),
        (
            "transformer.h.0.ln_1.weight".to_string(),
            TensorData::from_f32(&[2], &[1.0, 1.0]).unwrap(),
        ),
        (
            "lm_head.weight".to_string(),
            TensorData::from_f32(&[2, 2], &[0.0; 4]).unwrap(),
        ),
    ];
    save_model(dir.path(), &json!({}), &tensors).unwrap();

    let (_, loaded) = load_model(dir.path()).unwrap();
    let names: Vec<&str> = loaded.keys().map(String::as_str).collect();
    assert_eq!(names, vec!["h.0.ln_1.weight", "lm_head.weight", "wte.weight"]);
    assert_eq!(loaded["wte.weight"].to_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

/// Writes a safetensors file whose tensors use the given dtypes and raw bytes.
fn write_raw_safetensors(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap();
            (*name, view)
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn half_and_double_converted() {
    use safetensors::Dtype;

    let dir = TempDir::new("dtypes");
    std::fs::write(dir.path().join("config.json"), "{\"n_embd\": 2}").unwrap();
    // f16: 1.0, -2.0, 65504 (the largest finite), 2^-24 (the smallest subnormal), 0.5.
    let f16: Vec<u8> = [0x3C00u16, 0xC000, 0x7BFF, 0x0001, 0x3800]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    // bf16: 1.0, -3.0.
    let bf16: Vec<u8> = [0x3F80u16, 0xC040].iter().flat_map(|b| b.to_le_bytes()).collect();
    let f64: Vec<u8> = [0.25f64, -1e3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i64: Vec<u8> = 7i64.to_le_bytes().to_vec();
    write_raw_safetensors(
        &dir.path().join("model.safetensors"),
        &[
            ("half", Dtype::F16, vec![5], f16),
            ("brain", Dtype::BF16, vec![2], bf16),
            ("double", Dtype::F64, vec![2], f64),
        ],
    );

    let (config, loaded) = load_model(dir.path()).unwrap();
    assert_eq!(config["n_embd"], 2);
    assert_eq!(
        loaded["half"].to_f32().unwrap(),
        vec![1.0, -2.0, 65504.0, 2f32.powi(-24), 0.5]
    );
    assert_eq!(loaded["brain"].to_f32().unwrap(), vec![1.0, -3.0]);
    assert_eq!(loaded["double"].to_f32().unwrap(), vec![0.25, -1000.0]);
    assert!(loaded.values().all(|t| t.dtype == DType::F32));

    write_raw_safetensors(
        &dir.path().join("model.safetensors"),
        &[("steps", Dtype::I64, vec![1], i64)],
    );
    let message = error_text(load_model(dir.path()));
    assert!(message.contains("model.safetensors"), "{message}");
    assert!(message.contains("`steps`"), "{message}");
    assert!(message.contains("I64"), "{message}");
}

fn loaded_map(tensors: Vec<(String, TensorData)>) -> BTreeMap<String, TensorData> {
    tensors.into_iter().collect()
}

#[test]
fn check_tensors_reports_problems() {
    let mut tensors = sample_tensors(2);
    tensors.retain(|(name, _)| name != "scalar");
    tensors[0].1 = TensorData::from_f32(&[3, 5], &[0.0; 15]).unwrap();
    tensors.push(("h.0.attn.bias".into(), TensorData::from_f32(&[1, 1], &[0.0]).unwrap()));
    tensors[2].1 = TensorData::from_f32(&[4], &[0.0; 4]).unwrap();

    let message = error_text(check_tensors(&loaded_map(tensors), &expected_layout()));
    assert!(message.contains("4 problems"), "{message}");
    assert!(message.contains("missing tensor `scalar`"), "{message}");
    assert!(
        message.contains("`wte.weight` has shape [3, 5], expected [5, 3]"),
        "{message}"
    );
    assert!(
        message.contains("unexpected tensor `h.0.attn.bias` of shape [1, 1]"),
        "{message}"
    );
    assert!(
        message.contains("`h.0.attn.pattern.key_index` has dtype F32, expected U32"),
        "{message}"
    );
}

#[test]
fn check_tensors_lists_ten_problems() {
    let expected: Vec<(String, Vec<usize>, DType)> = (0..14)
        .map(|i| (format!("blocks.{i}.norm1.weight"), vec![8], DType::F32))
        .collect();
    let message = error_text(check_tensors(&BTreeMap::new(), &expected));
    assert!(message.contains("14 problems"), "{message}");
    assert_eq!(message.matches("missing tensor").count(), 10, "{message}");
    assert!(message.contains("and 4 more"), "{message}");
}

#[test]
fn truncated_safetensors_rejected() {
    let dir = TempDir::new("truncated");
    save_model(dir.path(), &json!({}), &sample_tensors(3)).unwrap();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();

    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    let message = error_text(load_model(dir.path()));
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("truncated"), "{message}");

    std::fs::write(&path, &bytes[..40]).unwrap();
    let message = error_text(load_model(dir.path()));
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("truncated"), "{message}");

    std::fs::write(&path, &bytes[..5]).unwrap();
    let message = error_text(load_model(dir.path()));
    assert!(message.contains("8-byte header length"), "{message}");
}

#[test]
fn corrupt_files_rejected() {
    let dir = TempDir::new("corrupt");
    save_model(dir.path(), &json!({}), &sample_tensors(4)).unwrap();
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = b'#';
    std::fs::write(&path, &bytes).unwrap();
    let message = error_text(load_model(dir.path()));
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("corrupt safetensors header"), "{message}");

    std::fs::write(dir.path().join("config.json"), "{\"n_embd\": ").unwrap();
    let message = error_text(load_model(dir.path()));
    assert!(message.contains("config.json"), "{message}");
    assert!(message.contains("invalid JSON"), "{message}");

    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let message = error_text(load_model(dir.path()));
    assert!(message.contains("config.json"), "{message}");
    assert!(message.contains("missing"), "{message}");

    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    std::fs::remove_file(&path).unwrap();
    let message = error_text(load_model(dir.path()));
    assert!(message.contains("model.safetensors"), "{message}");
    assert!(message.contains("missing"), "{message}");
}

#[test]
fn interrupted_write_keeps_old_checkpoint() {
    let dir = TempDir::new("interrupted");
    let old = sample_tensors(5);
    save_model(dir.path(), &json!({"version": 1}), &old).unwrap();

    // A write that stopped before its rename leaves only a partial temporary file behind.
    let new_bytes = {
        let scratch = TempDir::new("interrupted-scratch");
        save_model(scratch.path(), &json!({"version": 2}), &sample_tensors(6)).unwrap();
        std::fs::read(scratch.path().join("model.safetensors")).unwrap()
    };
    let stray = dir.path().join(".model.safetensors.tmp-4242-0");
    std::fs::write(&stray, &new_bytes[..new_bytes.len() / 2]).unwrap();

    let (config, loaded) = load_model(dir.path()).unwrap();
    assert_eq!(config["version"], 1);
    for (name, tensor) in &old {
        assert_eq!(&loaded[name], tensor, "tensor {name}");
    }

    // The next save replaces the checkpoint despite the stray file.
    let new = sample_tensors(6);
    save_model(dir.path(), &json!({"version": 2}), &new).unwrap();
    let (config, loaded) = load_model(dir.path()).unwrap();
    assert_eq!(config["version"], 2);
    assert_eq!(loaded["wte.weight"], new[0].1);
}

#[test]
fn training_state_round_trip() {
    let dir = TempDir::new("training-state");
    assert!(!has_training_state(dir.path()));
    let state = json!({"step": 120, "loader": {"seed": 1, "rng_state": 99, "epoch": 2, "position": 64}});
    let moments = vec![
        (
            "wte.weight.exp_avg".to_string(),
            TensorData::from_f32(&[2], &[0.1, 0.2]).unwrap(),
        ),
        (
            "wte.weight.exp_avg_sq".to_string(),
            TensorData::from_f32(&[2], &[0.01, 0.04]).unwrap(),
        ),
    ];
    save_training_state(dir.path(), &state, &moments).unwrap();
    assert!(has_training_state(dir.path()));
    assert!(!dir.path().join("model.safetensors").exists());

    let (loaded_state, loaded) = load_training_state(dir.path()).unwrap();
    assert_eq!(loaded_state, state);
    assert_eq!(loaded["wte.weight.exp_avg_sq"], moments[1].1);

    let missing = TempDir::new("training-state-missing");
    let message = error_text(load_training_state(missing.path()));
    assert!(message.contains("training_state.json"), "{message}");
}

#[test]
fn write_atomic_replaces_file() {
    let dir = TempDir::new("atomic");
    let path = dir.path().join("reports/report.json");
    write_atomic(&path, b"first").unwrap();
    write_atomic(&path, b"second").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    let entries = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
    assert_eq!(entries, 1, "no temporary file remains");
}
