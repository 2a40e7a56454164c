//! AVX-512 VNNI kernels (AVX512F/BW/VL + VNNI): the ternary products run on `vpdpbusd`
//! (u8 codes × i8 activations, four at a time into i32), on 256-bit vectors so that an I2_S
//! block's four 32-value groups line up with consecutive activations without any shuffle.
//! (Zen 4 executes 512-bit VNNI as two 256-bit halves, so nothing is lost there.) The GEMVs
//! run two rows to a zmm instead, the activations broadcast to both halves (see
//! [`gemv_rows_wide`] and [`t16_rows_wide`]): half the instructions per weight byte.
//!
//! Decoding (one token) streams each weight row once: [`i2s_matmul`] unpacks on the fly.
//! Prefill (many tokens) unpacks a block of rows once into an L1-resident buffer of codes and
//! reuses it for every token: a u8 × i8 GEMM on register tiles.

use std::arch::x86_64::*;

use super::{hsum_epi32_256, i2s_block, prefetch_rows, GEMM_PREFETCH_BLOCKS, I2S_ROWS};
use crate::kernels::scalar::Q8K;
use crate::kernels::{t16_row_bytes, t16_tail_bytes, Isa, KernelTable, T16_BLOCK_LEN, T16_ROWS};
use half::f16;

/// The AVX-512 VNNI kernels: the ternary product, the batched f16 product and the Q6_K
/// product (bound by its unpacking arithmetic on AVX2); the rest are AVX2's (one-token products
/// wait on memory, where 512-bit loops measured no faster).
pub(crate) static TABLE: KernelTable = KernelTable {
    isa: Isa::Avx512Vnni,
    i2s_rows: I2S_ROWS,
    i2s_matmul,
    t16_matmul,
    f16_matmul,
    q6_k_rows,
    f16_rows_dot_multi: Some(f16_rows_dot_multi),
    f16_rows_axpy_multi: Some(f16_rows_axpy_multi),
    ..super::avx2::TABLE
};

/// AVX2's grouped attention kernels four queries at a time: with AVX-512VL the compiler has 32
/// ymm registers, enough for four queries' accumulators and a converted key.
///
/// # Safety
/// Requires AVX2, FMA, F16C, AVX512F and AVX512VL; the caller checked the bounds.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
unsafe fn f16_rows_dot_multi(
    rows: &[f16],
    stride: usize,
    offset: usize,
    xs: &[f32],
    d: usize,
    out: &mut [f32],
) {
    super::avx2::rows_dot_multi::<4>(rows, stride, offset, xs, d, out);
}

/// See [`f16_rows_dot_multi`].
///
/// # Safety
/// As there.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
unsafe fn f16_rows_axpy_multi(
    rows: &[f16],
    stride: usize,
    offset: usize,
    p: &[f32],
    d: usize,
    out: &mut [f32],
) {
    super::avx2::rows_axpy_multi::<4>(rows, stride, offset, p, d, out);
}

/// Rows unpacked together for the GEMM.
const ROW_BLOCK: usize = 4;
/// Tokens per register tile.
const TOKEN_TILE: usize = 4;
/// How far ahead of the current weight bytes to prefetch (into L2: see AVX2's).
const PREFETCH_BYTES: usize = super::avx2::PREFETCH_BYTES;

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// The four 32-code groups of a 32-byte I2_S block.
#[inline(always)]
unsafe fn unpack_i2s(b: __m256i, mask: __m256i) -> [__m256i; 4] {
    [
        _mm256_and_si256(_mm256_srli_epi16::<6>(b), mask),
        _mm256_and_si256(_mm256_srli_epi16::<4>(b), mask),
        _mm256_and_si256(_mm256_srli_epi16::<2>(b), mask),
        _mm256_and_si256(b, mask),
    ]
}

/// See [`crate::kernels::i2s_matmul`].
///
/// # Safety
/// Requires AVX2, AVX512F/BW/VL and AVX512-VNNI; slice lengths as documented there.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn i2s_matmul(w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    let n_tokens = qsums.len();
    if n_tokens >= 2 {
        gemm(w, k, acts, qsums, out);
    } else {
        for t in 0..n_tokens {
            gemv(w, k, &acts[t * k..(t + 1) * k], qsums[t], t, out);
        }
    }
}

