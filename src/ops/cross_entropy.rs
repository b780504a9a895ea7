//! Placeholder module; its kernels are being written.
