//! AArch64 kernels, chosen at run time by CPU feature detection (see `Isa`): plain NEON
//! ([`neon`], every ARMv8 CPU), NEON with `sdot` ([`dotprod`]: Apple M1+, Graviton2+,
//! Cortex-A76+) and with `smmla` ([`i8mm`]: Apple M2+, Graviton3+). Each module is one table;
//! the richer ones borrow what they do not improve from the simpler ones.
//!
//! I2_S is read in the file's 128-value layout (byte `j` of a 32-byte block holds values `j`,
//! `32+j`, `64+j`, `96+j` in bits 7-6, 5-4, 3-2, 1-0), which suits 128-bit registers as it is:
//! one 16-byte load of packed bytes gives, for each of the four 2-bit fields, 16 codes whose
//! activations are 16 consecutive bytes. Extracting a field costs one instruction per 16 codes
//! (a shift for bits 7-6, an AND for the others, see [`dotprod`]), which no other layout can
//! beat, so weights are not repacked at load.
//!
//! `sdot` and `smmla` are used through inline assembly (one tiny helper per instruction, in
//! the module that needs it): their intrinsics (`vdotq_s32`, `vmmlaq_s32`) are not yet stable.

pub mod dotprod;
pub mod i8mm;
pub mod neon;

use std::arch::aarch64::*;
use std::arch::asm;

use crate::formats::types::{q6_k, q8_0, tq2_0};
use crate::kernels::scalar::{Q8Blocks, Q8K};

/// f16 → f32 of the low four lanes of eight halves (`fcvtl`, a base ARMv8 instruction: no FP16
/// arithmetic extension needed). Inline assembly rather than `vcvt_f32_f16`, which is stable
/// only since Rust 1.94, above the workspace's minimum version.
#[inline(always)]
unsafe fn f16_lo_to_f32(h: uint16x8_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: `fcvtl` only reads and writes the named vector registers.
    unsafe {
        asm!("fcvtl {out:v}.4s, {h:v}.4h", h = in(vreg) h, out = lateout(vreg) out,
             options(pure, nomem, nostack, preserves_flags));
    }
    out
}

/// f16 → f32 of the high four lanes of eight halves (`fcvtl2`; see [`f16_lo_to_f32`]).
#[inline(always)]
unsafe fn f16_hi_to_f32(h: uint16x8_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: `fcvtl2` only reads and writes the named vector registers.
    unsafe {
        asm!("fcvtl2 {out:v}.4s, {h:v}.8h", h = in(vreg) h, out = lateout(vreg) out,
             options(pure, nomem, nostack, preserves_flags));
    }
    out
}

/// Eight f16 values (little-endian u16 bits) at `p` as two f32 vectors.
#[inline(always)]
unsafe fn load_f16x8(p: *const half::f16) -> (float32x4_t, float32x4_t) {
    let h = vld1q_u16(p as *const u16);
    (f16_lo_to_f32(h), f16_hi_to_f32(h))
}

/// One f16 (its little-endian bytes) as f32, for block scales: by `fcvtl`, where the `half`
/// crate checks the CPU's FP16 support on every call. Exact, as every f16 → f32 conversion is.
#[inline(always)]
unsafe fn f16_bytes_to_f32(bytes: [u8; 2]) -> f32 {
    vgetq_lane_f32::<0>(f16_lo_to_f32(vdupq_n_u16(u16::from_le_bytes(bytes))))
}

/// A hint to bring the cache line at `p` into L1 (`prfm pldl1keep`). Stable Rust has no
/// prefetch intrinsic for AArch64; a prefetch never faults, so any address is fine.
#[inline(always)]
fn prefetch(p: *const u8) {
    // SAFETY: `prfm` is a hint: it has no architectural effect and cannot fault, whatever `p`.
    unsafe {
        asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly));
    }
}

/// How far ahead of the bytes being read the I2_S GEMVs prefetch: the distance measured best on
/// x86 (unmeasured on ARM). It also carries each row's stream across 4 KiB pages, where many
/// hardware prefetchers stop; one hint per 32 bytes is one instruction per 128 weights.
const PREFETCH_BYTES: usize = 4096;