/// One token against all rows: [`I2S_ROWS`] interleaved rows at a time (one sequential stream,
/// prefetched ahead; each activation load shared by the rows), then the ragged last rows.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemv(w: &[u8], k: usize, q: &[i8], qsum: i32, t: usize, out: &mut [i32]) {
    let row_bytes = k / 4;
    let n_rows = w.len() / row_bytes;
    let grouped = n_rows / I2S_ROWS * I2S_ROWS;
    let q = q.as_ptr() as *const u8;
    let out = &mut out[t * n_rows..(t + 1) * n_rows];
    for g in (0..grouped).step_by(I2S_ROWS) {
        let dots =
            gemv_rows_wide::<I2S_ROWS, { I2S_ROWS / 2 }>(w.as_ptr().add(g * row_bytes), k, q);
        for (o, d) in out[g..g + I2S_ROWS].iter_mut().zip(dots) {
            *o = d - qsum;
        }
    }
    for (r, o) in out.iter_mut().enumerate().skip(grouped) {
        let [dot] = gemv_rows::<1>(w.as_ptr().add(r * row_bytes), k, q);
        *o = dot - qsum;
    }
}

/// `Σ code·q` for `R` rows whose blocks are interleaved (block `b` of row `i` at
/// `(b·R + i)·32`): per block the four activation loads are shared by the rows. The 2-bit
/// fields are not shifted down: field `f` (bits `6 − 2f ..`) is masked in place, so
/// `vpdpbusd` multiplies `4^(3−f) · code` (at most 192: still a u8), each field has its own
/// accumulator, and the sums are scaled back at the end (exact: every lane of field `f`'s
/// accumulator is a multiple of `4^(3−f)`). Four and-masks instead of three shifts and four
/// masks per block: the loop is bound by vector instructions, not by `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemv_rows<const R: usize>(wp: *const u8, k: usize, q: *const u8) -> [i32; R] {
    let masks = [
        _mm256_set1_epi8(0xC0u8 as i8),
        _mm256_set1_epi8(0x30),
        _mm256_set1_epi8(0x0C),
        _mm256_set1_epi8(0x03),
    ];
    let mut acc = [[_mm256_setzero_si256(); 4]; R];
    for blk in 0..k / 128 {
        let qb = q.add(blk * 128);
        let qv = [
            load(qb),
            load(qb.add(32)),
            load(qb.add(64)),
            load(qb.add(96)),
        ];
        for (r, a) in acc.iter_mut().enumerate() {
            let p = wp.add((blk * R + r) * 32);
            if r % 2 == 0 {
                // One prefetch per 64-byte line. Past the end of the weights is harmless:
                // prefetches never fault.
                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
            }
            let b = load(p);
            for f in 0..4 {
                a[f] = _mm256_dpbusd_epi32(a[f], _mm256_and_si256(b, masks[f]), qv[f]);
            }
        }
    }
    // Scaled back lane by lane (a lane of field 0 adds at most 4 · 192 · 128 per block: no
    // overflow below k = 2²²), then one horizontal sum.
    acc.map(|[a0, a1, a2, a3]| {
        let hi = _mm256_add_epi32(_mm256_srai_epi32::<6>(a0), _mm256_srai_epi32::<4>(a1));
        let lo = _mm256_add_epi32(_mm256_srai_epi32::<2>(a2), a3);
        hsum_epi32_256(_mm256_add_epi32(hi, lo))
    })
}

