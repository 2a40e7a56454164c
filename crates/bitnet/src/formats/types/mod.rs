//! Tensor element types as GGUF stores them (`ggml_type` ids), their byte sizes, and plain
//! scalar decoders.
//!
//! Each block format lives in its own file as a fixed-size `#[repr(C)]` type with a
//! compile-time size check and a scalar decoder (and encoder, for the writer and converter).
//! The SIMD kernels in `crate::kernels` read the same bytes and are tested against these.

pub mod float;
pub mod i2_s;
pub mod q6_k;
pub mod q8_0;
pub mod tq1_0;
pub mod tq2_0;

use std::fmt;

/// A ggml tensor type id as found in GGUF tensor infos.
///
/// Only the types BitNet files use are decodable; the other well-known ggml types are listed so
/// that `inspect` can size and show any GGUF file. Id 36 is bitnet.cpp's I2_S (upstream ggml
/// gave that id to another type later; BitNet files mean I2_S by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorType {
    /// 32-bit float (id 0).
    F32,
    /// 16-bit IEEE float (id 1).
    F16,
    /// ggml Q4_0 (id 2; listed, not decoded).
    Q4_0,
    /// ggml Q4_1 (id 3; listed, not decoded).
    Q4_1,
    /// ggml Q5_0 (id 6; listed, not decoded).
    Q5_0,
    /// ggml Q5_1 (id 7; listed, not decoded).
    Q5_1,
    /// 8-bit blocks of 32 with an f16 scale (id 8).
    Q8_0,
    /// ggml Q8_1 (id 9; listed, not decoded).
    Q8_1,
    /// ggml Q2_K (id 10; listed, not decoded).
    Q2K,
    /// ggml Q3_K (id 11; listed, not decoded).
    Q3K,
    /// ggml Q4_K (id 12; listed, not decoded).
    Q4K,
    /// ggml Q5_K (id 13; listed, not decoded).
    Q5K,
    /// 6-bit super-blocks of 256 (id 14).
    Q6K,
    /// ggml Q8_K (id 15; listed, not decoded).
    Q8K,
    /// 8-bit integer (id 24; listed, not decoded).
    I8,
    /// 16-bit integer (id 25; listed, not decoded).
    I16,
    /// 32-bit integer (id 26; listed, not decoded).
    I32,
    /// 64-bit integer (id 27; listed, not decoded).
    I64,
    /// 64-bit float (id 28; listed, not decoded).
    F64,
    /// bfloat16 (id 30).
    BF16,
    /// llama.cpp's ternary TQ1_0: base-3 packed, 1.69 bits per weight (id 34).
    TQ1_0,
    /// llama.cpp's ternary TQ2_0: 2 bits per weight in blocks of 256 (id 35).
    TQ2_0,
    /// bitnet.cpp's ternary I2_S: 2 bits per weight, one f32 scale per tensor (id 36).
    I2S,
}

/// How a type lays out its elements: `block_len` consecutive elements of a row take
/// `block_bytes` bytes. I2_S is special: 4 elements per byte plus one 32-byte trailer per tensor
/// (see [`TensorType::data_size`]).
#[derive(Clone, Copy, Debug)]
struct Layout {
    id: u32,
    name: &'static str,
    block_len: u64,
    block_bytes: u64,
}

const fn layout(id: u32, name: &'static str, block_len: u64, block_bytes: u64) -> Layout {
    Layout {
        id,
        name,
        block_len,
        block_bytes,
    }
}

/// Why a tensor's shape does not fit its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The number of elements does not fit 64 bits.
    #[error("element count overflows 64 bits")]
    Overflow,
    /// A row is not a whole number of blocks.
    #[error("row length {ne0} is not a multiple of the {ty} block length {block_len}")]
    RaggedRow {
        /// The tensor's type.
        ty: TensorType,
        /// The row length (first dimension).
        ne0: u64,
        /// The type's block length.
        block_len: u64,
    },
}

