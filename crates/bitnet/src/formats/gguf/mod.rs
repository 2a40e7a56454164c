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

/// A GGUF error, naming the file it came from. Its [`std::error::Error::source`] is the
/// [`GgufErrorKind`], whose own source is the [`std::io::Error`] of a failed read.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {kind}")]
pub struct GgufError {
    /// The file (or the label of an in-memory GGUF).
    pub file: String,
    /// What was wrong.
    #[source]
    pub kind: GgufErrorKind,
}

impl GgufError {
    /// An error of `kind` in `file`.
    pub fn new(file: &str, kind: GgufErrorKind) -> GgufError {
        GgufError {
            file: file.to_string(),
            kind,
        }
    }
}

/// Bytes as a person reads them: as text where they are printable ASCII (`"# Bi"`), with
/// their hex values (`23 20 42 69`).
fn show_bytes(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = bytes.iter().map(|&b| char::from(b)).collect();
    if !bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{text:?} (hex {})", hex.join(" "))
    } else {
        format!("the bytes {}", hex.join(" "))
    }
}

/// What exactly was wrong, with the key or tensor and the byte offset where it was found.
/// Fields named `offset` are byte offsets into the file, `what` names the item being read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufErrorKind {
    /// Reading the file failed.
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    /// The path is a directory.
    #[error("is a directory, not a GGUF file")]
    IsDirectory,
    /// The file does not start with `GGUF`.
    #[error(
        "not a GGUF file: it starts with {}, expected \"GGUF\"",
        show_bytes(found)
    )]
    BadMagic {
        /// The first bytes of the file.
        found: Vec<u8>,
    },
    /// A GGUF version other than 2 or 3.
    #[error("GGUF version {version} is not supported (versions 2 and 3 are)")]
    UnsupportedVersion {
        /// The version the header gives.
        version: u32,
    },
    /// The file ends before an item it announces.
    #[error("file ends early at byte {offset}: {what} needs {needed} bytes, {available} left")]
    Truncated {
        /// Where the item starts.
        offset: u64,
        /// The item.
        what: String,
        /// Bytes the item needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A count (of keys, tensors, array items, string bytes) larger than the rest of the file
    /// could hold.
    #[error(
        "{what} at byte {offset}: a count of {count} cannot fit in the {available} bytes left"
    )]
    CountTooLarge {
        /// Where the count is.
        offset: u64,
        /// What is counted.
        what: String,
        /// The count.
        count: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A string that is not UTF-8.
    #[error("{what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the string starts.
        offset: u64,
        /// The string (a key, a value, a tensor name).
        what: String,
    },
    /// A metadata value type id GGUF does not define.
    #[error("metadata key `{key}`: unknown value type {id} at byte {offset}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The type id found.
        id: u32,
        /// Where the type id is.
        offset: u64,
    },
    /// A bool stored as something other than 0 or 1.
    #[error("metadata key `{key}`: bool at byte {offset} is {value}, not 0 or 1")]
    InvalidBool {
        /// The key.
        key: String,
        /// Where the value is.
        offset: u64,
        /// The byte found.
        value: u8,
    },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`].
    #[error("metadata key `{key}` nests arrays deeper than {max} levels")]
    ArrayTooDeep {
        /// The key.
        key: String,
        /// The deepest nesting allowed.
        max: usize,
    },
    /// A metadata key that appears twice.
    #[error("metadata key `{key}` appears twice (again at byte {offset})")]
    DuplicateKey {
        /// The key.
        key: String,
        /// Where it appears the second time.
        offset: u64,
    },
    /// `general.alignment` that is not a power of two.
    #[error("general.alignment = {value} is not a power of two")]
    BadAlignment {
        /// The value, as written.
        value: String,
    },
    /// A tensor with more than four dimensions.
    #[error(
        "tensor `{tensor}` (info at byte {offset}) has {n_dims} dimensions, at most 4 are allowed"
    )]
    TooManyDims {
        /// The tensor.
        tensor: String,
        /// Where its info is.
        offset: u64,
        /// Its number of dimensions.
        n_dims: u32,
    },
    /// A tensor type id ggml does not define.
    #[error("tensor `{tensor}` (info at byte {offset}) has unknown type id {id}")]
    UnknownTensorType {
        /// The tensor.
        tensor: String,
        /// Where its info is.
        offset: u64,
        /// The type id found.
        id: u32,
    },
    /// A shape the tensor's type cannot have (rows not whole blocks, a size that overflows).
    #[error("tensor `{tensor}`: {source}")]
    BadShape {
        /// The tensor.
        tensor: String,
        /// Why the shape is wrong.
        source: ShapeError,
    },
    /// A tensor name that appears twice.
    #[error("tensor `{tensor}` appears twice (again at byte {offset})")]
    DuplicateTensor {
        /// The tensor.
        tensor: String,
        /// Where its second info is.
        offset: u64,
    },
    /// Tensor data not at a multiple of the file's alignment.
    #[error(
        "tensor `{tensor}`: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        /// The tensor.
        tensor: String,
        /// Its data offset (from the start of the data section).
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// Tensor data past the end of the file.
    #[error("tensor `{tensor}`: data at byte {start} ({size} bytes) runs past the end of the file ({file_len} bytes)")]
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Where its data starts in the file.
        start: u64,
        /// Its data size.
        size: u64,
        /// The file's size.
        file_len: u64,
    },
    /// A tensor the caller asked for is not in the file.
    #[error("tensor `{name}` is missing")]
    MissingTensor {
        /// The tensor's name.
        name: String,
    },
    /// A metadata key is missing or has the wrong type.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}
