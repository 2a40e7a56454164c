//! AVX2 (+FMA, F16C) kernels. No VNNI here: the ternary products use `maddubs` (u8 × i8 pairs
//! into i16) and `madd` (i16 pairs into i32). Every function requires the features named in
//! its `target_feature` attribute; callers check them at run time (`Isa::Avx2`).

use std::arch::x86_64::*;

use half::f16;

use super::{hsum_epi32_256, i2s_block, prefetch_rows, GEMM_PREFETCH_BLOCKS, I2S_ROWS};
use crate::formats::types::{tq2_0, TernaryBlock};
use crate::kernels::scalar::{Q8Blocks, Q8K};
use crate::kernels::{t16_row_bytes, t16_tail_bytes, Isa, KernelTable, T16_BLOCK_LEN, T16_ROWS};

/// The AVX2 kernels.
pub(crate) static TABLE: KernelTable = KernelTable {
    isa: Isa::Avx2,
    i2s_rows: I2S_ROWS,
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
    f16_rows_dot_multi: Some(f16_rows_dot_multi),
    f16_rows_axpy_multi: Some(f16_rows_axpy_multi),
};

/// How far ahead of the current weight bytes to prefetch (the hardware prefetcher alone
/// leaves a single-threaded GEMV waiting on memory). Every weight prefetch in the x86 kernels
/// asks for L2 (`_MM_HINT_T1`), not L1: on an Intel Xeon (2026-12-07, AVX-512 VNNI + AMX VM)
/// that made decoding 1.26x faster with AVX-512 and 1.13x with AVX2 (2B-4T shape, Q6_K
/// output, one thread), and the I2_S GEMV over 335 MB 1.08-1.32x (27-29 → 22-25 ms); not yet
/// measured on AMD. Our reading: a prefetch
/// into L1 holds one of the core's few L1 fill buffers for the whole trip from memory, which
/// caps how many lines are in flight; L2 has many more slots and the loads that follow find
/// the lines there.
pub(crate) const PREFETCH_BYTES: usize = 4096;
/// I2_S blocks the GEMV sums in i16 lanes before widening them. Its larger sum takes two
/// groups of codes left at 4× their value (`4c ≤ 8`), so a block adds at most
/// 2 groups × 8 · 128 · 2 = 4096 in magnitude per lane, and 8 · 4096 = 32768 = -i16::MIN.
const I16_BLOCKS: usize = 8;
/// Rows unpacked together for the GEMM, and tokens per register tile (3 × 4 accumulators
/// + 3 code registers + a temporary fill the 16 ymm registers).
const ROW_TILE: usize = 3;
const TOKEN_TILE: usize = 3;
/// 32-value steps of the GEMM tile before its i16 sums are widened: each step adds at most
/// 2·2·128 = 512 in magnitude per lane, and 64 · 512 = 32768.
const I16_STEPS: usize = 64;

