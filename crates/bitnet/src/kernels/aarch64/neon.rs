//! Plain NEON kernels (every ARMv8-A CPU: Raspberry Pi 4, Cortex-A72, ...). Without `sdot`,
//! int8 products are widened: `smlal` multiplies eight code × activation pairs into i16
//! lanes, which are added into i32 lanes (`sadalp`) before they can overflow. Every function
//! requires NEON (always present on AArch64; `Isa::Neon` checks it anyway).

use std::arch::aarch64::*;

use half::f16;

use super::{i2s_field, load_f16x8, prefetch, t16_next, t16_tail_trits, t16_trits, PREFETCH_BYTES};
use crate::kernels::scalar::{Q8Blocks, Q8K};
use crate::kernels::{t16_tail_bytes, Isa, KernelTable, T16_BLOCK_LEN};

/// The NEON kernels: a path for every operation.
pub(crate) static TABLE: KernelTable = KernelTable {
    isa: Isa::Neon,
    // The file's I2_S layout (see the module docs of `super`).
    i2s_rows: 1,
    quantize_row_i8,
    i2s_matmul,
    tq2_0_matmul,
    t16_matmul,
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

/// `acc + Σ c·x` over 16 byte pairs, as eight i16 lanes (two products per lane, each
/// `|c·x| ≤ 2·128` for ternary codes).
#[inline(always)]
unsafe fn mlal16(acc: int16x8_t, c: int8x16_t, x: int8x16_t) -> int16x8_t {
    vmlal_high_s8(vmlal_s8(acc, vget_low_s8(c), vget_low_s8(x)), c, x)
}

/// See [`crate::kernels::i2s_matmul`]: a GEMV for one token, a GEMM over unpacked codes for
/// more.
///
/// # Safety
/// Requires NEON; slice lengths as documented there (checked by the caller).
#[target_feature(enable = "neon")]
pub unsafe fn i2s_matmul(w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    match qsums {
        [] => {}
        [qsum] => gemv(w, k, acts, *qsum, out),
        _ => super::gemm::<2, 4>(w, k, acts, qsums, out, tile::<2, 4>),
    }
}

/// One token against every row, two rows per pass sharing the activation loads; each row is
/// read once, front to back.
#[target_feature(enable = "neon")]
unsafe fn gemv(w: &[u8], k: usize, q: &[i8], qsum: i32, out: &mut [i32]) {
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

/// Blocks between flushes of the GEMV's i16 accumulators: a lane gains 16 products
/// `|c·q| ≤ 256` per block (eight 16-byte steps, two products each), so 4 blocks stay within
/// ±16384 (8 would reach −32768 exactly, too close for comfort).
const GEMV_FLUSH_BLOCKS: usize = 4;

/// `Σ code·q` for `N` I2_S rows of `k` values.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn rows_dot<const N: usize>(w: [*const u8; N], q: *const i8, k: usize) -> [i32; N] {
    let blocks = k / 128;
    let mut acc = [vdupq_n_s32(0); N];
    let mut start = 0;
    while start < blocks {
        let end = (start + GEMV_FLUSH_BLOCKS).min(blocks);
        let mut acc16 = [vdupq_n_s16(0); N];
        for blk in start..end {
            let qb = q.add(blk * 128);
            // Activations of values 32·field + 16·half of the block, shared by the N rows.
            let mut x = [vdupq_n_s8(0); 8];
            for (i, v) in x.iter_mut().enumerate() {
                *v = vld1q_s8(qb.add(16 * i));
            }
            for (row, a16) in w.iter().zip(acc16.iter_mut()) {
                let wb = row.add(blk * 32);
                prefetch(wb.wrapping_add(PREFETCH_BYTES));
                let packed = [vld1q_u8(wb), vld1q_u8(wb.add(16))];
                for field in 0..4 {
                    for (half, &b) in packed.iter().enumerate() {
                        *a16 = mlal16(*a16, i2s_field(b, field), x[2 * field + half]);
                    }
                }
            }
        }
        for (a, a16) in acc.iter_mut().zip(acc16) {
            *a = vpadalq_s16(*a, a16);
        }
        start = end;
    }
    acc.map(|a| vaddvq_s32(a))
}

/// See [`crate::kernels::t16_matmul`].
///
/// # Safety
/// Requires NEON; slice lengths as documented there (checked by the caller).
#[target_feature(enable = "neon")]
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

/// `Σ t·q` for `R` interleaved T1_6 rows: per 16 bytes and digit, the trits (two compares),
/// then `smlal` into i16 lanes (a lane gains at most 2 · 128 per digit and 16-byte half, so
/// 2560 per block), flushed into i32 lanes every block.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn t16_rows<const R: usize>(wp: *const u8, k: usize, q: *const i8) -> [i32; R] {
    let mut acc = [vdupq_n_s32(0); R];
    let full = k / T16_BLOCK_LEN;
    let block = |p: *const u8, qb: *const i8, n: usize, acc: &mut int32x4_t| {
        let mut x = [vld1q_u8(p), vld1q_u8(p.add(16))];
        let mut a16 = vdupq_n_s16(0);
        for i in 0..n {
            for (h, xh) in x.iter_mut().enumerate() {
                a16 = mlal16(a16, t16_trits(*xh), vld1q_s8(qb.add(32 * i + 16 * h)));
                *xh = t16_next(*xh);
            }
        }
        *acc = vpadalq_s16(*acc, a16);
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
            let mut a16 = vdupq_n_s16(0);
            for (h, th) in trits.into_iter().enumerate() {
                a16 = mlal16(a16, th, vld1q_s8(qg.add(16 * h)));
            }
            *a = vpadalq_s16(*a, a16);
        }
    }
    acc.map(|a| vaddvq_s32(a))
}

