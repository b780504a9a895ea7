//! CIFAR-10 binary batches (`data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`): each
//! record is one label byte followed by a 32x32 RGB image stored as three 1024-byte planes
//! (red, green, blue), each row-major.

use std::path::{Path, PathBuf};

use super::convert::RawImages;
use super::dataset::Split;
use crate::{Error, Result};

pub const SIDE: usize = 32;
pub const CHANNELS: usize = 3;
/// Bytes of one record: the label, then 3 * 32 * 32 pixels.
pub const RECORD_LEN: usize = 1 + CHANNELS * SIDE * SIDE;

/// The class names of CIFAR-10 in label order, used when `batches.meta.txt` is absent.
pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Parses the records of one batch file; `path` only names the file in errors.
pub(crate) fn parse_batch(path: &Path, bytes: &[u8], into: &mut RawImages) -> Result<()> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_LEN) {
        return Err(Error::file(
            path,
            format!(
                "truncated or corrupt CIFAR-10 batch: {} bytes is not a positive multiple of the {RECORD_LEN}-byte record",
                bytes.len()
            ),
        ));
    }
    for (i, record) in bytes.chunks_exact(RECORD_LEN).enumerate() {
        let label = record[0];
        if label as usize >= CLASS_NAMES.len() {
            return Err(Error::file(
                path,
                format!("corrupt CIFAR-10 batch: record {i} has label {label}, expected 0 to 9"),
            ));
        }
        into.labels.push(label as u32);
        into.pixels.extend_from_slice(&record[1..]);
        into.len += 1;
    }
    Ok(())
}

/// Finds the directory that contains the batch files: `dir` itself or its `cifar-10-batches-bin/`.
pub(crate) fn find_batches_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join("cifar-10-batches-bin")]
        .into_iter()
        .find(|d| d.join("test_batch.bin").is_file() || d.join("data_batch_1.bin").is_file())
}

/// Batch files of a split, in order: `data_batch_1.bin` upward for training, `test_batch.bin`
/// for testing.
fn batch_files(dir: &Path, split: Split) -> Result<Vec<PathBuf>> {
    let files: Vec<PathBuf> = match split {
        Split::Train => (1..)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .take_while(|p| p.is_file())
            .collect(),
        Split::Test => Some(dir.join("test_batch.bin"))
            .filter(|p| p.is_file())
            .into_iter()
            .collect(),
    };
    if files.is_empty() {
        let expected = match split {
            Split::Train => "data_batch_1.bin",
            Split::Test => "test_batch.bin",
        };
        return Err(Error::file(
            dir.join(expected),
            format!(
                "not found: the {} split of a CIFAR-10 directory needs this file",
                split.name()
            ),
        ));
    }
    Ok(files)
}

/// Reads the class names from `batches.meta.txt` (one a line), or returns the standard ten.
fn class_names(dir: &Path) -> Result<Vec<String>> {
    let meta = dir.join("batches.meta.txt");
    if !meta.is_file() {
        return Ok(CLASS_NAMES.iter().map(|s| s.to_string()).collect());
    }
    let text = std::fs::read_to_string(&meta).map_err(|e| Error::file(&meta, format!("cannot read: {e}")))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != CLASS_NAMES.len() {
        return Err(Error::file(
            &meta,
            format!(
                "expected {} class names, one a line, found {}",
                CLASS_NAMES.len(),
                names.len()
            ),
        ));
    }
    Ok(names)
}

/// Reads one split of a CIFAR-10 batch directory as [n, 3, 32, 32] u8 images.
pub(crate) fn read_split(dir: &Path, split: Split) -> Result<(RawImages, Vec<String>)> {
    let mut raw = RawImages {
        pixels: Vec::new(),
        labels: Vec::new(),
        len: 0,
        channels: CHANNELS,
        height: SIDE,
        width: SIDE,
    };
    for file in batch_files(dir, split)? {
        let bytes = std::fs::read(&file).map_err(|e| Error::file(&file, format!("cannot read: {e}")))?;
        parse_batch(&file, &bytes, &mut raw)?;
    }
    Ok((raw, class_names(dir)?))
}

/// Decodes CIFAR-10 records from memory into [n, 3, 32, 32] pixels in [0, 1] and labels, for
/// callers that hold batch bytes from elsewhere. `path` only names the data in errors.
pub fn parse_records(path: &Path, bytes: &[u8]) -> Result<(Vec<f32>, Vec<u32>)> {
    let mut raw = RawImages {
        pixels: Vec::new(),
        labels: Vec::new(),
        len: 0,
        channels: CHANNELS,
        height: SIDE,
        width: SIDE,
    };
    parse_batch(path, bytes, &mut raw)?;
    Ok((raw.pixels.iter().map(|&p| p as f32 / 255.0).collect(), raw.labels))
}
