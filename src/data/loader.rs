//! Batching for training and evaluation. Training loaders draw from a seeded SplitMix64, so the
//! order of batches is the same on every platform, and their `LoaderState` restores the exact
//! sequence when training resumes. `Prefetcher` prepares the next batch on a background thread.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::dataset::ImageDataset;
use super::rng::SplitMix64;
use crate::{Error, Result};

/// Position of a training loader in its sequence of batches. Save it with a checkpoint, and
/// `restore` continues with the next batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// The seed the loader was created with.
    pub seed: u64,
    /// Generator state. An image loader stores it as of the start of the current epoch, so the
    /// epoch's order can be shuffled again. A text loader stores it before the next window.
    pub rng_state: u64,
    /// Completed passes over an image dataset; 0 for text.
    pub epoch: u64,
    /// Images of the current epoch already handed out; 0 for text.
    pub position: usize,
}

/// A loader whose batches a `Prefetcher` can prepare on another thread.
pub trait BatchSource: Send + 'static {
    type Batch: Send + 'static;

    fn next_batch(&mut self) -> Self::Batch;

    /// Returns the state after the batches returned so far.
    fn state(&self) -> LoaderState;
}

/// A batch of images.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageBatch {
    /// Pixels as `shape` = [B, C, H, W].
    pub images: Vec<f32>,
    /// Class index of each image, [B].
    pub labels: Vec<u32>,
    pub shape: [usize; 4],
}

/// A batch of token windows: `targets` is `inputs` shifted left by one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextBatch {
    /// Tokens as [batch_size, context].
    pub inputs: Vec<u32>,
    /// The token after each input token, [batch_size, context].
    pub targets: Vec<u32>,
    pub batch_size: usize,
    pub context: usize,
}

/// Random changes to each training image. They are drawn from the loader's seed, the epoch and
/// the image's place in the epoch, so a resumed run draws the same ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augment {
    /// Mirror left to right with probability 1/2.
    pub flip: bool,
    /// Translate by up to this many pixels along each axis, filling with zeros (a random crop
    /// of the image padded by `shift` on every side).
    pub shift: usize,
}

impl Augment {
    /// No change.
    pub const NONE: Augment = Augment { flip: false, shift: 0 };

    fn is_none(&self) -> bool {
        !self.flip && self.shift == 0
    }

    /// Applies the draw of `rng` to one [C, H, W] image.
    fn apply(&self, rng: &mut SplitMix64, image: &[f32], shape: [usize; 3], out: &mut Vec<f32>) {
        let [channels, height, width] = shape;
        let flip = self.flip && rng.next_u64() & 1 == 1;
        let span = 2 * self.shift as u64 + 1;
        let dy = (rng.next_u64() % span) as isize - self.shift as isize;
        let dx = (rng.next_u64() % span) as isize - self.shift as isize;
        for c in 0..channels {
            let plane = &image[c * height * width..(c + 1) * height * width];
            for y in 0..height as isize {
                let sy = y - dy;
                for x in 0..width as isize {
                    let mut sx = x - dx;
                    if flip {
                        sx = width as isize - 1 - sx;
                    }
                    let inside = (0..height as isize).contains(&sy) && (0..width as isize).contains(&sx);
                    out.push(if inside {
                        plane[sy as usize * width + sx as usize]
                    } else {
                        0.0
                    });
                }
            }
        }
    }
}

/// Endless training batches of a fixed size over an image dataset. Each epoch visits the images
/// in a fresh order (when shuffling) and drops the last `len % batch_size` of them, so every
/// batch contains exactly `batch_size` images.
pub struct ImageLoader {
    dataset: Arc<ImageDataset>,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    rng: SplitMix64,
    epoch_start: u64,
    order: Vec<usize>,
    position: usize,
    epoch: u64,
    augment: Augment,
}

impl ImageLoader {
    /// Starts at the first batch of epoch 0; `shuffle = false` keeps the dataset's order.
    pub fn new(dataset: Arc<ImageDataset>, batch_size: usize, shuffle: bool, seed: u64) -> Result<ImageLoader> {
        let state = LoaderState {
            seed,
            rng_state: seed,
            epoch: 0,
            position: 0,
        };
        Self::restore(dataset, batch_size, shuffle, &state)
    }

    /// Continues from a state returned by `state()`; the next batch is the one that followed it.
    pub fn restore(
        dataset: Arc<ImageDataset>,
        batch_size: usize,
        shuffle: bool,
        state: &LoaderState,
    ) -> Result<ImageLoader> {
        if batch_size == 0 || batch_size > dataset.len {
            return Err(Error::invalid(
                "--batch-size",
                batch_size,
                format!("must be between 1 and the dataset's {} images", dataset.len),
            ));
        }
        if state.position > dataset.len {
            return Err(Error::invalid(
                "loader position",
                state.position,
                format!(
                    "the dataset has {} images; was the state saved for another dataset?",
                    dataset.len
                ),
            ));
        }

        let mut loader = ImageLoader {
            order: Vec::with_capacity(dataset.len),
            dataset,
            batch_size,
            shuffle,
            seed: state.seed,
            rng: SplitMix64::from_state(state.rng_state),
            epoch_start: state.rng_state,
            position: 0,
            epoch: state.epoch,
            augment: Augment::NONE,
        };
        loader.start_epoch();
        loader.position = state.position;
        Ok(loader)
    }