impl TensorType {
    pub(crate) const ALL: [TensorType; 23] = [
        TensorType::F32,
        TensorType::F16,
        TensorType::Q4_0,
        TensorType::Q4_1,
        TensorType::Q5_0,
        TensorType::Q5_1,
        TensorType::Q8_0,
        TensorType::Q8_1,
        TensorType::Q2K,
        TensorType::Q3K,
        TensorType::Q4K,
        TensorType::Q5K,
        TensorType::Q6K,
        TensorType::Q8K,
        TensorType::I8,
        TensorType::I16,
        TensorType::I32,
        TensorType::I64,
        TensorType::F64,
        TensorType::BF16,
        TensorType::TQ1_0,
        TensorType::TQ2_0,
        TensorType::I2S,
    ];

    const fn layout(self) -> Layout {
        match self {
            TensorType::F32 => layout(0, "F32", 1, 4),
            TensorType::F16 => layout(1, "F16", 1, 2),
            TensorType::Q4_0 => layout(2, "Q4_0", 32, 18),
            TensorType::Q4_1 => layout(3, "Q4_1", 32, 20),
            TensorType::Q5_0 => layout(6, "Q5_0", 32, 22),
            TensorType::Q5_1 => layout(7, "Q5_1", 32, 24),
            TensorType::Q8_0 => layout(8, "Q8_0", 32, 34),
            TensorType::Q8_1 => layout(9, "Q8_1", 32, 36),
            TensorType::Q2K => layout(10, "Q2_K", 256, 84),
            TensorType::Q3K => layout(11, "Q3_K", 256, 110),
            TensorType::Q4K => layout(12, "Q4_K", 256, 144),
            TensorType::Q5K => layout(13, "Q5_K", 256, 176),
            TensorType::Q6K => layout(14, "Q6_K", 256, 210),
            TensorType::Q8K => layout(15, "Q8_K", 256, 292),
            TensorType::I8 => layout(24, "I8", 1, 1),
            TensorType::I16 => layout(25, "I16", 1, 2),
            TensorType::I32 => layout(26, "I32", 1, 4),
            TensorType::I64 => layout(27, "I64", 1, 8),
            TensorType::F64 => layout(28, "F64", 1, 8),
            TensorType::BF16 => layout(30, "BF16", 1, 2),
            TensorType::TQ1_0 => layout(34, "TQ1_0", tq1_0::BLOCK_LEN as u64, 54),
            TensorType::TQ2_0 => layout(35, "TQ2_0", tq2_0::BLOCK_LEN as u64, 66),
            TensorType::I2S => layout(36, "I2_S", i2_s::BLOCK_LEN as u64, 32),
        }
    }

