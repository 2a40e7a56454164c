//! NEON with the dot-product extension (ARMv8.2 `sdot`: four i8 × i8 products added into each
//! i32 lane, 16 per instruction). The ternary products, Q8_0 and Q6_K run on it; everything
//! else is the plain NEON table's. Every function requires the features in its
//! `target_feature` attribute; callers check them at run time (`Isa::Dotprod`).
//!
//! The I2_S GEMV leaves each 2-bit field where it sits in the byte (`b & 0x30` is `16·code`,
//! `b & 0x0C` is `4·code`; only bits 7-6 need a shift), so one instruction per 16 codes
//! extracts them, and keeps one accumulator per field: each lane of the `16·code` accumulator
//! is an exact multiple of 16, so shifting it right by 4 at the end is exact.

use std::arch::aarch64::*;
use std::arch::asm;

use super::{prefetch, t16_next, t16_tail_trits, t16_trits, PREFETCH_BYTES};
use crate::kernels::scalar::{Q8Blocks, Q8K};
use crate::kernels::{t16_tail_bytes, Isa, KernelTable, T16_BLOCK_LEN};

/// The dotprod kernels: the ternary products, Q8_0 and Q6_K; the rest are plain NEON's.
pub(crate) static TABLE: KernelTable = KernelTable {
    isa: Isa::Dotprod,
    i2s_matmul,
    tq2_0_matmul,
    t16_matmul,
    q8_0_rows,
    q6_k_rows,
    ..super::neon::TABLE
};

/// `acc + Σ a·b` per i32 lane over its four byte pairs (`sdot`). Inline assembly because
/// `vdotq_s32` is not stable yet; `pure, nomem`: it only reads and writes these registers.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(super) fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` reads `a`, `b` and `acc` and writes `acc`, nothing else; this function's
    // `target_feature` makes the assembler accept it and its callers prove the CPU has it.
    unsafe {
        asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) a,
             b = in(vreg) b, options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// See [`crate::kernels::i2s_matmul`]: a GEMV for one token, a GEMM over unpacked codes for
/// more.
///
/// # Safety
/// Requires NEON and dotprod; slice lengths as documented there (checked by the caller).
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn i2s_matmul(w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    match qsums {
        [] => {}
        [qsum] => gemv(w, k, acts, *qsum, out),
        _ => super::gemm::<4, 4>(w, k, acts, qsums, out, tile::<4, 4>),
    }
}

/// One token against every row, two rows per pass sharing the activation loads; each row is
/// read once, front to back.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn gemv(w: &[u8], k: usize, q: &[i8], qsum: i32, out: &mut [i32]) {
    let row_bytes = k / 4;
    let n_rows = w.len() / row_bytes;
    let (wp, q) = (w.as_ptr(), q.as_ptr());
    let mut r = 0;
    while r + 2 <= n_rows {
        let rows = [wp.add(r * row_bytes), wp.add((r + 1) * row_bytes)];
        let [d0, d1] = rows_dot(rows, q, k);
        out[r] = d0 - qsum;
        out[r + 1] = d1 - qsum;
        r += 2;
    }
    if r < n_rows {
        let [d0] = rows_dot([wp.add(r * row_bytes)], q, k);
        out[r] = d0 - qsum;
    }
}

