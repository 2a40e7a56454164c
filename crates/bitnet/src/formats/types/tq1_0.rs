//! TQ1_0: upstream llama.cpp's base-3 ternary blocks (256 values, 1.69 bits per weight).
//!
//! Five trits per byte in `qs` (48 bytes: 32-byte then 16-byte groups) and four per byte in
//! `qh`, stored as a fixed-point fraction `ceil(v * 256 / 243)` so that multiplying by 3^n and
//! taking the top bits of `q * 3` extracts trit n.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::TernaryBlock;

pub(crate) const BLOCK_LEN: usize = 256;
const QS: usize = (BLOCK_LEN - 4 * BLOCK_LEN / 64) / 5; // 48
const QH: usize = BLOCK_LEN / 64; // 4
const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockTQ1_0 {
    pub qs: [u8; QS],
    pub qh: [u8; QH],
    /// f16 scale, little-endian bytes.
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockTQ1_0>() == 54);

pub(crate) fn blocks(data: &[u8]) -> &[BlockTQ1_0] {
    let size = std::mem::size_of::<BlockTQ1_0>();
    bytemuck::cast_slice(&data[..data.len() / size * size])
}

/// Trit `n` (0 = most significant) of a packed byte, as a value in {-1, 0, +1}.
pub(crate) fn trit(byte: u8, n: usize) -> i8 {
    let q = byte.wrapping_mul(POW3[n]);
    (((q as u16) * 3) >> 8) as i8 - 1
}

impl TernaryBlock for BlockTQ1_0 {
    fn scale(&self) -> f32 {
        f16::from_le_bytes(self.d).to_f32()
    }

    /// The block's 256 ternary values in element order (ggml's `dequantize_row_tq1_0` order).
    fn values(&self) -> [i8; BLOCK_LEN] {
        let mut out = [0i8; BLOCK_LEN];
        let mut y = 0;
        let full = QS - QS % 32;
        for (start, width) in [(0, 32), (full, 16)] {
            let end = if width == 32 { full } else { QS };
            for j in (start..end).step_by(width) {
                for n in 0..5 {
                    for m in 0..width {
                        out[y] = trit(self.qs[j + m], n);
                        y += 1;
                    }
                }
            }
        }
        for n in 0..4 {
            for j in 0..QH {
                out[y] = trit(self.qh[j], n);
                y += 1;
            }
        }
        out
    }
}

fn pack(trits: impl Iterator<Item = u8>) -> u8 {
    let q = trits.fold(0u16, |q, t| q * 3 + t as u16);
    // Ceiling division so that the top-bits extraction recovers each trit exactly.
    ((q * 256).div_ceil(243)) as u8
}

/// ggml's `quantize_row_tq1_0_ref`: d = max|x| per block, t = round(x / d) (half away from 0).
pub fn quantize(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / BLOCK_LEN * 54);
    for x in values.chunks_exact(BLOCK_LEN) {
        let d = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let t = |i: usize| ((x[i] * id).round() as i32 + 1).clamp(0, 2) as u8;
        let mut block = BlockTQ1_0::zeroed();
        let full = QS - QS % 32;
        let mut base = 0;
        for j in (0..full).step_by(32) {
            for m in 0..32 {
                block.qs[j + m] = pack((0..5).map(|n| t(base + m + n * 32)));
            }
            base += 5 * 32;
        }
        for j in (full..QS).step_by(16) {
            for m in 0..16 {
                block.qs[j + m] = pack((0..5).map(|n| t(base + m + n * 16)));
            }
            base += 5 * 16;
        }
        for j in 0..QH {
            // Four trits, shifted up one place so the first sits in the most significant trit.
            block.qh[j] = pack((0..4).map(|m| t(base + j + m * QH)).chain([0]));
        }
        block.d = f16::from_f32(d).to_le_bytes();
        out.extend_from_slice(bytemuck::bytes_of(&block));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ternary_round_trip() {
        let x: Vec<f32> = (0..512)
            .map(|i| [-2.0f32, 0.0, 2.0][(i * 5 + i / 7) % 3])
            .collect();
        let t = super::super::ternary_from_blocks(blocks(&quantize(&x)));
        assert_eq!(t.scales, vec![2.0, 2.0]);
        for (i, (a, b)) in x.iter().zip(&t.values).enumerate() {
            assert_eq!(*a, *b as f32 * 2.0, "value {i}");
        }
    }
}