/// [`gemv_rows`] for `R = 2P` interleaved rows, two to a zmm: the blocks `b` of rows `2p` and
/// `2p + 1` are 64 adjacent bytes of the layout, so one load holds both, and each group of
/// activations, broadcast to both halves, serves both rows. Half the instructions per weight
/// byte of the ymm loop: one Intel Xeon core (AVX-512 VNNI, 2026-12-07) ran a 2560 × 2560
/// matrix in L2 at 150 against 119 Gelem/s, 524288 rows from memory at 55.7 against 53.7, and
/// the 2B-4T shape's one-thread decode (Q6_K output) 2-4 % faster.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemv_rows_wide<const R: usize, const P: usize>(
    wp: *const u8,
    k: usize,
    q: *const u8,
) -> [i32; R] {
    const { assert!(R == 2 * P) };
    let masks = [0xC0u8, 0x30, 0x0C, 0x03].map(|m| _mm512_set1_epi8(m as i8));
    let mut acc = [[_mm512_setzero_si512(); 4]; P];
    for blk in 0..k / 128 {
        let qb = q.add(blk * 128);
        let qv: [__m512i; 4] =
            std::array::from_fn(|f| _mm512_broadcast_i64x4(load(qb.add(32 * f))));
        for (p, a) in acc.iter_mut().enumerate() {
            let ptr = wp.add((blk * R + 2 * p) * 32);
            // One prefetch per 64-byte line; prefetches never fault.
            _mm_prefetch::<_MM_HINT_T1>(ptr.wrapping_add(PREFETCH_BYTES) as *const i8);
            let b = _mm512_loadu_si512(ptr as *const __m512i);
            for f in 0..4 {
                a[f] = _mm512_dpbusd_epi32(a[f], _mm512_and_si512(b, masks[f]), qv[f]);
            }
        }
    }
    // Scaled back as in `gemv_rows`; the low half of each sum is row 2p, the high half 2p + 1.
    let mut out = [0i32; R];
    for (p, [a0, a1, a2, a3]) in acc.into_iter().enumerate() {
        let hi = _mm512_add_epi32(_mm512_srai_epi32::<6>(a0), _mm512_srai_epi32::<4>(a1));
        let lo = _mm512_add_epi32(_mm512_srai_epi32::<2>(a2), a3);
        let v = _mm512_add_epi32(hi, lo);
        out[2 * p] = hsum_epi32_256(lo_i(v));
        out[2 * p + 1] = hsum_epi32_256(_mm512_extracti64x4_epi64::<1>(v));
    }
    out
}

/// See [`crate::kernels::t16_matmul`]: one token at a time, [`T16_ROWS`] interleaved rows at
/// once, two to a zmm (see [`t16_rows_wide`]), then the ragged last rows one at a time (see
/// [`t16_row`]).
///
/// # Safety
/// Requires AVX2, AVX512F/BW/VL and AVX512-VNNI; slice lengths as documented there.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn t16_matmul(w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    let row_bytes = t16_row_bytes(k);
    let n_rows = w.len() / row_bytes;
    let grouped = n_rows / T16_ROWS * T16_ROWS;
    for (t, &qsum) in qsums.iter().enumerate() {
        let q = acts.as_ptr().add(t * k) as *const u8;
        let out = &mut out[t * n_rows..(t + 1) * n_rows];
        for g in (0..grouped).step_by(T16_ROWS) {
            let dots =
                t16_rows_wide::<T16_ROWS, { T16_ROWS / 2 }>(w.as_ptr().add(g * row_bytes), k, q);
            for (o, d) in out[g..g + T16_ROWS].iter_mut().zip(dots) {
                *o = d - qsum;
            }
        }
        for (r, o) in out.iter_mut().enumerate().skip(grouped) {
            let dot = t16_row(w.as_ptr().add(r * row_bytes), k, q);
            *o = dot - qsum;
        }
    }
}

