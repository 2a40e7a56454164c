//! Plain float storage: F32, F16 and BF16 (little-endian), decoded element by element.

use half::{bf16, f16};

pub(crate) fn f32_to_f32(data: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Decodes little-endian f16 values into `out`.
pub fn f16_to_f32(data: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// bf16 is the top half of an f32, so widening is a shift: exact for every bit pattern, NaN
/// payloads included, as ggml's `ggml_compute_bf16_to_fp32` does it (`half` would quiet a
/// signalling NaN).
pub(crate) fn bf16_to_f32(data: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
        *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}

/// Encodes values as little-endian f32.
pub fn encode_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Rounds to nearest-even f16, as ggml's `GGML_FP32_TO_FP16` does.
pub fn encode_f16(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

/// Encodes values as little-endian bf16 (rounded to nearest, ties to even).
pub fn encode_bf16(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_and_bf16_decode_known_bit_patterns() {
        let mut out = [0f32; 3];
        f16_to_f32(&[0x00, 0x3c, 0x00, 0xc0, 0x00, 0x7c], &mut out);
        assert_eq!(out, [1.0, -2.0, f32::INFINITY]);
        bf16_to_f32(&[0x80, 0x3f, 0x40, 0xc0, 0x00, 0x00], &mut out);
        assert_eq!(out, [1.0, -3.0, 0.0]);
    }

    #[test]
    fn encoders_round_trip() {
        let v = [0.5f32, -1.25, 1024.0, 0.0];
        let mut out = [0f32; 4];
        f16_to_f32(&encode_f16(&v), &mut out);
        assert_eq!(out, v);
        bf16_to_f32(&encode_bf16(&v), &mut out);
        assert_eq!(out, v);
        f32_to_f32(&encode_f32(&v), &mut out);
        assert_eq!(out, v);
    }
}
