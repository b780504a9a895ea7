//! Data loading: image datasets (IDX as in MNIST and Fashion-MNIST, CIFAR-10 binary batches,
//! folders of images), text corpora with byte and GPT-2 tokenizers, and seeded batching.
//!
//! Without a path, the loaders read the data bundled in `assets/`: a subset of Fashion-MNIST
//! (5,000 training and 1,000 test images) and Melville's "Moby-Dick". `$FIAK_ASSETS` overrides
//! where `assets/` is.

pub mod cifar;
mod convert;
mod dataset;
pub mod folder;
pub mod idx;
mod loader;
mod rng;
pub mod text;

use std::path::{Path, PathBuf};

pub use dataset::{ChannelStats, ImageDataset, Split};
pub use loader::{
    Augment, BatchSource, ImageBatch, ImageLoader, LoaderState, Prefetcher, TextBatch, TextLoader, image_eval_batches,
    text_eval_batches,
};
pub use rng::SplitMix64;
pub use text::{ByteTokenizer, Gpt2Tokenizer, TextCorpus, TokenizerKind, load_text};

use convert::TargetShape;
use idx::IdxFiles;

use crate::{Error, Result};

/// The class names of Fashion-MNIST in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Finds the bundled data: `$FIAK_ASSETS` when set, else `assets/` of the source tree this
/// crate was built from, else `assets/` beside the executable.
pub fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FIAK_ASSETS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    if source_tree.is_dir() {
        return source_tree;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("assets")))
        .filter(|dir| dir.is_dir())
        .unwrap_or(source_tree)
}

/// Loads one split of an image dataset as [n, channels, height, width] floats in [0, 1].
///
/// `path` is a directory of one of three kinds, and `None` loads the bundled Fashion-MNIST
/// subset:
/// - IDX files (`PREFIX-images-idx3-ubyte[.gz]` with `PREFIX-labels-idx1-ubyte[.gz]`), where
///   PREFIX ends in `train` for the training split and in `t10k` or `test` for the test split;
/// - CIFAR-10 binary batches;
/// - images in one sub-folder per class (see `folder`).
///
/// Images are resized (bilinear) and converted to `channels` (1 for grey, 3 for RGB) where they
/// differ. A 0 in `channels`, `height` or `width` keeps the source's value, which for an image
/// folder is the first image's.
pub fn load_image_dataset(
    path: Option<&Path>,
    split: Split,
    channels: usize,
    height: usize,
    width: usize,
) -> Result<ImageDataset> {
    let target = TargetShape::new(channels, height, width)?;
    let dir = match path {
        Some(path) => path.to_path_buf(),
        None => {
            let bundled = assets_dir().join("fashion-mnist");
            if !bundled.is_dir() {
                return Err(Error::file(
                    &bundled,
                    "bundled Fashion-MNIST not found; set FIAK_ASSETS to the assets/ folder of the fiak sources",
                ));
            }
            bundled
        }
    };
    if !dir.is_dir() {
        let problem = if dir.exists() { "not a directory" } else { "not found" };
        return Err(Error::file(&dir, format!("{problem}: {}", folder::LAYOUTS)));
    }

    if let Some(files) = find_idx_files(&dir, split)? {
        let names = idx_class_names(&dir, split)?;
        return idx::read_idx_split(&files)?.into_dataset(target, names, &files.images);
    }
    if let Some(batches) = cifar::find_batches_dir(&dir) {
        let (raw, names) = cifar::read_split(&batches, split)?;
        return raw.into_dataset(target, names, &batches);
    }
    folder::read_split(&dir, split, target)
}

/// Names of the files in `dir` that end in `-images-idx3-ubyte` or `-images-idx3-ubyte.gz`,
/// with the prefix before that ending.
fn idx_image_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list directory: {e}")))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Error::file(dir, format!("cannot list directory: {e}")))?
            .path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let stem = name.strip_suffix(".gz").unwrap_or(&name);
        if let Some(prefix) = stem.strip_suffix("-images-idx3-ubyte") {
            found.push((prefix.to_string(), path));
        }
    }
    found.sort();
    Ok(found)
}

/// Checks whether an IDX file prefix (`train`, `t10k`, `emnist-letters-test`, ...) belongs to `split`.
fn prefix_is_split(prefix: &str, split: Split) -> bool {
    match split {
        Split::Train => prefix.ends_with("train"),
        Split::Test => prefix.ends_with("t10k") || prefix.ends_with("test"),
    }
}

/// Finds the IDX image and label files of `split`, or `None` when `dir` contains no IDX image file.
fn find_idx_files(dir: &Path, split: Split) -> Result<Option<IdxFiles>> {
    let images = idx_image_files(dir)?;
    if images.is_empty() {
        return Ok(None);
    }
    let Some((prefix, image_path)) = images.iter().find(|(prefix, _)| prefix_is_split(prefix, split)) else {
        let names: Vec<String> = images.iter().map(|(p, _)| format!("{p}-images-idx3-ubyte")).collect();
        return Err(Error::file(
            dir,
            format!(
                "no IDX image file for the {} split among {names:?}; expected a prefix ending in {}",
                split.name(),
                match split {
                    Split::Train => "`train` (as in train-images-idx3-ubyte)",
                    Split::Test => "`t10k` or `test` (as in t10k-images-idx3-ubyte)",
                }
            ),
        ));
    };

    let label_stem = dir.join(format!("{prefix}-labels-idx1-ubyte"));
    let label_gz = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    let labels = [label_gz, label_stem.clone()]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::file(
                &label_stem,
                format!("not found (raw or .gz): the labels of {}", image_path.display()),
            )
        })?;
    Ok(Some(IdxFiles {
        images: image_path.clone(),
        labels,
    }))
}

/// Class names of an IDX directory: the lines of `classes.txt` when present, the
/// Fashion-MNIST names when the directory's name contains "fashion", else the label numbers up
/// to the largest label of the training and test files.
fn idx_class_names(dir: &Path, split: Split) -> Result<Vec<String>> {
    let listed = dir.join("classes.txt");
    if listed.is_file() {
        let text = std::fs::read_to_string(&listed).map_err(|e| Error::file(&listed, format!("cannot read: {e}")))?;
        return Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect());
    }

    let dir_name = dir
        .canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_lowercase();
    if dir_name.contains("fashion") {
        return Ok(FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect());
    }

    // Both splits are read so that they agree on the class count.
    let mut max_label = 0u8;
    for s in [
        split,
        if split == Split::Train {
            Split::Test
        } else {
            Split::Train
        },
    ] {
        let Some(files) = find_idx_files(dir, s).ok().flatten() else {
            continue;
        };
        let labels = idx::read_idx(&files.labels)?;
        max_label = max_label.max(labels.data.iter().copied().max().unwrap_or(0));
    }
    Ok((0..=max_label).map(|l| l.to_string()).collect())
}
