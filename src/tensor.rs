//! GPU tensors: a pooled buffer, a shape and a dtype. Tensors are contiguous and row-major;
//! clones and reshapes share the buffer.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{self, Binding, GpuBuffer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DType {
    F32,
    U32,
}

impl DType {
    pub fn size(self) -> usize {
        4
    }
}

#[derive(Clone)]
pub struct Tensor {
    buffer: Arc<GpuBuffer>,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.shape, self.dtype)
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// Allocates a tensor with undefined contents.
    pub fn empty(shape: &[usize], dtype: DType) -> Tensor {
        let bytes = (numel(shape) * dtype.size()) as u64;
        Tensor {
            buffer: Arc::new(gpu::get().alloc(bytes)),
            shape: shape.to_vec(),
            dtype,
        }
    }

    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        let t = Tensor::empty(shape, dtype);
        let bytes = t.byte_len().next_multiple_of(4);
        if bytes > 0 {
            gpu::get().clear(t.raw(), 0, bytes);
        }
        t
    }

    pub fn from_f32(shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Self::from_bytes(shape, DType::F32, bytemuck::cast_slice(data), data.len())
    }

    pub fn from_u32(shape: &[usize], data: &[u32]) -> Result<Tensor> {
        Self::from_bytes(shape, DType::U32, bytemuck::cast_slice(data), data.len())
    }

    /// Creates a tensor with every element equal to `value`.
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        let data = vec![value; numel(shape)];
        Self::from_f32(shape, &data).expect("length matches shape")
    }

    fn from_bytes(shape: &[usize], dtype: DType, bytes: &[u8], len: usize) -> Result<Tensor> {
        if numel(shape) != len {
            return Err(Error::shape(
                "Tensor::from_data",
                format!("shape {shape:?} holds {} elements but the data has {len}", numel(shape)),
            ));
        }
        let t = Tensor::empty(shape, dtype);
        if !bytes.is_empty() {
            upload_chunked(t.raw(), 0, bytes);
        }
        Ok(t)
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        assert_eq!(self.dtype, DType::F32, "to_f32_vec on a {:?} tensor", self.dtype);
        bytemuck::pod_collect_to_vec(&self.read_bytes())
    }

    pub fn to_u32_vec(&self) -> Vec<u32> {
        assert_eq!(self.dtype, DType::U32, "to_u32_vec on a {:?} tensor", self.dtype);
        bytemuck::pod_collect_to_vec(&self.read_bytes())
    }

    /// Reads a single-element tensor.
    pub fn item(&self) -> f32 {
        assert_eq!(self.numel(), 1, "item() on a tensor of shape {:?}", self.shape);
        self.to_f32_vec()[0]
    }

    fn read_bytes(&self) -> Vec<u8> {
        if self.byte_len() == 0 {
            return Vec::new();
        }
        gpu::get().read(self.raw(), 0, self.byte_len())
    }

    /// Overwrites the contents with `data`, in recording order.
    pub fn write_f32(&self, data: &[f32]) -> Result<()> {
        if data.len() != self.numel() || self.dtype != DType::F32 {
            return Err(Error::shape(
                "Tensor::write_f32",
                format!(
                    "tensor {:?} {:?} cannot take {} f32 values",
                    self.shape,
                    self.dtype,
                    data.len()
                ),
            ));
        }
        upload_chunked(self.raw(), 0, bytemuck::cast_slice(data));
        Ok(())
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Size of dimension `dim`; negative values count from the end.
    pub fn dim(&self, dim: isize) -> usize {
        let rank = self.shape.len() as isize;
        let d = if dim < 0 { rank + dim } else { dim };
        self.shape[d as usize]
    }

    pub fn byte_len(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }

    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.raw()
    }

    /// Returns whether both tensors share one buffer.
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer)
    }

    /// Binds the whole tensor as one binding. Tensors over the device's binding limit must be bound
    /// in windows with [`Tensor::bind_window`].
    pub fn bind(&self) -> Binding<'_> {
        let gpu = gpu::get();
        assert!(
            self.byte_len() <= gpu.max_binding_bytes(),
            "tensor {:?} of {} bytes exceeds the binding limit of {} bytes; bind it in windows",
            self.shape,
            self.byte_len(),
            gpu.max_binding_bytes()
        );
        Binding {
            buffer: self.raw(),
            offset: 0,
            size: self.byte_len(),
        }
    }

    /// Binds elements `start .. start + len`. The binding starts at the aligned offset at or
    /// below `start`; the returned element offset locates `start` inside the binding.
    pub fn bind_window(&self, start: usize, len: usize) -> (Binding<'_>, u32) {
        let gpu = gpu::get();
        let elem = self.dtype.size() as u64;
        let align = gpu.binding_alignment();
        let start_byte = start as u64 * elem;
        let offset = start_byte / align * align;
        let size = start_byte + len as u64 * elem - offset;
        assert!(
            start + len <= self.numel(),
            "window {start}+{len} outside {:?}",
            self.shape
        );
        assert!(
            size <= gpu.max_binding_bytes(),
            "window of {size} bytes exceeds the binding limit"
        );
        let binding = Binding {
            buffer: self.raw(),
            offset,
            size,
        };
        (binding, ((start_byte - offset) / elem) as u32)
    }

    /// Returns the same buffer under another shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {:?} ({} elements) to {shape:?}",
                    self.shape,
                    self.numel()
                ),
            ));
        }
        Ok(Tensor {
            buffer: self.buffer.clone(),
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }

    /// Copies the contents into a new buffer.
    pub fn deep_clone(&self) -> Tensor {
        let t = Tensor::empty(&self.shape, self.dtype);
        if self.byte_len() > 0 {
            gpu::get().copy(self.raw(), 0, t.raw(), 0, self.byte_len().next_multiple_of(4));
        }
        t
    }

    /// Copies `other`'s contents into this tensor; shapes must have equal element counts.
    pub fn copy_from(&self, other: &Tensor) -> Result<()> {
        if other.numel() != self.numel() || other.dtype != self.dtype {
            return Err(Error::shape(
                "copy_from",
                format!(
                    "{:?} {:?} from {:?} {:?}",
                    self.shape, self.dtype, other.shape, other.dtype
                ),
            ));
        }
        if self.byte_len() > 0 {
            gpu::get().copy(other.raw(), 0, self.raw(), 0, self.byte_len());
        }
        Ok(())
    }
}

/// Uploads in pieces of at most 64 MiB so staging buffers stay small.
fn upload_chunked(buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
    const CHUNK: usize = 64 << 20;
    let gpu = gpu::get();
    for (i, piece) in bytes.chunks(CHUNK).enumerate() {
        gpu.upload(buffer, offset + (i * CHUNK) as u64, piece);
    }
}