/// The 16 codes (0..=2) of one 2-bit field of 16 packed I2_S bytes: field 0 is bits 7-6
/// (values 0..32 of the block), field 3 bits 1-0 (values 96..128).
#[inline(always)]
unsafe fn i2s_field(b: uint8x16_t, field: usize) -> int8x16_t {
    let m3 = vdupq_n_u8(3);
    vreinterpretq_s8_u8(match field {
        0 => vshrq_n_u8::<6>(b),
        1 => vandq_u8(vshrq_n_u8::<4>(b), m3),
        2 => vandq_u8(vshrq_n_u8::<2>(b), m3),
        _ => vandq_u8(b, m3),
    })
}

/// The ternary values (−1, 0, 1) of 16 T1_6 bytes' current digit, given `x` = each byte times
/// `3^i` modulo 256 (see [`crate::kernels::t16_digit`]): the digit `⌊3x/256⌋` is
/// `[x ≥ 86] + [x ≥ 171]`; the two compares give `−d` (masks are −1), and `!(−d) = d − 1`.
#[inline(always)]
unsafe fn t16_trits(x: uint8x16_t) -> int8x16_t {
    let s = vaddq_u8(vcgeq_u8(x, vdupq_n_u8(86)), vcgeq_u8(x, vdupq_n_u8(171)));
    vreinterpretq_s8_u8(vmvnq_u8(s))
}

/// The 32 ternary values of a T1_6 tail's 8 bytes at `p`, in value order (value `8j + m` is bits
/// `2j..2j+2` of byte `m`, as the code `t + 1`): values 0..16, then 16..32.
#[inline(always)]
unsafe fn t16_tail_trits(p: *const u8) -> [int8x16_t; 2] {
    let (x, m3) = (vld1_u8(p), vdup_n_u8(3));
    let f = [
        vand_u8(x, m3),
        vand_u8(vshr_n_u8::<2>(x), m3),
        vand_u8(vshr_n_u8::<4>(x), m3),
        vshr_n_u8::<6>(x),
    ];
    let one = vdupq_n_s8(1);
    [
        vsubq_s8(vreinterpretq_s8_u8(vcombine_u8(f[0], f[1])), one),
        vsubq_s8(vreinterpretq_s8_u8(vcombine_u8(f[2], f[3])), one),
    ]
}

/// `x · 3` modulo 256: the next digit moves to the top of each byte.
#[inline(always)]
unsafe fn t16_next(x: uint8x16_t) -> uint8x16_t {
    vaddq_u8(x, vaddq_u8(x, x))
}

/// The T1_6 product ([`crate::kernels::t16_matmul`]) one token at a time, with `four` and
/// `one` computing `Σ t·q` over four interleaved rows and over one row (each ISA's own, inlined
/// into its caller), then the ragged last rows.
#[inline(always)]
unsafe fn t16_matmul_with(
    w: &[u8],
    k: usize,
    acts: &[i8],
    n_tokens: usize,
    out: &mut [i32],
    four: impl Fn(*const u8, *const i8) -> [i32; 4],
    one: impl Fn(*const u8, *const i8) -> [i32; 1],
) {
    use crate::kernels::{t16_row_bytes, T16_ROWS};
    let row_bytes = t16_row_bytes(k);
    let n_rows = w.len() / row_bytes;
    let grouped = n_rows / T16_ROWS * T16_ROWS;
    for t in 0..n_tokens {
        let q = acts.as_ptr().add(t * k);
        let out = &mut out[t * n_rows..(t + 1) * n_rows];
        for g in (0..grouped).step_by(T16_ROWS) {
            let dots = four(w.as_ptr().add(g * row_bytes), q);
            out[g..g + T16_ROWS].copy_from_slice(&dots);
        }
        for (r, o) in out.iter_mut().enumerate().skip(grouped) {
            [*o] = one(w.as_ptr().add(r * row_bytes), q);
        }
    }
}

/// Unpacks I2_S rows into one code byte (0..=2) per weight, in the same order (whole 128-value
/// blocks, so rows follow each other), for the GEMMs that reuse each row's codes for many
/// tokens.
///
/// # Safety
/// `w` holds at least `codes.len() / 4` bytes; `codes.len()` is a multiple of 128.
#[target_feature(enable = "neon")]
unsafe fn unpack_i2s_rows(w: &[u8], codes: &mut [i8]) {
    debug_assert!(w.len() * 4 >= codes.len());
    for blk in 0..codes.len() / 128 {
        let src = w.as_ptr().add(blk * 32);
        let dst = codes.as_mut_ptr().add(blk * 128);
        let b = [vld1q_u8(src), vld1q_u8(src.add(16))];
        for field in 0..4 {
            for (h, &bh) in b.iter().enumerate() {
                vst1q_s8(dst.add(32 * field + 16 * h), i2s_field(bh, field));
            }
        }
    }
}

