//! Placeholder: the CPU reference of this kernel family is being written.