/// `Σ d·q` (codes `d = t + 1`) for one T1_6 row (a ragged last row, in the file's order),
/// without ever forming a digit.
/// With `x_0` = a byte and `x_{i+1} = 3·x_i mod 256` (two byte adds), digit `i` is
/// `d_i = ⌊3·x_i / 256⌋`, so `256·d_i = 3·x_i − x_{i+1}` exactly, and
/// `256 · Σ_i d_i·q_i = 3 · Σ_i x_i·q_i − Σ_i x_{i+1}·q_i`: two `vpdpbusd` (u8 `x` × i8 `q`)
/// per digit into two accumulators, scaled and shifted once at the end. Every lane of
/// `3·acc3 − accm` is 256 times that lane's exact digit sum, so wrapping in the accumulators is
/// harmless and the shift is exact.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn t16_row(wp: *const u8, k: usize, q: *const u8) -> i32 {
    let (mut acc3, mut accm) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    for blk in 0..k / T16_BLOCK_LEN {
        let qb = q.add(blk * T16_BLOCK_LEN);
        let p = wp.add(blk * 32);
        if blk % 2 == 0 {
            // One prefetch per 64-byte line; prefetches never fault.
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
        }
        let mut x = load(p);
        for i in 0..5 {
            let qi = load(qb.add(32 * i));
            let next = _mm256_add_epi8(x, _mm256_add_epi8(x, x));
            acc3 = _mm256_dpbusd_epi32(acc3, x, qi);
            accm = _mm256_dpbusd_epi32(accm, next, qi);
            x = next;
        }
    }
    let [tail] = t16_tail::<1>(wp, k, q);
    let v = _mm256_sub_epi32(_mm256_add_epi32(acc3, _mm256_add_epi32(acc3, acc3)), accm);
    hsum_epi32_256(_mm256_add_epi32(_mm256_srai_epi32::<8>(v), tail))
}

/// [`t16_row`]'s sum for `R = 2P` interleaved rows, two rows to a zmm (a row pair's blocks
/// are 64 adjacent bytes; the activations are broadcast to both halves): half the
/// instructions per weight byte, where the ymm loop is bound by `vpdpbusd`'s throughput (an
/// Intel Xeon core ran it at 7.6 GiB/s of T1_6 bytes from cache, under what memory delivers).
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn t16_rows_wide<const R: usize, const P: usize>(
    wp: *const u8,
    k: usize,
    q: *const u8,
) -> [i32; R] {
    const { assert!(R == 2 * P) };
    let mut acc3 = [_mm512_setzero_si512(); P];
    let mut accm = [_mm512_setzero_si512(); P];
    let full = k / T16_BLOCK_LEN;
    for blk in 0..full {
        let qb = q.add(blk * T16_BLOCK_LEN);
        let qv: [__m512i; 5] =
            std::array::from_fn(|i| _mm512_broadcast_i64x4(load(qb.add(32 * i))));
        for p in 0..P {
            let ptr = wp.add((blk * R + 2 * p) * 32);
            // One prefetch per 64-byte line; prefetches never fault.
            _mm_prefetch::<_MM_HINT_T1>(ptr.wrapping_add(PREFETCH_BYTES) as *const i8);
            let mut x = _mm512_loadu_si512(ptr as *const __m512i);
            for qi in qv {
                let next = _mm512_add_epi8(x, _mm512_add_epi8(x, x));
                acc3[p] = _mm512_dpbusd_epi32(acc3[p], x, qi);
                accm[p] = _mm512_dpbusd_epi32(accm[p], next, qi);
                x = next;
            }
        }
    }
    let acc_tail = t16_tail::<R>(wp, k, q);
    let mut out = [0i32; R];
    for p in 0..P {
        let a3 = acc3[p];
        let v = _mm512_sub_epi32(_mm512_add_epi32(a3, _mm512_add_epi32(a3, a3)), accm[p]);
        let v = _mm512_srai_epi32::<8>(v);
        let halves = [lo_i(v), _mm512_extracti64x4_epi64::<1>(v)];
        for (h, half) in halves.into_iter().enumerate() {
            let r = 2 * p + h;
            out[r] = hsum_epi32_256(_mm256_add_epi32(half, acc_tail[r]));
        }
    }
    out
}

/// The 2-bit tail of `R` T1_6 rows (the last `k mod 160` values): codes themselves, one
/// accumulator a row.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn t16_tail<const R: usize>(wp: *const u8, k: usize, q: *const u8) -> [__m256i; R] {
    let mut acc_tail = [_mm256_setzero_si256(); R];
    let full = k / T16_BLOCK_LEN;
    let tail_bytes = t16_tail_bytes(k);
    let tp = wp.add(full * R * 32);
    for g in 0..tail_bytes / 8 {
        let qg = load(q.add(full * T16_BLOCK_LEN + 32 * g));
        for (r, a) in acc_tail.iter_mut().enumerate() {
            *a = _mm256_dpbusd_epi32(
                *a,
                super::t16_tail_codes(tp.add(r * tail_bytes + 8 * g)),
                qg,
            );
        }
    }
    acc_tail
}

