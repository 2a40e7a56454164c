//! Q6_K: ggml's 6-bit k-quant, 256 values per 210-byte block: the low 4 bits of each value in
//! `ql`, the high 2 bits in `qh`, a signed 8-bit scale per 16 values and one f16 super-scale.
//! Value = `d · scales[i/16] · (q − 32)` with q in 0..63.

use bytemuck::{Pod, Zeroable};
use half::f16;

pub(crate) const BLOCK_LEN: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ6K {
    pub ql: [u8; BLOCK_LEN / 2],
    pub qh: [u8; BLOCK_LEN / 4],
    pub scales: [i8; BLOCK_LEN / 16],
    /// f16 super-block scale, little-endian bytes.
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

pub(crate) fn blocks(data: &[u8]) -> &[BlockQ6K] {
    let size = std::mem::size_of::<BlockQ6K>();
    bytemuck::cast_slice(&data[..data.len() / size * size])
}

impl BlockQ6K {
    pub fn scale(&self) -> f32 {
        f16::from_le_bytes(self.d).to_f32()
    }

    /// The 256 quantized values q − 32 (in −32..31), in element order.
    pub fn values(&self) -> [i8; BLOCK_LEN] {
        let mut out = [0i8; BLOCK_LEN];
        for half in 0..2 {
            let (ql, qh) = (&self.ql[64 * half..], &self.qh[32 * half..]);
            let y = &mut out[128 * half..];
            for l in 0..32 {
                y[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                y[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                y[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                y[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        out
    }
}

/// ggml's `dequantize_row_q6_K`.
pub fn dequantize(data: &[u8], out: &mut [f32]) {
    for (b, o) in blocks(data).iter().zip(out.chunks_exact_mut(BLOCK_LEN)) {
        let d = b.scale();
        for (i, (o, q)) in o.iter_mut().zip(b.values()).enumerate() {
            *o = d * b.scales[i / 16] as f32 * q as f32;
        }
    }
}

/// ggml's `nearest_int`: round half to even through the float mantissa trick (adding
/// 1.5 · 2²³ leaves the rounded integer in the low mantissa bits; the FPU rounds half to even).
/// Exact below 2²² in magnitude; beyond, saturated at ±(2²² − 1) (every caller clamps to far
/// less), and NaN gives 0 as `as i32` does. `round_ties_even` compiles to a libm call on
/// baseline x86-64 (LLVM calls it even behind a range check) and made `--output-type q6_k`
/// take 23 s at load for the 2B output matrix.
#[inline]
fn nearest_int(v: f32) -> i32 {
    const LIMIT: f32 = 4_194_303.0;
    let v = if v.is_nan() {
        0.0
    } else {
        v.clamp(-LIMIT, LIMIT)
    };
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `make_qx_quants` with `rmse_type = 1` (weights x²) for a group of at most 16 values:
/// a scale chosen among
/// 19 candidates by weighted least squares; `l` receives q + nmax.
fn make_qx_quants(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, l: &mut [i8]| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (&v, li) in x.iter().zip(l.iter_mut()) {
            let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            *li = (q + nmax) as i8;
            let w = v * v;
            sumlx += w * v * q as f32;
            suml2 += w * (q * q) as f32;
        }
        (sumlx, suml2)
    };
    let (sumlx, suml2) = quant(-(nmax as f32) / max, l);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    let mut trial = [0i8; 16];
    let trial = &mut trial[..x.len()];
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = quant(iscale, trial);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            l.copy_from_slice(trial);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `quantize_row_q6_K_ref`.
pub fn quantize(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / BLOCK_LEN * 210);
    for x in values.chunks_exact(BLOCK_LEN) {
        let mut l = [0i8; BLOCK_LEN];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..16 {
            let s = make_qx_quants(&x[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        let mut block = BlockQ6K::zeroed();
        if max_abs_scale >= GROUP_MAX_EPS {
            let iscale = -128.0 / max_scale;
            block.d = f16::from_f32(1.0 / iscale).to_le_bytes();
            for (s, &v) in block.scales.iter_mut().zip(&scales) {
                *s = nearest_int(iscale * v).min(127) as i8;
            }
            let dd = block.scale();
            for j in 0..16 {
                let d = dd * block.scales[j] as f32;
                if d == 0.0 {
                    continue;
                }
                for ii in 0..16 {
                    let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                    l[16 * j + ii] = (q + 32) as i8;
                }
            }
            for half in 0..2 {
                let j = 128 * half;
                for i in 0..32 {
                    let q = |k: usize| l[j + i + k] as u8;
                    block.ql[64 * half + i] = (q(0) & 0xF) | ((q(64) & 0xF) << 4);
                    block.ql[64 * half + i + 32] = (q(32) & 0xF) | ((q(96) & 0xF) << 4);
                    block.qh[32 * half + i] = (q(0) >> 4)
                        | ((q(32) >> 4) << 2)
                        | ((q(64) >> 4) << 4)
                        | ((q(96) >> 4) << 6);
                }
            }
        }
        out.extend_from_slice(bytemuck::bytes_of(&block));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even_like_the_library() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut values = vec![0.5f32, -0.5, 1.5, -1.5, 2.5, -2.5, 31.5, -32.5, 4_194_302.5];
        values.extend((-200..200).map(|i| i as f32 * 0.25));
        values.extend((0..100_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2_000_000) as f32 / 1000.0 - 1000.0
        }));
        for v in values {
            assert_eq!(nearest_int(v), v.round_ties_even() as i32, "{v}");
        }
        // Out of range: what the callers keep after clamping is the same.
        for v in [
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e9,
            -1e9,
            4_194_304.5,
            -5e6,
        ] {
            let clamp = |q: i32| q.clamp(-128, 127);
            assert_eq!(
                clamp(nearest_int(v)),
                clamp(v.round_ties_even() as i32),
                "{v}"
            );
        }
    }

    #[test]
    fn round_trip_error_is_small() {
        let x: Vec<f32> = (0..1024)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.05)
            .collect();
        let bytes = quantize(&x);
        assert_eq!(bytes.len(), 4 * 210);
        let mut y = vec![0f32; x.len()];
        dequantize(&bytes, &mut y);
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        let err = (x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            / x.len() as f32)
            .sqrt();
        assert!(err < rms * 0.03, "rms error {err} vs signal {rms}");
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let bytes = quantize(&[0.0; 256]);
        let mut y = [1f32; 256];
        dequantize(&bytes, &mut y);
        assert!(y.iter().all(|&v| v == 0.0));
    }
}
