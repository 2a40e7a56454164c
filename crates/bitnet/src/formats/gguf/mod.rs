//! GGUF: the single-file model format of llama.cpp and bitnet.cpp.
//!
//! Layout: magic `GGUF`, version, tensor count, metadata count, the metadata key/value pairs,
//! the tensor infos (name, dims, type, offset), then the tensor data section starting at the
//! next multiple of `general.alignment`. All integers little-endian.

mod metadata;
mod reader;
mod writer;

pub use metadata::{Metadata, MetadataError, Value, ValueType};
pub use reader::{GgufFile, TensorInfo, TensorView};
pub use writer::{GgufWriter, TensorSpec, WriteError};

use crate::formats::types::ShapeError;

pub(crate) const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub(crate) const MAX_DIMS: usize = 4;
/// Nested arrays deeper than this are refused (bounds the parser's recursion).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// A GGUF error, naming the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {kind}")]
pub struct GgufError {
    pub file: String,
    pub kind: GgufErrorKind,
}

impl GgufError {
    pub fn new(file: &str, kind: GgufErrorKind) -> GgufError {
        GgufError {
            file: file.to_string(),
            kind,
        }
    }
}

/// What exactly was wrong, with the key or tensor and the byte offset where it was found.
#[derive(Debug, thiserror::Error)]
pub enum GgufErrorKind {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("is a directory, not a GGUF file")]
    IsDirectory,
    #[error("not a GGUF file: it starts with {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: Vec<u8> },
    #[error("GGUF version {version} is not supported (versions 2 and 3 are)")]
    UnsupportedVersion { version: u32 },
    #[error("file ends early at byte {offset}: {what} needs {needed} bytes, {available} left")]
    Truncated {
        offset: u64,
        what: String,
        needed: u64,
        available: u64,
    },
    #[error(
        "{what} at byte {offset}: a count of {count} cannot fit in the {available} bytes left"
    )]
    CountTooLarge {
        offset: u64,
        what: String,
        count: u64,
        available: u64,
    },
    #[error("{what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: u64, what: String },
    #[error("metadata key `{key}`: unknown value type {id} at byte {offset}")]
    UnknownValueType { key: String, id: u32, offset: u64 },
    #[error("metadata key `{key}`: bool at byte {offset} is {value}, not 0 or 1")]
    InvalidBool { key: String, offset: u64, value: u8 },
    #[error("metadata key `{key}` nests arrays deeper than {max} levels")]
    ArrayTooDeep { key: String, max: usize },
    #[error("metadata key `{key}` appears twice (again at byte {offset})")]
    DuplicateKey { key: String, offset: u64 },
    #[error("general.alignment = {value} is not a power of two")]
    BadAlignment { value: String },
    #[error(
        "tensor `{tensor}` (info at byte {offset}) has {n_dims} dimensions, at most 4 are allowed"
    )]
    TooManyDims {
        tensor: String,
        offset: u64,
        n_dims: u32,
    },
    #[error("tensor `{tensor}` (info at byte {offset}) has unknown type id {id}")]
    UnknownTensorType {
        tensor: String,
        offset: u64,
        id: u32,
    },
    #[error("tensor `{tensor}`: {source}")]
    BadShape { tensor: String, source: ShapeError },
    #[error("tensor `{tensor}` appears twice (again at byte {offset})")]
    DuplicateTensor { tensor: String, offset: u64 },
    #[error(
        "tensor `{tensor}`: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor `{tensor}`: data at byte {start} ({size} bytes) runs past the end of the file ({file_len} bytes)")]
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        size: u64,
        file_len: u64,
    },
    #[error("tensor `{name}` is missing")]
    MissingTensor { name: String },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}
