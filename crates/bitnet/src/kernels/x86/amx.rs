//! AMX-INT8 kernels (Intel Xeon from Sapphire Rapids on): prefill's ternary GEMM on the tile
//! unit, whose `tdpbsud` multiplies a 16 × 64 tile of int8 activations by a 64 × 16 tile of
//! u8 codes into 16 × 16 i32 sums in one instruction (16 × 16 × 64 = 16384 multiply-adds,
//! against `vpdpbusd`'s 64). One token at a time (decoding) and small batches stay on the
//! AVX-512 VNNI kernels this table borrows: there the weights' bytes, not the arithmetic, set
//! the pace.
//!
//! The activations are the A operand straight from memory (16 token rows, stride `k`). The B
//! operand wants 4 consecutive values of each of 16 weight rows side by side ("VNNI layout":
//! tile row `j`, bytes `4n..4n+4` = values `4j..4j+4` of row `n`), so each row block's codes are
//! unpacked from x86's I2_S layout (see [`super::I2S_ROWS`]) with a 16 × 8 dword transpose per
//! 128 values: in an I2_S block the four values of a dword sit in one byte position of four
//! bytes, one 2-bit field each, so transposing the packed dwords and then masking each field
//! gives the tile rows directly. The sums are exact integers, the same as every other path's.
//!
//! The tile registers are not something the compiler knows of: every kernel here loads its
//! configuration on entry and releases the tiles on exit, and no Rust code between the
//! `asm!` blocks touches them.

use std::arch::asm;
use std::arch::x86_64::*;

use super::{avx512, I2S_ROWS};
use crate::kernels::{Isa, KernelTable};

/// The AVX-512 VNNI table with the GEMM on AMX.
pub(crate) static TABLE: KernelTable = KernelTable {
    isa: Isa::Amx,
    i2s_matmul,
    ..avx512::TABLE
};

/// Rows (of weights) and tokens one tile holds.
const TILE: usize = 16;
/// Values of `k` one tile spans.
const TILE_K: usize = 64;
/// Bytes of one tile.
const TILE_BYTES: usize = TILE * TILE_K;
/// Fewer tokens than this run on the AVX-512 kernels (the tiles would be mostly padding, and
/// unpacking each row block for a handful of tokens costs more than it saves).
pub(crate) const MIN_TOKENS: usize = 8;

/// Whether this CPU has AMX-TILE and AMX-INT8 and the kernel lets this process use the tile
/// data (Linux asks each process to request it: `arch_prctl(ARCH_REQ_XCOMP_PERM)`).
pub(crate) fn detect() -> bool {
    // CPUID leaf 7 exists on every x86-64 CPU with AVX-512 (checked by the caller).
    let leaf7 = __cpuid_count(7, 0);
    let (amx_tile, amx_int8) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 25 & 1 == 1);
    amx_tile && amx_int8 && request_tile_data()
}

#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permitted XSAVE
    // state; it fails harmlessly (EINVAL, ENOSYS) where the kernel or CPU lacks AMX.
    let granted = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    // The OS must also have enabled the tile state in XCR0 (bits 17 and 18).
    // SAFETY: XGETBV is available wherever AVX is (OSXSAVE, checked by the caller's AVX2).
    granted == 0 && unsafe { _xgetbv(0) } >> 17 & 3 == 3
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    // Elsewhere the tile state is not requested here; stay on AVX-512.
    false
}

/// The 64-byte tile configuration: palette 1, every tile 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn full() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = TILE_K as u8;
            c[48 + t] = TILE as u8;
        }
        TileConfig(c)
    }
}