/// A register tile of a GEMM over unpacked codes: `Σ code·act` for `R` rows of codes (stride
/// `k`) × `T` activation rows (stride `k`).
type Tile<const R: usize, const T: usize> = unsafe fn(*const i8, *const i8, usize) -> [[i32; T]; R];

/// The I2_S GEMM shared by the NEON and dotprod paths (many tokens): `R` rows are unpacked to
/// codes once and every group of `T` tokens runs `tile` over them. A last, partial group of
/// rows leaves the previous rows' codes in the buffer, and a last group of tokens is copied
/// into a zero-padded buffer; results for those rows and tokens are dropped.
/// `out[t · n_rows + r] = Σ code·q − qsum[t]`, since `t = code − 1`.
///
/// # Safety
/// Lengths as documented on [`crate::kernels::i2s_matmul`]; `tile` runnable on this CPU.
#[target_feature(enable = "neon")]
unsafe fn gemm<const R: usize, const T: usize>(
    w: &[u8],
    k: usize,
    acts: &[i8],
    qsums: &[i32],
    out: &mut [i32],
    tile: Tile<R, T>,
) {
    let row_bytes = k / 4;
    let n_rows = w.len() / row_bytes;
    let n_tokens = qsums.len();
    let mut codes = vec![0i8; R * k];
    // The last, partial group of tokens, zero-padded to T.
    let full = n_tokens / T * T;
    let mut tail = vec![0i8; if full < n_tokens { T * k } else { 0 }];
    tail[..(n_tokens - full) * k].copy_from_slice(&acts[full * k..n_tokens * k]);
    let mut r0 = 0;
    while r0 < n_rows {
        let rows = R.min(n_rows - r0);
        unpack_i2s_rows(
            &w[r0 * row_bytes..(r0 + rows) * row_bytes],
            &mut codes[..rows * k],
        );
        let mut t0 = 0;
        while t0 < n_tokens {
            let a = if t0 < full {
                acts[t0 * k..].as_ptr()
            } else {
                tail.as_ptr()
            };
            let sums = tile(codes.as_ptr(), a, k);
            for (r, row) in sums.iter().enumerate().take(rows) {
                for (t, &v) in row.iter().enumerate().take(n_tokens - t0) {
                    out[(t0 + t) * n_rows + r0 + r] = v - qsums[t0 + t];
                }
            }
            t0 += T;
        }
        r0 += rows;
    }
}

/// The TQ2_0 product shared by the NEON and dotprod paths, with `block_dot` = `Σ code·q` over
/// one 256-value block: per block an exact i32 dot, then `sum += d · dot` in block order, the
/// same float operations as the scalar twin.
///
/// # Safety
/// Lengths as documented on [`crate::kernels::tq2_0_matmul`]; `block_dot` runnable here.
#[inline(always)]
unsafe fn tq2_0_rows(
    w: &[u8],
    k: usize,
    acts: &[i8],
    block_qsums: &[i32],
    out: &mut [f32],
    block_dot: unsafe fn(*const u8, *const i8) -> i32,
) {
    let n_blocks = k / tq2_0::BLOCK_LEN;
    let row_bytes = n_blocks * 66;
    let n_rows = w.len() / row_bytes;
    for (t, sums) in block_qsums.chunks_exact(n_blocks).enumerate() {
        let q = acts[t * k..(t + 1) * k].as_ptr();
        for r in 0..n_rows {
            let mut sum = 0f32;
            let row = tq2_0::blocks(&w[r * row_bytes..(r + 1) * row_bytes]);
            for (b, (block, &qsum)) in row.iter().zip(sums).enumerate() {
                let dot = block_dot(block.qs.as_ptr(), q.add(b * tq2_0::BLOCK_LEN)) - qsum;
                sum += f16_bytes_to_f32(block.d) * dot as f32;
            }
            out[t * n_rows + r] = sum;
        }
    }
}