/// The low 256 bits of a zmm.
#[inline(always)]
unsafe fn lo_i(v: __m512i) -> __m256i {
    _mm512_castsi512_si256(v)
}

/// Many tokens: unpack `ROW_BLOCK` rows to codes once, then run register tiles of
/// rows × tokens over them.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm(w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    let row_bytes = k / 4;
    let n_rows = w.len() / row_bytes;
    let n_tokens = qsums.len();
    let mask = _mm256_set1_epi8(3);
    let grouped = n_rows / I2S_ROWS * I2S_ROWS;
    let mut codes = vec![0u8; ROW_BLOCK * k];
    let a = acts.as_ptr() as *const u8;
    let mut r0 = 0;
    while r0 < n_rows {
        let rows = ROW_BLOCK.min(n_rows - r0);
        let ahead = r0 + GEMM_PREFETCH_BLOCKS * ROW_BLOCK;
        prefetch_rows(w, row_bytes, ahead..ahead + rows);
        for row in 0..rows {
            let cp = codes[row * k..].as_mut_ptr();
            for blk in 0..k / 128 {
                let b = i2s_block(w.as_ptr(), row_bytes, grouped, r0 + row, blk);
                let c = unpack_i2s(load(b), mask);
                for (g, code) in c.iter().enumerate() {
                    _mm256_storeu_si256(cp.add(blk * 128 + g * 32) as *mut __m256i, *code);
                }
            }
        }
        let c = codes.as_ptr();
        let mut t0 = 0;
        while t0 < n_tokens {
            let at = a.add(t0 * k);
            let tokens = TOKEN_TILE.min(n_tokens - t0);
            match (rows, tokens) {
                (4, 4) => store(tile::<4, 4>(c, at, k), r0, t0, n_rows, qsums, out),
                (4, 3) => store(tile::<4, 3>(c, at, k), r0, t0, n_rows, qsums, out),
                (4, 2) => store(tile::<4, 2>(c, at, k), r0, t0, n_rows, qsums, out),
                (4, 1) => store(tile::<4, 1>(c, at, k), r0, t0, n_rows, qsums, out),
                _ => {
                    // Ragged last row block: one row at a time.
                    for row in 0..rows {
                        let cr = c.add(row * k);
                        match tokens {
                            4 => store(tile::<1, 4>(cr, at, k), r0 + row, t0, n_rows, qsums, out),
                            3 => store(tile::<1, 3>(cr, at, k), r0 + row, t0, n_rows, qsums, out),
                            2 => store(tile::<1, 2>(cr, at, k), r0 + row, t0, n_rows, qsums, out),
                            _ => store(tile::<1, 1>(cr, at, k), r0 + row, t0, n_rows, qsums, out),
                        }
                    }
                }
            }
            t0 += tokens;
        }
        r0 += rows;
    }
}

/// `Σ code·q` for `R` rows of codes (stride k) × `T` activation rows (stride k).
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile<const R: usize, const T: usize>(
    codes: *const u8,
    acts: *const u8,
    k: usize,
) -> [[i32; T]; R] {
    let mut acc = [[_mm256_setzero_si256(); T]; R];
    let mut kk = 0;
    while kk < k {
        let mut a = [_mm256_setzero_si256(); T];
        for (t, v) in a.iter_mut().enumerate() {
            *v = load(acts.add(t * k + kk));
        }
        for (r, row_acc) in acc.iter_mut().enumerate() {
            let c = load(codes.add(r * k + kk));
            for (t, v) in row_acc.iter_mut().enumerate() {
                *v = _mm256_dpbusd_epi32(*v, c, a[t]);
            }
        }
        kk += 32;
    }
    let mut out = [[0i32; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum_epi32_256(acc[r][t]);
        }
    }
    out
}

