//! Placeholder: checkpoints are being written.
