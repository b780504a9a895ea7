//! Checkpoints in the Hugging Face layout: a model directory contains `config.json` and
//! `model.safetensors`, and a training run adds `training_state.json` and
//! `training_state.safetensors` (optimizer moments, step, loader RNG state). Every file is
//! written atomically: a temporary file in the same directory, fsync, then rename, so an
//! interrupted write leaves the previous file intact.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::{Dtype, SafeTensorError, SafeTensors, View};

use crate::{DType, Error, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const TRAINING_STATE_CONFIG_FILE: &str = "training_state.json";
pub const TRAINING_STATE_FILE: &str = "training_state.safetensors";

/// Name prefix of some Hugging Face GPT-2 exports, removed when loading.
const HF_PREFIX: &str = "transformer.";

/// Problems listed in full by `check_tensors` before the rest are only counted.
const MAX_LISTED_PROBLEMS: usize = 10;

/// A tensor on the host: shape, dtype and little-endian bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorData {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: Vec<u8>,
}

impl TensorData {
    pub fn from_f32(shape: &[usize], values: &[f32]) -> Result<TensorData> {
        Self::check_len("TensorData::from_f32", shape, values.len())?;
        Ok(TensorData {
            shape: shape.to_vec(),
            dtype: DType::F32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }

    pub fn from_u32(shape: &[usize], values: &[u32]) -> Result<TensorData> {
        Self::check_len("TensorData::from_u32", shape, values.len())?;
        Ok(TensorData {
            shape: shape.to_vec(),
            dtype: DType::U32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }

    fn check_len(op: &'static str, shape: &[usize], len: usize) -> Result<()> {
        let numel: usize = shape.iter().product();
        if numel != len {
            return Err(Error::shape(
                op,
                format!("shape {shape:?} has {numel} elements but {len} values were given"),
            ));
        }
        Ok(())
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Returns the values of an F32 tensor.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.expect_dtype("TensorData::to_f32", DType::F32)?;
        Ok(self
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Returns the values of a U32 tensor.
    pub fn to_u32(&self) -> Result<Vec<u32>> {
        self.expect_dtype("TensorData::to_u32", DType::U32)?;
        Ok(self
            .data
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn expect_dtype(&self, op: &'static str, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::shape(
                op,
                format!(
                    "the tensor of shape {:?} is {:?}, not {dtype:?}",
                    self.shape, self.dtype
                ),
            ));
        }
        Ok(())
    }
}

/// Borrowed view of a `TensorData`, for the safetensors serializer.
struct TensorView<'a>(&'a TensorData);

impl View for TensorView<'_> {
    fn dtype(&self) -> Dtype {
        match self.0.dtype {
            DType::F32 => Dtype::F32,
            DType::U32 => Dtype::U32,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0.data)
    }

    fn data_len(&self) -> usize {
        self.0.data.len()
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// synced to disk and renamed over `path`, then the directory is synced. Creates the
/// directory. A failed write removes its temporary file and leaves `path` as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "cannot write: the path does not name a file"))?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, format!("cannot create directory: {e}")))?;

    let temp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(Error::file(path, format!("cannot write: {e}")));
    }

    // Syncing the directory makes the rename itself durable; only Unix can open a directory.
    #[cfg(unix)]
    if let Ok(handle) = std::fs::File::open(&dir) {
        let _ = handle.sync_all();
    }
    Ok(())
}

/// Serializes `tensors` as safetensors bytes, with the `format: pt` metadata that Hugging Face
/// loaders expect.
fn serialize_tensors(path: &Path, tensors: &[(String, TensorData)]) -> Result<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    for (name, tensor) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::file(
                path,
                format!("cannot save: tensor `{name}` is given twice"),
            ));
        }
        let expected = tensor.numel() * 4;
        if tensor.data.len() != expected {
            return Err(Error::file(
                path,
                format!(
                    "cannot save tensor `{name}`: shape {:?} needs {expected} bytes, it has {}",
                    tensor.shape,
                    tensor.data.len()
                ),
            ));
        }
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let views = tensors.iter().map(|(name, t)| (name.as_str(), TensorView(t)));
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::file(path, format!("cannot serialize: {e}")))
}

fn save_pair(
    dir: &Path,
    json_name: &str,
    tensors_name: &str,
    json: &serde_json::Value,
    tensors: &[(String, TensorData)],
) -> Result<()> {
    let tensors_path = dir.join(tensors_name);
    let bytes = serialize_tensors(&tensors_path, tensors)?;
    write_atomic(&tensors_path, &bytes)?;

    let json_path = dir.join(json_name);
    let mut text =
        serde_json::to_vec_pretty(json).map_err(|e| Error::file(&json_path, format!("cannot serialize JSON: {e}")))?;
    text.push(b'\n');
    write_atomic(&json_path, &text)
}

