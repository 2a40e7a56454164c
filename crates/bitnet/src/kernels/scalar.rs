//! Plain scalar kernels: the reference every SIMD path is tested against, and the fallback on
//! CPUs without one. Written for clarity; each does its reduction in one fixed order.

use half::f16;

use crate::formats::types::{i2_s, q6_k, q8_0, tq1_0, tq2_0, TernaryBlock};

use super::{Isa, KernelTable};

/// The scalar kernels as a table (every other ISA's table starts from a simpler one).
pub(crate) static TABLE: KernelTable = KernelTable {
    isa: Isa::Scalar,
    i2s_rows: 1,
    quantize_row_i8,
    i2s_matmul: |w, k, acts, _qsums, out| i2s_matmul(w, k, acts, out),
    tq2_0_matmul: |w, k, acts, _block_qsums, out| tq2_0_matmul(w, k, acts, out),
    t16_matmul: |w, k, acts, _qsums, out| t16_matmul(w, k, acts, out),
    f16_matmul,
    q8_0_rows,
    q6_k_rows,
    f32_dot,
    f16_dot,
    f32_axpy,
    f16_axpy,
    f16_rows_dot,
    f32_rows_dot,
    f16_rows_axpy,
    f32_rows_axpy,
    f16_rows_dot_multi: None,
    f16_rows_axpy_multi: None,
};

/// Per-token absmax int8 quantization (BitNet's activation quantizer):
/// `a = max(max|x|, 1e-5)`, `s = 127 / a`, `q = clamp(round_half_even(x * s), -128, 127)`.
/// Returns `s`; the dequantized value is `q / s`.
pub fn quantize_row_i8(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-5);
    let s = 127.0 / amax;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * s).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    s
}

/// `Σ_k t_k · q_k` for one I2_S row (`packed` = ne0/4 bytes, `q` = ne0 int8 activations).
pub(crate) fn i2s_dot(packed: &[u8], q: &[i8]) -> i32 {
    let mut sum = 0i32;
    for (block, qb) in packed
        .chunks_exact(i2_s::BLOCK_BYTES)
        .zip(q.chunks_exact(i2_s::BLOCK_LEN))
    {
        for (j, &qj) in qb.iter().enumerate() {
            let code = (block[j % 32] >> (6 - 2 * (j / 32))) & 3;
            sum += (code as i32 - 1) * qj as i32;
        }
    }
    sum
}

/// `Σ_b d_b · Σ_{k∈b} t_k q_k` over 256-value ternary blocks: exact integer sums per block,
/// each scaled by its block scale, added in block order.
pub(crate) fn ternary_blocks_dot<B: TernaryBlock>(blocks: &[B], q: &[i8]) -> f32 {
    let mut sum = 0f32;
    for (block, qb) in blocks.iter().zip(q.chunks_exact(256)) {
        let dot: i32 = block
            .values()
            .iter()
            .zip(qb)
            .map(|(&t, &q)| t as i32 * q as i32)
            .sum();
        sum += block.scale() * dot as f32;
    }
    sum
}

/// One TQ2_0 row (see [`ternary_blocks_dot`]).
pub(crate) fn tq2_0_dot(row: &[u8], q: &[i8]) -> f32 {
    ternary_blocks_dot(tq2_0::blocks(row), q)
}

/// One TQ1_0 row (see [`ternary_blocks_dot`]).
pub(crate) fn tq1_0_dot(row: &[u8], q: &[i8]) -> f32 {
    ternary_blocks_dot(tq1_0::blocks(row), q)
}

/// All I2_S rows of `w` (each `k/4` bytes) against every int8 activation row of `acts`:
/// `out[t · n_rows + r] = Σ t[r, ·] · acts[t, ·]`.
pub fn i2s_matmul(w: &[u8], k: usize, acts: &[i8], out: &mut [i32]) {
    let row_bytes = k / 4;
    let n_rows = w.len() / row_bytes;
    for (t, q) in acts.chunks_exact(k).enumerate() {
        for (r, row) in w.chunks_exact(row_bytes).enumerate() {
            out[t * n_rows + r] = i2s_dot(row, q);
        }
    }
}