    /// The type for a ggml id, or `None` for an id this reader does not know.
    pub(crate) fn from_id(id: u32) -> Option<TensorType> {
        TensorType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The type for its GGUF/llama.cpp name (`"I2_S"`, `"q8_0"`, ...), case-insensitive.
    pub fn from_name(name: &str) -> Option<TensorType> {
        TensorType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// The id GGUF files store.
    pub const fn id(self) -> u32 {
        self.layout().id
    }

    /// The name llama.cpp gives the type (`f16`, `q8_0`, `i2_s`, ...).
    pub const fn name(self) -> &'static str {
        self.layout().name
    }

    /// Elements per block; a row's length (ne0) must be a multiple of it.
    pub const fn block_len(self) -> u64 {
        self.layout().block_len
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> u64 {
        self.layout().block_bytes
    }

    /// Whether [`dequantize`] can decode this type.
    pub const fn is_decodable(self) -> bool {
        matches!(
            self,
            TensorType::F32
                | TensorType::F16
                | TensorType::BF16
                | TensorType::Q8_0
                | TensorType::Q6K
                | TensorType::TQ1_0
                | TensorType::TQ2_0
                | TensorType::I2S
        )
    }

    /// Whether the type stores ternary weights {-1, 0, +1} with scales.
    pub const fn is_ternary(self) -> bool {
        matches!(
            self,
            TensorType::TQ1_0 | TensorType::TQ2_0 | TensorType::I2S
        )
    }

    /// Element count of a tensor with these dims, checked for overflow.
    pub fn element_count(dims: &[u64]) -> Result<u64, ShapeError> {
        dims.iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or(ShapeError::Overflow)
    }

    /// Bytes of one row of `ne0` elements (I2_S: without the per-tensor trailer).
    pub(crate) fn row_bytes(self, ne0: u64) -> Result<u64, ShapeError> {
        let block_len = self.block_len();
        if !ne0.is_multiple_of(block_len) {
            return Err(ShapeError::RaggedRow {
                ty: self,
                ne0,
                block_len,
            });
        }
        (ne0 / block_len)
            .checked_mul(self.block_bytes())
            .ok_or(ShapeError::Overflow)
    }

    /// Bytes the tensor data takes in a GGUF file (I2_S: packed rows + 32-byte scale trailer,
    /// as bitnet.cpp's `ggml_nbytes` counts it).
    pub fn data_size(self, dims: &[u64]) -> Result<u64, ShapeError> {
        let ne0 = dims.first().copied().unwrap_or(1);
        let rows = TensorType::element_count(dims.get(1..).unwrap_or(&[]))?;
        TensorType::element_count(dims)?;
        let body = self
            .row_bytes(ne0)?
            .checked_mul(rows)
            .ok_or(ShapeError::Overflow)?;
        match self {
            TensorType::I2S => body
                .checked_add(i2_s::TRAILER_BYTES as u64)
                .ok_or(ShapeError::Overflow),
            _ => Ok(body),
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why decoding tensor bytes failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A type this library only lists (see [`TensorType`]).
    #[error("{ty} cannot be decoded by this build")]
    Unsupported {
        /// The type.
        ty: TensorType,
    },
    /// The data is not the size the shape and type call for.
    #[error("{ty} data for {elements} elements needs {expected} bytes, got {actual}")]
    WrongSize {
        /// The type.
        ty: TensorType,
        /// Elements the shape holds.
        elements: u64,
        /// Bytes they need.
        expected: u64,
        /// Bytes given.
        actual: u64,
    },
    /// A shape the type cannot have.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// I2_S data holding the code `0b11`, which bitnet.cpp never writes.
    #[error("I2_S byte {offset} holds the unused 2-bit code 3")]
    InvalidI2sCode {
        /// The byte's offset in the data.
        offset: u64,
    },
}

fn check_size(ty: TensorType, dims: &[u64], data: &[u8]) -> Result<u64, DecodeError> {
    let expected = ty.data_size(dims)?;
    if data.len() as u64 != expected {
        return Err(DecodeError::WrongSize {
            ty,
            elements: TensorType::element_count(dims)?,
            expected,
            actual: data.len() as u64,
        });
    }
    Ok(TensorType::element_count(dims)?)
}

/// Decodes a whole tensor to f32 with the plain scalar decoders (the reference every fast
/// path is checked against).
pub fn dequantize(ty: TensorType, dims: &[u64], data: &[u8]) -> Result<Vec<f32>, DecodeError> {
    let n = check_size(ty, dims, data)? as usize;
    let mut out = vec![0f32; n];
    match ty {
        TensorType::F32 => float::f32_to_f32(data, &mut out),
        TensorType::F16 => float::f16_to_f32(data, &mut out),
        TensorType::BF16 => float::bf16_to_f32(data, &mut out),
        TensorType::Q8_0 => q8_0::dequantize(data, &mut out),
        TensorType::Q6K => q6_k::dequantize(data, &mut out),
        TensorType::TQ1_0 => dequantize_blocks(tq1_0::blocks(data), &mut out),
        TensorType::TQ2_0 => dequantize_blocks(tq2_0::blocks(data), &mut out),
        TensorType::I2S => {
            let t = i2_s::decode(data, n)?;
            t.to_f32_into(&mut out);
        }
        _ => return Err(DecodeError::Unsupported { ty }),
    }
    Ok(out)
}

/// Ternary weights {-1, 0, +1} with one scale per `block_len` consecutive values: the weight
/// is `values[i] * scales[i / block_len]`. I2_S has one scale for the whole tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Ternary {
    /// The ternary values, one per weight.
    pub values: Vec<i8>,
    /// Weights per scale.
    pub block_len: usize,
    /// One scale per block of `block_len` weights.
    pub scales: Vec<f32>,
}

impl Ternary {
    /// Writes the weights as f32 (`values[i] * scales[i / block_len]`) into `out`.
    pub fn to_f32_into(&self, out: &mut [f32]) {
        for ((o, &t), i) in out.iter_mut().zip(&self.values).zip(0..) {
            *o = t as f32 * self.scales[i / self.block_len];
        }
    }
}

/// A 256-value ternary block with one scale (TQ1_0, TQ2_0): what the decoders and the scalar
/// dot product need from either layout.
pub(crate) trait TernaryBlock {
    /// The 256 values in {-1, 0, +1}, in element order.
    fn values(&self) -> [i8; 256];
    /// The block's scale.
    fn scale(&self) -> f32;
}

/// Values and per-block scales of a run of ternary blocks.
pub(crate) fn ternary_from_blocks<B: TernaryBlock>(blocks: &[B]) -> Ternary {
    let mut values = Vec::with_capacity(blocks.len() * 256);
    let mut scales = Vec::with_capacity(blocks.len());
    for b in blocks {
        values.extend_from_slice(&b.values());
        scales.push(b.scale());
    }
    Ternary {
        values,
        block_len: 256,
        scales,
    }
}

/// `value · scale` of every element of a run of ternary blocks.
pub(crate) fn dequantize_blocks<B: TernaryBlock>(blocks: &[B], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(256)) {
        let d = b.scale();
        for (o, t) in o.iter_mut().zip(b.values()) {
            *o = t as f32 * d;
        }
    }
}

/// Decodes a ternary tensor to its values and scales.
pub fn decode_ternary(ty: TensorType, dims: &[u64], data: &[u8]) -> Result<Ternary, DecodeError> {
    let n = check_size(ty, dims, data)? as usize;
    match ty {
        TensorType::I2S => i2_s::decode(data, n),
        TensorType::TQ2_0 => Ok(ternary_from_blocks(tq2_0::blocks(data))),
        TensorType::TQ1_0 => Ok(ternary_from_blocks(tq1_0::blocks(data))),
        _ => Err(DecodeError::Unsupported { ty }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for t in TensorType::ALL {
            assert_eq!(TensorType::from_id(t.id()), Some(t));
            assert_eq!(TensorType::from_name(t.name()), Some(t));
        }
        assert_eq!(TensorType::from_id(36), Some(TensorType::I2S));
        assert_eq!(TensorType::from_id(4), None);
    }

    #[test]
    fn sizes_match_ggml() {
        assert_eq!(
            TensorType::I2S.data_size(&[2560, 6912]).unwrap(),
            2560 * 6912 / 4 + 32
        );
        assert_eq!(
            TensorType::F16.data_size(&[2560, 128256]).unwrap(),
            2560 * 128256 * 2
        );
        assert_eq!(TensorType::Q8_0.data_size(&[64, 3]).unwrap(), 2 * 34 * 3);
        assert_eq!(TensorType::TQ2_0.data_size(&[512]).unwrap(), 132);
        assert!(matches!(
            TensorType::I2S.data_size(&[100, 2]),
            Err(ShapeError::RaggedRow { .. })
        ));
        assert_eq!(
            TensorType::F32.data_size(&[1 << 40, 1 << 40]),
            Err(ShapeError::Overflow)
        );
    }
}