/// See [`crate::kernels::i2s_matmul`].
///
/// # Safety
/// Requires AVX-512 VNNI and AMX-INT8 with the tile data granted ([`detect`]); slice lengths
/// as documented there.
pub unsafe fn i2s_matmul(w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    let n_tokens = qsums.len();
    let row_bytes = k / 4;
    let n_rows = w.len() / row_bytes;
    let tiled = n_rows / TILE * TILE;
    if n_tokens < MIN_TOKENS || tiled == 0 {
        return avx512::i2s_matmul(w, k, acts, qsums, out);
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => gemm(w, k, tiled, n_rows, acts, n_tokens, out, &mut buf),
        Err(_) => gemm(w, k, tiled, n_rows, acts, n_tokens, out, &mut Vec::new()),
    });
    // The sums above are Σ code · q with codes t + 1.
    for (t, &qsum) in qsums.iter().enumerate() {
        for o in &mut out[t * n_rows..t * n_rows + tiled] {
            *o -= qsum;
        }
    }
    if tiled < n_rows {
        // The ragged last rows (whole groups of I2S_ROWS, then the file's layout: the layout
        // of a slice that starts at a whole group) on AVX-512.
        let rest = n_rows - tiled;
        let mut tail = vec![0i32; n_tokens * rest];
        avx512::i2s_matmul(&w[tiled * row_bytes..], k, acts, qsums, &mut tail);
        for (t, part) in tail.chunks_exact(rest).enumerate() {
            out[t * n_rows + tiled..(t + 1) * n_rows].copy_from_slice(part);
        }
    }
}

thread_local! {
    /// Each thread's unpacked codes and padded activations, kept between calls (a fresh
    /// buffer of this size is mapped and zeroed by the kernel on every call).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[t · n_rows + r] = Σ code · q` for the first `tiled` rows (a multiple of 16), with
/// `scratch` as working memory.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm(
    w: &[u8],
    k: usize,
    tiled: usize,
    n_rows: usize,
    acts: &[i8],
    n_tokens: usize,
    out: &mut [i32],
    scratch: &mut Vec<u8>,
) {
    let row_bytes = k / 4;
    let chunks = k / TILE_K;
    // Token tiles: whole ones straight from `acts`; a ragged last one from a zero-padded copy.
    let whole = n_tokens / TILE;
    let rest = n_tokens % TILE;
    // Codes of two row tiles in VNNI layout (tile (chunk c, half h) at (2c + h) · 1024), then
    // the padded token tile.
    let codes_len = 2 * chunks * TILE_BYTES;
    if scratch.len() < codes_len + TILE * k {
        scratch.resize(codes_len + TILE * k, 0);
    }
    let (codes, padded) = scratch.split_at_mut(codes_len);
    let padded = &mut padded[..TILE * k];
    if rest > 0 {
        let src = &acts[whole * TILE * k..n_tokens * k];
        for (p, &a) in padded.iter_mut().zip(src) {
            *p = a as u8;
        }
        padded[rest * k..].fill(0);
    }
    let token_tiles = whole + usize::from(rest > 0);
    let a_tile = |tt: usize| -> *const i8 {
        if tt < whole {
            acts.as_ptr().add(tt * TILE * k)
        } else {
            padded.as_ptr() as *const i8
        }
    };
    let mut c_tmp = [0i32; TILE * TILE];
    let cfg = TileConfig::full();
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let stride_a = k;
    let stride_c = n_rows * 4;
    let mut r0 = 0;
    while r0 < tiled {
        let halves = if tiled - r0 >= 2 * TILE { 2 } else { 1 };
        for h in 0..halves {
            unpack_rows(
                w,
                row_bytes,
                r0 + h * TILE,
                k,
                codes.as_mut_ptr().add(h * TILE_BYTES),
            );
        }
        let mut tt = 0;
        while tt < token_tiles {
            let pair = tt + 1 < token_tiles;
            // C tiles: tmm0 (token tile tt, half 0), tmm1 (tt, half 1), tmm2 (tt+1, half 0),
            // tmm3 (tt+1, half 1).
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let a0 = a_tile(tt);
            let a1 = if pair { a_tile(tt + 1) } else { a0 };
            for c in 0..chunks {
                let b = codes.as_ptr().add(2 * c * TILE_BYTES);
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b} + {sb}*1]",
                    "tdpbsud tmm0, tmm4, tmm6",
                    a0 = in(reg) a0.add(c * TILE_K),
                    b = in(reg) b,
                    sa = in(reg) stride_a,
                    sb = in(reg) TILE_K,
                    options(nostack, readonly),
                );
                if halves == 2 {
                    asm!(
                        "tileloadd tmm7, [{b} + {sb}*1]",
                        "tdpbsud tmm1, tmm4, tmm7",
                        b = in(reg) b.add(TILE_BYTES),
                        sb = in(reg) TILE_K,
                        options(nostack, readonly),
                    );
                }
                if pair {
                    asm!(
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tdpbsud tmm2, tmm5, tmm6",
                        a1 = in(reg) a1.add(c * TILE_K),
                        sa = in(reg) stride_a,
                        options(nostack, readonly),
                    );
                    if halves == 2 {
                        asm!("tdpbsud tmm3, tmm5, tmm7", options(nostack, nomem));
                    }
                }
            }
            // Store: tiles of whole token tiles straight into `out`, the padded one through
            // `c_tmp`.
            for (i, t_tile) in [(0usize, tt), (2, tt + 1)] {
                if i == 2 && !pair {
                    break;
                }
                for h in 0..halves {
                    let rows = r0 + h * TILE;
                    let whole_tile = t_tile < whole;
                    let (dst, stride) = if whole_tile {
                        (
                            out.as_mut_ptr().add(t_tile * TILE * n_rows + rows),
                            stride_c,
                        )
                    } else {
                        (c_tmp.as_mut_ptr(), TILE * 4)
                    };
                    store_c(i + h, dst, stride);
                    if !whole_tile {
                        for (m, src) in c_tmp.chunks_exact(TILE).take(rest).enumerate() {
                            let o = (whole * TILE + m) * n_rows + rows;
                            out[o..o + TILE].copy_from_slice(src);
                        }
                    }
                }
            }
            tt += 2;
        }
        r0 += halves * TILE;
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// Stores C tile `i` (tmm0-3) to `dst`, rows `stride` bytes apart.
#[inline(always)]
unsafe fn store_c(i: usize, dst: *mut i32, stride: usize) {
    match i {
        0 => asm!("tilestored [{d} + {s}*1], tmm0", d = in(reg) dst, s = in(reg) stride,
            options(nostack)),
        1 => asm!("tilestored [{d} + {s}*1], tmm1", d = in(reg) dst, s = in(reg) stride,
            options(nostack)),
        2 => asm!("tilestored [{d} + {s}*1], tmm2", d = in(reg) dst, s = in(reg) stride,
            options(nostack)),
        _ => asm!("tilestored [{d} + {s}*1], tmm3", d = in(reg) dst, s = in(reg) stride,
            options(nostack)),
    }
}