/// All T1_6 rows of `w` (see [`super::t16_pack_i2s`]) against every int8 activation row:
/// the same `out` as [`i2s_matmul`] on the rows they were packed from. Each trit is decoded on
/// its own, by [`super::t16_digit`] in the 160-value blocks and by its two bits in the tail.
pub fn t16_matmul(w: &[u8], k: usize, acts: &[i8], out: &mut [i32]) {
    let n_rows = w.len() / super::t16_row_bytes(k);
    let grouped = n_rows / super::T16_ROWS * super::T16_ROWS;
    let full = k / super::T16_BLOCK_LEN;
    for (t, q) in acts.chunks_exact(k).enumerate() {
        for r in 0..n_rows {
            let mut sum = 0i32;
            for b in 0..full {
                let block = &w[super::t16_block_offset(k, grouped, r, b)..];
                for (j, &qj) in q[b * 160..(b + 1) * 160].iter().enumerate() {
                    let code = super::t16_digit(block[j % 32], j / 32);
                    sum += (code as i32 - 1) * qj as i32;
                }
            }
            let tail = &w[super::t16_block_offset(k, grouped, r, full)..];
            for (j, &qj) in q[full * 160..].iter().enumerate() {
                let (g, j8, m) = (j / 32, j % 32 / 8, j % 8);
                let code = (tail[8 * g + m] >> (2 * j8)) & 3;
                sum += (code as i32 - 1) * qj as i32;
            }
            out[t * n_rows + r] = sum;
        }
    }
}

/// All TQ2_0 rows of `w` against every activation row (see `tq2_0_dot`).
pub fn tq2_0_matmul(w: &[u8], k: usize, acts: &[i8], out: &mut [f32]) {
    let row_bytes = k / tq2_0::BLOCK_LEN * 66;
    let n_rows = w.len() / row_bytes;
    for (t, q) in acts.chunks_exact(k).enumerate() {
        for (r, row) in w.chunks_exact(row_bytes).enumerate() {
            out[t * n_rows + r] = tq2_0_dot(row, q);
        }
    }
}

/// Activations quantized for the Q8_0 product, as llama.cpp quantizes them for Q8_0 weights:
/// per 32-value block `q = round_half_even(x · 127 / max|x|)` (in -127..=127) and its scale
/// `d = max|x| / 127`. Each block's product with a weight block is then an exact integer.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Q8Blocks {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
}

impl Q8Blocks {
    pub fn quantize(x: &[f32]) -> Q8Blocks {
        let mut out = Q8Blocks {
            q: vec![0; x.len()],
            d: Vec::with_capacity(x.len() / q8_0::BLOCK_LEN),
        };
        for (xb, qb) in x
            .chunks_exact(q8_0::BLOCK_LEN)
            .zip(out.q.chunks_exact_mut(q8_0::BLOCK_LEN))
        {
            out.d.push(quantize_block_i8(xb, qb));
        }
        out
    }
}

/// `q = round_half_even(x · 127 / max|x|)` clamped to ±127; returns `max|x| / 127` (0 for an
/// all-zero block, whose `q` are 0).
fn quantize_block_i8(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax > 0.0 {
        let s = 127.0 / amax;
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (v * s).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
        1.0 / s
    } else {
        q.fill(0);
        0.0
    }
}

/// One Q8_0 row against [`Q8Blocks`] activations: `Σ_b (d_w · d_x) · Σ_{i∈b} w_i · q_i`, each
/// block's sum exact, the blocks added in order.
pub(crate) fn q8_0_dot(row: &[u8], x: &Q8Blocks) -> f32 {
    let mut sum = 0f32;
    for ((b, qx), &dx) in q8_0::blocks(row)
        .iter()
        .zip(x.q.chunks_exact(q8_0::BLOCK_LEN))
        .zip(&x.d)
    {
        let dot: i32 =
            b.qs.iter()
                .zip(qx)
                .map(|(&w, &q)| w as i32 * q as i32)
                .sum();
        sum += b.scale() * dx * dot as f32;
    }
    sum
}

/// Every Q8_0 row of `w` against one row of quantized activations.
pub(crate) fn q8_0_rows(w: &[u8], qx: &Q8Blocks, out: &mut [f32]) {
    let row_bytes = qx.d.len() * 34;
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        *o = q8_0_dot(row, qx);
    }
}

