//! I2_S: bitnet.cpp's 2-bit ternary layout (x86 variant, the one published files use).
//!
//! The flattened row-major tensor is cut into blocks of 128 values stored in 32 bytes: value `j`
//! of a block sits in byte `j % 32` at bit shift `6 - 2 * (j / 32)`, as the code `t + 1`
//! (-1 → 0b00, 0 → 0b01, +1 → 0b10). After all packed bytes comes a 32-byte trailer whose
//! first 4 bytes are the per-tensor scale (f32 LE, = mean|W| of the master weights); the other
//! 28 bytes are undefined padding. Code 0b11 never occurs in valid files: [`decode`] reports it
//! as an error; the model loader validates every I2_S tensor once, so kernels may assume it.

use super::{DecodeError, Ternary};

/// Values per block.
pub(crate) const BLOCK_LEN: usize = 128;
/// Bytes per block.
pub(crate) const BLOCK_BYTES: usize = 32;
/// Bytes after the packed values: the f32 scale and padding.
pub(crate) const TRAILER_BYTES: usize = 32;

/// The per-tensor scale stored after the `packed_len` packed bytes.
pub fn scale(data: &[u8], packed_len: usize) -> Option<f32> {
    let b = data.get(packed_len..packed_len + 4)?;
    Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The offset of the first byte holding code 0b11, if any.
pub(crate) fn find_invalid_code(packed: &[u8]) -> Option<usize> {
    // A 2-bit field is 0b11 exactly when both of its bits are set. Eight bytes at a time (the
    // model loader checks every weight once), then the exact byte.
    const LOW_BITS: u64 = 0x5555_5555_5555_5555;
    let bad = |b: u8| b & (b >> 1) & 0x55 != 0;
    let mut chunks = packed.chunks_exact(8);
    for (i, c) in (&mut chunks).enumerate() {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        if w & (w >> 1) & LOW_BITS != 0 {
            return c.iter().position(|&b| bad(b)).map(|j| i * 8 + j);
        }
    }
    let tail = packed.len() - chunks.remainder().len();
    chunks
        .remainder()
        .iter()
        .position(|&b| bad(b))
        .map(|j| tail + j)
}

/// Decodes `n` values (n a multiple of 128) and the scale.
pub fn decode(data: &[u8], n: usize) -> Result<Ternary, DecodeError> {
    let packed = &data[..n / 4];
    if let Some(offset) = find_invalid_code(packed) {
        return Err(DecodeError::InvalidI2sCode {
            offset: offset as u64,
        });
    }
    let mut values = vec![0i8; n];
    for (block, out) in packed
        .chunks_exact(BLOCK_BYTES)
        .zip(values.chunks_exact_mut(BLOCK_LEN))
    {
        for (j, o) in out.iter_mut().enumerate() {
            let code = (block[j % 32] >> (6 - 2 * (j / 32))) & 3;
            *o = code as i8 - 1;
        }
    }
    let scale = scale(data, n / 4).unwrap_or(0.0);
    Ok(Ternary {
        values,
        block_len: n.max(1),
        scales: vec![scale],
    })
}

/// Packs ternary values (row-major, n a multiple of 128) and a scale into I2_S bytes, with a
/// zeroed padding trailer.
pub fn encode(values: &[i8], scale: f32) -> Vec<u8> {
    let mut out = vec![0u8; values.len() / 4 + TRAILER_BYTES];
    for (block, src) in out
        .chunks_exact_mut(BLOCK_BYTES)
        .zip(values.chunks_exact(BLOCK_LEN))
    {
        for (j, &t) in src.iter().enumerate() {
            let code = (t.clamp(-1, 1) + 1) as u8;
            block[j % 32] |= code << (6 - 2 * (j / 32));
        }
    }
    let n = values.len() / 4;
    out[n..n + 4].copy_from_slice(&scale.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of `shared/spec/gguf-bitnet.md` (row 0 of a real ffn_down).
    #[test]
    fn spec_worked_example_decodes_as_written() {
        let cols: [(usize, [i8; 8]); 4] = [
            (0, [-1, 1, 0, 1, -1, 1, 0, 0]),
            (32, [-1, -1, 1, 0, 1, 1, -1, 0]),
            (64, [-1, -1, -1, -1, 0, -1, 1, -1]),
            (96, [-1, 1, 1, 1, 1, -1, -1, 1]),
        ];
        let mut values = vec![0i8; 128];
        for (start, v) in cols {
            values[start..start + 8].copy_from_slice(&v);
        }
        let mut bytes = encode(&values, 0.015957952);
        assert_eq!(
            &bytes[..8],
            &[0x00, 0x82, 0x62, 0x92, 0x26, 0xa0, 0x48, 0x52]
        );
        assert_eq!(&bytes[32..36], &[0x40, 0xba, 0x82, 0x3c]);

        // And the other direction, from the bytes as the spec prints them.
        bytes[8..32].fill(0x55); // all zeros elsewhere
        let t = decode(&bytes, 128).unwrap();
        for (start, v) in cols {
            assert_eq!(&t.values[start..start + 8], &v);
        }
        assert_eq!(t.scales, vec![0.015957952]);
    }

    #[test]
    fn code_three_is_an_error() {
        let mut bytes = encode(&[0i8; 128], 1.0);
        bytes[5] = 0b0111_0101;
        assert_eq!(
            decode(&bytes, 128),
            Err(DecodeError::InvalidI2sCode { offset: 5 })
        );
    }
}
