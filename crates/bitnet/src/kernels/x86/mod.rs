//! x86-64 SIMD kernels, chosen at run time by CPU feature detection (see `Isa`).

pub(crate) mod amx;
pub mod avx2;
pub(crate) mod avx512;

use std::arch::x86_64::*;

/// Sum of the eight i32 lanes.
#[inline(always)]
unsafe fn hsum_epi32_256(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Sum of the eight f32 lanes.
#[inline(always)]
unsafe fn hsum_ps_256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The f16 scale `d` of the 210-byte Q6_K block at `blk` (its last two bytes), as f32: one
/// F16C conversion (callers enable `f16c`).
#[inline(always)]
unsafe fn q6_k_block_scale(blk: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*blk.add(208), *blk.add(209)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// How many row blocks ahead the GEMMs prefetch their weights.
const GEMM_PREFETCH_BLOCKS: usize = 2;

/// Prefetch the weight bytes of rows `rows` into L2 (all of the I2_S layouts keep a range of
/// whole row groups contiguous, so the rows' bytes are about `rows × row_bytes` onward). With
/// few tokens (`serve`'s batched decoding) a GEMM spends so little time on each block of rows
/// that it waits on memory. 8 tokens against an 84 MB matrix in huge pages, one Zen 4 core:
/// no prefetch 98, prefetched into L1 108-111, into L2 156-161 GMAC/s (157 with the matrix in
/// cache): into L1 the lines evicted the unpacked codes and activations the tiles reuse.
#[inline(always)]
unsafe fn prefetch_rows(w: &[u8], row_bytes: usize, rows: std::ops::Range<usize>) {
    let start = (rows.start * row_bytes).min(w.len());
    let end = (rows.end * row_bytes).min(w.len());
    let mut off = start;
    while off < end {
        // Never dereferenced: prefetches do not fault.
        _mm_prefetch::<_MM_HINT_T1>(w.as_ptr().wrapping_add(off) as *const i8);
        off += 64;
    }
}

/// Rows the x86 ternary kernels interleave (see [`crate::kernels::i2s_interleave_rows`]): a
/// GEMV over four rows at once shares each activation load and reads one sequential stream,
/// measured 12-25 % faster per core than one row at a time over the file's layout.
pub(crate) const I2S_ROWS: usize = 4;

/// The 32-byte block `b` of row `r` in x86's I2_S layout (groups of [`I2S_ROWS`] rows
/// interleaved, then the rows of the ragged last group in the file's layout).
#[inline(always)]
unsafe fn i2s_block(
    w: *const u8,
    row_bytes: usize,
    grouped: usize,
    r: usize,
    b: usize,
) -> *const u8 {
    if r < grouped {
        w.add((r - r % I2S_ROWS) * row_bytes + (b * I2S_ROWS + r % I2S_ROWS) * 32)
    } else {
        w.add(r * row_bytes + b * 32)
    }
}

/// The 32 codes (0..=2) of a T1_6 tail's 8 bytes at `p`, in value order: value `8j + m` is bits
/// `2j..2j+2` of byte `m`, so the bytes broadcast to four 64-bit lanes, lane `j` shifted right
/// by `2j` and masked, line up with 32 consecutive activations.
#[inline(always)]
unsafe fn t16_tail_codes(p: *const u8) -> __m256i {
    let b = _mm256_set1_epi64x(std::ptr::read_unaligned(p as *const i64));
    let shifted = _mm256_srlv_epi64(b, _mm256_set_epi64x(6, 4, 2, 0));
    _mm256_and_si256(shifted, _mm256_set1_epi8(3))
}