/// Activations quantized for the Q6_K product (as llama.cpp's Q8_K): per 256-value block an
/// int8 row `q = round_half_even(x · 127 / max|x|)`, its scale `d = max|x| / 127`, and the sum
/// of `q` over each 16-value group (for the `−32` offset of Q6_K's codes).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Q8K {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub group_sums: Vec<i16>,
}

impl Q8K {
    pub fn quantize(x: &[f32]) -> Q8K {
        let mut out = Q8K {
            q: vec![0; x.len()],
            d: Vec::with_capacity(x.len() / q6_k::BLOCK_LEN),
            group_sums: Vec::with_capacity(x.len() / 16),
        };
        for (xb, qb) in x
            .chunks_exact(q6_k::BLOCK_LEN)
            .zip(out.q.chunks_exact_mut(q6_k::BLOCK_LEN))
        {
            out.d.push(quantize_block_i8(xb, qb));
            out.group_sums.extend(
                qb.chunks_exact(16)
                    .map(|g| g.iter().map(|&v| v as i16).sum::<i16>()),
            );
        }
        out
    }
}

/// One Q6_K row against [`Q8K`] activations: per block the exact integer
/// `Σ_g sc_g · (Σ_{i∈g} u_i · q_i − 32 · Σ_{i∈g} q_i)` with `u = code` in 0..63, then
/// `sum += d_w · d_x · block` in block order.
pub(crate) fn q6_k_dot(row: &[u8], x: &Q8K) -> f32 {
    let mut sum = 0f32;
    for (b, block) in q6_k::blocks(row).iter().enumerate() {
        let values = block.values();
        let qx = &x.q[b * q6_k::BLOCK_LEN..(b + 1) * q6_k::BLOCK_LEN];
        let mut dot = 0i32;
        for g in 0..16 {
            let raw: i32 = (0..16)
                .map(|i| (values[16 * g + i] as i32 + 32) * qx[16 * g + i] as i32)
                .sum();
            let bias = 32 * x.group_sums[b * 16 + g] as i32;
            dot += block.scales[g] as i32 * (raw - bias);
        }
        sum += block.scale() * x.d[b] * dot as f32;
    }
    sum
}

/// Every row of a Q8_0 matrix against every f32 row of `x` (quantized once per row of `x`).
pub fn q8_0_matmul(w: &[u8], k: usize, x: &[f32], out: &mut [f32]) {
    let n_rows = w.len() / (k / q8_0::BLOCK_LEN * 34);
    for (t, xt) in x.chunks_exact(k).enumerate() {
        q8_0_rows(
            w,
            &Q8Blocks::quantize(xt),
            &mut out[t * n_rows..(t + 1) * n_rows],
        );
    }
}

/// Every Q6_K row of `w` against one row of quantized activations.
pub(crate) fn q6_k_rows(w: &[u8], qx: &Q8K, out: &mut [f32]) {
    let row_bytes = qx.d.len() * 210;
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        *o = q6_k_dot(row, qx);
    }
}

/// Every row of a Q6_K matrix against every f32 row of `x` (quantized once per row of `x`).
pub fn q6_k_matmul(w: &[u8], k: usize, x: &[f32], out: &mut [f32]) {
    let row_bytes = k / q6_k::BLOCK_LEN * 210;
    let n_rows = w.len() / row_bytes;
    for (t, xt) in x.chunks_exact(k).enumerate() {
        let qx = Q8K::quantize(xt);
        for (r, row) in w.chunks_exact(row_bytes).enumerate() {
            out[t * n_rows + r] = q6_k_dot(row, &qx);
        }
    }
}

/// All f16 rows of `w` (length `k`) against every f32 row of `x`.
pub fn f16_matmul(w: &[f16], k: usize, x: &[f32], out: &mut [f32]) {
    let n_rows = w.len() / k;
    for (t, xt) in x.chunks_exact(k).enumerate() {
        for (r, row) in w.chunks_exact(k).enumerate() {
            out[t * n_rows + r] = f16_dot(row, xt);
        }
    }
}

/// `out[j] = Σ_d rows[j·stride + offset + d] · x[d]` (attention scores against cached keys).
pub fn f16_rows_dot(rows: &[f16], stride: usize, offset: usize, x: &[f32], out: &mut [f32]) {
    super::rows_dot_with(rows, stride, offset, x, out, f16_dot);
}