/// The four 32-code groups of a 32-byte I2_S block (values 0..32, 32..64, 64..96, 96..128).
#[inline(always)]
unsafe fn unpack_i2s(b: __m256i, mask: __m256i) -> [__m256i; 4] {
    [
        _mm256_and_si256(_mm256_srli_epi16::<6>(b), mask),
        _mm256_and_si256(_mm256_srli_epi16::<4>(b), mask),
        _mm256_and_si256(_mm256_srli_epi16::<2>(b), mask),
        _mm256_and_si256(b, mask),
    ]
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// See [`crate::kernels::i2s_matmul`]: a streaming GEMV for one token, a register-tiled GEMM
/// over unpacked codes for several.
///
/// # Safety
/// Requires AVX2; slice lengths as documented there (checked by the caller).
#[target_feature(enable = "avx2")]
pub unsafe fn i2s_matmul(w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    let n_tokens = qsums.len();
    if n_tokens >= 2 {
        i2s_gemm(w, k, acts, qsums, out);
    } else if n_tokens == 1 {
        i2s_gemv(w, k, &acts[..k], qsums[0], out);
    }
}

/// One token against all rows: [`I2S_ROWS`] interleaved rows at a time (one sequential stream,
/// prefetched ahead; each activation load shared by the rows), then the ragged last rows one
/// at a time.
#[target_feature(enable = "avx2")]
unsafe fn i2s_gemv(w: &[u8], k: usize, q: &[i8], qsum: i32, out: &mut [i32]) {
    let row_bytes = k / 4;
    let n_rows = w.len() / row_bytes;
    let grouped = n_rows / I2S_ROWS * I2S_ROWS;
    let q = q.as_ptr() as *const u8;
    for g in (0..grouped).step_by(I2S_ROWS) {
        let dots = gemv_rows::<I2S_ROWS>(w.as_ptr().add(g * row_bytes), k, q);
        for (o, d) in out[g..g + I2S_ROWS].iter_mut().zip(dots) {
            *o = d - qsum;
        }
    }
    for (r, o) in out.iter_mut().enumerate().take(n_rows).skip(grouped) {
        let [dot] = gemv_rows::<1>(w.as_ptr().add(r * row_bytes), k, q);
        *o = dot - qsum;
    }
}

/// `Σ code·q` for `R` rows whose blocks are interleaved (block `b` of row `i` at
/// `(b·R + i)·32`). Per 128 weights of a row: one load, one shift and four `and`s to unpack,
/// four `maddubs` (codes × activations, pairs into i16) and four i16 adds; the four activation
/// loads are shared by the `R` rows.
///
/// The unpacking leaves two of the four 2-bit fields where they are, at 4× their value (bits
/// 2-3 of the byte and of the byte shifted down by 4), instead of shifting each one down: 5
/// vector operations instead of 7, where this loop is bound by arithmetic (one Zen 4 core on
/// weights in L2: 27 → 29 GB/s, still less than it reads from memory alone). Those fields
/// are summed apart (`sum4`) and weighted 1 against 4 for the rest when widened to i32, so the
/// i32 sums are 4× the dot product, exactly (no overflow below k = 2²¹). (Leaving the top
/// field in place too, as the AVX-512 GEMV does, would put up to 2 · 128 · 128 in one
/// `maddubs` lane: −32768 at the extreme, so not even two blocks could be added in i16.)
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn gemv_rows<const R: usize>(wp: *const u8, k: usize, q: *const u8) -> [i32; R] {
    let n_blocks = k / 128;
    let low = _mm256_set1_epi8(0x03);
    let high = _mm256_set1_epi8(0x0c);
    let ones = _mm256_set1_epi16(1);
    let fours = _mm256_set1_epi16(4);
    let mut acc32 = [_mm256_setzero_si256(); R];
    let mut blk = 0;
    while blk < n_blocks {
        let end = (blk + I16_BLOCKS).min(n_blocks);
        let mut sum1 = [_mm256_setzero_si256(); R];
        let mut sum4 = [_mm256_setzero_si256(); R];
        while blk < end {
            let qb = q.add(blk * 128);
            let qv = [
                load(qb),
                load(qb.add(32)),
                load(qb.add(64)),
                load(qb.add(96)),
            ];
            for r in 0..R {
                let p = wp.add((blk * R + r) * 32);
                if r % 2 == 0 {
                    // One prefetch per 64-byte line. Past the end of the weights is harmless:
                    // prefetches never fault.
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
                }
                let b = load(p);
                let b4 = _mm256_srli_epi16::<4>(b);
                // Values 0..32 sit in bits 6-7, 32..64 in 4-5, 64..96 in 2-3, 96..128 in 0-1.
                let x4 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(_mm256_and_si256(b4, high), qv[0]),
                    _mm256_maddubs_epi16(_mm256_and_si256(b, high), qv[2]),
                );
                let x1 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(_mm256_and_si256(b4, low), qv[1]),
                    _mm256_maddubs_epi16(_mm256_and_si256(b, low), qv[3]),
                );
                sum4[r] = _mm256_add_epi16(sum4[r], x4);
                sum1[r] = _mm256_add_epi16(sum1[r], x1);
            }
            blk += 1;
        }
        for r in 0..R {
            let widened = _mm256_add_epi32(
                _mm256_madd_epi16(sum1[r], fours),
                _mm256_madd_epi16(sum4[r], ones),
            );
            acc32[r] = _mm256_add_epi32(acc32[r], widened);
        }
    }
    // Every lane is a multiple of 4, so the shift divides exactly.
    acc32.map(|a| hsum_epi32_256(a) >> 2)
}

/// Many tokens: unpack [`ROW_TILE`] rows to codes once (an L1-resident buffer), then run
/// register tiles of rows × tokens over them. Per 32 values of a row and a token: one
/// `maddubs` and one i16 add; the sums are widened to i32 every [`I16_STEPS`] steps.
#[target_feature(enable = "avx2")]
unsafe fn i2s_gemm(w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    let row_bytes = k / 4;
    let n_rows = w.len() / row_bytes;
    let n_tokens = qsums.len();
    let mask = _mm256_set1_epi8(3);
    let grouped = n_rows / I2S_ROWS * I2S_ROWS;
    let mut codes = vec![0u8; ROW_TILE * k];
    let a = acts.as_ptr() as *const u8;
    let mut r0 = 0;
    while r0 < n_rows {
        let rows = ROW_TILE.min(n_rows - r0);
        let ahead = r0 + GEMM_PREFETCH_BLOCKS * ROW_TILE;
        prefetch_rows(w, row_bytes, ahead..ahead + rows);
        for row in 0..rows {
            let cp = codes.as_mut_ptr().add(row * k);
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
            macro_rules! tiles {
                ($($r:literal),*) => {
                    match (rows, tokens) {
                        $(
                            ($r, 6) => store(gemm_tile::<$r, 6>(c, at, k), r0, t0, n_rows, qsums, out),
                            ($r, 5) => store(gemm_tile::<$r, 5>(c, at, k), r0, t0, n_rows, qsums, out),
                            ($r, 4) => store(gemm_tile::<$r, 4>(c, at, k), r0, t0, n_rows, qsums, out),
                            ($r, 3) => store(gemm_tile::<$r, 3>(c, at, k), r0, t0, n_rows, qsums, out),
                            ($r, 2) => store(gemm_tile::<$r, 2>(c, at, k), r0, t0, n_rows, qsums, out),
                            ($r, _) => store(gemm_tile::<$r, 1>(c, at, k), r0, t0, n_rows, qsums, out),
                        )*
                        _ => unreachable!("row tiles have 1..={ROW_TILE} rows"),
                    }
                };
            }
            tiles!(3, 2, 1);
            t0 += tokens;
        }
        r0 += rows;
    }
}

