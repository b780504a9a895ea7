//! Image folders: one sub-folder per class, named after the class, holding PNG, JPEG or BMP
//! files of any size. A root with `train/` and `test/` sub-folders has its split made by them;
//! any other root is split 90/10 by a seeded shuffle.

use std::path::{Path, PathBuf};

use image::DynamicImage;

use super::convert::{RawImages, TargetShape, describe_channels, to_planar};
use super::dataset::{ImageDataset, Split};
use super::rng::SplitMix64;
use crate::{Error, Result};

/// Seed of the shuffle that splits a folder without `train/` and `test/` into 90% train and
/// 10% test.
pub const SPLIT_SEED: u64 = 0;

/// Expected layouts, for errors about a directory that fits none.
pub(crate) const LAYOUTS: &str = "expected IDX files (*-images-idx3-ubyte[.gz] with *-labels-idx1-ubyte[.gz]), \
     CIFAR-10 batches (data_batch_*.bin, test_batch.bin) or one sub-folder of PNG, JPEG or BMP images per class";

/// Image files, each with the label of its class folder.
type LabelledFiles = Vec<(PathBuf, u32)>;

/// Sorted sub-directories of `dir`, without hidden ones.
fn sub_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list directory: {e}")))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::file(dir, format!("cannot list directory: {e}")))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Checks whether the `image` crate, as built, decodes files with this name's extension.
fn is_readable_image(path: &Path) -> bool {
    image::ImageFormat::from_path(path).is_ok_and(|f| f.reading_enabled())
}

/// Image files of a class folder, sorted by name, and the count of other files skipped.
fn class_images(dir: &Path) -> Result<(Vec<PathBuf>, usize)> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list directory: {e}")))?;
    let mut images = Vec::new();
    let mut skipped = 0;
    for entry in entries {
        let path = entry
            .map_err(|e| Error::file(dir, format!("cannot list directory: {e}")))?
            .path();
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden || !path.is_file() {
            continue;
        }
        if is_readable_image(&path) {
            images.push(path);
        } else {
            skipped += 1;
        }
    }
    if images.is_empty() {
        return Err(Error::file(
            dir,
            "empty class folder: it contains no PNG, JPEG or BMP image; add images or remove the folder",
        ));
    }
    images.sort();
    Ok((images, skipped))
}

/// Lists one class per sub-folder of `root`: the class names and every image with its label.
fn list_classes(root: &Path) -> Result<(Vec<String>, LabelledFiles)> {
    let dirs = sub_dirs(root)?;
    if dirs.is_empty() {
        return Err(Error::file(root, format!("no class folders found; {LAYOUTS}")));
    }

    let mut names = Vec::with_capacity(dirs.len());
    let mut files = Vec::new();
    let mut skipped = 0;
    for (label, dir) in dirs.iter().enumerate() {
        let (images, other) = class_images(dir)?;
        skipped += other;
        names.push(dir.file_name().unwrap_or_default().to_string_lossy().into_owned());
        files.extend(images.into_iter().map(|p| (p, label as u32)));
    }
    if skipped > 0 {
        log::info!(
            "{}: skipped {skipped} files that are not PNG, JPEG or BMP images",
            root.display()
        );
    }
    Ok((names, files))
}

fn open_image(path: &Path) -> Result<DynamicImage> {
    image::ImageReader::open(path)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?
        .decode()
        .map_err(|e| Error::file(path, format!("cannot decode image: {e}")))
}

fn image_channels(image: &DynamicImage) -> usize {
    if image.color().has_color() { 3 } else { 1 }
}

/// Fills the zero fields of `target` from the image at `first`, so that both splits of a
/// folder get the same shape.
fn resolve_target(target: TargetShape, first: &Path) -> Result<TargetShape> {
    if target.channels != 0 && target.height != 0 && target.width != 0 {
        return Ok(target);
    }
    let image = open_image(first)?;
    Ok(target.resolve(image_channels(&image), image.height() as usize, image.width() as usize))
}