/// Unpacks rows `r0..r0 + 16` (whole groups of [`I2S_ROWS`] in x86's layout) into B tiles:
/// tile `c` (values `64c ..`) at `dst + 2c · 1024`, row `j` holding values `64c + 4j ..+4` of
/// each of the 16 rows as u8 codes.
///
/// An I2_S block holds 128 values of a row in 32 bytes: value `32f + i` is field `f` (bits
/// `6 − 2f ..`) of byte `i`. So dword `d` of the block holds values `32f + 4d .. +4` in field
/// `f`. Transposing the 16 rows' blocks as a 16 × 8 matrix of dwords gives, for each `d`, one
/// vector of dword `d` of every row; masking field `f` out of it gives B row
/// `(32f + 4d) mod 64 / 4` of tile `2b + f / 2` of block `b`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn unpack_rows(w: &[u8], row_bytes: usize, r0: usize, k: usize, dst: *mut u8) {
    const _: () = assert!(TILE == 4 * I2S_ROWS);
    let mask = _mm512_set1_epi8(3);
    // Transpose indices (see the stages below); lane l of a permutex2var result takes lane
    // idx[l] of the first source (< 16) or lane idx[l] − 16 of the second.
    let idx = |f: &dyn Fn(usize) -> usize| -> __m512i {
        let v: [i32; 16] = std::array::from_fn(|l| f(l) as i32);
        _mm512_loadu_si512(v.as_ptr() as *const __m512i)
    };
    // Stage 1: from [row 0 d0-7 | row 1 d0-7] and [row 2 | row 3] to lane 4n + d for
    // rows n = 0..4 and dwords d = 0..4 (lo) or 4..8 (hi).
    let s1 = |hi: usize| {
        idx(&|l| {
            let (n, d) = (l / 4, l % 4 + 4 * hi);
            if n < 2 {
                8 * n + d
            } else {
                16 + 8 * (n - 2) + d
            }
        })
    };
    // Stage 2: from two stage-1 vectors (rows 0-3 and 4-7, 4 dwords) to lane 8e + n for
    // rows n = 0..8 and dwords e = 0..2 (of those 4: pair `p`).
    let s2 = |p: usize| {
        idx(&|l| {
            let (e, n) = (l / 8 + 2 * p, l % 8);
            if n < 4 {
                4 * n + e
            } else {
                16 + 4 * (n - 4) + e
            }
        })
    };
    // Stage 3: from rows 0-7 and 8-15 (two dwords each) to lane n for one dword `e`.
    let s3 = |e: usize| idx(&|l| if l < 8 { 8 * e + l } else { 16 + 8 * e + l - 8 });
    let (s1, s2, s3) = ([s1(0), s1(1)], [s2(0), s2(1)], [s3(0), s3(1)]);
    let base = w.as_ptr().add(r0 * row_bytes);
    for b in 0..k / 128 {
        // Group g (rows 4g..4g+4) has block b of its four rows at 128 contiguous bytes.
        let z: [__m512i; 8] = std::array::from_fn(|i| {
            let p = base.add((i / 2) * I2S_ROWS * row_bytes + b * 128 + (i % 2) * 64);
            _mm512_loadu_si512(p as *const __m512i)
        });
        // Stage 1: groups of 4 rows × 4 dwords.
        let mut p1 = [_mm512_setzero_si512(); 8]; // [group][lo, hi]
        for g in 0..4 {
            for hi in 0..2 {
                p1[2 * g + hi] = _mm512_permutex2var_epi32(z[2 * g], s1[hi], z[2 * g + 1]);
            }
        }
        // Stage 2: rows 0-7 or 8-15 × 2 dwords: q[half][quarter] with dwords 2·quarter ..+2.
        let mut q = [[_mm512_setzero_si512(); 4]; 2];
        for half in 0..2 {
            for hi in 0..2 {
                let (lo_rows, hi_rows) = (p1[2 * (2 * half) + hi], p1[2 * (2 * half + 1) + hi]);
                for pair in 0..2 {
                    q[half][2 * hi + pair] = _mm512_permutex2var_epi32(lo_rows, s2[pair], hi_rows);
                }
            }
        }
        // Stage 3 and the fields: dword d = 2·quarter + e of all 16 rows.
        for (quarter, (rows_lo, rows_hi)) in q[0].iter().zip(&q[1]).enumerate() {
            for (e, s3) in s3.iter().enumerate() {
                let d = 2 * quarter + e;
                let v = _mm512_permutex2var_epi32(*rows_lo, *s3, *rows_hi);
                let fields = [
                    _mm512_and_si512(_mm512_srli_epi16::<6>(v), mask),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask),
                    _mm512_and_si512(_mm512_srli_epi16::<2>(v), mask),
                    _mm512_and_si512(v, mask),
                ];
                for (f, codes) in fields.iter().enumerate() {
                    // Values 128b + 32f + 4d: tile 2b + f/2, row (32f + 4d) mod 64 / 4.
                    let tile = 2 * b + f / 2;
                    let row = 8 * (f % 2) + d;
                    let p = dst.add(2 * tile * TILE_BYTES + row * TILE_K);
                    _mm512_storeu_si512(p as *mut __m512i, *codes);
                }
            }
        }
    }
}