    fn start_epoch(&mut self) {
        self.epoch_start = self.rng.state();
        self.order.clear();
        self.order.extend(0..self.dataset.len);
        if self.shuffle {
            self.rng.shuffle(&mut self.order);
        }
        self.position = 0;
    }

    /// Sets the random flips and shifts applied to every training image.
    pub fn with_augment(mut self, augment: Augment) -> ImageLoader {
        self.augment = augment;
        self
    }

    /// Completed passes over the dataset.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Full batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.dataset.len / self.batch_size
    }

    pub fn dataset(&self) -> &Arc<ImageDataset> {
        &self.dataset
    }

    /// Moves this loader to a background thread that keeps up to `depth` batches ready.
    pub fn prefetch(self, depth: usize) -> Prefetcher<ImageLoader> {
        Prefetcher::new(self, depth)
    }
}

impl BatchSource for ImageLoader {
    type Batch = ImageBatch;

    fn next_batch(&mut self) -> ImageBatch {
        if self.position + self.batch_size > self.dataset.len {
            self.epoch += 1;
            self.start_epoch();
        }
        let first = self.position;
        let indices = &self.order[first..first + self.batch_size];
        self.position += self.batch_size;
        let mut batch = gather_images(&self.dataset, indices);
        if !self.augment.is_none() {
            let d = &self.dataset;
            let shape = [d.channels, d.height, d.width];
            let mut images = Vec::with_capacity(batch.images.len());
            for (k, image) in batch.images.chunks(d.image_len()).enumerate() {
                let place = self.epoch.wrapping_mul(1 << 32) ^ (first + k) as u64;
                let mut rng = SplitMix64::new(self.seed ^ place.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                self.augment.apply(&mut rng, image, shape, &mut images);
            }
            batch.images = images;
        }
        batch
    }

    fn state(&self) -> LoaderState {
        LoaderState {
            seed: self.seed,
            rng_state: self.epoch_start,
            epoch: self.epoch,
            position: self.position,
        }
    }
}

impl Iterator for ImageLoader {
    type Item = ImageBatch;

    fn next(&mut self) -> Option<ImageBatch> {
        Some(self.next_batch())
    }
}

fn gather_images(dataset: &ImageDataset, indices: &[usize]) -> ImageBatch {
    let mut images = Vec::with_capacity(indices.len() * dataset.image_len());
    for &i in indices {
        images.extend_from_slice(dataset.image(i));
    }
    ImageBatch {
        images,
        labels: indices.iter().map(|&i| dataset.labels[i]).collect(),
        shape: [indices.len(), dataset.channels, dataset.height, dataset.width],
    }
}

/// Batches over the whole dataset in order, for evaluation; the last batch may be smaller.
pub fn image_eval_batches(dataset: &ImageDataset, batch_size: usize) -> impl Iterator<Item = ImageBatch> + '_ {
    let batch_size = batch_size.max(1);
    (0..dataset.len).step_by(batch_size).map(move |start| {
        let indices: Vec<usize> = (start..(start + batch_size).min(dataset.len)).collect();
        gather_images(dataset, &indices)
    })
}

/// Endless training batches of token windows, each starting at a uniformly drawn position.
pub struct TextLoader {
    tokens: Arc<Vec<u32>>,
    batch_size: usize,
    context: usize,
    seed: u64,
    rng: SplitMix64,
}

impl TextLoader {
    /// Draws windows of `context + 1` tokens from `tokens`, which must hold at least that many.
    pub fn new(tokens: Arc<Vec<u32>>, batch_size: usize, context: usize, seed: u64) -> Result<TextLoader> {
        let state = LoaderState {
            seed,
            rng_state: seed,
            epoch: 0,
            position: 0,
        };
        Self::restore(tokens, batch_size, context, &state)
    }

    /// Continues from a state returned by `state()`; the next batch is the one that followed it.
    pub fn restore(
        tokens: Arc<Vec<u32>>,
        batch_size: usize,
        context: usize,
        state: &LoaderState,
    ) -> Result<TextLoader> {
        if batch_size == 0 {
            return Err(Error::invalid("--batch-size", batch_size, "must be at least 1"));
        }
        if context == 0 || tokens.len() < context + 1 {
            return Err(Error::invalid(
                "context",
                context,
                format!(
                    "must be at least 1, and the {} tokens must hold one window of context + 1 tokens",
                    tokens.len()
                ),
            ));
        }
        Ok(TextLoader {
            tokens,
            batch_size,
            context,
            seed: state.seed,
            rng: SplitMix64::from_state(state.rng_state),
        })
    }

