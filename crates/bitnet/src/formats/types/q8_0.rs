//! Q8_0: blocks of 32 values, one f16 scale and 32 int8 (ggml's `block_q8_0`).

use bytemuck::{Pod, Zeroable};
use half::f16;

pub(crate) const BLOCK_LEN: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ8_0 {
    /// f16 scale, little-endian bytes (kept as bytes so the block has alignment 1).
    pub d: [u8; 2],
    pub qs: [i8; BLOCK_LEN],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl BlockQ8_0 {
    pub fn scale(&self) -> f32 {
        f16::from_le_bytes(self.d).to_f32()
    }
}

/// Views bytes as blocks; the length must be a multiple of 34 (checked by the caller's size
/// check; a ragged tail is ignored).
pub(crate) fn blocks(data: &[u8]) -> &[BlockQ8_0] {
    let n = data.len() / std::mem::size_of::<BlockQ8_0>();
    bytemuck::cast_slice(&data[..n * std::mem::size_of::<BlockQ8_0>()])
}

/// Decodes Q8_0 blocks into `out` (`value * scale` per block of 32).
pub fn dequantize(data: &[u8], out: &mut [f32]) {
    for (block, o) in blocks(data).iter().zip(out.chunks_exact_mut(BLOCK_LEN)) {
        let d = block.scale();
        for (o, &q) in o.iter_mut().zip(&block.qs) {
            *o = q as f32 * d;
        }
    }
}

/// ggml's `quantize_row_q8_0_ref`: d = max|x| / 127, q = round(x / d) (half away from zero).
pub fn quantize(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / BLOCK_LEN * 34);
    for x in values.chunks_exact(BLOCK_LEN) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.37).collect();
        let bytes = quantize(&x);
        assert_eq!(bytes.len(), 68);
        let mut y = vec![0f32; 64];
        dequantize(&bytes, &mut y);
        for (chunk_x, chunk_y) in x.chunks(32).zip(y.chunks(32)) {
            let step = chunk_x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in chunk_x.iter().zip(chunk_y) {
                assert!((a - b).abs() <= step * 0.51, "{a} vs {b}");
            }
        }
    }
}