/// `Σ code·q` for `N` I2_S rows of `k` values. Per 128 values and row: one 32-byte load, eight
/// field extractions, eight `sdot`s (the activation loads are shared by the rows).
///
/// Exact while no i32 lane overflows: the `16·code` lanes gain at most 8 · 16·2·128 = 32768
/// per block, so for `k` below 2^23 (the largest BitNet row has 6912 values).
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn rows_dot<const N: usize>(w: [*const u8; N], q: *const i8, k: usize) -> [i32; N] {
    debug_assert!(k < 1 << 23);
    let (m30, m0c, m03) = (vdupq_n_u8(0x30), vdupq_n_u8(0x0c), vdupq_n_u8(0x03));
    // Per row, one accumulator per field (codes scaled by 1, 16, 4, 1): four independent
    // chains of `sdot`s, so their latency overlaps.
    let mut acc = [[vdupq_n_s32(0); 4]; N];
    for blk in 0..k / 128 {
        let qb = q.add(blk * 128);
        // Activations of values 32·field + 16·half of the block, shared by the N rows.
        let mut x = [vdupq_n_s8(0); 8];
        for (i, v) in x.iter_mut().enumerate() {
            *v = vld1q_s8(qb.add(16 * i));
        }
        for (row, a) in w.iter().zip(acc.iter_mut()) {
            let wb = row.add(blk * 32);
            prefetch(wb.wrapping_add(PREFETCH_BYTES));
            for half in 0..2 {
                let b = vld1q_u8(wb.add(16 * half));
                let fields = [
                    vshrq_n_u8::<6>(b),
                    vandq_u8(b, m30),
                    vandq_u8(b, m0c),
                    vandq_u8(b, m03),
                ];
                for (f, &codes) in fields.iter().enumerate() {
                    a[f] = sdot(a[f], vreinterpretq_s8_u8(codes), x[2 * f + half]);
                }
            }
        }
    }
    acc.map(|[f0, f1, f2, f3]| vaddvq_s32(unscale_fields(f0, f1, f2, f3)))
}

/// Lane-wise `f0 + f1/16 + f2/4 + f3` of per-field accumulators whose codes were left in place
/// (`f1` holds 16·code products, `f2` 4·code; both exact multiples, so the shifts are exact).
#[inline(always)]
fn unscale_fields(f0: int32x4_t, f1: int32x4_t, f2: int32x4_t, f3: int32x4_t) -> int32x4_t {
    // SAFETY: NEON is part of every AArch64 target (these are plain register operations).
    unsafe { vsraq_n_s32::<2>(vsraq_n_s32::<4>(vaddq_s32(f0, f3), f1), f2) }
}

/// `Σ code·act` for `R` rows of unpacked codes × `T` tokens (see [`super::gemm`]).
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile<const R: usize, const T: usize>(
    codes: *const i8,
    acts: *const i8,
    k: usize,
) -> [[i32; T]; R] {
    let mut acc = [[vdupq_n_s32(0); T]; R];
    for kk in (0..k).step_by(16) {
        let mut x = [vdupq_n_s8(0); T];
        for (t, v) in x.iter_mut().enumerate() {
            *v = vld1q_s8(acts.add(t * k + kk));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let c = vld1q_s8(codes.add(r * k + kk));
            for (a, &xt) in row.iter_mut().zip(&x) {
                *a = sdot(*a, c, xt);
            }
        }
    }
    acc.map(|row| row.map(|a| vaddvq_s32(a)))
}

/// See [`crate::kernels::t16_matmul`].
///
/// # Safety
/// Requires NEON and dotprod; slice lengths as documented there (checked by the caller).
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn t16_matmul(w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    super::t16_matmul_with(
        w,
        k,
        acts,
        qsums.len(),
        out,
        |p, q| unsafe { t16_rows::<4>(p, k, q) },
        |p, q| unsafe { t16_rows::<1>(p, k, q) },
    );
}

/// `Σ t·q` for `R` interleaved T1_6 rows: per 16 bytes and digit, the trits (two compares and
/// a NOT, see `t16_trits`), one `sdot`, and the byte multiply by 3 for the next digit.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn t16_rows<const R: usize>(wp: *const u8, k: usize, q: *const i8) -> [i32; R] {
    let mut acc = [vdupq_n_s32(0); R];
    let full = k / T16_BLOCK_LEN;
    let block = |p: *const u8, qb: *const i8, n: usize, acc: &mut int32x4_t| {
        let mut x = [vld1q_u8(p), vld1q_u8(p.add(16))];
        for i in 0..n {
            for (h, xh) in x.iter_mut().enumerate() {
                *acc = sdot(*acc, t16_trits(*xh), vld1q_s8(qb.add(32 * i + 16 * h)));
                *xh = t16_next(*xh);
            }
        }
    };
    for blk in 0..full {
        let qb = q.add(blk * T16_BLOCK_LEN);
        for (r, a) in acc.iter_mut().enumerate() {
            let p = wp.add((blk * R + r) * 32);
            prefetch(p.wrapping_add(PREFETCH_BYTES));
            block(p, qb, 5, a);
        }
    }
    let tail_bytes = t16_tail_bytes(k);
    let tp = wp.add(full * R * 32);
    for g in 0..tail_bytes / 8 {
        let qg = q.add(full * T16_BLOCK_LEN + 32 * g);
        for (r, a) in acc.iter_mut().enumerate() {
            let trits = t16_tail_trits(tp.add(r * tail_bytes + 8 * g));
            for (h, th) in trits.into_iter().enumerate() {
                *a = sdot(*a, th, vld1q_s8(qg.add(16 * h)));
            }
        }
    }
    acc.map(|a| vaddvq_s32(a))
}