#[inline(always)]
fn store<const R: usize, const T: usize>(
    tile: [[i32; T]; R],
    r0: usize,
    t0: usize,
    n_rows: usize,
    qsums: &[i32],
    out: &mut [i32],
) {
    for (r, row) in tile.iter().enumerate() {
        for (t, &v) in row.iter().enumerate() {
            out[(t0 + t) * n_rows + r0 + r] = v - qsums[t0 + t];
        }
    }
}

/// Rows and tokens per register tile of the f16 product: 3 × 4 × 2 = 24 zmm accumulators and
/// the three rows' converted weights fit the 32 zmm registers.
const F16_ROW_TILE: usize = 3;
const F16_TOKEN_TILE: usize = 4;

/// See [`crate::kernels::f16_matmul`]. With several tokens (`serve`'s batched decoding) the
/// AVX2 product (token by token) converts every weight once per token and runs about one FMA
/// per cycle (its four accumulator chains wait on the FMA latency); here a tile of [`F16_ROW_TILE`] rows × [`F16_TOKEN_TILE`] tokens converts each weight
/// vector once for four tokens and loads each activation vector once for three rows. Each zmm
/// accumulator holds two of [`super::avx2::f16_dot`]'s 8-lane accumulators (lanes 0-7: values
/// `32i + 16h ..`, 8-15: `32i + 16h + 8 ..`), so every lane adds the same products in the same
/// order and the sums end in the same code: bit-identical to one token alone, whatever the
/// batch.
///
/// # Safety
/// Requires AVX2, FMA, F16C and AVX512F.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub unsafe fn f16_matmul(w: &[f16], k: usize, x: &[f32], out: &mut [f32]) {
    let n_rows = w.len() / k;
    let n_tokens = x.len() / k;
    if n_tokens < 2 {
        return super::avx2::f16_matmul(w, k, x, out);
    }
    let mut r = 0;
    while r < n_rows {
        let rows = F16_ROW_TILE.min(n_rows - r);
        let mut t = 0;
        while t < n_tokens {
            let tokens = F16_TOKEN_TILE.min(n_tokens - t);
            match (rows, tokens) {
                (3, 4) => f16_tile::<3, 4>(w, k, x, r, t, n_rows, out),
                (3, 3) => f16_tile::<3, 3>(w, k, x, r, t, n_rows, out),
                (3, 2) => f16_tile::<3, 2>(w, k, x, r, t, n_rows, out),
                (3, _) => f16_tile::<3, 1>(w, k, x, r, t, n_rows, out),
                (2, 4) => f16_tile::<2, 4>(w, k, x, r, t, n_rows, out),
                (2, 3) => f16_tile::<2, 3>(w, k, x, r, t, n_rows, out),
                (2, 2) => f16_tile::<2, 2>(w, k, x, r, t, n_rows, out),
                (2, _) => f16_tile::<2, 1>(w, k, x, r, t, n_rows, out),
                (_, 4) => f16_tile::<1, 4>(w, k, x, r, t, n_rows, out),
                (_, 3) => f16_tile::<1, 3>(w, k, x, r, t, n_rows, out),
                (_, 2) => f16_tile::<1, 2>(w, k, x, r, t, n_rows, out),
                _ => f16_tile::<1, 1>(w, k, x, r, t, n_rows, out),
            }
            t += tokens;
        }
        r += rows;
    }
}