/// The Q8_0 product shared by the NEON and dotprod paths, with `block_dot` = `Σ w·q` over one
/// 32-value block, spread over the four i32 lanes. Four blocks at a time, their lane sums are
/// reduced by pairwise adds and their scale products `d_w · d_x` formed in one vector (the
/// f16 scales converted by `fcvtl`); the scaled block sums are then added to the row's sum one
/// by one, in block order. Every step is the scalar twin's own f32 operation in its order
/// (`(d_w · d_x) · dot`, then `sum += ...`), so the result is bit-identical to it.
///
/// # Safety
/// `w` holds whole rows of `qx.d.len()` blocks, `out` one value per row; `block_dot`
/// runnable on this CPU.
#[inline(always)]
unsafe fn q8_0_rows_with(
    w: &[u8],
    qx: &Q8Blocks,
    out: &mut [f32],
    block_dot: unsafe fn(*const i8, *const i8) -> int32x4_t,
) {
    let n_blocks = qx.d.len();
    let row_bytes = n_blocks * 34;
    let xq = qx.q.as_ptr();
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        let blocks = q8_0::blocks(row);
        let dot = |b: usize| {
            prefetch((blocks.as_ptr().add(b) as *const u8).wrapping_add(PREFETCH_BYTES));
            block_dot(blocks[b].qs.as_ptr(), xq.add(32 * b))
        };
        let mut sum = 0f32;
        let mut b = 0;
        while b + 4 <= n_blocks {
            let d = [dot(b), dot(b + 1), dot(b + 2), dot(b + 3)];
            let dots = vpaddq_s32(vpaddq_s32(d[0], d[1]), vpaddq_s32(d[2], d[3]));
            let mut dw = [0u16; 8];
            for (h, blk) in dw.iter_mut().zip(&blocks[b..b + 4]) {
                *h = u16::from_le_bytes(blk.d);
            }
            let scales = vmulq_f32(
                f16_lo_to_f32(vld1q_u16(dw.as_ptr())),
                vld1q_f32(qx.d[b..].as_ptr()),
            );
            let mut terms = [0f32; 4];
            vst1q_f32(terms.as_mut_ptr(), vmulq_f32(scales, vcvtq_f32_s32(dots)));
            for t in terms {
                sum += t;
            }
            b += 4;
        }
        for (b, (blk, &dx)) in blocks.iter().zip(&qx.d).enumerate().skip(b) {
            sum += f16_bytes_to_f32(blk.d) * dx * vaddvq_s32(dot(b)) as f32;
        }
        *o = sum;
    }
}

/// The Q6_K codes (0..63) of 16-value groups from one half-block (128 values): `ql0`, `ql1`
/// are 16 bytes of `ql[64h..]` and `ql[64h + 32..]`, `qh` of `qh[32h..]`, at the same offset
/// `16j`; entry `i` holds values `32i + 16j ..+16` of the half. Shift-and-insert puts the two
/// high bits beside each nibble in two instructions.
#[inline(always)]
unsafe fn q6_k_codes(ql0: uint8x16_t, ql1: uint8x16_t, qh: uint8x16_t) -> [int8x16_t; 4] {
    let (m3, m30) = (vdupq_n_u8(3), vdupq_n_u8(0x30));
    let qh2 = vshrq_n_u8::<2>(qh);
    [
        // (ql0 & 0xF) | (qh & 3) << 4
        vsliq_n_u8::<4>(ql0, vandq_u8(qh, m3)),
        // (ql1 & 0xF) | (qh >> 2 & 3) << 4
        vsliq_n_u8::<4>(ql1, vandq_u8(qh2, m3)),
        // ql0 >> 4 | (qh >> 4 & 3) << 4
        vsriq_n_u8::<4>(vandq_u8(qh, m30), ql0),
        // ql1 >> 4 | (qh >> 6) << 4
        vsriq_n_u8::<4>(vandq_u8(qh2, m30), ql1),
    ]
    .map(|v| vreinterpretq_s8_u8(v))
}