    /// Moves this loader to a background thread that keeps up to `depth` batches ready.
    pub fn prefetch(self, depth: usize) -> Prefetcher<TextLoader> {
        Prefetcher::new(self, depth)
    }
}

impl BatchSource for TextLoader {
    type Batch = TextBatch;

    fn next_batch(&mut self) -> TextBatch {
        let (b, t) = (self.batch_size, self.context);
        let starts = (self.tokens.len() - t) as u64;
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for _ in 0..b {
            let start = self.rng.below(starts) as usize;
            inputs.extend_from_slice(&self.tokens[start..start + t]);
            targets.extend_from_slice(&self.tokens[start + 1..start + t + 1]);
        }
        TextBatch {
            inputs,
            targets,
            batch_size: b,
            context: t,
        }
    }

    fn state(&self) -> LoaderState {
        LoaderState {
            seed: self.seed,
            rng_state: self.rng.state(),
            epoch: 0,
            position: 0,
        }
    }
}

impl Iterator for TextLoader {
    type Item = TextBatch;

    fn next(&mut self) -> Option<TextBatch> {
        Some(self.next_batch())
    }
}

/// Consecutive, non-overlapping windows over `tokens` in order, for evaluation; the last batch
/// may hold fewer windows.
/// NOTE: the final `(len - 1) % context` tokens, too few for a whole window, are not evaluated.
pub fn text_eval_batches(tokens: &[u32], batch_size: usize, context: usize) -> impl Iterator<Item = TextBatch> + '_ {
    let (batch_size, context) = (batch_size.max(1), context.max(1));
    let windows = tokens.len().saturating_sub(1) / context;
    (0..windows).step_by(batch_size).map(move |first| {
        let count = batch_size.min(windows - first);
        let mut inputs = Vec::with_capacity(count * context);
        let mut targets = Vec::with_capacity(count * context);
        for w in first..first + count {
            let start = w * context;
            inputs.extend_from_slice(&tokens[start..start + context]);
            targets.extend_from_slice(&tokens[start + 1..start + context + 1]);
        }
        TextBatch {
            inputs,
            targets,
            batch_size: count,
            context,
        }
    })
}

/// Runs a `BatchSource` on a background thread, which prepares the next batches while the
/// caller works on the current one. `state()` describes the batches handed out so far, not
/// the ones prepared ahead, so a saved state resumes exactly after the last batch used.
pub struct Prefetcher<S: BatchSource> {
    receiver: Option<Receiver<(S::Batch, LoaderState)>>,
    worker: Option<JoinHandle<()>>,
    state: LoaderState,
}

impl<S: BatchSource> Prefetcher<S> {
    /// Starts the thread; it keeps up to `depth` finished batches queued (with 0 it prepares
    /// one and waits for it to be taken).
    pub fn new(mut source: S, depth: usize) -> Prefetcher<S> {
        let state = source.state();
        let (sender, receiver) = sync_channel(depth);
        let worker = std::thread::Builder::new()
            .name("fiak-prefetch".into())
            .spawn(move || {
                loop {
                    let batch = source.next_batch();
                    // The receiver is gone when the prefetcher was dropped.
                    if sender.send((batch, source.state())).is_err() {
                        break;
                    }
                }
            })
            .expect("failed to spawn the batch prefetch thread");
        Prefetcher {
            receiver: Some(receiver),
            worker: Some(worker),
            state,
        }
    }

    /// Returns the next batch, waiting for the thread when it is not ready yet. A panic on the
    /// thread is raised again here.
    pub fn next_batch(&mut self) -> S::Batch {
        let received = self.receiver.as_ref().expect("receiver lives until drop").recv();
        match received {
            Ok((batch, state)) => {
                self.state = state;
                batch
            }
            Err(_) => {
                // The sender only closes when the thread ended, which it does only by panicking.
                let worker = self.worker.take().expect("worker joined only once");
                match worker.join() {
                    Err(panic) => std::panic::resume_unwind(panic),
                    Ok(()) => unreachable!("the prefetch thread returned while the receiver lived"),
                }
            }
        }
    }

    /// Returns the loader state after the batches returned so far.
    pub fn state(&self) -> LoaderState {
        self.state
    }
}

impl<S: BatchSource> Iterator for Prefetcher<S> {
    type Item = S::Batch;

    fn next(&mut self) -> Option<S::Batch> {
        Some(self.next_batch())
    }
}

impl<S: BatchSource> Drop for Prefetcher<S> {
    fn drop(&mut self) {
        // Closing the channel makes the thread's next send fail, which ends its loop.
        drop(self.receiver.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
