//! Placeholder: data loading is being written.