/// Values (16 per step) between flushes of a GEMM tile's i16 accumulators: a lane gains two
/// products `|c·q| ≤ 256` per step, so 32 steps stay within ±16384.
const TILE_FLUSH: usize = 32 * 16;

/// `Σ code·act` for `R` rows of unpacked codes × `T` tokens (see [`super::gemm`]).
#[target_feature(enable = "neon")]
unsafe fn tile<const R: usize, const T: usize>(
    codes: *const i8,
    acts: *const i8,
    k: usize,
) -> [[i32; T]; R] {
    let mut acc = [[vdupq_n_s32(0); T]; R];
    let mut start = 0;
    while start < k {
        let end = (start + TILE_FLUSH).min(k);
        let mut acc16 = [[vdupq_n_s16(0); T]; R];
        for kk in (start..end).step_by(16) {
            let mut x = [vdupq_n_s8(0); T];
            for (t, v) in x.iter_mut().enumerate() {
                *v = vld1q_s8(acts.add(t * k + kk));
            }
            for (r, row) in acc16.iter_mut().enumerate() {
                let c = vld1q_s8(codes.add(r * k + kk));
                for (a16, &xt) in row.iter_mut().zip(&x) {
                    *a16 = mlal16(*a16, c, xt);
                }
            }
        }
        for (row, row16) in acc.iter_mut().zip(acc16) {
            for (a, a16) in row.iter_mut().zip(row16) {
                *a = vpadalq_s16(*a, a16);
            }
        }
        start = end;
    }
    acc.map(|row| row.map(|a| vaddvq_s32(a)))
}

/// See [`crate::kernels::tq2_0_matmul`].
///
/// # Safety
/// Requires NEON; slice lengths as documented there.
#[target_feature(enable = "neon")]
pub unsafe fn tq2_0_matmul(w: &[u8], k: usize, acts: &[i8], block_qsums: &[i32], out: &mut [f32]) {
    super::tq2_0_rows(w, k, acts, block_qsums, out, tq2_0_block_dot);
}

/// `Σ code·q` over one TQ2_0 block (256 values; `qs` its 64 packed bytes).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn tq2_0_block_dot(qs: *const u8, q: *const i8) -> i32 {
    // 32 products |c·q| ≤ 256 per lane (16 steps of two): within ±8192.
    let mut acc16 = vdupq_n_s16(0);
    for half in 0..2 {
        let packed = [
            vld1q_u8(qs.add(32 * half)),
            vld1q_u8(qs.add(32 * half + 16)),
        ];
        // TQ2_0 keeps values 32·l + m of the half at bit shift 2l: I2_S's field 3 − l.
        for l in 0..4 {
            for (j, &b) in packed.iter().enumerate() {
                let x = vld1q_s8(q.add(128 * half + 32 * l + 16 * j));
                acc16 = mlal16(acc16, i2s_field(b, 3 - l), x);
            }
        }
    }
    vaddlvq_s16(acc16)
}