/// `Σ code·q` for `R` rows of codes (stride k) × `T` activation rows (stride k).
#[inline]
#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)] // a register tile reads best as acc[row][token]
unsafe fn gemm_tile<const R: usize, const T: usize>(
    codes: *const u8,
    acts: *const u8,
    k: usize,
) -> [[i32; T]; R] {
    let ones = _mm256_set1_epi16(1);
    let mut acc32 = [[_mm256_setzero_si256(); T]; R];
    let steps = k / 32;
    let mut step = 0;
    while step < steps {
        let end = (step + I16_STEPS).min(steps);
        let mut acc = [[_mm256_setzero_si256(); T]; R];
        // Two 32-value steps per iteration (k is a multiple of 128, so steps come in fours):
        // the loop's own bookkeeping would otherwise take a fifth of the dispatch slots.
        while step < end {
            for half in 0..2 {
                let kk = (step + half) * 32;
                let mut c = [_mm256_setzero_si256(); R];
                for (r, v) in c.iter_mut().enumerate() {
                    *v = load(codes.add(r * k + kk));
                }
                for t in 0..T {
                    let q = load(acts.add(t * k + kk));
                    for r in 0..R {
                        acc[r][t] = _mm256_add_epi16(acc[r][t], _mm256_maddubs_epi16(c[r], q));
                    }
                }
            }
            step += 2;
        }
        for r in 0..R {
            for t in 0..T {
                acc32[r][t] = _mm256_add_epi32(acc32[r][t], _mm256_madd_epi16(acc[r][t], ones));
            }
        }
    }
    let mut out = [[0i32; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum_epi32_256(acc32[r][t]);
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

/// `Σ code·q` over one 32-value group, as 8 i32 lanes.
#[inline(always)]
unsafe fn dot_group(codes: __m256i, q: __m256i, ones: __m256i) -> __m256i {
    // |code·q + code·q| ≤ 2·2·128: no i16 saturation.
    _mm256_madd_epi16(_mm256_maddubs_epi16(codes, q), ones)
}

/// See [`crate::kernels::t16_matmul`]: one token at a time, [`T16_ROWS`] interleaved rows at
/// once (see [`t16_rows`]), then the ragged last rows.
///
/// # Safety
/// Requires AVX2; slice lengths as documented there.
#[target_feature(enable = "avx2")]
pub unsafe fn t16_matmul(w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    let row_bytes = t16_row_bytes(k);
    let n_rows = w.len() / row_bytes;
    let grouped = n_rows / T16_ROWS * T16_ROWS;
    for (t, &qsum) in qsums.iter().enumerate() {
        let q = acts.as_ptr().add(t * k) as *const u8;
        let out = &mut out[t * n_rows..(t + 1) * n_rows];
        for g in (0..grouped).step_by(T16_ROWS) {
            let dots = t16_rows::<T16_ROWS>(w.as_ptr().add(g * row_bytes), k, q);
            for (o, d) in out[g..g + T16_ROWS].iter_mut().zip(dots) {
                *o = d - qsum;
            }
        }
        for (r, o) in out.iter_mut().enumerate().skip(grouped) {
            let [dot] = t16_rows::<1>(w.as_ptr().add(r * row_bytes), k, q);
            *o = dot - qsum;
        }
    }
}

/// `Σ d·q` (codes `d = t + 1`) for `R` interleaved T1_6 rows. AVX2 has no u8 × i8 product
/// wide enough for the bytes themselves (`maddubs` saturates), so each digit is formed:
/// `d = ⌊3x/256⌋ = [x ≥ 86] + [x ≥ 171]`, two signed compares on `x − 128`, which follows the
/// same recurrence `x ← 3x mod 256` as `x` (`3·(x − 128) ≡ 3x − 128` modulo 256). The
/// compares give `−d`; its absolute value goes to `maddubs` (at most 2 · 2 · 128 per i16 lane
/// and digit: five digits stay far inside i16), widened once per block.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn t16_rows<const R: usize>(wp: *const u8, k: usize, q: *const u8) -> [i32; R] {
    let bias = _mm256_set1_epi8(-128);
    let (lo, hi) = (_mm256_set1_epi8(-43), _mm256_set1_epi8(42));
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); R];
    let full = k / T16_BLOCK_LEN;
    let digits = |x: __m256i| -> __m256i {
        let s = _mm256_add_epi8(_mm256_cmpgt_epi8(x, lo), _mm256_cmpgt_epi8(x, hi));
        _mm256_abs_epi8(s)
    };
    let block = |p: *const u8, qb: *const u8, n: usize, acc: &mut __m256i| {
        let mut x = _mm256_xor_si256(_mm256_loadu_si256(p as *const __m256i), bias);
        let mut sum16 = _mm256_setzero_si256();
        for i in 0..n {
            let qi = _mm256_loadu_si256(qb.add(32 * i) as *const __m256i);
            sum16 = _mm256_add_epi16(sum16, _mm256_maddubs_epi16(digits(x), qi));
            x = _mm256_add_epi8(x, _mm256_add_epi8(x, x));
        }
        *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(sum16, ones));
    };
    for blk in 0..full {
        let qb = q.add(blk * T16_BLOCK_LEN);
        for (r, a) in acc.iter_mut().enumerate() {
            let p = wp.add((blk * R + r) * 32);
            if r % 2 == 0 {
                // One prefetch per 64-byte line; prefetches never fault.
                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
            }
            block(p, qb, 5, a);
        }
    }
    let tail_bytes = t16_tail_bytes(k);
    let tp = wp.add(full * R * 32);
    for (r, a) in acc.iter_mut().enumerate() {
        let mut sum16 = _mm256_setzero_si256();
        for g in 0..tail_bytes / 8 {
            let qg = _mm256_loadu_si256(q.add(full * T16_BLOCK_LEN + 32 * g) as *const __m256i);
            let codes = super::t16_tail_codes(tp.add(r * tail_bytes + 8 * g));
            sum16 = _mm256_add_epi16(sum16, _mm256_maddubs_epi16(codes, qg));
        }
        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(sum16, ones));
    }
    acc.map(|a| hsum_epi32_256(a))
}

