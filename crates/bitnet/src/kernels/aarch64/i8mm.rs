//! NEON with the int8 matrix-multiply extension (ARMv8.6 `smmla`: a 2×8 by 8×2 int8 product
//! added into a 2×2 i32 tile, 32 multiply-adds per instruction, twice `sdot`'s). It runs the
//! prefill GEMM (several tokens × rows); decoding (one token, a GEMV, where `smmla` would
//! waste half its work on a missing second token) and everything else is the dotprod table's.
//!
//! `smmla` wants both operands as pairs of 8-byte rows: the GEMM unpacks each pair of weight
//! rows into codes interleaved by 8 values (`r0[0..8], r1[0..8], r0[8..16], ...`), and each
//! pair of tokens the same way, so one 16-byte load feeds one operand.

use std::arch::aarch64::*;
use std::arch::asm;

use super::i2s_field;
use crate::kernels::{Isa, KernelTable};

/// The i8mm kernels: the I2_S GEMM; the rest is the dotprod table's.
pub(crate) static TABLE: KernelTable = KernelTable {
    isa: Isa::I8mm,
    i2s_matmul,
    ..super::dotprod::TABLE
};

/// Row pairs per register tile (8 weight rows).
const ROW_PAIRS: usize = 4;
/// Token pairs per register tile, at most (8 tokens).
const TOKEN_PAIRS: usize = 4;