/// See [`crate::kernels::quantize_row_i8`]; bit-identical to the scalar twin: the same f32
/// product `x · s`, rounded half to even by `fcvtns` (`vcvtnq_s32_f32`), and the clamp to
/// −128..=127 done by the saturating narrows (i32 → i16 → i8).
///
/// # Safety
/// Requires NEON; `q.len() >= x.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn quantize_row_i8(x: &[f32], q: &mut [i8]) -> f32 {
    let n = x.len();
    let p = x.as_ptr();
    // `fmaxnm` ignores a NaN operand, as `f32::max` in the scalar twin does.
    let mut m = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (j, mj) in m.iter_mut().enumerate() {
            *mj = vmaxnmq_f32(*mj, vabsq_f32(vld1q_f32(p.add(i + 4 * j))));
        }
        i += 16;
    }
    let mut amax = vmaxnmvq_f32(vmaxnmq_f32(
        vmaxnmq_f32(m[0], m[1]),
        vmaxnmq_f32(m[2], m[3]),
    ));
    for &v in &x[i..] {
        amax = amax.max(v.abs());
    }
    let s = 127.0 / amax.max(1e-5);
    let vs = vdupq_n_f32(s);
    let mut i = 0;
    while i + 16 <= n {
        let mut ints = [vdupq_n_s32(0); 4];
        for (j, v) in ints.iter_mut().enumerate() {
            *v = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(p.add(i + 4 * j)), vs));
        }
        let lo = vqmovn_high_s32(vqmovn_s32(ints[0]), ints[1]);
        let hi = vqmovn_high_s32(vqmovn_s32(ints[2]), ints[3]);
        vst1q_s8(q.as_mut_ptr().add(i), vqmovn_high_s16(vqmovn_s16(lo), hi));
        i += 16;
    }
    for j in i..n {
        q[j] = (x[j] * s).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    s
}

/// See [`crate::kernels::f16_matmul`].
///
/// # Safety
/// Requires NEON.
#[target_feature(enable = "neon")]
pub unsafe fn f16_matmul(w: &[f16], k: usize, x: &[f32], out: &mut [f32]) {
    let n_rows = w.len() / k;
    for (t, xt) in x.chunks_exact(k).enumerate() {
        for (r, row) in w.chunks_exact(k).enumerate() {
            out[t * n_rows + r] = f16_dot(row, xt);
        }
    }
}

/// `Σ w·x` with f16 weights, in four f32 accumulators.
///
/// # Safety
/// Requires NEON.
#[inline]
#[target_feature(enable = "neon")]
pub unsafe fn f16_dot(w: &[f16], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        let (w0, w1) = load_f16x8(wp.add(i));
        let (w2, w3) = load_f16x8(wp.add(i + 8));
        for (j, (a, wj)) in acc.iter_mut().zip([w0, w1, w2, w3]).enumerate() {
            *a = vfmaq_f32(*a, wj, vld1q_f32(xp.add(i + 4 * j)));
        }
        i += 16;
    }
    if i + 8 <= n {
        let (w0, w1) = load_f16x8(wp.add(i));
        acc[0] = vfmaq_f32(acc[0], w0, vld1q_f32(xp.add(i)));
        acc[1] = vfmaq_f32(acc[1], w1, vld1q_f32(xp.add(i + 4)));
        i += 8;
    }
    let mut total = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    for j in i..n {
        total += w[j].to_f32() * x[j];
    }
    total
}

/// `Σ a·b` in four f32 accumulators.
///
/// # Safety
/// Requires NEON.
#[inline]
#[target_feature(enable = "neon")]
pub unsafe fn f32_dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (j, s) in acc.iter_mut().enumerate() {
            *s = vfmaq_f32(
                *s,
                vld1q_f32(pa.add(i + 4 * j)),
                vld1q_f32(pb.add(i + 4 * j)),
            );
        }
        i += 16;
    }
    while i + 4 <= n {
        acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
        i += 4;
    }
    let mut total = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    for j in i..n {
        total += a[j] * b[j];
    }
    total
}

/// `out += a · v` with f16 `v`.
///
/// # Safety
/// Requires NEON.
#[inline]
#[target_feature(enable = "neon")]
pub unsafe fn f16_axpy(out: &mut [f32], a: f32, v: &[f16]) {
    let n = out.len().min(v.len());
    let (op, vp) = (out.as_mut_ptr(), v.as_ptr());
    let mut i = 0;
    while i + 8 <= n {
        let (v0, v1) = load_f16x8(vp.add(i));
        vst1q_f32(op.add(i), vfmaq_n_f32(vld1q_f32(op.add(i)), v0, a));
        vst1q_f32(op.add(i + 4), vfmaq_n_f32(vld1q_f32(op.add(i + 4)), v1, a));
        i += 8;
    }
    for j in i..n {
        out[j] += a * v[j].to_f32();
    }
}

