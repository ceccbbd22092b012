//! Reader for the IDX format of MNIST and Fashion-MNIST, plain or gzip-compressed.
//!
//! An IDX file is a 4-byte magic number (two zero bytes, an element-type code, the number of
//! dimensions), one big-endian `u32` per dimension, then the elements in row-major order. Only
//! unsigned bytes (type `0x08`) occur in these datasets, and only those are accepted. Every
//! inconsistency (bad magic, truncated header or data, trailing bytes, a broken gzip stream)
//! is an error that names the file.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use crate::error::{Error, Result};

/// Element type code of unsigned bytes.
const TYPE_UNSIGNED_BYTE: u8 = 0x08;
/// Refuse to decompress more than this (the largest real IDX file is ~47 MB).
const MAX_DECOMPRESSED_BYTES: u64 = 1 << 31;

/// The contents of one IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Read an IDX file (gzip-compressed or not) and check it has `expected_rank` dimensions.
pub fn read_idx(path: &Path, expected_rank: usize) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|source| Error::io(path, source))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        gunzip(&raw, path)?
    } else {
        raw
    };
    parse_idx(&bytes, expected_rank).map_err(|reason| Error::DataCorrupt {
        path: path.to_path_buf(),
        reason,
    })
}

fn gunzip(compressed: &[u8], path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(compressed.len() * 4);
    GzDecoder::new(compressed)
        .take(MAX_DECOMPRESSED_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|err| Error::DataCorrupt {
            path: path.to_path_buf(),
            reason: format!(
                "gzip stream is truncated or corrupt ({err}); re-download or reinstall the file"
            ),
        })?;
    Ok(bytes)
}

/// Parse IDX bytes; the error is a reason without the path.
pub fn parse_idx(bytes: &[u8], expected_rank: usize) -> Result<IdxArray, String> {
    let Some(magic) = bytes.get(..4) else {
        return Err(format!(
            "not an IDX file: {} bytes is shorter than the 4-byte magic number",
            bytes.len()
        ));
    };
    if magic[0] != 0 || magic[1] != 0 {
        return Err(format!(
            "not an IDX file: magic number {:02x}{:02x}{:02x}{:02x} must start with two zero bytes",
            magic[0], magic[1], magic[2], magic[3]
        ));
    }
    if magic[2] != TYPE_UNSIGNED_BYTE {
        return Err(format!(
            "IDX element type 0x{:02x} is not supported; expected 0x08 (unsigned byte)",
            magic[2]
        ));
    }
    let rank = usize::from(magic[3]);
    if rank != expected_rank {
        return Err(format!(
            "IDX file has {rank} dimensions; expected {expected_rank} ({})",
            if expected_rank == 1 {
                "a label file"
            } else {
                "an image file"
            }
        ));
    }
    let header_len = 4 + 4 * rank;
    let Some(header) = bytes.get(4..header_len) else {
        return Err(format!(
            "truncated IDX header: {rank} dimensions need {header_len} header bytes, file has {}",
            bytes.len()
        ));
    };
    let dims: Vec<usize> = header
        .chunks_exact(4)
        .map(|be| u32::from_be_bytes([be[0], be[1], be[2], be[3]]) as usize)
        .collect();
    let expected_len = dims
        .iter()
        .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
        .ok_or_else(|| format!("IDX dimensions {dims:?} overflow"))?;
    let data = &bytes[header_len..];
    if data.len() < expected_len {
        return Err(format!(
            "truncated: header promises {} = {expected_len} bytes of data, file has {}",
            format_dims(&dims),
            data.len()
        ));
    }
    if data.len() > expected_len {
        return Err(format!(
            "{} unexpected bytes after the {} = {expected_len} bytes the header describes",
            data.len() - expected_len,
            format_dims(&dims)
        ));
    }
    Ok(IdxArray {
        dims,
        data: data.to_vec(),
    })
}

fn format_dims(dims: &[usize]) -> String {
    dims.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("×")
}

/// Encode an array as IDX bytes (uncompressed). Used by tests and tools that write fixtures.
pub fn encode_idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, TYPE_UNSIGNED_BYTE, dims.len() as u8];
    for dim in dims {
        bytes.extend_from_slice(&dim.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_an_image_array() {
        let data: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        let parsed = parse_idx(&encode_idx(&[2, 3, 4], &data), 3).unwrap();
        assert_eq!(parsed.dims, vec![2, 3, 4]);
        assert_eq!(parsed.data, data);
    }

    #[test]
    fn rejects_bad_magic() {
        let mut bytes = encode_idx(&[3], &[1, 2, 3]);
        bytes[0] = 0x50;
        assert!(parse_idx(&bytes, 1).unwrap_err().contains("magic number"));
    }

    #[test]
    fn rejects_unsupported_element_type() {
        let mut bytes = encode_idx(&[3], &[1, 2, 3]);
        bytes[2] = 0x0d;
        assert!(parse_idx(&bytes, 1).unwrap_err().contains("0x0d"));
    }

    #[test]
    fn rejects_wrong_rank() {
        let bytes = encode_idx(&[3], &[1, 2, 3]);
        let reason = parse_idx(&bytes, 3).unwrap_err();
        assert!(reason.contains("1 dimensions; expected 3"), "{reason}");
    }

    #[test]
    fn rejects_truncated_header_and_data() {
        let bytes = encode_idx(&[2, 2, 2], &[0; 8]);
        assert!(parse_idx(&bytes[..9], 3)
            .unwrap_err()
            .contains("truncated IDX header"));
        let reason = parse_idx(&bytes[..bytes.len() - 1], 3).unwrap_err();
        assert!(reason.contains("truncated"), "{reason}");
        assert!(reason.contains("2×2×2 = 8 bytes"), "{reason}");
        assert!(parse_idx(&bytes[..2], 3)
            .unwrap_err()
            .contains("shorter than"));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = encode_idx(&[2], &[0, 1]);
        bytes.push(9);
        assert!(parse_idx(&bytes, 1)
            .unwrap_err()
            .contains("1 unexpected bytes"));
    }
}
