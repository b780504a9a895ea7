//! Conversion of decoded u8 images to the channel count and size a model expects, and to the
//! [0, 1] floats of `ImageDataset`.

use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, RgbImage};

use super::dataset::ImageDataset;
use crate::{Error, Result};

/// Decoded images before conversion: `pixels` is [len, channels, height, width] in u8.
pub(crate) struct RawImages {
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub len: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// The requested image shape; a 0 keeps the value of the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TargetShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl TargetShape {
    pub fn new(channels: usize, height: usize, width: usize) -> Result<TargetShape> {
        if !matches!(channels, 0 | 1 | 3) {
            return Err(Error::invalid(
                "channels",
                channels,
                "images are read as grey (1) or RGB (3), or 0 to keep the source's channels",
            ));
        }
        Ok(TargetShape {
            channels,
            height,
            width,
        })
    }

    /// Fills the zero fields from a source image shape.
    pub fn resolve(self, channels: usize, height: usize, width: usize) -> TargetShape {
        let pick = |requested: usize, source: usize| if requested == 0 { source } else { requested };
        TargetShape {
            channels: pick(self.channels, channels),
            height: pick(self.height, height),
            width: pick(self.width, width),
        }
    }
}

/// Converts one decoded image to `target` (bilinear resize, then grey or RGB) and returns it
/// planar, as [channels, height, width].
pub(crate) fn to_planar(image: DynamicImage, target: TargetShape) -> Vec<u8> {
    let (width, height) = (target.width as u32, target.height as u32);
    let image = if image.width() != width || image.height() != height {
        image.resize_exact(width, height, FilterType::Triangle)
    } else {
        image
    };

    if target.channels == 1 {
        return image.to_luma8().into_raw();
    }
    let rgb = image.to_rgb8().into_raw();
    let plane = target.height * target.width;
    let mut planar = vec![0u8; 3 * plane];
    for (p, pixel) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            planar[c * plane + p] = pixel[c];
        }
    }
    planar
}

/// Wraps one planar [channels, height, width] u8 image as an `image` crate image.
fn from_planar(pixels: &[u8], channels: usize, height: usize, width: usize) -> DynamicImage {
    let (w, h) = (width as u32, height as u32);
    if channels == 1 {
        let grey = GrayImage::from_raw(w, h, pixels.to_vec()).expect("planar grey image has h * w bytes");
        return DynamicImage::ImageLuma8(grey);
    }
    let plane = height * width;
    let mut interleaved = vec![0u8; 3 * plane];
    for p in 0..plane {
        for c in 0..3 {
            interleaved[3 * p + c] = pixels[c * plane + p];
        }
    }
    let rgb = RgbImage::from_raw(w, h, interleaved).expect("planar RGB image has 3 * h * w bytes");
    DynamicImage::ImageRgb8(rgb)
}

/// Describes a channel conversion for the log.
pub(crate) fn describe_channels(from: usize, to: usize) -> &'static str {
    match (from, to) {
        (1, 3) => ", grey replicated to RGB",
        (3, 1) => ", RGB to grey with Rec. 709 luma weights",
        _ => "",
    }
}

impl RawImages {
    /// Converts to `target` (0 fields keep the source's), scales to [0, 1] and attaches the
    /// class names. `source` names the data in the log and in errors.
    pub fn into_dataset(self, target: TargetShape, class_names: Vec<String>, source: &Path) -> Result<ImageDataset> {
        let classes = class_names.len();
        if let Some((i, &label)) = self.labels.iter().enumerate().find(|&(_, &l)| l as usize >= classes) {
            return Err(Error::file(
                source,
                format!("label {label} of image {i} is out of range for {classes} classes"),
            ));
        }

        let target = target.resolve(self.channels, self.height, self.width);
        let same = (target.channels, target.height, target.width) == (self.channels, self.height, self.width);
        let pixels = if same {
            self.pixels
        } else {
            log::info!(
                "{}: converting {} images from {}x{}x{} to {}x{}x{} (bilinear resize{})",
                source.display(),
                self.len,
                self.channels,
                self.height,
                self.width,
                target.channels,
                target.height,
                target.width,
                describe_channels(self.channels, target.channels)
            );
            let source_len = self.channels * self.height * self.width;
            let mut converted = Vec::with_capacity(self.len * target.channels * target.height * target.width);
            for image in self.pixels.chunks_exact(source_len) {
                let image = from_planar(image, self.channels, self.height, self.width);
                converted.extend(to_planar(image, target));
            }
            converted
        };

        Ok(ImageDataset {
            images: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
            labels: self.labels,
            len: self.len,
            channels: target.channels,
            height: target.height,
            width: target.width,
            classes,
            class_names,
        })
    }
}