/// See [`crate::kernels::tq2_0_matmul`]. Per block: an exact i32 dot, then `sum += d · dot` in
/// block order, the same float operations as the scalar twin.
///
/// # Safety
/// Requires AVX2; slice lengths as documented there.
#[target_feature(enable = "avx2")]
pub unsafe fn tq2_0_matmul(w: &[u8], k: usize, acts: &[i8], block_qsums: &[i32], out: &mut [f32]) {
    let n_blocks = k / tq2_0::BLOCK_LEN;
    let row_bytes = n_blocks * 66;
    let n_rows = w.len() / row_bytes;
    let n_tokens = block_qsums.len() / n_blocks;
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    for t in 0..n_tokens {
        let q = acts[t * k..].as_ptr() as *const u8;
        for r in 0..n_rows {
            let mut sum = 0f32;
            for (b, block) in tq2_0::blocks(&w[r * row_bytes..(r + 1) * row_bytes])
                .iter()
                .enumerate()
            {
                let mut acc = _mm256_setzero_si256();
                for half in 0..2 {
                    let bytes = load(block.qs[half * 32..].as_ptr());
                    for l in 0..4 {
                        let codes =
                            _mm256_and_si256(_mm256_srlv_epi16_emul(bytes, 2 * l as i32), mask);
                        let qg = load(q.add(b * 256 + half * 128 + l * 32));
                        acc = _mm256_add_epi32(acc, dot_group(codes, qg, ones));
                    }
                }
                let dot = hsum_epi32_256(acc) - block_qsums[t * n_blocks + b];
                sum += block.scale() * dot as f32;
            }
            out[t * n_rows + r] = sum;
        }
    }
}

/// A 16-bit logical right shift by a run-time count.
#[inline(always)]
unsafe fn _mm256_srlv_epi16_emul(v: __m256i, count: i32) -> __m256i {
    _mm256_srl_epi16(v, _mm_cvtsi32_si128(count))
}

/// See [`crate::kernels::quantize_row_i8`]; bit-identical to the scalar twin.
///
/// # Safety
/// Requires AVX2; `q.len() >= x.len()`.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_row_i8(x: &[f32], q: &mut [i8]) -> f32 {
    let n = x.len();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut vmax = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_loadu_ps(x.as_ptr().add(i));
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(v, abs_mask));
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), vmax);
    let mut amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
    for &v in &x[i..] {
        amax = amax.max(v.abs());
    }
    let s = 127.0 / amax.max(1e-5);
    let vs = _mm256_set1_ps(s);
    let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    let mut i = 0;
    while i + 32 <= n {
        let mut ints = [_mm256_setzero_si256(); 4];
        for (j, v) in ints.iter_mut().enumerate() {
            let f = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i + 8 * j)), vs);
            let f = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(f);
            *v = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(f, lo), hi));
        }
        // Pack 4×8 i32 → 32 i8; packs work within 128-bit lanes, so restore the order after.
        let a = _mm256_packs_epi32(ints[0], ints[1]);
        let b = _mm256_packs_epi32(ints[2], ints[3]);
        let packed = _mm256_packs_epi16(a, b);
        let fixed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr().add(i) as *mut __m256i, fixed);
        i += 32;
    }
    for j in i..n {
        q[j] = (x[j] * s).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    s
}

/// See [`crate::kernels::f16_matmul`]. Token by token, row by row. Tiles converting each
/// weight vector once for several tokens (1 row × 3 tokens, also blocked over k so that the
/// activations stay in L1) measured no faster on Zen 4; AVX-512's 3 × 4 zmm tiles do gain
/// (`avx512::f16_matmul`).
///
/// # Safety
/// Requires AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_matmul(w: &[f16], k: usize, x: &[f32], out: &mut [f32]) {
    let n_rows = w.len() / k;
    let n_tokens = x.len() / k;
    for t in 0..n_tokens {
        let xt = &x[t * k..(t + 1) * k];
        for r in 0..n_rows {
            let row = &w[r * k..(r + 1) * k];
            let ahead = (row.as_ptr() as *const u8).wrapping_add(PREFETCH_BYTES);
            out[t * n_rows + r] = f16_dot_impl::<true>(row, xt, ahead);
        }
    }
}

/// `Σ w·x` with f16 weights.
///
/// # Safety
/// Requires AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_dot(w: &[f16], x: &[f32]) -> f32 {
    f16_dot_impl::<false>(w, x, std::ptr::null())
}

