//! TQ2_0: upstream llama.cpp's 2-bit ternary blocks (256 values, 2.06 bits per weight).
//!
//! Byte `qs[j + m]` (j in steps of 32) holds the four values `j*4 + l*32 + m`, l = 0..3, at bit
//! shift `2l`, as the code `t + 1`; `d` is the block's f16 scale.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::TernaryBlock;

pub(crate) const BLOCK_LEN: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockTQ2_0 {
    pub qs: [u8; BLOCK_LEN / 4],
    /// f16 scale, little-endian bytes.
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockTQ2_0>() == 66);

pub(crate) fn blocks(data: &[u8]) -> &[BlockTQ2_0] {
    let size = std::mem::size_of::<BlockTQ2_0>();
    bytemuck::cast_slice(&data[..data.len() / size * size])
}

impl TernaryBlock for BlockTQ2_0 {
    fn scale(&self) -> f32 {
        f16::from_le_bytes(self.d).to_f32()
    }

    /// The block's 256 ternary values in element order.
    fn values(&self) -> [i8; BLOCK_LEN] {
        let mut out = [0i8; BLOCK_LEN];
        for j in (0..BLOCK_LEN / 4).step_by(32) {
            for l in 0..4 {
                for m in 0..32 {
                    let code = (self.qs[j + m] >> (2 * l)) & 3;
                    out[j * 4 + l * 32 + m] = code as i8 - 1;
                }
            }
        }
        out
    }
}

/// ggml's `quantize_row_tq2_0_ref`: d = max|x| per block, t = round(x / d) (half away from 0).
pub fn quantize(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / BLOCK_LEN * 66);
    for x in values.chunks_exact(BLOCK_LEN) {
        let d = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; BLOCK_LEN / 4];
        for j in (0..BLOCK_LEN / 4).step_by(32) {
            for m in 0..32 {
                let mut q = 0u8;
                for n in 0..4 {
                    let xi = ((x[j * 4 + m + n * 32] * id).round() as i32 + 1) as u8;
                    q += (xi & 3) << (2 * n);
                }
                qs[j + m] = q;
            }
        }
        out.extend_from_slice(&qs);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ternary_round_trip() {
        let x: Vec<f32> = (0..512).map(|i| [(-0.5f32), 0.0, 0.5][i * 7 % 3]).collect();
        let t = super::super::ternary_from_blocks(blocks(&quantize(&x)));
        assert_eq!(t.scales, vec![0.5, 0.5]);
        for (a, b) in x.iter().zip(&t.values) {
            assert_eq!(*a, *b as f32 * 0.5);
        }
    }
}