/// See [`crate::kernels::tq2_0_matmul`].
///
/// # Safety
/// Requires NEON and dotprod; slice lengths as documented there.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn tq2_0_matmul(w: &[u8], k: usize, acts: &[i8], block_qsums: &[i32], out: &mut [f32]) {
    super::tq2_0_rows(w, k, acts, block_qsums, out, tq2_0_block_dot);
}

/// `Σ code·q` over one TQ2_0 block (values `32·l + m` of each 128-value half at bit shift
/// `2l`), the fields left in place as in the I2_S GEMV.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn tq2_0_block_dot(qs: *const u8, q: *const i8) -> i32 {
    let (m03, m0c, m30) = (vdupq_n_u8(0x03), vdupq_n_u8(0x0c), vdupq_n_u8(0x30));
    // Accumulators for the fields at shifts 6, 4, 2, 0 (codes scaled by 1, 16, 4, 1).
    let mut f = [vdupq_n_s32(0); 4];
    for half in 0..2 {
        for j in 0..2 {
            let b = vld1q_u8(qs.add(32 * half + 16 * j));
            let x = |l: usize| vld1q_s8(q.add(128 * half + 32 * l + 16 * j));
            f[0] = sdot(f[0], vreinterpretq_s8_u8(vshrq_n_u8::<6>(b)), x(3));
            f[1] = sdot(f[1], vreinterpretq_s8_u8(vandq_u8(b, m30)), x(2));
            f[2] = sdot(f[2], vreinterpretq_s8_u8(vandq_u8(b, m0c)), x(1));
            f[3] = sdot(f[3], vreinterpretq_s8_u8(vandq_u8(b, m03)), x(0));
        }
    }
    vaddvq_s32(unscale_fields(f[0], f[1], f[2], f[3]))
}

/// See [`crate::kernels::q8_0_matmul`]: per 32-value block two `sdot`s. Bit-identical to the
/// scalar twin.
///
/// # Safety
/// Requires NEON and dotprod; `w` holds whole rows of `qx.d.len()` blocks.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q8_0_rows(w: &[u8], qx: &Q8Blocks, out: &mut [f32]) {
    super::q8_0_rows_with(w, qx, out, q8_0_block_dot);
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn q8_0_block_dot(w: *const i8, x: *const i8) -> int32x4_t {
    let lo = sdot(vdupq_n_s32(0), vld1q_s8(w), vld1q_s8(x));
    sdot(lo, vld1q_s8(w.add(16)), vld1q_s8(x.add(16)))
}

/// See [`crate::kernels::q6_k_matmul`]: per 16 values one `sdot` of the codes (0..63) with the
/// activations. Bit-identical to the scalar twin.
///
/// # Safety
/// Requires NEON and dotprod; `w` holds whole rows of `qx.q.len() / 256` blocks.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q6_k_rows(w: &[u8], qx: &Q8K, out: &mut [f32]) {
    super::q6_k_rows_with(w, qx, out, q6_k_group_dot);
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn q6_k_group_dot(codes: int8x16_t, x: int8x16_t) -> int32x4_t {
    sdot(vdupq_n_s32(0), codes, x)
}