/// [`f16_dot`], with `PREFETCH` one prefetch a 64-byte line of the weights at `ahead + 2i` (a
/// GEMV streaming its rows from memory passes `PREFETCH_BYTES` past its row's start): the same
/// arithmetic, so the same bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_dot_impl<const PREFETCH: bool>(w: &[f16], x: &[f32], ahead: *const u8) -> f32 {
    let n = w.len().min(x.len());
    let wp = w.as_ptr() as *const u16;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        if PREFETCH {
            // Never dereferenced: prefetches do not fault.
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(2 * i) as *const i8);
        }
        for (j, a) in acc.iter_mut().enumerate() {
            let wv = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i + 8 * j) as *const __m128i));
            *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(i + 8 * j)), *a);
        }
        i += 32;
    }
    f16_dot_finish(acc, w, x, i)
}

/// The end of [`f16_dot`] from its 32-value loop's four accumulators (lanes `8j..8j + 8` of
/// every 32 values in `acc[j]`), stopped at `i`: the 8-value steps, the reduction, the scalar
/// tail. The tiled products end here too, so their sums are added in exactly this order.
///
/// # Safety
/// Requires AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_dot_finish(
    mut acc: [__m256; 4],
    w: &[f16],
    x: &[f32],
    mut i: usize,
) -> f32 {
    let n = w.len().min(x.len());
    let wp = w.as_ptr() as *const u16;
    while i + 8 <= n {
        let wv = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i) as *const __m128i));
        acc[0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(i)), acc[0]);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut total = super::hsum_ps_256(sum);
    for j in i..n {
        total += w[j].to_f32() * x[j];
    }
    total
}

/// `Σ a·b` in f32.
///
/// # Safety
/// Requires AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn f32_dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, s) in acc.iter_mut().enumerate() {
            let av = _mm256_loadu_ps(a.as_ptr().add(i + 8 * j));
            *s = _mm256_fmadd_ps(av, _mm256_loadu_ps(b.as_ptr().add(i + 8 * j)), *s);
        }
        i += 32;
    }
    while i + 8 <= n {
        let av = _mm256_loadu_ps(a.as_ptr().add(i));
        acc[0] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b.as_ptr().add(i)), acc[0]);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut total = super::hsum_ps_256(sum);
    for j in i..n {
        total += a[j] * b[j];
    }
    total
}

/// `out += a · v` with f16 `v`.
///
/// # Safety
/// Requires AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_axpy(out: &mut [f32], a: f32, v: &[f16]) {
    let n = out.len().min(v.len());
    let va = _mm256_set1_ps(a);
    let vp = v.as_ptr() as *const u16;
    let mut i = 0;
    while i + 8 <= n {
        let vv = _mm256_cvtph_ps(_mm_loadu_si128(vp.add(i) as *const __m128i));
        let o = _mm256_loadu_ps(out.as_ptr().add(i));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_fmadd_ps(va, vv, o));
        i += 8;
    }
    for j in i..n {
        out[j] += a * v[j].to_f32();
    }
}

/// `out += a · v`.
///
/// # Safety
/// Requires AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn f32_axpy(out: &mut [f32], a: f32, v: &[f32]) {
    let n = out.len().min(v.len());
    let va = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        let o = _mm256_loadu_ps(out.as_ptr().add(i));
        let vv = _mm256_loadu_ps(v.as_ptr().add(i));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_fmadd_ps(va, vv, o));
        i += 8;
    }
    for j in i..n {
        out[j] += a * v[j];
    }
}

/// See [`crate::kernels::f16_rows_dot`].
///
/// # Safety
/// Requires AVX2, FMA and F16C; the caller checked the bounds.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_rows_dot(rows: &[f16], stride: usize, offset: usize, x: &[f32], out: &mut [f32]) {
    // A call per cached key cost about as much as the key's product (the demo model's head
    // is 64 values), and attention over a few hundred positions outweighed all its matrices:
    // for whole 32-value steps the product is written out ([`rows_dot_group`], which the
    // grouped kernel shares), with `f16_dot`'s operations in its order: the same bits.
    let len = x.len();
    if !len.is_multiple_of(32) {
        for (j, o) in out.iter_mut().enumerate() {
            let start = j * stride + offset;
            *o = f16_dot(rows.get_unchecked(start..start + len), x);
        }
        return;
    }
    let base = (rows.as_ptr() as *const u16).add(offset);
    rows_dot_group::<1>(base, stride, x.as_ptr(), len, out.len(), out.as_mut_ptr());
}

/// Cached keys and values are rows `stride` apart (one position's heads side by side), so a
/// head's rows are strided reads from memory: each is asked for this many rows ahead.
const KV_PREFETCH_ROWS: usize = 8;

/// Prefetches the `d` f16 values of row `j` (a line at a time; past the end is harmless:
/// prefetches never fault, and the address is only computed, not dereferenced).
#[inline(always)]
unsafe fn prefetch_row(base: *const u16, stride: usize, j: usize, d: usize) {
    let row = base.wrapping_add(j * stride);
    let mut i = 0;
    while i < d {
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(i) as *const i8);
        i += 32;
    }
}