/// `acc + a·bᵀ` for `a`, `b` two 2×8 int8 matrices (one row per 8-byte half) and `acc` a
/// 2×2 i32 matrix in lanes `[a0·b0, a0·b1, a1·b0, a1·b1]` (`smmla`). Inline assembly because
/// `vmmlaq_s32` is not stable yet.
#[inline]
#[target_feature(enable = "neon,i8mm")]
fn smmla(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `smmla` reads `a`, `b` and `acc` and writes `acc`, nothing else; this function's
    // `target_feature` makes the assembler accept it and its callers prove the CPU has it.
    unsafe {
        asm!("smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) a,
             b = in(vreg) b, options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// See [`crate::kernels::i2s_matmul`]: the dotprod GEMV for one token, the `smmla` GEMM for
/// more.
///
/// # Safety
/// Requires NEON, dotprod and i8mm; slice lengths as documented there.
#[target_feature(enable = "neon,dotprod,i8mm")]
pub unsafe fn i2s_matmul(w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    match qsums {
        [] => {}
        [qsum] => super::dotprod::gemv(w, k, acts, *qsum, out),
        _ => gemm(w, k, acts, qsums, out),
    }
}

/// `[a.lo, b.lo]` and `[a.hi, b.hi]`: two 16-value rows as two 8-value row pairs.
#[inline(always)]
unsafe fn interleave(a: int8x16_t, b: int8x16_t) -> (int8x16_t, int8x16_t) {
    let (a, b) = (vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b));
    (
        vreinterpretq_s8_s64(vzip1q_s64(a, b)),
        vreinterpretq_s8_s64(vzip2q_s64(a, b)),
    )
}

/// Many tokens: tokens interleaved in pairs once, then for every 8 rows (unpacked to codes
/// interleaved in pairs) register tiles of 8 rows × up to 8 tokens. A missing last token of a
/// pair is zero activations and missing rows zero codes; their results are dropped.
#[target_feature(enable = "neon,dotprod,i8mm")]
unsafe fn gemm(w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    let row_bytes = k / 4;
    let n_rows = w.len() / row_bytes;
    let n_tokens = qsums.len();
    let token_pairs = n_tokens.div_ceil(2);
    let mut pairs = vec![0i8; token_pairs * 2 * k];
    for (p, dst) in pairs.chunks_exact_mut(2 * k).enumerate() {
        let t0 = acts[2 * p * k..].as_ptr();
        let has_t1 = 2 * p + 1 < n_tokens;
        for kk in (0..k).step_by(16) {
            let a = vld1q_s8(t0.add(kk));
            let b = if has_t1 {
                vld1q_s8(t0.add(k + kk))
            } else {
                vdupq_n_s8(0)
            };
            let (lo, hi) = interleave(a, b);
            vst1q_s8(dst.as_mut_ptr().add(2 * kk), lo);
            vst1q_s8(dst.as_mut_ptr().add(2 * kk + 16), hi);
        }
    }
    let mut codes = vec![0i8; ROW_PAIRS * 2 * k];
    let mut r0 = 0;
    while r0 < n_rows {
        let rows = (2 * ROW_PAIRS).min(n_rows - r0);
        unpack_row_pairs(&w[r0 * row_bytes..(r0 + rows) * row_bytes], k, &mut codes);
        let tiles = Tiles {
            r0,
            rows,
            n_rows,
            qsums,
        };
        let mut p0 = 0;
        while p0 < token_pairs {
            let a = pairs[p0 * 2 * k..].as_ptr();
            let c = codes.as_ptr();
            let tp = TOKEN_PAIRS.min(token_pairs - p0);
            match tp {
                4 => tiles.store(tile::<4>(c, a, k), 2 * p0, out),
                3 => tiles.store(tile::<3>(c, a, k), 2 * p0, out),
                2 => tiles.store(tile::<2>(c, a, k), 2 * p0, out),
                _ => tiles.store(tile::<1>(c, a, k), 2 * p0, out),
            }
            p0 += tp;
        }
        r0 += rows;
    }
}

/// Unpacks up to `2 · ROW_PAIRS` I2_S rows (`w`) into codes, each pair of rows interleaved by
/// 8 values into its own `2k` bytes of `codes`; rows past the end are zero codes.
#[target_feature(enable = "neon")]
unsafe fn unpack_row_pairs(w: &[u8], k: usize, codes: &mut [i8]) {
    let row_bytes = k / 4;
    let rows = w.len() / row_bytes;
    let zero = [vdupq_n_u8(0); 2];
    for (p, dst) in codes.chunks_exact_mut(2 * k).enumerate() {
        if 2 * p >= rows {
            dst.fill(0);
            continue;
        }
        let ra = w[2 * p * row_bytes..].as_ptr();
        let rb = (2 * p + 1 < rows).then(|| ra.add(row_bytes));
        for blk in 0..k / 128 {
            let load = |r: *const u8| [vld1q_u8(r.add(32 * blk)), vld1q_u8(r.add(32 * blk + 16))];
            let a = load(ra);
            let b = rb.map_or(zero, load);
            for field in 0..4 {
                for half in 0..2 {
                    let v = blk * 128 + 32 * field + 16 * half;
                    let (lo, hi) = interleave(i2s_field(a[half], field), i2s_field(b[half], field));
                    // Values v..v+8 of the pair start at byte 2v.
                    vst1q_s8(dst.as_mut_ptr().add(2 * v), lo);
                    vst1q_s8(dst.as_mut_ptr().add(2 * v + 16), hi);
                }
            }
        }
    }
}

/// `Σ code·act` for `ROW_PAIRS` pairs of code rows × `TQ` pairs of tokens, both interleaved
/// by 8 values; `[p][q]` = `[r0·t0, r0·t1, r1·t0, r1·t1]` for rows `2p, 2p+1` and tokens
/// `2q, 2q+1`. Per 8 values: `ROW_PAIRS + TQ` loads, `ROW_PAIRS · TQ` `smmla`s.
#[target_feature(enable = "neon,i8mm")]
unsafe fn tile<const TQ: usize>(
    codes: *const i8,
    acts: *const i8,
    k: usize,
) -> [[[i32; 4]; TQ]; ROW_PAIRS] {
    let mut acc = [[vdupq_n_s32(0); TQ]; ROW_PAIRS];
    for off in (0..2 * k).step_by(16) {
        let mut x = [vdupq_n_s8(0); TQ];
        for (q, v) in x.iter_mut().enumerate() {
            *v = vld1q_s8(acts.add(q * 2 * k + off));
        }
        for (p, row) in acc.iter_mut().enumerate() {
            let c = vld1q_s8(codes.add(p * 2 * k + off));
            for (a, &xq) in row.iter_mut().zip(&x) {
                *a = smmla(*a, c, xq);
            }
        }
    }
    acc.map(|row| {
        row.map(|a| {
            let mut lanes = [0i32; 4];
            vst1q_s32(lanes.as_mut_ptr(), a);
            lanes
        })
    })
}

/// Where one row block's tiles go in `out`.
struct Tiles<'a> {
    r0: usize,
    rows: usize,
    n_rows: usize,
    qsums: &'a [i32],
}

impl Tiles<'_> {
    /// Stores a tile starting at token `t0`: `Σ code·q − qsum`, since `t = code − 1`.
    fn store<const TQ: usize>(
        &self,
        tile: [[[i32; 4]; TQ]; ROW_PAIRS],
        t0: usize,
        out: &mut [i32],
    ) {
        for (p, pair) in tile.iter().enumerate() {
            for (q, lanes) in pair.iter().enumerate() {
                for (i, &v) in lanes.iter().enumerate() {
                    let (r, t) = (2 * p + i / 2, t0 + 2 * q + i % 2);
                    if r < self.rows && t < self.qsums.len() {
                        out[t * self.n_rows + self.r0 + r] = v - self.qsums[t];
                    }
                }
            }
        }
    }
}
