//! The one error type of fiak. Messages name the op, the shapes, the file or the flag, and
//! tell what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter matched; the message carries the install hint.
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),

    /// The device request or a device-level operation failed.
    #[error("GPU device error: {0}")]
    Device(String),

    /// A WGSL shader failed to compile or a pipeline failed to build.
    #[error("shader {file} (entry point `{entry}`) failed to build: {message}")]
    Shader {
        file: &'static str,
        entry: String,
        message: String,
    },

    /// Operands whose shapes do not fit the op.
    #[error("{op}: {message}")]
    Shape { op: &'static str, message: String },

    /// A command-line flag or API argument with an invalid value.
    #[error("invalid {name} `{value}`: {message}")]
    InvalidArgument {
        name: String,
        value: String,
        message: String,
    },

    /// A file that could not be read, written or parsed.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, message: impl Into<String>) -> Self {
        Error::Shape {
            op,
            message: message.into(),
        }
    }

    pub fn invalid(name: impl Into<String>, value: impl ToString, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            value: value.to_string(),
            message: message.into(),
        }
    }

    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }
}
