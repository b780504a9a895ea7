//! Models against an independent CPU forward that reads nothing but the saved
//! `model.safetensors` and `config.json`: a small ViT (timm names, with FiAK priors) and a
//! small GPT (Hugging Face GPT-2 names, Conv1D weights [in, out]).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::assert_close;
use fiak::Tensor;
use fiak::autograd::no_grad;
use fiak::fiak::{PriorKind, PriorLearning, PruneScope, PruneSpec};
use fiak::models::{Gpt, GptConfig, Model, Vit, VitConfig, patchify};
use fiak::nn::AttentionOptions;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fiak-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Every tensor of a safetensors file as f64, parsed with the safetensors crate alone.
fn read_tensors(dir: &Path) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

fn layer_norm(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let d = w.len();
    x.chunks(d)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            row.iter()
                .enumerate()
                .map(move |(j, v)| (v - mean) * rstd * w[j] + b[j])
                .collect::<Vec<_>>()
        })
        .collect()
}

/// y [rows, out] = x [rows, in] W + b, with W [out, in] when `out_in`, else [in, out].
fn affine(x: &[f64], w: &[f64], b: &[f64], inputs: usize, outputs: usize, out_in: bool) -> Vec<f64> {
    x.chunks(inputs)
        .flat_map(|row| {
            (0..outputs)
                .map(|o| {
                    b[o] + (0..inputs)
                        .map(|i| row[i] * if out_in { w[o * inputs + i] } else { w[i * outputs + o] })
                        .sum::<f64>()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn erf(x: f64) -> f64 {
    if x.abs() > 5.0 {
        return x.signum();
    }
    let (mut sum, mut term) = (x, x);
    for k in 1..200 {
        term *= -x * x / k as f64;
        sum += term / (2 * k + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn gelu(x: f64, tanh: bool) -> f64 {
    if tanh {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
    } else {
        0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
    }
}

/// Multi-head attention of qkv [N, 3D] (q, k, v blocks) with an optional prior bias
/// [H, N, N] and causal mask -> [N, D].
fn attention(qkv: &[f64], n: usize, d: usize, heads: usize, bias: Option<&[f64]>, causal: bool) -> Vec<f64> {
    let hd = d / heads;
    let mut out = vec![0.0; n * d];
    for h in 0..heads {
        for i in 0..n {
            let visible = if causal { i + 1 } else { n };
            let scores: Vec<f64> = (0..visible)
                .map(|j| {
                    let dot: f64 = (0..hd)
                        .map(|c| qkv[i * 3 * d + h * hd + c] * qkv[j * 3 * d + d + h * hd + c])
                        .sum();
                    dot / (hd as f64).sqrt() + bias.map_or(0.0, |b| b[(h * n + i) * n + j])
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for c in 0..hd {
                out[i * d + h * hd + c] = (0..visible)
                    .map(|j| weights[j] / total * qkv[j * 3 * d + 2 * d + h * hd + c])
                    .sum();
            }
        }
    }
    out
}

fn add(a: &mut [f64], b: &[f64]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
}

#[test]
fn vit_logits_match_cpu_forward_from_checkpoint() {
    let mut config = VitConfig::preset("smoke", 10).unwrap();
    config.depth = 2;
    config.fiak.prior = PriorKind::EntryKey;
    config.fiak.learning = PriorLearning::Gd;
    let vit = Vit::new(config.clone(), 7).unwrap();
    // Non-zero priors, so the bias path is exercised.
    for (name, var, _) in vit.params.iter() {
        if name.contains("prior") {
            let n = var.value().numel();
            let values: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 2.0).collect();
            var.value().write_f32(&values).unwrap();
        }
    }
    let dir = temp_dir("vit");
    let model = Model::Vit(vit);
    model.save(&dir).unwrap();

    // The GPU forward of the reloaded model.
    let reloaded = Model::load(&dir).unwrap();
    let Model::Vit(vit) = &reloaded else {
        panic!("a ViT was saved")
    };
    let batch = 2;
    let images: Vec<f32> = (0..batch * 28 * 28).map(|i| ((i * 13) % 255) as f32 / 255.0).collect();
    let patches = patchify(&images, batch, 1, 28, config.patch_size);
    let patches_t = Tensor::from_f32(&[batch, config.num_patches(), config.patch_dim()], &patches).unwrap();
    let got = no_grad(|| {
        vit.forward(&patches_t, &AttentionOptions::default())
            .unwrap()
            .value()
            .to_f32_vec()
    });

    // The CPU forward from the file alone.
    let t = read_tensors(&dir);
    let w = |name: &str| {
        &t.get(name)
            .unwrap_or_else(|| panic!("{name} missing from the checkpoint"))
            .1
    };
    let (d, n, heads, p) = (config.embed_dim, config.tokens(), config.num_heads, config.patch_size);
    let hidden = (d as f32 * config.mlp_ratio) as usize;
    assert_eq!(t["patch_embed.proj.weight"].0, vec![d, 1, p, p]);
    let mut want = Vec::new();
    for b in 0..batch {
        let img = &images[b * 784..(b + 1) * 784];
        // Patch embedding as a strided convolution.
        let mut x = vec![0.0; n * d];
        x[..d].copy_from_slice(&w("cls_token")[..d]);
        let grid = 28 / p;
        for gy in 0..grid {
            for gx in 0..grid {
                for o in 0..d {
                    let mut acc = w("patch_embed.proj.bias")[o];
                    for py in 0..p {
                        for px in 0..p {
                            acc += w("patch_embed.proj.weight")[(o * p + py) * p + px]
                                * img[(gy * p + py) * 28 + gx * p + px] as f64;
                        }
                    }
                    x[(1 + gy * grid + gx) * d + o] = acc;
                }
            }
        }
        add(&mut x, w("pos_embed"));
        for i in 0..config.depth {
            let k = |s: &str| format!("blocks.{i}.{s}");
            let entry = w(&k("attn.prior_logits"));
            let key = w(&k("attn.key_prior_logits"));
            let bias: Vec<f64> = (0..heads * n * n)
                .map(|e| entry[e] + key[(e / (n * n)) * n + e % n])
                .collect();
            let h = layer_norm(&x, w(&k("norm1.weight")), w(&k("norm1.bias")), 1e-6);
            let qkv = affine(&h, w(&k("attn.qkv.weight")), w(&k("attn.qkv.bias")), d, 3 * d, true);
            let a = attention(&qkv, n, d, heads, Some(&bias), false);
            add(
                &mut x,
                &affine(&a, w(&k("attn.proj.weight")), w(&k("attn.proj.bias")), d, d, true),
            );
            let h = layer_norm(&x, w(&k("norm2.weight")), w(&k("norm2.bias")), 1e-6);
            let f: Vec<f64> = affine(&h, w(&k("mlp.fc1.weight")), w(&k("mlp.fc1.bias")), d, hidden, true)
                .into_iter()
                .map(|v| gelu(v, false))
                .collect();
            add(
                &mut x,
                &affine(&f, w(&k("mlp.fc2.weight")), w(&k("mlp.fc2.bias")), hidden, d, true),
            );
        }
        let x = layer_norm(&x, w("norm.weight"), w("norm.bias"), 1e-6);
        want.extend(
            affine(&x[..d], w("head.weight"), w("head.bias"), d, 10, true)
                .into_iter()
                .map(|v| v as f32),
        );
    }
    assert_close("ViT logits", &got, &want, 2e-4, 1e-3);
}

#[test]
fn gpt_logits_match_cpu_forward_from_checkpoint() {
    let mut config = GptConfig::preset("smoke").unwrap();
    config.n_positions = 12;
    config.n_layer = 2;
    let dir = temp_dir("gpt");
    Model::Gpt(Gpt::new(config.clone(), 3).unwrap()).save(&dir).unwrap();
    let reloaded = Model::load(&dir).unwrap();
    let Model::Gpt(gpt) = &reloaded else {
        panic!("a GPT was saved")
    };

    let tokens: Vec<u32> = "Call me Ish".bytes().map(u32::from).collect();
    let t_len = tokens.len();
    let ids = Tensor::from_u32(&[1, t_len], &tokens).unwrap();
    let got = no_grad(|| {
        gpt.forward(&ids, &tokens, &AttentionOptions::default())
            .unwrap()
            .value()
            .to_f32_vec()
    });

    let t = read_tensors(&dir);
    let w = |name: &str| {
        &t.get(name)
            .unwrap_or_else(|| panic!("{name} missing from the checkpoint"))
            .1
    };
    let (d, heads, v) = (config.n_embd, config.n_head, config.vocab_size);
    assert_eq!(
        t["h.0.attn.c_attn.weight"].0,
        vec![d, 3 * d],
        "Conv1D weights are [in, out]"
    );
    let mut x = vec![0.0; t_len * d];
    for (i, &tok) in tokens.iter().enumerate() {
        for c in 0..d {
            x[i * d + c] = w("wte.weight")[tok as usize * d + c] + w("wpe.weight")[i * d + c];
        }
    }
    for i in 0..config.n_layer {
        let k = |s: &str| format!("h.{i}.{s}");
        let h = layer_norm(&x, w(&k("ln_1.weight")), w(&k("ln_1.bias")), 1e-5);
        let qkv = affine(
            &h,
            w(&k("attn.c_attn.weight")),
            w(&k("attn.c_attn.bias")),
            d,
            3 * d,
            false,
        );
        let a = attention(&qkv, t_len, d, heads, None, true);
        add(
            &mut x,
            &affine(&a, w(&k("attn.c_proj.weight")), w(&k("attn.c_proj.bias")), d, d, false),
        );
        let h = layer_norm(&x, w(&k("ln_2.weight")), w(&k("ln_2.bias")), 1e-5);
        let f: Vec<f64> = affine(&h, w(&k("mlp.c_fc.weight")), w(&k("mlp.c_fc.bias")), d, 4 * d, false)
            .into_iter()
            .map(|v| gelu(v, true))
            .collect();
        add(
            &mut x,
            &affine(
                &f,
                w(&k("mlp.c_proj.weight")),
                w(&k("mlp.c_proj.bias")),
                4 * d,
                d,
                false,
            ),
        );
    }
    let x = layer_norm(&x, w("ln_f.weight"), w("ln_f.bias"), 1e-5);
    let want: Vec<f32> = x
        .chunks(d)
        .flat_map(|row| {
            (0..v)
                .map(|o| (0..d).map(|c| row[c] * w("wte.weight")[o * d + c]).sum::<f64>() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_close("GPT logits", &got, &want, 2e-4, 1e-3);
}

#[test]
fn checkpoint_of_another_shape_is_rejected() {
    let dir = temp_dir("shape");
    Model::Gpt(Gpt::new(GptConfig::preset("smoke").unwrap(), 0).unwrap())
        .save(&dir)
        .unwrap();
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["n_embd"] = serde_json::Value::from(64);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = Model::load(&dir)
        .err()
        .expect("a mismatched checkpoint must not load")
        .to_string();
    assert!(err.contains("wte.weight"), "the message names the tensor: {err}");
    assert!(
        err.contains("32") && err.contains("64"),
        "the message gives both shapes: {err}"
    );
}

#[test]
fn adding_priors_leaves_outputs_unchanged() {
    let config = VitConfig::preset("smoke", 10).unwrap();
    let mut model = Model::Vit(Vit::new(config.clone(), 5).unwrap());
    let images: Vec<f32> = (0..28 * 28).map(|i| ((i * 31) % 255) as f32 / 255.0).collect();
    let patches = patchify(&images, 1, 1, 28, config.patch_size);
    let patches = Tensor::from_f32(&[1, config.num_patches(), config.patch_dim()], &patches).unwrap();
    let forward = |m: &Model| {
        let Model::Vit(v) = m else { unreachable!() };
        no_grad(|| {
            v.forward(&patches, &AttentionOptions::default())
                .unwrap()
                .value()
                .to_f32_vec()
        })
    };
    let before = forward(&model);
    model.add_priors(PriorKind::EntryKey, PriorLearning::Gd);
    let after = forward(&model);
    // A uniform prior is an additive constant per row, which the softmax removes exactly up
    // to rounding of the bias addition.
    assert_close("logits after adding priors", &after, &before, 1e-6, 1e-5);
}

/// Entries of each layer's [H, N, N] grid that its pattern keeps.
fn kept_entries(model: &Model) -> Vec<Vec<bool>> {
    model
        .attention_layers()
        .iter()
        .map(|layer| {
            let pattern = &layer.pruned.as_ref().expect("pruned").pattern;
            let (heads, nq, nk) = (pattern.heads(), pattern.nq(), pattern.nk());
            let (offsets, keys) = (pattern.row_offsets(), pattern.key_index());
            let mut kept = vec![false; heads * nq * nk];
            for h in 0..heads {
                for i in 0..nq {
                    let row = h * (nq + 1) + i;
                    for &j in &keys[offsets[row] as usize..offsets[row + 1] as usize] {
                        kept[(h * nq + i) * nk + j as usize] = true;
                    }
                }
            }
            kept
        })
        .collect()
}

#[test]
fn pruned_prior_gradients_match_masked_dense() {
    // A pruned model runs the gathered kernels on its kept entries' prior logits, and their
    // gradient scatters back into the [H, N, N] priors. A dense model whose pruned entries
    // carry a prior of -30000 (weight exactly 0 in f32) must give the same loss and gradients.
    let config = VitConfig::preset("smoke", 10).unwrap();
    let with_priors = || {
        let mut model = Model::Vit(Vit::new(config.clone(), 9).unwrap());
        model.add_priors(PriorKind::EntryKey, PriorLearning::Gd);
        for (l, layer) in model.attention_layers().into_iter().enumerate() {
            let theta = layer.entry_prior.as_ref().unwrap().value();
            let n = theta.numel();
            let values: Vec<f32> = (0..n)
                .map(|e| ((e * 7919 + l * 31) % 1009) as f32 / 500.0 - 1.0)
                .collect();
            theta.write_f32(&values).unwrap();
            let phi = layer.key_prior.as_ref().unwrap().value();
            let values: Vec<f32> = (0..phi.numel()).map(|j| ((j * 37 + l) % 11) as f32 / 10.0).collect();
            phi.write_f32(&values).unwrap();
        }
        model
    };
    let mut pruned = with_priors();
    let spec = PruneSpec {
        scores: 0.6,
        keys: 0.2,
        scope: PruneScope::Layer,
    };
    pruned.prune(&spec, false).unwrap();
    let kept = kept_entries(&pruned);
    let masked = with_priors();
    for (layer, kept) in masked.attention_layers().into_iter().zip(&kept) {
        let theta = layer.entry_prior.as_ref().unwrap().value();
        let mut values = theta.to_f32_vec();
        for (value, &keep) in values.iter_mut().zip(kept) {
            if !keep {
                *value = -30000.0;
            }
        }
        theta.write_f32(&values).unwrap();
    }

    let batch = 3;
    let images: Vec<f32> = (0..batch * 28 * 28).map(|i| ((i * 37) % 251) as f32 / 251.0).collect();
    let patches = patchify(&images, batch, 1, 28, config.patch_size);
    let patches = Tensor::from_f32(&[batch, config.num_patches(), config.patch_dim()], &patches).unwrap();
    let labels = Tensor::from_u32(&[batch], &[3, 0, 7]).unwrap();
    let loss_and_gradients = |model: &Model| {
        let Model::Vit(v) = model else { unreachable!() };
        let logits = v.forward(&patches, &AttentionOptions::default()).unwrap();
        let loss = logits.cross_entropy(&labels, 0.0, None).unwrap();
        loss.backward().unwrap();
        let grads: Vec<(Vec<f32>, Vec<f32>)> = model
            .attention_layers()
            .iter()
            .map(|layer| {
                let grad = |p: &Option<fiak::autograd::Var>| p.as_ref().unwrap().grad().unwrap().to_f32_vec();
                (grad(&layer.entry_prior), grad(&layer.key_prior))
            })
            .collect();
        (loss.value().to_f32_vec()[0], grads)
    };
    let (loss_pruned, grads_pruned) = loss_and_gradients(&pruned);
    let (loss_masked, grads_masked) = loss_and_gradients(&masked);

    assert_close("loss", &[loss_pruned], &[loss_masked], 1e-5, 1e-5);
    for (l, ((theta_p, phi_p), (theta_m, phi_m))) in grads_pruned.iter().zip(&grads_masked).enumerate() {
        assert!(
            theta_p.iter().zip(&kept[l]).all(|(&g, &keep)| keep || g == 0.0),
            "layer {l}: pruned entries get no prior gradient"
        );
        assert!(
            theta_p.iter().any(|&g| g != 0.0),
            "layer {l}: kept entries get a gradient"
        );
        assert_close(&format!("layer {l} entry prior gradient"), theta_p, theta_m, 1e-6, 1e-4);
        assert_close(&format!("layer {l} key prior gradient"), phi_p, phi_m, 1e-6, 1e-4);
    }
}