/// The Q6_K product shared by the NEON and dotprod paths, with `group_dot` = `Σ code·x` over
/// 16 values, spread over the four i32 lanes. Per half-block, the eight groups' lane sums are
/// reduced four at a time by pairwise adds and multiplied by their four scales in one
/// instruction. Per block: `Σ_g sc_g · Σ u·q − 32 · Σ_g sc_g · Σ q` in i32 (exact, so in any
/// order), then `sum += d_w · d_x · dot` in block order, as the scalar twin computes it.
///
/// # Safety
/// `w` holds whole rows of `qx.q.len() / 256` blocks; `group_dot` runnable on this CPU.
#[inline(always)]
unsafe fn q6_k_rows_with(
    w: &[u8],
    qx: &Q8K,
    out: &mut [f32],
    group_dot: unsafe fn(int8x16_t, int8x16_t) -> int32x4_t,
) {
    let n_blocks = qx.d.len();
    let row_bytes = n_blocks * 210;
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        let mut sum = 0f32;
        for (b, block) in q6_k::blocks(row).iter().enumerate() {
            let xq = qx.q[b * 256..(b + 1) * 256].as_ptr();
            let sc = vld1q_s8(block.scales.as_ptr());
            let (sc_lo, sc_hi) = (vmovl_s8(vget_low_s8(sc)), vmovl_high_s8(sc));
            // The scales of groups 4m..4m+4 as i32.
            let sc32 = [
                vmovl_s16(vget_low_s16(sc_lo)),
                vmovl_high_s16(sc_lo),
                vmovl_s16(vget_low_s16(sc_hi)),
                vmovl_high_s16(sc_hi),
            ];
            let mut acc = vdupq_n_s32(0);
            for half in 0..2 {
                // dots(j)[i]: values 32i + 16j ..+16 of the half, i.e. group 8·half + 2i + j.
                let dots = |j: usize| {
                    let codes = q6_k_codes(
                        vld1q_u8(block.ql[64 * half + 16 * j..].as_ptr()),
                        vld1q_u8(block.ql[64 * half + 32 + 16 * j..].as_ptr()),
                        vld1q_u8(block.qh[32 * half + 16 * j..].as_ptr()),
                    );
                    let mut d = [vdupq_n_s32(0); 4];
                    for (i, (di, &c)) in d.iter_mut().zip(&codes).enumerate() {
                        *di = group_dot(c, vld1q_s8(xq.add(128 * half + 32 * i + 16 * j)));
                    }
                    d
                };
                let (d0, d1) = (dots(0), dots(1));
                for m in 0..2 {
                    // [Σ group 4m', Σ 4m'+1, Σ 4m'+2, Σ 4m'+3] for m' = 2·half + m.
                    let (i0, i1) = (2 * m, 2 * m + 1);
                    let sums = vpaddq_s32(vpaddq_s32(d0[i0], d1[i0]), vpaddq_s32(d0[i1], d1[i1]));
                    acc = vmlaq_s32(acc, sums, sc32[2 * half + m]);
                }
            }
            // The −32 offset: Σ_g sc_g · Σ_{i∈g} q_i, widened to i32.
            let gs = qx.group_sums[b * 16..(b + 1) * 16].as_ptr();
            let (gs_lo, gs_hi) = (vld1q_s16(gs), vld1q_s16(gs.add(8)));
            let bias = vmull_s16(vget_low_s16(sc_lo), vget_low_s16(gs_lo));
            let bias = vmlal_high_s16(bias, sc_lo, gs_lo);
            let bias = vmlal_s16(bias, vget_low_s16(sc_hi), vget_low_s16(gs_hi));
            let bias = vmlal_high_s16(bias, sc_hi, gs_hi);
            let dot = vaddvq_s32(acc) - 32 * vaddvq_s32(bias);
            sum += f16_bytes_to_f32(block.d) * qx.d[b] * dot as f32;
        }
        *o = sum;
    }
}

/// The helpers; the kernels are checked against their scalar twins in `tests/kernels_props.rs`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_the_half_crate() {
        let bits: Vec<u16> = (0..8).map(|i| 0x3c00 ^ (i * 0x1357)).collect();
        let h: Vec<half::f16> = bits.iter().map(|&b| half::f16::from_bits(b)).collect();
        // SAFETY: NEON is part of every AArch64 CPU; eight values are read.
        let (lo, hi) = unsafe { load_f16x8(h.as_ptr()) };
        let mut out = [0f32; 8];
        // SAFETY: eight f32 are written into `out`.
        unsafe {
            vst1q_f32(out.as_mut_ptr(), lo);
            vst1q_f32(out.as_mut_ptr().add(4), hi);
        }
        for (o, v) in out.iter().zip(&h) {
            assert_eq!(o.to_bits(), v.to_f32().to_bits());
        }
        // Subnormals, infinities and signed zeros too, one value at a time.
        for bits in [
            0x0001, 0x03ff, 0x8001, 0x7c00, 0xfc00, 0x8000, 0x7bff, 0x3555,
        ] {
            let v = half::f16::from_bits(bits);
            // SAFETY: NEON is part of every AArch64 CPU.
            let f = unsafe { f16_bytes_to_f32(v.to_le_bytes()) };
            assert_eq!(f.to_bits(), v.to_f32().to_bits(), "{bits:#x}");
        }
    }
}
