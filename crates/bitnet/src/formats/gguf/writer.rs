//! The GGUF writer (version 3): header first, then tensor data streamed one tensor at a time in
//! the order the header lists them, so a converter never holds more than one tensor in memory.
//!
//! Offsets are laid out the way ggml and gguf-py lay them out (each tensor padded with zeros to
//! the alignment), so a file read by [`super::GgufFile`] and written back is byte-identical.

use std::io::Write;

use super::metadata::{Metadata, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::formats::types::{ShapeError, TensorType};

/// A tensor to be written: its name, type and dims (ggml order).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub ty: TensorType,
    /// Its dims, ggml order (`dims[0]` is the row length).
    pub dims: Vec<u64>,
}

/// Why a GGUF could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The output failed.
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    /// A tensor's shape does not fit its type.
    #[error("tensor `{tensor}`: {source}")]
    Shape {
        /// The tensor.
        tensor: String,
        /// Why.
        source: ShapeError,
    },
    /// `general.alignment` is not a power of two up to 1 MiB (the value as given).
    #[error("general.alignment must be a power of two up to 1 MiB, got {0}")]
    BadAlignment(String),
    /// Tensor data given in another order than the header's.
    #[error("tensor `{tensor}` given out of order: expected `{expected}` next")]
    OutOfOrder {
        /// The tensor given.
        tensor: String,
        /// The tensor the header lists next.
        expected: String,
    },
    /// Tensor data of the wrong size for its type and shape.
    #[error("tensor `{tensor}` has {actual} bytes of data, its type and shape need {expected}")]
    WrongSize {
        /// The tensor.
        tensor: String,
        /// Bytes its type and shape need.
        expected: u64,
        /// Bytes given.
        actual: u64,
    },
    /// `finish` before every tensor was written.
    #[error("{written} of {total} tensors were written before finish()")]
    Unfinished {
        /// Tensors written.
        written: usize,
        /// Tensors the header lists.
        total: usize,
    },
    /// A metadata array whose elements are not all of one type.
    #[error("array `{key}` holds a {found} among {expected} elements")]
    MixedArray {
        /// The key.
        key: String,
        /// The first element's type.
        expected: ValueType,
        /// The odd element's type.
        found: ValueType,
    },
}

/// The largest `general.alignment` the writer accepts (1 MiB).
pub(crate) const MAX_WRITE_ALIGNMENT: u64 = 1 << 20;

/// Streams a GGUF file: `new` writes the header, `write_tensor` each tensor's data in order,
/// `finish` checks that all were written.
pub struct GgufWriter<W: Write> {
    out: W,
    alignment: u64,
    tensors: Vec<(TensorSpec, u64)>,
    next: usize,
}

fn pad_len(pos: u64, alignment: u64) -> u64 {
    pos.div_ceil(alignment) * alignment - pos
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header: `metadata` and the tensor infos, offsets laid out for `tensors` in that
    /// order (the order their data must then be written in).
    pub fn new(
        mut out: W,
        metadata: &Metadata,
        tensors: Vec<TensorSpec>,
    ) -> Result<GgufWriter<W>, WriteError> {
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                // The padding is written out, so an absurd alignment is refused rather than
                // allocated.
                Some(a) if a.is_power_of_two() && a <= MAX_WRITE_ALIGNMENT => a,
                _ => return Err(WriteError::BadAlignment(v.summary(4))),
            },
        };
        let mut sized = Vec::with_capacity(tensors.len());
        for t in tensors {
            let size =
                t.ty.data_size(&t.dims)
                    .map_err(|source| WriteError::Shape {
                        tensor: t.name.clone(),
                        source,
                    })?;
            sized.push((t, size));
        }

        let mut header = Vec::new();
        header.extend_from_slice(GGUF_MAGIC);
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(sized.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata.iter() {
            put_string(&mut header, key);
            header.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut header, key, value)?;
        }
        let mut offset = 0u64;
        for (t, size) in &sized {
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset += size + pad_len(*size, alignment);
        }
        // The data section starts aligned; a file without tensors ends right after its
        // header (as gguf-py writes vocab-only files).
        if !sized.is_empty() {
            let pad = pad_len(header.len() as u64, alignment);
            header.resize(header.len() + pad as usize, 0);
        }
        out.write_all(&header)?;
        Ok(GgufWriter {
            out,
            alignment,
            tensors: sized,
            next: 0,
        })
    }

    /// Writes the next tensor's data (it must be the next one in header order).
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), WriteError> {
        self.write_tensor_chunks(name, [data])
    }

    /// The size of the next tensor, if it is `name`.
    fn expect_next(&self, name: &str) -> Result<u64, WriteError> {
        match self.tensors.get(self.next) {
            None => Err(WriteError::OutOfOrder {
                tensor: name.to_string(),
                expected: "(none: all tensors were written)".to_string(),
            }),
            Some((spec, _)) if spec.name != name => Err(WriteError::OutOfOrder {
                tensor: name.to_string(),
                expected: spec.name.clone(),
            }),
            Some((_, size)) => Ok(*size),
        }
    }

    fn end_tensor(&mut self, name: &str, size: u64, written: u64) -> Result<(), WriteError> {
        if written != size {
            return Err(WriteError::WrongSize {
                tensor: name.to_string(),
                expected: size,
                actual: written,
            });
        }
        let pad = pad_len(size, self.alignment) as usize;
        self.out.write_all(&vec![0u8; pad])?;
        self.next += 1;
        Ok(())
    }

    /// Writes the next tensor's data from chunks (for tensors too big to hold at once); the
    /// chunks must add up to the tensor's size.
    pub(crate) fn write_tensor_chunks<I>(&mut self, name: &str, chunks: I) -> Result<(), WriteError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let size = self.expect_next(name)?;
        let mut written = 0u64;
        for chunk in chunks {
            let chunk = chunk.as_ref();
            written += chunk.len() as u64;
            if written > size {
                break;
            }
            self.out.write_all(chunk)?;
        }
        self.end_tensor(name, size, written)
    }

    /// Checks every tensor was written and flushes.
    pub fn finish(mut self) -> Result<W, WriteError> {
        if self.next != self.tensors.len() {
            return Err(WriteError::Unfinished {
                written: self.next,
                total: self.tensors.len(),
            });
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &Value) -> Result<(), WriteError> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::Array(ty, items) => {
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                if item.value_type() != *ty {
                    return Err(WriteError::MixedArray {
                        key: key.to_string(),
                        expected: *ty,
                        found: item.value_type(),
                    });
                }
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}