/// `op[g·n + j] = Σ_i key_j[i] · xs[g·d + i]` for `G` queries against `n` f16 keys (`d` a
/// multiple of 32, key `j` at `base + j·stride`), each key converted once for all of them.
/// Per query and key: `f16_dot`'s four accumulators over 32-value steps, their sum, one
/// horizontal sum, in its order, so the same bits as [`f16_dot`] whatever `G`.
#[inline(always)]
unsafe fn rows_dot_group<const G: usize>(
    base: *const u16,
    stride: usize,
    xp: *const f32,
    d: usize,
    n: usize,
    op: *mut f32,
) {
    for j in 0..n {
        let wp = base.add(j * stride);
        prefetch_row(base, stride, j + KV_PREFETCH_ROWS, d);
        let mut acc = [[_mm256_setzero_ps(); 4]; G];
        let mut i = 0;
        while i < d {
            let w: [__m256; 4] = std::array::from_fn(|c| {
                _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i + 8 * c) as *const __m128i))
            });
            for (g, acc) in acc.iter_mut().enumerate() {
                for (c, a) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(xp.add(g * d + i + 8 * c));
                    *a = _mm256_fmadd_ps(w[c], x, *a);
                }
            }
            i += 32;
        }
        for (g, a) in acc.iter().enumerate() {
            let sum = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
            *op.add(g * n + j) = super::hsum_ps_256(sum);
        }
    }
}

/// See [`crate::kernels::f16_rows_dot_multi`]: queries two at a time (their 8 accumulators
/// and a key's 4 converted vectors fit AVX2's 16 registers).
///
/// # Safety
/// Requires AVX2, FMA and F16C; the caller checked the bounds.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_rows_dot_multi(
    rows: &[f16],
    stride: usize,
    offset: usize,
    xs: &[f32],
    d: usize,
    out: &mut [f32],
) {
    rows_dot_multi::<2>(rows, stride, offset, xs, d, out);
}

/// [`f16_rows_dot_multi`] with `G` queries per pass over the keys, the rest one at a time
/// ([`rows_dot_group`]: the same bits as `f16_rows_dot` per query); keys whose length is not
/// a multiple of 32 go through `f16_rows_dot` itself.
#[inline(always)]
pub(super) unsafe fn rows_dot_multi<const G: usize>(
    rows: &[f16],
    stride: usize,
    offset: usize,
    xs: &[f32],
    d: usize,
    out: &mut [f32],
) {
    let m = xs.len() / d;
    let n = out.len() / m;
    if !d.is_multiple_of(32) {
        for (x, o) in xs.chunks_exact(d).zip(out.chunks_exact_mut(n)) {
            f16_rows_dot(rows, stride, offset, x, o);
        }
        return;
    }
    let base = (rows.as_ptr() as *const u16).add(offset);
    let (xp, op) = (xs.as_ptr(), out.as_mut_ptr());
    let mut q0 = 0;
    while q0 + G <= m {
        rows_dot_group::<G>(base, stride, xp.add(q0 * d), d, n, op.add(q0 * n));
        q0 += G;
    }
    for q in q0..m {
        rows_dot_group::<1>(base, stride, xp.add(q * d), d, n, op.add(q * n));
    }
}

/// See [`crate::kernels::f16_rows_axpy_multi`]: outputs two at a time.
///
/// # Safety
/// Requires AVX2, FMA and F16C; the caller checked the bounds.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_rows_axpy_multi(
    rows: &[f16],
    stride: usize,
    offset: usize,
    p: &[f32],
    d: usize,
    out: &mut [f32],
) {
    rows_axpy_multi::<2>(rows, stride, offset, p, d, out);
}

/// [`f16_rows_axpy_multi`] with `G` outputs per pass over the values. The lanes
/// `f16_rows_axpy` runs in 64-lane blocks (FMA, row after row) run here 32 at a time with the
/// same FMAs in the same row order; the lanes after them go through `f16_rows_axpy` itself,
/// which runs them as it would have (8-lane FMAs, then scalar): the same bits per output.
#[inline(always)]
pub(super) unsafe fn rows_axpy_multi<const G: usize>(
    rows: &[f16],
    stride: usize,
    offset: usize,
    p: &[f32],
    d: usize,
    out: &mut [f32],
) {
    let m = out.len() / d;
    let n = p.len() / m;
    let blocked = d / 64 * 64;
    let base = (rows.as_ptr() as *const u16).add(offset);
    let mut q0 = 0;
    while q0 + G <= m && blocked > 0 {
        let pp = p.as_ptr().add(q0 * n);
        let op = out.as_mut_ptr().add(q0 * d);
        let mut i = 0;
        while i < blocked {
            let mut acc = [[_mm256_setzero_ps(); 4]; G];
            for (g, acc) in acc.iter_mut().enumerate() {
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(op.add(g * d + i + 8 * c));
                }
            }
            for j in 0..n {
                if i == 0 {
                    // The later passes find the rows in cache.
                    prefetch_row(base, stride, j + KV_PREFETCH_ROWS, d);
                }
                let r = base.add(j * stride + i);
                let v: [__m256; 4] = std::array::from_fn(|c| {
                    _mm256_cvtph_ps(_mm_loadu_si128(r.add(8 * c) as *const __m128i))
                });
                for (g, acc) in acc.iter_mut().enumerate() {
                    let va = _mm256_set1_ps(*pp.add(g * n + j));
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(va, v[c], *a);
                    }
                }
            }
            for (g, acc) in acc.iter().enumerate() {
                for (c, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(op.add(g * d + i + 8 * c), *a);
                }
            }
            i += 32;
        }
        q0 += G;
    }
    for q in 0..m {
        // Outputs the passes above took need only their last lanes; the rest need all.
        let from = if q < q0 { blocked } else { 0 };
        if from < d {
            f16_rows_axpy(
                rows,
                stride,
                offset + from,
                &p[q * n..(q + 1) * n],
                &mut out[q * d + from..(q + 1) * d],
            );
        }
    }
}

