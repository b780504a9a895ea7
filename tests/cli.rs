//! The `fiak` binary end to end: the smoke pipeline and its report, exact resumption of an
//! interrupted run, and clear errors with a non-zero exit for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fiak(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fiak"))
        .args(args)
        .env("RUST_LOG", "info,wgpu_hal=off,wgpu_core=warn")
        .output()
        .expect("the fiak binary runs")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fiak-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_success(output: &Output, what: &str) {
    assert!(output.status.success(), "{what} failed:\n{}", stderr(output));
}

fn finite_numbers(value: &serde_json::Value, path: &str) {
    match value {
        serde_json::Value::Number(n) => {
            let x = n.as_f64().unwrap();
            assert!(x.is_finite(), "{path} = {x} is not finite");
        }
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| finite_numbers(v, &format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| finite_numbers(v, &format!("{path}.{k}"))),
        _ => {}
    }
}

#[test]
fn smoke_pipeline_writes_report() {
    let out = temp_dir("run");
    let out_str = out.to_str().unwrap();
    let output = fiak(&[
        "run",
        "vit",
        "--preset",
        "smoke",
        "--steps",
        "30",
        "--eval-batches",
        "2",
        "--batch-size",
        "32",
        "--quiet",
        "--out",
        out_str,
    ]);
    assert_success(&output, "fiak run vit --preset smoke");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    finite_numbers(&report, "report");
    let rows = report["rows"].as_array().expect("rows");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["dense", "fiak", "pruned-s70", "pruned-k15-s70"]);
    for row in rows {
        let name = row["name"].as_str().unwrap();
        let accuracy = row["eval"]["accuracy"].as_f64().expect("accuracy");
        assert!((0.0..=1.0).contains(&accuracy), "{name}: accuracy {accuracy}");
        let kept = row["kept_scores"].as_f64().unwrap();
        if name.starts_with("pruned") {
            assert!(kept < 0.4, "{name} keeps {kept} of the scores");
        } else {
            assert_eq!(kept, 1.0, "{name} is dense");
        }
    }
    let mixed_keys = rows[3]["kept_keys"].as_f64().unwrap();
    assert!(mixed_keys < 1.0, "the mixed run drops keys, kept {mixed_keys}");

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| model | prior | kept scores | kept keys |"),
        "table header missing:\n{md}"
    );
    for figure in [
        "loss_curves.png",
        "entry_prior_layer0.png",
        "pattern_pruned-s70_layer0.png",
    ] {
        assert!(out.join("figures").join(figure).exists(), "figure {figure} missing");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Loss values of the step lines of a metrics file.
fn losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect()
}

#[test]
fn interrupted_training_resumes_exactly() {
    let common = [
        "train",
        "--model",
        "gpt",
        "--preset",
        "smoke",
        "--eval-every",
        "6",
        "--eval-batches",
        "1",
        "--batch-size",
        "4",
        "--quiet",
    ];
    let straight = temp_dir("straight");
    let mut args = common.to_vec();
    args.extend(["--steps", "12", "--out", straight.to_str().unwrap()]);
    assert_success(&fiak(&args), "the uninterrupted run");

    // The same run, stopped after step 7 (between checkpoints), then resumed to step 12.
    let resumed = temp_dir("resumed");
    let mut first = common.to_vec();
    first.extend(["--steps", "12", "--stop-after", "7", "--out", resumed.to_str().unwrap()]);
    assert_success(&fiak(&first), "the interrupted run");
    assert!(
        resumed.join("training_state.json").exists(),
        "no checkpoint was written"
    );

    let output = fiak(&["train", "--resume", resumed.to_str().unwrap(), "--quiet"]);
    assert_success(&output, "the resumed run");
    assert!(
        stderr(&output).contains("at step 7 of 12"),
        "no resume message:\n{}",
        stderr(&output)
    );

    let want = losses(&straight);
    let got = losses(&resumed);
    let last_want = want.iter().find(|(s, _)| *s == 12).expect("step 12 logged");
    let last_got = got
        .iter()
        .rev()
        .find(|(s, _)| *s == 12)
        .expect("step 12 logged after resuming");
    assert!(
        (last_want.1 - last_got.1).abs() < 1e-5,
        "loss at step 12: {} straight, {} resumed",
        last_want.1,
        last_got.1
    );
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&resumed);
}

#[test]
fn out_of_range_ratio_is_rejected() {
    let out = temp_dir("ratio");
    let output = fiak(&[
        "prune",
        "--model-dir",
        "/nonexistent-model",
        "--scores",
        "1.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("1.5"), "the value is not named:\n{err}");
    assert!(err.contains("--scores"), "the flag is not named:\n{err}");
}

#[test]
fn missing_model_dir_is_named() {
    let output = fiak(&["eval", "--model-dir", "/nonexistent-model-dir"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("/nonexistent-model-dir"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn corrupt_checkpoint_is_rejected_and_kept() {
    let dir = temp_dir("corrupt");
    assert_success(
        &fiak(&[
            "train",
            "--model",
            "vit",
            "--preset",
            "smoke",
            "--steps",
            "1",
            "--eval-batches",
            "1",
            "--batch-size",
            "8",
            "--quiet",
            "--out",
            dir.to_str().unwrap(),
        ]),
        "a one-step run",
    );
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let output = fiak(&["eval", "--model-dir", dir.to_str().unwrap()]);
    assert!(!output.status.success(), "a truncated checkpoint loaded");
    assert!(
        stderr(&output).contains("model.safetensors"),
        "the file is not named:\n{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read(&weights).unwrap().len(),
        bytes.len() / 2,
        "the failed load changed the file"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pruning_requires_learned_priors() {
    let dir = temp_dir("dense");
    assert_success(
        &fiak(&[
            "train",
            "--model",
            "vit",
            "--preset",
            "smoke",
            "--steps",
            "1",
            "--eval-batches",
            "1",
            "--batch-size",
            "8",
            "--quiet",
            "--out",
            dir.to_str().unwrap(),
        ]),
        "a one-step run",
    );
    let out = temp_dir("dense-pruned");
    let output = fiak(&[
        "prune",
        "--model-dir",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!output.status.success(), "a model without priors was pruned");
    assert!(stderr(&output).contains("no FiAK priors"), "{}", stderr(&output));
    assert!(!out.exists(), "a failed prune wrote {}", out.display());

    // Zero (uniform) priors carry no information: rejected too.
    let uniform = temp_dir("uniform");
    assert_success(
        &fiak(&[
            "train",
            "--init",
            dir.to_str().unwrap(),
            "--prior",
            "entry",
            "--lr",
            "1e-9",
            "--prior-lr",
            "0",
            "--steps",
            "1",
            "--eval-batches",
            "1",
            "--batch-size",
            "8",
            "--quiet",
            "--out",
            uniform.to_str().unwrap(),
        ]),
        "adding priors",
    );
    let output = fiak(&[
        "prune",
        "--model-dir",
        uniform.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!output.status.success(), "uniform priors were pruned");
    assert!(stderr(&output).contains("uniform"), "{}", stderr(&output));
    for d in [dir, uniform] {
        let _ = std::fs::remove_dir_all(d);
    }
}
