//! Command batching: dispatches, uploads and clears are recorded into one command encoder and
//! submitted together, at a readback, at an explicit [`Gpu::flush`], or every
//! `MAX_DISPATCHES` dispatches so the GPU starts while the CPU records more.
//!
//! Kernel parameters live in uniform chunks that are written once per submit. A chunk is
//! reused only after the submit that read it, and `Queue::write_buffer` runs before the next
//! submit's commands, so no parameter block is overwritten while a recorded dispatch needs it.

use super::{Gpu, GpuBuffer, Shader};
use crate::error::Result;

/// Dispatches recorded before a submit is forced.
const MAX_DISPATCHES: u32 = 256;
/// Bytes of one uniform chunk.
const CHUNK_BYTES: u64 = 64 * 1024;

/// A byte range of a buffer bound as one storage binding.
#[derive(Clone, Copy)]
pub struct Binding<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

#[derive(Default)]
pub(crate) struct Batch {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: u32,
    /// Uniform chunks in use by this batch with their CPU-side contents.
    chunks: Vec<(wgpu::Buffer, Vec<u8>)>,
    free_chunks: Vec<wgpu::Buffer>,
    /// Kernel label of each profiled dispatch, in order.
    profiled: Vec<String>,
}

impl Gpu {
    fn encoder<'b>(&self, batch: &'b mut Batch) -> &'b mut wgpu::CommandEncoder {
        batch.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fiak.batch"),
            })
        })
    }

    /// Copies `params` into the current uniform chunk and returns (chunk index, byte offset).
    fn push_params(&self, batch: &mut Batch, params: &[u8]) -> (usize, u64) {
        let align = self.limits.min_uniform_buffer_offset_alignment as u64;
        let need = (params.len() as u64).max(16).next_multiple_of(16);
        let fits = batch
            .chunks
            .last()
            .is_some_and(|(_, data)| (data.len() as u64).next_multiple_of(align) + need <= CHUNK_BYTES);
        if !fits {
            let buffer = batch.free_chunks.pop().unwrap_or_else(|| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fiak.params"),
                    size: CHUNK_BYTES,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            });
            batch.chunks.push((buffer, Vec::with_capacity(CHUNK_BYTES as usize)));
        }
        let index = batch.chunks.len() - 1;
        let data = &mut batch.chunks[index].1;
        let offset = (data.len() as u64).next_multiple_of(align);
        data.resize(offset as usize, 0);
        data.extend_from_slice(params);
        data.resize((offset + need) as usize, 0);
        (index, offset)
    }

    /// Records one dispatch of `entry` in `shader`. Binding 0 of group 0 is the uniform
    /// `params`; `buffers` fill bindings 1, 2, ... in order, and must match the bindings the
    /// entry point uses.
    pub fn dispatch(
        &self,
        shader: &'static Shader,
        entry: &str,
        constants: &[(&str, f64)],
        params: &[u8],
        buffers: &[Binding],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let pipeline = self.pipeline(shader, entry, constants)?;
        let mut batch = self.batch.lock().unwrap();
        let (chunk, offset) = self.push_params(&mut batch, params);

        let mut entries = Vec::with_capacity(buffers.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &batch.chunks[chunk].0,
                offset,
                size: std::num::NonZeroU64::new((params.len() as u64).max(16).next_multiple_of(16)),
            }),
        });
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: std::num::NonZeroU64::new(b.size.max(4).next_multiple_of(4)),
                }),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.layout,
            entries: &entries,
        });

        let timestamps = self.profiler.as_ref().map(|p| {
            let index = batch.profiled.len() as u32 * 2;
            batch.profiled.push(pipeline.label.clone());
            wgpu::ComputePassTimestampWrites {
                query_set: &p.query_set,
                beginning_of_pass_write_index: Some(index),
                end_of_pass_write_index: Some(index + 1),
            }
        });
        let encoder = batch.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fiak.batch"),
            })
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&pipeline.label),
                timestamp_writes: timestamps,
            });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        batch.dispatches += 1;

        let profile_full = self
            .profiler
            .as_ref()
            .is_some_and(|p| batch.profiled.len() as u32 * 2 >= p.capacity);
        if batch.dispatches >= MAX_DISPATCHES || profile_full {
            self.submit(&mut batch);
        }
        Ok(())
    }

    /// Takes a buffer of at least `bytes` bytes from the pool. Its contents are undefined.
    pub fn alloc(&self, bytes: u64) -> GpuBuffer {
        self.pool.acquire(&self.device, bytes)
    }

    /// Writes `data` to `buffer` at `offset`, ordered after every dispatch recorded so far.
    pub fn upload(&self, buffer: &wgpu::Buffer, offset: u64, data: &[u8]) {
        let mut batch = self.batch.lock().unwrap();
        if batch.encoder.is_none() {
            // Nothing is pending, so the queue's own ordering suffices.
            self.queue.write_buffer(buffer, offset, data);
            return;
        }
        let size = data.len().next_multiple_of(4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fiak.upload"),
            size,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&staging, 0, data);
        self.encoder(&mut batch)
            .copy_buffer_to_buffer(&staging, 0, buffer, offset, Some(size));
    }

    /// Fills `size` bytes of `buffer` from `offset` with zeros, in recording order.
    pub fn clear(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) {
        let mut batch = self.batch.lock().unwrap();
        self.encoder(&mut batch).clear_buffer(buffer, offset, Some(size));
    }

    /// Copies bytes between buffers, in recording order.
    pub fn copy(
        &self,
        source: &wgpu::Buffer,
        source_offset: u64,
        target: &wgpu::Buffer,
        target_offset: u64,
        size: u64,
    ) {
        let mut batch = self.batch.lock().unwrap();
        self.encoder(&mut batch)
            .copy_buffer_to_buffer(source, source_offset, target, target_offset, Some(size));
    }

    /// Submits everything recorded so far.
    pub fn flush(&self) {
        let mut batch = self.batch.lock().unwrap();
        self.submit(&mut batch);
    }

    /// Submits everything recorded and blocks until the GPU has finished it.
    pub fn synchronize(&self) {
        self.flush();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("device poll failed");
    }

    /// Reads `size` bytes of `buffer` from `offset` after every recorded dispatch has run.
    pub fn read(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Vec<u8> {
        let padded = size.next_multiple_of(4).max(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fiak.readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut batch = self.batch.lock().unwrap();
            self.encoder(&mut batch)
                .copy_buffer_to_buffer(buffer, offset, &staging, 0, Some(padded));
            self.submit(&mut batch);
        }
        let (sender, receiver) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = sender.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("device poll failed");
        receiver
            .recv()
            .expect("map callback ran")
            .expect("mapping the readback buffer failed");
        let bytes = staging.get_mapped_range(..).expect("mapped range").to_vec();
        staging.unmap();
        bytes[..size as usize].to_vec()
    }

    fn submit(&self, batch: &mut Batch) {
        let Some(mut encoder) = batch.encoder.take() else {
            return;
        };
        for (buffer, data) in &batch.chunks {
            self.queue.write_buffer(buffer, 0, data);
        }
        let profiled = std::mem::take(&mut batch.profiled);
        if let Some(profiler) = &self.profiler {
            profiler.resolve(&mut encoder, profiled.len() as u32 * 2);
        }
        self.queue.submit([encoder.finish()]);
        for (buffer, _) in batch.chunks.drain(..) {
            batch.free_chunks.push(buffer);
        }
        batch.dispatches = 0;
        if let Some(profiler) = &self.profiler {
            profiler.collect(self, &profiled);
        }
    }
}