/// `out += a · v`.
///
/// # Safety
/// Requires NEON.
#[inline]
#[target_feature(enable = "neon")]
pub unsafe fn f32_axpy(out: &mut [f32], a: f32, v: &[f32]) {
    let n = out.len().min(v.len());
    let (op, vp) = (out.as_mut_ptr(), v.as_ptr());
    let mut i = 0;
    while i + 4 <= n {
        vst1q_f32(
            op.add(i),
            vfmaq_n_f32(vld1q_f32(op.add(i)), vld1q_f32(vp.add(i)), a),
        );
        i += 4;
    }
    for j in i..n {
        out[j] += a * v[j];
    }
}

/// See [`crate::kernels::f16_rows_dot`].
///
/// # Safety
/// Requires NEON; the caller checked the bounds.
#[target_feature(enable = "neon")]
pub unsafe fn f16_rows_dot(rows: &[f16], stride: usize, offset: usize, x: &[f32], out: &mut [f32]) {
    crate::kernels::rows_dot_with(rows, stride, offset, x, out, |r, x| f16_dot(r, x));
}

/// See [`crate::kernels::f32_rows_dot`].
///
/// # Safety
/// Requires NEON; the caller checked the bounds.
#[target_feature(enable = "neon")]
pub unsafe fn f32_rows_dot(rows: &[f32], stride: usize, offset: usize, x: &[f32], out: &mut [f32]) {
    crate::kernels::rows_dot_with(rows, stride, offset, x, out, |r, x| f32_dot(r, x));
}

/// See [`crate::kernels::f16_rows_axpy`].
///
/// # Safety
/// Requires NEON; the caller checked the bounds.
#[target_feature(enable = "neon")]
pub unsafe fn f16_rows_axpy(
    rows: &[f16],
    stride: usize,
    offset: usize,
    p: &[f32],
    out: &mut [f32],
) {
    crate::kernels::rows_axpy_with(rows, stride, offset, p, out, |o, a, r| f16_axpy(o, a, r));
}

/// See [`crate::kernels::f32_rows_axpy`].
///
/// # Safety
/// Requires NEON; the caller checked the bounds.
#[target_feature(enable = "neon")]
pub unsafe fn f32_rows_axpy(
    rows: &[f32],
    stride: usize,
    offset: usize,
    p: &[f32],
    out: &mut [f32],
) {
    crate::kernels::rows_axpy_with(rows, stride, offset, p, out, |o, a, r| f32_axpy(o, a, r));
}

/// See [`crate::kernels::q8_0_matmul`]: per 16 values, the int8 weights times the int8
/// activations widened into i16 pairs (`smull`, `smlal2`: `|w·q + w·q| ≤ 2·128·127`), then
/// summed pairwise into i32 lanes. Bit-identical to the scalar twin.
///
/// # Safety
/// Requires NEON; `w` holds whole rows of `qx.d.len()` blocks, `out` one value per row.
#[target_feature(enable = "neon")]
pub unsafe fn q8_0_rows(w: &[u8], qx: &Q8Blocks, out: &mut [f32]) {
    super::q8_0_rows_with(w, qx, out, q8_0_block_dot);
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn q8_0_block_dot(w: *const i8, x: *const i8) -> int32x4_t {
    let pairs = |h: usize| {
        let (w, x) = (vld1q_s8(w.add(16 * h)), vld1q_s8(x.add(16 * h)));
        vmlal_high_s8(vmull_s8(vget_low_s8(w), vget_low_s8(x)), w, x)
    };
    vpadalq_s16(vpaddlq_s16(pairs(0)), pairs(1))
}

/// See [`crate::kernels::q6_k_matmul`]: per 16 values, the codes (0..63) times the int8
/// activations widened into i16 pairs (`smull`, `smlal2`: `|u·q + u·q| ≤ 2·63·127`), then
/// summed pairwise into i32 lanes. Bit-identical to the scalar twin.
///
/// # Safety
/// Requires NEON; `w` holds whole rows of `qx.q.len() / 256` blocks, `out` one value per row.
#[target_feature(enable = "neon")]
pub unsafe fn q6_k_rows(w: &[u8], qx: &Q8K, out: &mut [f32]) {
    super::q6_k_rows_with(w, qx, out, q6_k_group_dot);
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn q6_k_group_dot(codes: int8x16_t, x: int8x16_t) -> int32x4_t {
    vpaddlq_s16(vmlal_high_s8(
        vmull_s8(vget_low_s8(codes), vget_low_s8(x)),
        codes,
        x,
    ))
}