/// Saves a model as `dir/config.json` and `dir/model.safetensors`, creating `dir`. Each file is
/// replaced atomically, the tensors first.
pub fn save_model(dir: &Path, config: &serde_json::Value, tensors: &[(String, TensorData)]) -> Result<()> {
    save_pair(dir, CONFIG_FILE, MODEL_FILE, config, tensors)
}

/// Saves the state needed to resume training (optimizer moments as tensors; step, schedule and
/// loader RNG state as JSON) as `dir/training_state.safetensors` and `dir/training_state.json`.
pub fn save_training_state(dir: &Path, state: &serde_json::Value, tensors: &[(String, TensorData)]) -> Result<()> {
    save_pair(dir, TRAINING_STATE_CONFIG_FILE, TRAINING_STATE_FILE, state, tensors)
}

/// Loads `dir/config.json` and `dir/model.safetensors`. Names lose a leading `transformer.`
/// (as in some Hugging Face GPT-2 exports); F16, BF16 and F64 tensors become F32.
pub fn load_model(dir: &Path) -> Result<(serde_json::Value, BTreeMap<String, TensorData>)> {
    load_pair(
        dir,
        CONFIG_FILE,
        MODEL_FILE,
        "a model directory contains config.json and model.safetensors",
    )
}

/// Loads the files written by `save_training_state`.
pub fn load_training_state(dir: &Path) -> Result<(serde_json::Value, BTreeMap<String, TensorData>)> {
    load_pair(
        dir,
        TRAINING_STATE_CONFIG_FILE,
        TRAINING_STATE_FILE,
        "a resumable run needs training_state.json and training_state.safetensors",
    )
}

/// Checks whether `dir` contains the files of `save_training_state`.
pub fn has_training_state(dir: &Path) -> bool {
    dir.join(TRAINING_STATE_CONFIG_FILE).is_file() && dir.join(TRAINING_STATE_FILE).is_file()
}

fn load_pair(
    dir: &Path,
    json_name: &str,
    tensors_name: &str,
    layout: &str,
) -> Result<(serde_json::Value, BTreeMap<String, TensorData>)> {
    if !dir.is_dir() {
        return Err(Error::file(dir, format!("directory not found: {layout}")));
    }

    let json_path = dir.join(json_name);
    let text = match std::fs::read(&json_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::file(&json_path, format!("missing: {layout}")));
        }
        Err(e) => return Err(Error::file(&json_path, format!("cannot read: {e}"))),
    };
    let json = serde_json::from_slice(&text).map_err(|e| Error::file(&json_path, format!("invalid JSON: {e}")))?;

    let tensors_path = dir.join(tensors_name);
    if !tensors_path.is_file() {
        return Err(Error::file(&tensors_path, format!("missing: {layout}")));
    }
    let tensors = read_safetensors(&tensors_path)?;
    Ok((json, tensors))
}

/// Reads a safetensors file into host tensors, with the same name and dtype handling as
/// `load_model`. Errors name the file and the problem: missing, truncated or corrupt.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, TensorData>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::file(path, "not found"));
        }
        Err(e) => return Err(Error::file(path, format!("cannot read: {e}"))),
    };
    let parsed = SafeTensors::deserialize(&bytes).map_err(|e| describe_safetensors_error(path, &bytes, e))?;

    let mut tensors = BTreeMap::new();
    for (name, view) in parsed.iter() {
        let data = convert_tensor(path, name, view.dtype(), view.data())?;
        let stripped = name.strip_prefix(HF_PREFIX).unwrap_or(name).to_string();
        let tensor = TensorData {
            shape: view.shape().to_vec(),
            dtype: data.0,
            data: data.1,
        };
        if tensors.insert(stripped.clone(), tensor).is_some() {
            return Err(Error::file(
                path,
                format!("corrupt: tensor `{stripped}` appears both with and without the `{HF_PREFIX}` prefix"),
            ));
        }
    }
    Ok(tensors)
}