/// See [`crate::kernels::f32_rows_dot`].
///
/// # Safety
/// Requires AVX2 and FMA; the caller checked the bounds.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn f32_rows_dot(rows: &[f32], stride: usize, offset: usize, x: &[f32], out: &mut [f32]) {
    crate::kernels::rows_dot_with(rows, stride, offset, x, out, |r, x| f32_dot(r, x));
}

/// See [`crate::kernels::f16_rows_axpy`].
///
/// # Safety
/// Requires AVX2, FMA and F16C; the caller checked the bounds.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_rows_axpy(
    rows: &[f16],
    stride: usize,
    offset: usize,
    p: &[f32],
    out: &mut [f32],
) {
    // Rows inside, lanes outside: 64 output values stay in eight registers over all the rows
    // (eight independent FMA chains) instead of being loaded and stored once per row. Each
    // lane still gets `f16_axpy`'s operations row after row, in the same order, so the sums
    // are bit for bit those of the row-by-row loop.
    let n = out.len();
    let base = (rows.as_ptr() as *const u16).add(offset);
    let op = out.as_mut_ptr();
    let mut i = 0;
    while i + 64 <= n {
        let mut acc = [_mm256_setzero_ps(); 8];
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(op.add(i + 8 * c));
        }
        for (j, &pj) in p.iter().enumerate() {
            let va = _mm256_set1_ps(pj);
            let r = base.add(j * stride + i);
            for (c, a) in acc.iter_mut().enumerate() {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(r.add(8 * c) as *const __m128i));
                *a = _mm256_fmadd_ps(va, v, *a);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(op.add(i + 8 * c), *a);
        }
        i += 64;
    }
    while i + 8 <= n {
        let mut a = _mm256_loadu_ps(op.add(i));
        for (j, &pj) in p.iter().enumerate() {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(base.add(j * stride + i) as *const __m128i));
            a = _mm256_fmadd_ps(_mm256_set1_ps(pj), v, a);
        }
        _mm256_storeu_ps(op.add(i), a);
        i += 8;
    }
    for (e, o) in out.iter_mut().enumerate().skip(i) {
        for (j, &pj) in p.iter().enumerate() {
            *o += pj * rows.get_unchecked(j * stride + offset + e).to_f32();
        }
    }
}

/// See [`crate::kernels::f32_rows_axpy`].
///
/// # Safety
/// Requires AVX2 and FMA; the caller checked the bounds.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn f32_rows_axpy(
    rows: &[f32],
    stride: usize,
    offset: usize,
    p: &[f32],
    out: &mut [f32],
) {
    crate::kernels::rows_axpy_with(rows, stride, offset, p, out, |o, a, r| f32_axpy(o, a, r));
}

