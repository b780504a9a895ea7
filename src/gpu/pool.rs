//! Buffer pool keyed by size class. Every GPU buffer of fiak is a storage buffer that can be
//! copied from and to; a dropped [`GpuBuffer`] returns its buffer to the pool.
//!
//! Reuse is safe without waiting for the GPU: work recorded later in the same queue runs after
//! the work that used the buffer before, and uploads into a reused buffer are recorded into the
//! same command stream (see `batch.rs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Smallest buffer size handed out, in bytes.
const MIN_CLASS: u64 = 256;

/// Rounds a byte size up to its size class: four classes per power of two above 1 KiB, so a
/// class wastes at most a quarter of its size.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(MIN_CLASS);
    let power = bytes.next_power_of_two();
    if power <= 1024 {
        return power;
    }
    let step = power / 8;
    bytes.div_ceil(step) * step
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers created so far and not destroyed, handed out or free.
    pub buffers: u64,
    /// Buffers handed out now.
    pub live: u64,
    /// Bytes of all created buffers.
    pub bytes: u64,
    /// Bytes handed out now.
    pub live_bytes: u64,
    /// The largest `live_bytes` seen since the last [`Pool::reset_peak`].
    pub peak_live_bytes: u64,
}

pub(crate) struct Pool {
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    buffers: AtomicU64,
    live: AtomicU64,
    bytes: AtomicU64,
    live_bytes: AtomicU64,
    peak_live_bytes: AtomicU64,
}

/// A pooled storage buffer. `size` is the byte size asked for; the buffer may be larger.
pub struct GpuBuffer {
    buffer: Option<wgpu::Buffer>,
    size: u64,
}

impl GpuBuffer {
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }

    /// Byte size asked for when the buffer was taken from the pool.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take()
            && let Some(gpu) = super::try_get_existing()
        {
            gpu.pool.release(buffer);
        }
    }
}

impl Pool {
    pub(crate) fn new() -> Pool {
        Pool {
            free: Mutex::default(),
            buffers: AtomicU64::new(0),
            live: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            peak_live_bytes: AtomicU64::new(0),
        }
    }

    pub(crate) fn acquire(&self, device: &wgpu::Device, bytes: u64) -> GpuBuffer {
        let class = size_class(bytes);
        let reused = self.free.lock().unwrap().get_mut(&class).and_then(Vec::pop);
        let buffer = reused.unwrap_or_else(|| {
            self.buffers.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(class, Ordering::Relaxed);
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fiak.pool"),
                size: class,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        self.live.fetch_add(1, Ordering::Relaxed);
        let live = self.live_bytes.fetch_add(class, Ordering::Relaxed) + class;
        self.peak_live_bytes.fetch_max(live, Ordering::Relaxed);
        GpuBuffer {
            buffer: Some(buffer),
            size: bytes,
        }
    }

    fn release(&self, buffer: wgpu::Buffer) {
        let class = buffer.size();
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.live_bytes.fetch_sub(class, Ordering::Relaxed);
        self.free.lock().unwrap().entry(class).or_default().push(buffer);
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            buffers: self.buffers.load(Ordering::Relaxed),
            live: self.live.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            live_bytes: self.live_bytes.load(Ordering::Relaxed),
            peak_live_bytes: self.peak_live_bytes.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn reset_peak(&self) {
        let live = self.live_bytes.load(Ordering::Relaxed);
        self.peak_live_bytes.store(live, Ordering::Relaxed);
    }

    /// Destroys every free buffer, keeping the ones handed out.
    pub(crate) fn trim(&self) {
        let mut free = self.free.lock().unwrap();
        for (class, list) in free.drain() {
            self.buffers.fetch_sub(list.len() as u64, Ordering::Relaxed);
            self.bytes.fetch_sub(class * list.len() as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_class_bounds_waste() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(1000), 1024);
        for bytes in [1025u64, 5000, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let class = size_class(bytes);
            assert!(class >= bytes, "{bytes} -> {class}");
            assert!(class as f64 <= bytes as f64 * 1.25 + 256.0, "{bytes} -> {class}");
        }
    }
}