/// Decodes `files` and converts each to `target`, which has no zero fields. Logs one line when
/// any image needed converting.
fn decode(files: &[(PathBuf, u32)], target: TargetShape, source: &Path) -> Result<RawImages> {
    let mut raw = RawImages {
        pixels: Vec::with_capacity(files.len() * target.channels * target.height * target.width),
        labels: Vec::with_capacity(files.len()),
        len: 0,
        channels: target.channels,
        height: target.height,
        width: target.width,
    };
    let mut resized = 0;
    let mut recoloured = 0;
    for (path, label) in files {
        let image = open_image(path)?;
        let channels = image_channels(&image);
        resized += usize::from((image.height() as usize, image.width() as usize) != (target.height, target.width));
        recoloured += usize::from(channels != target.channels);

        raw.pixels.extend(to_planar(image, target));
        raw.labels.push(*label);
        raw.len += 1;
    }

    if resized > 0 || recoloured > 0 {
        log::info!(
            "{}: converting images to {}x{}x{}: {resized} of {} resized (bilinear), {recoloured} changed channels{}",
            source.display(),
            target.channels,
            target.height,
            target.width,
            files.len(),
            if recoloured > 0 {
                let from = if target.channels == 3 { 1 } else { 3 };
                describe_channels(from, target.channels)
            } else {
                ""
            }
        );
    }
    Ok(raw)
}

/// Reads one split of an image folder, converted to `target`.
pub(crate) fn read_split(root: &Path, split: Split, target: TargetShape) -> Result<ImageDataset> {
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    if train_dir.is_dir() && test_dir.is_dir() {
        let (names, train_files) = list_classes(&train_dir)?;
        let target = resolve_target(target, &train_files[0].0)?;
        let files = match split {
            Split::Train => train_files,
            Split::Test => {
                let (test_names, test_files) = list_classes(&test_dir)?;
                relabel(&test_dir, &test_names, test_files, &names)?
            }
        };
        let dir = if split == Split::Train { &train_dir } else { &test_dir };
        return decode(&files, target, dir)?.into_dataset(target, names, dir);
    }

    let (names, files) = list_classes(root)?;
    let target = resolve_target(target, &files[0].0)?;
    let mut order: Vec<usize> = (0..files.len()).collect();
    SplitMix64::new(SPLIT_SEED).shuffle(&mut order);
    let test_len = if files.len() >= 2 { files.len().div_ceil(10) } else { 0 };
    let (test_part, train_part) = order.split_at(test_len);
    log::info!(
        "{}: no train/ and test/ sub-folders, so its {} images are split 90/10 into {} train and {} test \
         by a SplitMix64 shuffle with seed {SPLIT_SEED}",
        root.display(),
        files.len(),
        train_part.len(),
        test_part.len()
    );

    let mut chosen = match split {
        Split::Train => train_part.to_vec(),
        Split::Test => test_part.to_vec(),
    };
    if chosen.is_empty() {
        return Err(Error::file(
            root,
            format!(
                "too few images for a {} split: {} images in all; add images or use train/ and test/ sub-folders",
                split.name(),
                files.len()
            ),
        ));
    }
    chosen.sort_unstable();
    let files: LabelledFiles = chosen.into_iter().map(|i| files[i].clone()).collect();
    decode(&files, target, root)?.into_dataset(target, names, root)
}

/// Maps the labels of the test folder to the class order of the train folder.
fn relabel(
    test_dir: &Path,
    test_names: &[String],
    files: LabelledFiles,
    train_names: &[String],
) -> Result<LabelledFiles> {
    let mut mapping = Vec::with_capacity(test_names.len());
    for name in test_names {
        let Some(label) = train_names.iter().position(|n| n == name) else {
            return Err(Error::file(
                test_dir.join(name),
                format!("class folder has no counterpart in train/, whose classes are {train_names:?}"),
            ));
        };
        mapping.push(label as u32);
    }
    Ok(files
        .into_iter()
        .map(|(path, label)| (path, mapping[label as usize]))
        .collect())
}