/// Q6_K rows against [`Q8K`] activations (see [`crate::kernels::q6_k_matmul`]): per 32 values,
/// the codes (0..63) are unpacked with four or five byte operations, multiplied by the int8
/// activations with `maddubs` (pairs into i16), then by the two 16-value groups' scales with
/// `madd` (into i32); the scales are widened to i16 once per block and spread over their lanes
/// with one in-lane byte shuffle per group. (Unpacking with a shift per high-bit field and
/// spreading with a shuffle and a widening per group cost 1/5 more operations: one Zen 4 core
/// ran 19.5 GB/s from L2 and 23 GB/s from memory then, 22.3 and 25 GB/s now; the loop is
/// bound by arithmetic.) The `−32` offset comes from
/// the activations' group sums, once per block. Each block's integer sum is exact; the scaled
/// blocks are added in f32 lanes (one horizontal sum per row), so results differ from the
/// scalar twin only by f32 rounding: the order of those additions, and (at extreme codes and
/// scales, past 2²⁴) the lanes' rounding to f32 before a block's lanes are summed.
///
/// # Safety
/// Requires AVX2, FMA and F16C; `w` holds whole rows of `qx.d.len()` blocks, `out` one value
/// per row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6_k_rows(w: &[u8], qx: &Q8K, out: &mut [f32]) {
    let n_blocks = qx.d.len();
    let row_bytes = n_blocks * 210;
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    let xq = qx.q.as_ptr() as *const u8;
    // In-lane byte shuffles that spread the i16 scales 2g (low 128-bit lane) and 2g + 1 (high
    // lane) of a half-block's eight over their lanes, from those eight copied into both lanes.
    let spread: [__m256i; 4] = std::array::from_fn(|g| {
        // Byte j picks byte (j mod 2) of i16 scale 2g (j < 16) or 2g + 1 (j ≥ 16).
        let idx: [i8; 32] = std::array::from_fn(|j| (4 * g + 2 * (j / 16) + j % 2) as i8);
        load(idx.as_ptr() as *const u8)
    });
    for (r, o) in out.iter_mut().enumerate().take(w.len() / row_bytes) {
        let row = w.as_ptr().add(r * row_bytes);
        let mut sum = _mm256_setzero_ps();
        for b in 0..n_blocks {
            let blk = row.add(b * 210);
            for line in 0..4 {
                _mm_prefetch::<_MM_HINT_T1>(
                    blk.wrapping_add(PREFETCH_BYTES + 64 * line) as *const i8
                );
            }
            // Loaded in address order, as the AVX-512 kernel (where it measured faster from
            // memory; this loop was measured only as a whole, with the L2 prefetch).
            let ql: [__m256i; 4] = std::array::from_fn(|i| load(blk.add(32 * i)));
            let qh = [load(blk.add(128)), load(blk.add(160))];
            let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192) as *const __m128i));
            let mut acc = _mm256_setzero_si256();
            for half in 0..2 {
                let (ql0, ql1, h) = (ql[2 * half], ql[2 * half + 1], qh[half]);
                // Each group's two high bits moved to bits 4-5 by one 16-bit shift (the bits
                // that cross into the next byte are masked off with the rest).
                let groups = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(h), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(h), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                        _mm256_and_si256(h, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(h), m30),
                    ),
                ];
                let half_scales = if half == 0 {
                    _mm256_permute4x64_epi64::<0x44>(scales)
                } else {
                    _mm256_permute4x64_epi64::<0xEE>(scales)
                };
                for (i, codes) in groups.iter().enumerate() {
                    let q = load(xq.add(b * 256 + 128 * half + 32 * i));
                    // |u·q + u·q| ≤ 2·63·127: no i16 saturation.
                    let pairs = _mm256_maddubs_epi16(*codes, q);
                    let sc = _mm256_shuffle_epi8(half_scales, spread[i]);
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, sc));
                }
            }
            // The −32 offset: Σ_g sc_g · 32 · Σ_{i∈g} q_i, exact in i32.
            let gs = _mm256_loadu_si256(qx.group_sums[b * 16..].as_ptr() as *const __m256i);
            let bias = _mm256_madd_epi16(scales, gs);
            let dot = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, _mm256_slli_epi32::<5>(bias)));
            let dw = super::q6_k_block_scale(blk);
            sum = _mm256_fmadd_ps(_mm256_set1_ps(dw * qx.d[b]), dot, sum);
        }
        *o = super::hsum_ps_256(sum);
    }
}

/// Q8_0 rows against [`Q8Blocks`] activations (see [`crate::kernels::q8_0_matmul`]): per block
/// `maddubs(|w|, sign(q, w))` (the sign trick: an unsigned × signed product of the same value;
/// exact, as |q| ≤ 127), pairs widened with `madd`, then scaled by `d_w · d_x` into f32 lanes.
/// One row at a time, front to back, so the weights stream from memory as one sequential read
/// (several rows at a time measured half the bandwidth from DRAM, as for I2_S).
///
/// # Safety
/// Requires AVX2, FMA and F16C; `w` holds whole rows of `qx.d.len()` blocks, `out` one value
/// per row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_0_rows(w: &[u8], qx: &Q8Blocks, out: &mut [f32]) {
    let n_blocks = qx.d.len();
    let row_bytes = n_blocks * 34;
    let ones = _mm256_set1_epi16(1);
    let xq = qx.q.as_ptr() as *const u8;
    for (r, o) in out.iter_mut().enumerate().take(w.len() / row_bytes) {
        let row = w.as_ptr().add(r * row_bytes);
        // Two accumulators, alternating blocks, so consecutive FMAs do not wait on each other.
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let block = |b: usize, d: f32, acc: __m256| {
            let blk = row.add(b * 34);
            _mm_prefetch::<_MM_HINT_T1>(blk.wrapping_add(PREFETCH_BYTES) as *const i8);
            let wq = load(blk.add(2));
            let q = load(xq.add(b * 32));
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(q, wq));
            let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
            _mm256_fmadd_ps(_mm256_set1_ps(d), dot, acc)
        };
        let mut b0 = 0;
        while b0 < n_blocks {
            let nb = 8.min(n_blocks - b0);
            // The scale products `d_w · d_x` of up to 8 blocks, converted and multiplied at once.
            let mut dw = [0u16; 8];
            let mut dxs = [0f32; 8];
            for j in 0..nb {
                let blk = row.add((b0 + j) * 34);
                dw[j] = u16::from_le_bytes([*blk, *blk.add(1)]);
                dxs[j] = qx.d[b0 + j];
            }
            let mut d = [0f32; 8];
            _mm256_storeu_ps(
                d.as_mut_ptr(),
                _mm256_mul_ps(
                    _mm256_cvtph_ps(_mm_loadu_si128(dw.as_ptr() as *const __m128i)),
                    _mm256_loadu_ps(dxs.as_ptr()),
                ),
            );
            let mut j = 0;
            while j + 2 <= nb {
                acc0 = block(b0 + j, d[j], acc0);
                acc1 = block(b0 + j + 1, d[j + 1], acc1);
                j += 2;
            }
            if j < nb {
                acc0 = block(b0 + j, d[j], acc0);
            }
            b0 += nb;
        }
        let acc = [acc0, acc1];
        *o = super::hsum_ps_256(_mm256_add_ps(acc[0], acc[1]));
    }
}
