//! The in-memory image dataset that every image format loads into.

use crate::{Error, Result};

/// Part of a dataset: the training or the test images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Labelled images in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageDataset {
    /// Pixels as [len, channels, height, width], scaled to [0, 1] when loaded.
    pub images: Vec<f32>,
    /// Class index of each image, below `classes`.
    pub labels: Vec<u32>,
    pub len: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
    /// Name of each class, `classes` entries.
    pub class_names: Vec<String>,
}

/// Per-channel mean and standard deviation, for `ImageDataset::normalize`.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelStats {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl ImageDataset {
    /// Number of values in one image: channels * height * width.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Pixels of image `i` as [channels, height, width].
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Computes the mean and (population) standard deviation of each channel over all pixels.
    /// Compute them on the training split and apply them to both splits.
    pub fn channel_stats(&self) -> ChannelStats {
        let plane = self.height * self.width;
        let mut sum = vec![0f64; self.channels];
        let mut sum_sq = vec![0f64; self.channels];
        for image in self.images.chunks_exact(self.image_len().max(1)) {
            for (c, values) in image.chunks_exact(plane.max(1)).enumerate() {
                for &x in values {
                    sum[c] += x as f64;
                    sum_sq[c] += (x as f64) * (x as f64);
                }
            }
        }

        let count = (self.len * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = sum_sq
            .iter()
            .zip(&mean)
            .map(|(sq, m)| (sq / count - m * m).max(0.0).sqrt() as f32)
            .collect();
        ChannelStats {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    /// Replaces every pixel x of channel c by (x - mean[c]) / std[c].
    pub fn normalize(&mut self, stats: &ChannelStats) -> Result<()> {
        if stats.mean.len() != self.channels || stats.std.len() != self.channels {
            return Err(Error::invalid(
                "normalization statistics",
                format!("{} means, {} deviations", stats.mean.len(), stats.std.len()),
                format!("the dataset has {} channels", self.channels),
            ));
        }
        if let Some(c) = stats.std.iter().position(|&s| !(s > 0.0 && s.is_finite())) {
            return Err(Error::invalid(
                "standard deviation",
                stats.std[c],
                format!("channel {c} needs a positive, finite deviation to normalize by"),
            ));
        }

        let plane = self.height * self.width;
        let image_len = self.image_len();
        for image in self.images.chunks_exact_mut(image_len.max(1)) {
            for (c, values) in image.chunks_exact_mut(plane.max(1)).enumerate() {
                let (mean, inv_std) = (stats.mean[c], 1.0 / stats.std[c]);
                for x in values {
                    *x = (*x - mean) * inv_std;
                }
            }
        }
        Ok(())
    }

    /// Copies the images at `indices`, in that order; an index may repeat.
    pub fn subset(&self, indices: &[usize]) -> Result<ImageDataset> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len) {
            return Err(Error::invalid(
                "subset index",
                i,
                format!("the dataset has {} images", self.len),
            ));
        }

        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Ok(ImageDataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            len: indices.len(),
            class_names: self.class_names.clone(),
            ..*self
        })
    }

    /// Counts the images of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &label in &self.labels {
            counts[label as usize] += 1;
        }
        counts
    }
}