/// Rows `r0 .. r0 + R` against tokens `t0 .. t0 + T`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
// Indexing the [row][token][half] accumulators reads plainer than three zipped iterators.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn f16_tile<const R: usize, const T: usize>(
    w: &[f16],
    k: usize,
    x: &[f32],
    r0: usize,
    t0: usize,
    n_rows: usize,
    out: &mut [f32],
) {
    let wp = (w.as_ptr() as *const u16).add(r0 * k);
    let xp = x.as_ptr().add(t0 * k);
    let mut acc = [[[_mm512_setzero_ps(); 2]; T]; R];
    let mut i = 0;
    while i + 32 <= k {
        if t0 == 0 {
            // The row tile after next into L2 (32 values of a row are one cache line): the
            // weights stream from memory once per step, and tiles this short leave the
            // hardware prefetcher behind (8 tokens × 32768 rows from memory: 23 → 16 ms).
            for r in 0..R {
                let p = wp.wrapping_add((2 * R + r) * k + i) as *const i8;
                _mm_prefetch::<_MM_HINT_T1>(p);
            }
        }
        for h in 0..2 {
            let mut wv = [_mm512_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = _mm512_cvtph_ps(_mm256_loadu_si256(
                    wp.add(r * k + i + 16 * h) as *const __m256i
                ));
            }
            for t in 0..T {
                let xv = _mm512_loadu_ps(xp.add(t * k + i + 16 * h));
                for r in 0..R {
                    acc[r][t][h] = _mm512_fmadd_ps(wv[r], xv, acc[r][t][h]);
                }
            }
        }
        i += 32;
    }
    for (r, row_acc) in acc.iter().enumerate() {
        let row = &w[(r0 + r) * k..(r0 + r + 1) * k];
        for (t, a) in row_acc.iter().enumerate() {
            let xt = &x[(t0 + t) * k..(t0 + t + 1) * k];
            let parts = [lo(a[0]), hi(a[0]), lo(a[1]), hi(a[1])];
            out[(t0 + t) * n_rows + r0 + r] = super::avx2::f16_dot_finish(parts, row, xt, i);
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn lo(v: __m512) -> __m256 {
    _mm512_castps512_ps256(v)
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn hi(v: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}

/// How far ahead of the current Q6_K block to prefetch: at ~24 GB/s from memory 4 KiB is
/// about DRAM latency away; 8 KiB measured 5-15 % faster, 32 KiB slower (one Zen 4 core, with
/// the prefetches then into L1; into L2 on the Intel Xeon, 2-16 KiB were alike).
const Q6K_PREFETCH_BYTES: usize = 8192;

/// Q6_K rows against [`Q8K`] activations (see [`crate::kernels::q6_k_matmul`]), 64 values per
/// zmm: a 128-value half of a block is one 64-byte load of its low nibbles (`ql`) and one
/// broadcast of its 32 bytes of high bits (`qh`), shifted right by 0 (low 256 bits) and 2
/// (high 256 bits) and masked to bits 0-1 and 4-5 of each byte; then one bit-select
/// (`vpternlogd`) per 64 codes puts the nibbles under those bits (the low nibbles under
/// `qh << 4`, the high ones, shifted down, under `qh`). The select also drops the bits that
/// the 16-bit shifts drag in from the neighbouring byte, so no further masking. Codes × int8
/// activations with `vpmaddubsw` (pairs into i16), then `vpdpwssd` multiplies the pairs by
/// their groups' scales into i32 (a 128-bit lane of a zmm is one 16-value group, so one
/// `vpermw` per 64 values spreads the scales; in-lane `vpshufb` spreading measured 10-17 %
/// slower). The `−32` offset: the scales against `−16 ×` the activations' group sums, twice.
/// Each block's integer sum is exact; the scaled blocks are added in f32 lanes, so results
/// differ from the scalar twin only by f32 rounding: the order of those additions, and (at
/// extreme codes and scales, past 2²⁴) the lanes' rounding to f32 before they are summed.
///
/// One AMD EPYC Zen 4 core (2560-wide rows; before the prefetches went to L2 and the loads
/// into address order, see [`PREFETCH_BYTES`]): weights in L3 (1024 rows) 28.5-30 GB/s against
/// AVX2's 21-24; in L2 (256 rows, timing the activations' quantization too) 23-24 against
/// 18-20; from memory (128256 rows, 690 MB) 21-25 GB/s against 21-24, within this VM's
/// noise: there the stream, not the arithmetic, sets the pace (a plain sum reads 28-31 GB/s).
///
/// # Safety
/// Requires AVX2, FMA, F16C, AVX512F/BW/VL and AVX512-VNNI; `w` holds whole rows of
/// `qx.d.len()` blocks, `out` one value per row.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn q6_k_rows(w: &[u8], qx: &Q8K, out: &mut [f32]) {
    let n_blocks = qx.d.len();
    let row_bytes = n_blocks * 210;
    let xq = qx.q.as_ptr() as *const u8;
    // |Σq| ≤ 16 · 127 per group: −16 × that still fits i16 (−32 × would not).
    let bias: Vec<i16> = qx.group_sums.iter().map(|&s| -16 * s).collect();
    let nibbles = _mm512_set1_epi8(0x0F);
    let high_bits = _mm512_set1_epi8(0x33);
    let qh_shift = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
    // `vpermw` indices: i16 lane j of the scales for codes z (values 64z ..) is scale 4z + j/8.
    let spread: [__m512i; 4] = std::array::from_fn(|z| {
        let idx: [i16; 32] = std::array::from_fn(|j| (4 * z + j / 8) as i16);
        _mm512_loadu_si512(idx.as_ptr() as *const __m512i)
    });
    for (r, o) in out.iter_mut().enumerate().take(w.len() / row_bytes) {
        let row = w.as_ptr().add(r * row_bytes);
        let mut sum = _mm512_setzero_ps();
        for b in 0..n_blocks {
            let blk = row.add(b * 210);
            // Four lines per 210-byte block (three leave an 82-byte gap between prefetched
            // addresses that whole lines slip through: 18 against 24 GB/s from memory). Past
            // the end is harmless: prefetches never fault.
            for line in 0..4 {
                _mm_prefetch::<_MM_HINT_T1>(
                    blk.wrapping_add(Q6K_PREFETCH_BYTES + 64 * line) as *const i8
                );
            }
            // Loaded in address order, the scales after the codes: from memory 1.17x faster
            // than in the order of use (128256 rows, one Intel Xeon core: 8.5 → 9.9 GiB/s),
            // likely as the hardware prefetchers follow ascending lines within each block.
            let ql_all = [
                _mm512_loadu_si512(blk as *const __m512i),
                _mm512_loadu_si512(blk.add(64) as *const __m512i),
            ];
            let qh_all = [load(blk.add(128)), load(blk.add(160))];
            let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192) as *const __m128i));
            let g = _mm256_loadu_si256(bias[b * 16..].as_ptr() as *const __m256i);
            let offset = _mm256_dpwssd_epi32(_mm256_setzero_si256(), scales, g);
            let mut acc = _mm512_zextsi256_si512(_mm256_dpwssd_epi32(offset, scales, g));
            // Only lanes 0-15 are ever indexed.
            let scales = _mm512_castsi256_si512(scales);
            for half in 0..2 {
                let ql = ql_all[half];
                let qh = _mm512_broadcast_i64x4(qh_all[half]);
                let qh = _mm512_and_si512(_mm512_srlv_epi64(qh, qh_shift), high_bits);
                // 0xCA: bits of the second operand where the first is set, else the third.
                let codes = [
                    _mm512_ternarylogic_epi32::<0xCA>(nibbles, ql, _mm512_slli_epi16::<4>(qh)),
                    _mm512_ternarylogic_epi32::<0xCA>(nibbles, _mm512_srli_epi16::<4>(ql), qh),
                ];
                for (i, c) in codes.iter().enumerate() {
                    let z = 2 * half + i;
                    let q = _mm512_loadu_si512(xq.add(b * 256 + 64 * z) as *const __m512i);
                    // |u·q + u·q| ≤ 2·63·127: no i16 saturation.
                    let pairs = _mm512_maddubs_epi16(*c, q);
                    let sc = _mm512_permutexvar_epi16(spread[z], scales);
                    acc = _mm512_dpwssd_epi32(acc, pairs, sc);
                }
            }
            let dw = super::q6_k_block_scale(blk);
            sum = _mm512_fmadd_ps(_mm512_set1_ps(dw * qx.d[b]), _mm512_cvtepi32_ps(acc), sum);
        }
        *o = _mm512_reduce_add_ps(sum);
    }
}