/// Turns a parse failure into an error that distinguishes a truncated file from a corrupt one.
fn describe_safetensors_error(path: &Path, bytes: &[u8], error: SafeTensorError) -> Error {
    let len = bytes.len();
    if len < 8 {
        return Error::file(
            path,
            format!("truncated safetensors file: {len} bytes, shorter than the 8-byte header length"),
        );
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if header_len > (len - 8) as u64 {
        return Error::file(
            path,
            format!(
                "truncated or corrupt safetensors file: the header length is {header_len} bytes, \
                 but only {} bytes follow it",
                len - 8
            ),
        );
    }
    if let SafeTensorError::MetadataIncompleteBuffer = error {
        // The header parsed, so its largest data offset gives the expected file length.
        let header_end = 8 + header_len as usize;
        let data_end = serde_json::from_slice::<serde_json::Value>(&bytes[8..header_end])
            .ok()
            .and_then(|header| {
                header.as_object().map(|entries| {
                    entries
                        .values()
                        .filter_map(|info| info.get("data_offsets")?.get(1)?.as_u64())
                        .max()
                        .unwrap_or(0)
                })
            })
            .unwrap_or(0) as usize;
        let expected = header_end + data_end;
        let problem = if len < expected { "truncated" } else { "corrupt" };
        return Error::file(
            path,
            format!("{problem} safetensors file: the header describes {expected} bytes, the file has {len}"),
        );
    }
    Error::file(path, format!("corrupt safetensors header: {error}"))
}

/// Converts one stored tensor to fiak's dtypes: F32 and U32 unchanged, F16, BF16 and F64 to F32.
fn convert_tensor(path: &Path, name: &str, dtype: Dtype, data: &[u8]) -> Result<(DType, Vec<u8>)> {
    let to_bytes = |values: Vec<f32>| values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    Ok(match dtype {
        Dtype::F32 => (DType::F32, data.to_vec()),
        Dtype::U32 => (DType::U32, data.to_vec()),
        Dtype::F16 => {
            let values = data
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect();
            (DType::F32, to_bytes(values))
        }
        Dtype::BF16 => {
            let values = data
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect();
            (DType::F32, to_bytes(values))
        }
        Dtype::F64 => {
            let values = data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect();
            (DType::F32, to_bytes(values))
        }
        other => {
            return Err(Error::file(
                path,
                format!(
                    "tensor `{name}` has dtype {other:?}; fiak reads F32 and U32, and converts F16, BF16 and F64 to F32"
                ),
            ));
        }
    })
}

/// Converts an IEEE 754 binary16 value to f32 exactly, subnormals, infinities and NaN included.
fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exponent = ((bits >> 10) & 0x1f) as u32;
    let mantissa = (bits & 0x3ff) as u32;
    let magnitude = match exponent {
        0 => {
            // Subnormal or zero: mantissa * 2^-24, exact in f32.
            let value = mantissa as f32 * 2f32.powi(-24);
            return if sign != 0 { -value } else { value };
        }
        0x1f => 0xff << 23 | mantissa << 13,
        _ => (exponent + 127 - 15) << 23 | mantissa << 13,
    };
    f32::from_bits(sign | magnitude)
}

/// Checks loaded tensors against the names, shapes and dtypes a model expects. The error lists
/// each missing, unexpected, misshapen or mistyped tensor with both shapes, the first ten in
/// full and the rest as a count.
pub fn check_tensors(loaded: &BTreeMap<String, TensorData>, expected: &[(String, Vec<usize>, DType)]) -> Result<()> {
    let mut problems = Vec::new();
    for (name, shape, dtype) in expected {
        match loaded.get(name) {
            None => problems.push(format!("missing tensor `{name}`: expected shape {shape:?} {dtype:?}")),
            Some(tensor) if &tensor.shape != shape => problems.push(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                tensor.shape
            )),
            Some(tensor) if tensor.dtype != *dtype => problems.push(format!(
                "tensor `{name}` has dtype {:?}, expected {dtype:?}",
                tensor.dtype
            )),
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|(name, _, _)| name.as_str()).collect();
    for (name, tensor) in loaded {
        if !known.contains(name.as_str()) {
            problems.push(format!(
                "unexpected tensor `{name}` of shape {:?}, which the configuration does not define",
                tensor.shape
            ));
        }
    }

    if problems.is_empty() {
        return Ok(());
    }
    let count = problems.len();
    let mut message = format!("the tensors do not fit the model configuration ({count} problems):");
    for problem in problems.iter().take(MAX_LISTED_PROBLEMS) {
        message.push_str("\n  - ");
        message.push_str(problem);
    }
    if count > MAX_LISTED_PROBLEMS {
        message.push_str(&format!("\n  ... and {} more", count - MAX_LISTED_PROBLEMS));
    }
    Err(Error::shape("checkpoint", message))
}
