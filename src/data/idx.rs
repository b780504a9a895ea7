//! IDX files, the format of MNIST and Fashion-MNIST: a big-endian header (two zero bytes, an
//! element type code, the number of dimensions, then each dimension as a u32) followed by the
//! elements in row-major order. Files may be raw or gzip-compressed; the first bytes decide.

use std::path::{Path, PathBuf};

use super::convert::RawImages;
use crate::{Error, Result};

/// Element type code of unsigned bytes, the only type that image and label files use.
const TYPE_U8: u8 = 0x08;

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a whole file, decompressing it when it starts with the gzip magic bytes 1f 8b.
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;

    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut decoded = Vec::with_capacity(bytes.len() * 4);
    flate2::read::MultiGzDecoder::new(bytes.as_slice())
        .read_to_end(&mut decoded)
        .map_err(|e| Error::file(path, format!("invalid or truncated gzip data: {e}")))?;
    Ok(decoded)
}

/// Reads an IDX file of unsigned bytes, raw or gzip-compressed.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = read_maybe_gzip(path)?;
    parse_idx(path, &bytes)
}

/// Parses the bytes of an uncompressed IDX file; `path` only names the file in errors.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(Error::file(
            path,
            format!(
                "truncated IDX file: {} bytes, shorter than the 4-byte magic number",
                bytes.len()
            ),
        ));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::file(
            path,
            format!("not an IDX file: magic number 0x{magic:08x} does not start with two zero bytes"),
        ));
    }
    if bytes[2] != TYPE_U8 {
        return Err(Error::file(
            path,
            format!(
                "unsupported IDX element type 0x{:02x} (magic 0x{magic:08x}); only unsigned bytes (0x08) are read",
                bytes[2]
            ),
        ));
    }
    let rank = bytes[3] as usize;
    if rank == 0 {
        return Err(Error::file(
            path,
            format!("invalid IDX magic 0x{magic:08x}: zero dimensions"),
        ));
    }

    let header_len = 4 + 4 * rank;
    if bytes.len() < header_len {
        return Err(Error::file(
            path,
            format!(
                "truncated IDX header: {rank} dimensions need {header_len} header bytes, the file has {}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();

    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::file(
                path,
                format!("invalid IDX dimensions {dims:?}: element count overflows"),
            )
        })?;
    let found = bytes.len() - header_len;
    if found < expected {
        return Err(Error::file(
            path,
            format!("truncated IDX data: dimensions {dims:?} need {expected} bytes after the header, found {found}"),
        ));
    }
    if found > expected {
        return Err(Error::file(
            path,
            format!(
                "corrupt IDX file: dimensions {dims:?} need {expected} bytes after the header, found {found} ({} extra)",
                found - expected
            ),
        ));
    }

    Ok(IdxArray {
        dims,
        data: bytes[header_len..].to_vec(),
    })
}

/// The image and label files of one split in an IDX directory.
#[derive(Clone, Debug)]
pub struct IdxFiles {
    pub images: PathBuf,
    pub labels: PathBuf,
}

/// Reads an image file of shape [n, h, w] and its label file of shape [n] as grey images.
pub(crate) fn read_idx_split(files: &IdxFiles) -> Result<RawImages> {
    let images = read_idx(&files.images)?;
    let labels = read_idx(&files.labels)?;

    let [len, height, width] = images.dims[..] else {
        return Err(Error::file(
            &files.images,
            format!(
                "expected an image file of shape [n, height, width], found dimensions {:?}",
                images.dims
            ),
        ));
    };
    if labels.dims.len() != 1 {
        return Err(Error::file(
            &files.labels,
            format!("expected a label file of shape [n], found dimensions {:?}", labels.dims),
        ));
    }
    if labels.dims[0] != len {
        return Err(Error::file(
            &files.labels,
            format!(
                "contains {} labels but {} contains {len} images",
                labels.dims[0],
                files.images.display()
            ),
        ));
    }

    Ok(RawImages {
        pixels: images.data,
        labels: labels.data.iter().map(|&l| l as u32).collect(),
        len,
        channels: 1,
        height,
        width,
    })
}
