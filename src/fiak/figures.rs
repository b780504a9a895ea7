//! PNG figures: learned priors per layer and head, kept patterns, attention maps and loss
//! curves. Heatmaps use a perceptually ordered dark-blue to yellow ramp.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::{Error, Result};

/// Colour of `t` in [0, 1]: dark blue through teal to yellow.
fn ramp(t: f32) -> Rgb<u8> {
    let t = t.clamp(0.0, 1.0);
    let stops = [
        (0.0, [48.0, 18.0, 59.0]),
        (0.35, [33.0, 145.0, 140.0]),
        (0.7, [122.0, 209.0, 81.0]),
        (1.0, [253.0, 231.0, 37.0]),
    ];
    for pair in stops.windows(2) {
        let ((t0, c0), (t1, c1)) = (pair[0], pair[1]);
        if t <= t1 {
            let f = (t - t0) / (t1 - t0);
            return Rgb([0, 1, 2].map(|i| (c0[i] + f * (c1[i] - c0[i])) as u8));
        }
    }
    Rgb([253, 231, 37])
}

fn save(image: &RgbImage, path: &Path) -> Result<()> {
    let tmp = path.with_extension("png.tmp");
    image
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| Error::file(&tmp, format!("cannot write PNG: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, format!("cannot move the figure into place: {e}")))
}

/// Draws `panels` heatmaps of `rows` x `cols` side by side, each scaled to [0, 1] on its own,
/// every cell `cell` pixels wide, with a 4-pixel gap between panels.
pub fn heatmaps(path: &Path, panels: &[Vec<f32>], rows: usize, cols: usize, cell: usize) -> Result<()> {
    let gap = 4;
    let width = (panels.len() * (cols * cell + gap)).max(1) as u32;
    let height = (rows * cell).max(1) as u32;
    let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (p, values) in panels.iter().enumerate() {
        let (lo, hi) = values
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        let x0 = p * (cols * cell + gap);
        for r in 0..rows {
            for c in 0..cols {
                let colour = ramp((values[r * cols + c] - lo) / span);
                for dy in 0..cell {
                    for dx in 0..cell {
                        image.put_pixel((x0 + c * cell + dx) as u32, (r * cell + dy) as u32, colour);
                    }
                }
            }
        }
    }
    save(&image, path)
}

/// Cell size that keeps an `n` x `n` map between about 128 and 400 pixels wide.
pub fn cell_size(n: usize) -> usize {
    (256 / n.max(1)).clamp(1, 16)
}

/// Plots loss curves, one colour per series of (step, loss) points, on shared axes, and returns
/// a caption with the axes' ranges and the colour of each series (the image contains no text).
pub fn loss_curves(path: &Path, series: &[(String, Vec<(f64, f64)>)]) -> Result<String> {
    const COLOUR_NAMES: [&str; 6] = ["blue", "orange", "green", "red", "purple", "brown"];
    let (width, height, margin) = (640u32, 360u32, 24i64);
    let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .filter(|p| p.1.is_finite())
        .collect();
    if points.is_empty() {
        save(&image, path)?;
        return Ok("no training losses recorded".to_string());
    }
    let (x_max, y_min, y_max) = points
        .iter()
        .fold((1.0f64, f64::MAX, f64::MIN), |(x, lo, hi), &(px, py)| {
            (x.max(px), lo.min(py), hi.max(py))
        });
    let y_span = (y_max - y_min).max(1e-9);
    let to_pixel = |(x, y): (f64, f64)| {
        let px = margin + ((x / x_max) * (width as i64 - 2 * margin) as f64) as i64;
        let py = margin + (((y_max - y) / y_span) * (height as i64 - 2 * margin) as f64) as i64;
        (px, py)
    };
    // Axes.
    for x in margin..width as i64 - margin {
        image.put_pixel(x as u32, (height as i64 - margin) as u32, Rgb([0, 0, 0]));
    }
    for y in margin..height as i64 - margin {
        image.put_pixel(margin as u32, y as u32, Rgb([0, 0, 0]));
    }
    let colours = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
    ];
    for (i, (_, s)) in series.iter().enumerate() {
        let colour = Rgb(colours[i % colours.len()]);
        for pair in s.windows(2) {
            let (a, b) = (to_pixel(pair[0]), to_pixel(pair[1]));
            let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).max(1);
            for t in 0..=steps {
                let x = a.0 + (b.0 - a.0) * t / steps;
                let y = a.1 + (b.1 - a.1) * t / steps;
                if x >= 0 && y >= 0 && x < width as i64 && y < height as i64 {
                    image.put_pixel(x as u32, y as u32, colour);
                }
            }
        }
    }
    save(&image, path)?;
    let legend: Vec<String> = series
        .iter()
        .enumerate()
        .map(|(i, (name, _))| format!("{} {name}", COLOUR_NAMES[i % COLOUR_NAMES.len()]))
        .collect();
    Ok(format!(
        "training loss against the step of each phase (x from 0 to {x_max:.0}, y from {y_min:.3} at the bottom to {y_max:.3} at the top): {}",
        legend.join(", ")
    ))
}

/// Reads (step, loss) points of the training steps from a `metrics.jsonl`.
pub fn read_losses(path: &Path) -> Result<Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let mut points = Vec::new();
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(step), Some(loss)) = (value["step"].as_f64(), value["loss"].as_f64()) {
            points.push((step, loss));
        }
    }
    Ok(points)
}