/// The f32 twin of [`f16_rows_dot`].
pub fn f32_rows_dot(rows: &[f32], stride: usize, offset: usize, x: &[f32], out: &mut [f32]) {
    super::rows_dot_with(rows, stride, offset, x, out, f32_dot);
}

/// `out += Σ_j p[j] · rows[j·stride + offset ..]` (attention output from cached values).
pub fn f16_rows_axpy(rows: &[f16], stride: usize, offset: usize, p: &[f32], out: &mut [f32]) {
    super::rows_axpy_with(rows, stride, offset, p, out, f16_axpy);
}

/// The f32 twin of [`f16_rows_axpy`].
pub fn f32_rows_axpy(rows: &[f32], stride: usize, offset: usize, p: &[f32], out: &mut [f32]) {
    super::rows_axpy_with(rows, stride, offset, p, out, f32_axpy);
}

/// `out += a · v`.
pub fn f32_axpy(out: &mut [f32], a: f32, v: &[f32]) {
    out.iter_mut().zip(v).for_each(|(o, v)| *o += a * v);
}

/// `out += a · v` with f16 `v`.
pub fn f16_axpy(out: &mut [f32], a: f32, v: &[f16]) {
    out.iter_mut()
        .zip(v)
        .for_each(|(o, v)| *o += a * v.to_f32());
}

/// `Σ w_k x_k` with f16 weights, accumulated in f32 in index order.
pub fn f16_dot(w: &[f16], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(w, x)| w.to_f32() * x).sum()
}

/// `Σ w_k x_k` with f32 weights.
pub fn f32_dot(w: &[f32], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(w, x)| w * x).sum()
}

/// RMSNorm: `out = g ⊙ x / sqrt(mean(x²) + eps)`. The sum of squares is accumulated in f64
/// (as bitnet.cpp does), which makes it independent of summation order for practical sizes.
pub(crate) fn rms_norm(x: &[f32], g: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let mean = (ss / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(g) {
        *o = g * (v * scale);
    }
}

/// Rotate-half (NEOX) RoPE on one head: pairs (k, k + hd/2) rotated by `cos[k]`, `sin[k]`.
pub(crate) fn rope_neox(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = head.len() / 2;
    let (a, b) = head.split_at_mut(half);
    for k in 0..half {
        let (u, v) = (a[k], b[k]);
        a[k] = u * cos[k] - v * sin[k];
        b[k] = v * cos[k] + u * sin[k];
    }
}

/// In-place softmax, float32, max-subtracted.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_quantization_rounds_half_to_even() {
        // max = 127 → s = 1: 2.5 → 2, -2.5 → -2, 3.5 → 4, 0.5 → 0.
        let x = [127.0, 2.5, -2.5, 3.5, 0.5, -127.0];
        let mut q = [0i8; 6];
        assert_eq!(quantize_row_i8(&x, &mut q), 1.0);
        assert_eq!(q, [127, 2, -2, 4, 0, -127]);
        // All zeros: the 1e-5 floor keeps the scale finite.
        let mut q = [1i8; 3];
        let s = quantize_row_i8(&[0.0; 3], &mut q);
        assert_eq!(q, [0, 0, 0]);
        assert!(s.is_finite());
    }

    #[test]
    fn i2s_dot_matches_decoded_values() {
        let t: Vec<i8> = (0..256).map(|i| ((i * 7 + i / 3) % 3) as i8 - 1).collect();
        let q: Vec<i8> = (0..256).map(|i| (i * 37 % 255) as i8).collect();
        let packed = i2_s::encode(&t, 1.0);
        let expected: i32 = t.iter().zip(&q).map(|(&a, &b)| a as i32 * b as i32).sum();
        assert_eq!(i2s_dot(&packed[..64], &q), expected);
    }

    #[test]
    fn rope_rotates_pairs() {
        let mut h = [1.0, 0.0, 0.0, 1.0];
        rope_neox(&mut h, &[0.0, 1.0], &[1.0, 0.0]);
        assert_eq!(h, [0.0, 0.0, 1.0, 1.0]);
    }
}
