//! Compute kernels: the ternary × int8 products, the dense output product, and the small float
//! operations of the forward pass. Knows the formats' block types, nothing of models.
//!
//! Every operation has a plain scalar twin in [`scalar`] (the reference, and the fallback on
//! every CPU without a SIMD path). Each instruction set is one module exporting one
//! [`KernelTable`] (`scalar::TABLE`, `x86::avx2::TABLE`, ...): a table of function pointers,
//! one per operation, that may borrow entries from a simpler table with `..OTHER`. The safe
//! functions below check lengths once and call through the table of the [`Isa`] they are
//! given, so tests can force every path and a new ISA adds a module and a table, not a
//! wrapper per operation.
//! Integer results (the ternary products, activation quantization) are bit-identical across
//! ISAs; float reductions (f16/f32 dot products) differ only by summation order.

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub mod membw;
pub mod scalar;
pub mod threads;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use half::f16;

pub use scalar::softmax;
pub(crate) use scalar::{rms_norm, rope_neox};

/// An instruction set the kernels have a path for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, every CPU: the reference every SIMD path is checked against.
    Scalar,
    /// x86-64 AVX2 with FMA and F16C (maddubs-based ternary products).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL with VNNI (vpdpbusd ternary products).
    Avx512Vnni,
    /// AVX-512 VNNI with AMX-INT8 tiles (Intel Xeon from Sapphire Rapids on): prefill's
    /// ternary GEMM on the tile unit, the rest AVX-512 VNNI's.
    Amx,
    /// AArch64 Advanced SIMD (every ARMv8 CPU).
    Neon,
    /// NEON with the dot-product extension (`sdot`; Apple M1+, Graviton2+).
    Dotprod,
    /// NEON with dotprod and the int8 matrix multiply extension (`smmla`; Apple M2+,
    /// Graviton3+).
    I8mm,
}

impl Isa {
    /// Every ISA on every architecture, in order of preference within one architecture.
    pub(crate) const ALL: [Isa; 7] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512Vnni,
        Isa::Amx,
        Isa::Neon,
        Isa::Dotprod,
        Isa::I8mm,
    ];

    /// The name `--isa` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Amx => "amx",
            Isa::Neon => "neon",
            Isa::Dotprod => "dotprod",
            Isa::I8mm => "i8mm",
        }
    }

    /// Whether this CPU can run the path (detected once).
    pub fn is_available(self) -> bool {
        static AVAILABLE: OnceLock<Vec<Isa>> = OnceLock::new();
        AVAILABLE
            .get_or_init(|| Isa::ALL.into_iter().filter(|i| i.detect()).collect())
            .contains(&self)
    }

    fn detect(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.detect()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => Isa::Avx512Vnni.detect() && x86::amx::detect(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::Dotprod => {
                Isa::Neon.detect() && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            // The i8mm table keeps dotprod's GEMV (every i8mm CPU has dotprod: ARMv8.6).
            #[cfg(target_arch = "aarch64")]
            Isa::I8mm => Isa::Dotprod.detect() && std::arch::is_aarch64_feature_detected!("i8mm"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The ISA whose kernels this one runs for one token (AMX's table keeps AVX-512 VNNI's GEMV:
    /// decoding waits on memory, and tiles of one token would be mostly padding).
    pub fn decode_isa(self) -> Isa {
        match self {
            Isa::Amx => Isa::Avx512Vnni,
            other => other,
        }
    }

    /// Every path this CPU can run.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The fastest available path, or the one named by `BITNET_ISA` when that is set and
    /// available. Detected once.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let forced = std::env::var("BITNET_ISA")
                .ok()
                .and_then(|v| v.parse::<Isa>().ok())
                .filter(|i| i.is_available());
            forced.unwrap_or_else(|| Isa::available().into_iter().max().unwrap_or(Isa::Scalar))
        })
    }

    /// The kernels of this ISA, or of the best available one below it on the same
    /// architecture (and scalar at the bottom) when this CPU cannot run it.
    pub fn kernels(self) -> &'static KernelTable {
        let usable = if self.is_available() {
            self
        } else {
            Isa::available()
                .into_iter()
                .filter(|&i| i < self)
                .max()
                .unwrap_or(Isa::Scalar)
        };
        match usable {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &x86::avx2::TABLE,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => &x86::avx512::TABLE,
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => &x86::amx::TABLE,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => &aarch64::neon::TABLE,
            #[cfg(target_arch = "aarch64")]
            Isa::Dotprod => &aarch64::dotprod::TABLE,
            #[cfg(target_arch = "aarch64")]
            Isa::I8mm => &aarch64::i8mm::TABLE,
            _ => &scalar::TABLE,
        }
    }
}

impl std::str::FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Isa, String> {
        let names: Vec<&str> = Isa::ALL.iter().map(|i| i.name()).collect();
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown ISA `{s}` ({})", names.join(", ")))
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The layout a ternary layer's weights are read in when decoding (one token at a time, where
/// every weight byte is read once per token and memory bandwidth sets the speed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeLayout {
    /// The I2_S bytes the prefill kernels read too (2 bits a weight).
    I2s,
    /// T1_6: five trits a byte, 1.6 bits a weight (see [`t16_pack_i2s`]), a second copy next to
    /// the I2_S one, which prefill keeps reading.
    T16,
}

impl DecodeLayout {
    /// The name `--decode-layout` takes.
    pub fn name(self) -> &'static str {
        match self {
            DecodeLayout::I2s => "i2_s",
            DecodeLayout::T16 => "t1_6",
        }
    }
}

impl std::str::FromStr for DecodeLayout {
    type Err = String;
    fn from_str(s: &str) -> Result<DecodeLayout, String> {
        [DecodeLayout::I2s, DecodeLayout::T16]
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown decode layout `{s}` (i2_s, t1_6)"))
    }
}

impl std::fmt::Display for DecodeLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A ternary product: `(weights, k, int8 activations, activation sums, out)`.
type TernaryMatmul<O> = unsafe fn(&[u8], usize, &[i8], &[i32], &mut [O]);

/// One ISA's implementation of every kernel. Entries are `unsafe fn` because SIMD ones need
/// CPU features (guaranteed by [`Isa::kernels`], which only hands out tables this CPU can
/// run) and trust the lengths that the safe functions below check; each entry's contract is
/// the one documented on the safe function of the same name.
pub struct KernelTable {
    /// The ISA whose table this is (shown by `bitnet bench`).
    pub isa: Isa,
    /// The I2_S weight layout `i2s_matmul` takes: rows interleaved in groups of this many
    /// (1: the file's layout; see [`i2s_interleave_rows`]).
    pub i2s_rows: usize,
    pub(crate) quantize_row_i8: unsafe fn(&[f32], &mut [i8]) -> f32,
    pub(crate) i2s_matmul: TernaryMatmul<i32>,
    pub(crate) tq2_0_matmul: TernaryMatmul<f32>,
    /// The 1.6-bit decode layout's product (see [`t16_matmul`]).
    pub(crate) t16_matmul: TernaryMatmul<i32>,
    pub(crate) f16_matmul: unsafe fn(&[f16], usize, &[f32], &mut [f32]),
    /// Q8_0 rows against one row of Q8_0-quantized activations.
    pub(crate) q8_0_rows: unsafe fn(&[u8], &scalar::Q8Blocks, &mut [f32]),
    /// Q6_K rows against one row of Q8_K-quantized activations.
    pub(crate) q6_k_rows: unsafe fn(&[u8], &scalar::Q8K, &mut [f32]),
    pub(crate) f32_dot: unsafe fn(&[f32], &[f32]) -> f32,
    pub(crate) f16_dot: unsafe fn(&[f16], &[f32]) -> f32,
    pub(crate) f32_axpy: unsafe fn(&mut [f32], f32, &[f32]),
    pub(crate) f16_axpy: unsafe fn(&mut [f32], f32, &[f16]),
    pub(crate) f16_rows_dot: unsafe fn(&[f16], usize, usize, &[f32], &mut [f32]),
    pub(crate) f32_rows_dot: unsafe fn(&[f32], usize, usize, &[f32], &mut [f32]),
    pub(crate) f16_rows_axpy: unsafe fn(&[f16], usize, usize, &[f32], &mut [f32]),
    pub(crate) f32_rows_axpy: unsafe fn(&[f32], usize, usize, &[f32], &mut [f32]),
    /// Several queries against the same f16 rows at once (see [`f16_rows_dot_multi`]); `None`:
    /// one `f16_rows_dot` per query.
    pub(crate) f16_rows_dot_multi: Option<RowsMulti>,
    /// The same for [`f16_rows_axpy_multi`].
    pub(crate) f16_rows_axpy_multi: Option<RowsMulti>,
}

/// A grouped strided-rows kernel: `(rows, stride, offset, inputs, width, outputs)`.
pub(crate) type RowsMulti = unsafe fn(&[f16], usize, usize, &[f32], usize, &mut [f32]);

impl std::fmt::Debug for KernelTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelTable")
            .field("isa", &self.isa)
            .finish_non_exhaustive()
    }
}

/// Per-token absmax int8 quantization (see [`scalar::quantize_row_i8`]); returns the scale.
/// Bit-identical on every ISA.
pub fn quantize_row_i8(isa: Isa, x: &[f32], q: &mut [i8]) -> f32 {
    assert!(q.len() >= x.len());
    // SAFETY: the table is runnable on this CPU (Isa::kernels); lengths checked above.
    unsafe { (isa.kernels().quantize_row_i8)(x, q) }
}

/// Rewrites I2_S rows of `k` values (`k/4` bytes each, the file's layout) so that each group of
/// `group` consecutive rows stores block `b` of its rows one after another (block `b` of row
/// `g·group + i` at `(g·group·k/4) + b·group·32 + i·32`): a kernel working on `group` rows at
/// once then reads one sequential stream and shares each activation load between the rows.
/// Rows after the last whole group keep the file's layout. `group` 1 copies.
pub fn i2s_interleave_rows(w: &[u8], k: usize, group: usize, out: &mut [u8]) {
    let row_bytes = k / 4;
    assert!(k.is_multiple_of(128) && group > 0 && out.len() == w.len());
    let n_rows = w.len() / row_bytes;
    let grouped = n_rows / group * group;
    for g in (0..grouped).step_by(group) {
        for i in 0..group {
            let src = &w[(g + i) * row_bytes..(g + i + 1) * row_bytes];
            for (b, block) in src.chunks_exact(32).enumerate() {
                let dst = g * row_bytes + (b * group + i) * 32;
                out[dst..dst + 32].copy_from_slice(block);
            }
        }
    }
    out[grouped * row_bytes..].copy_from_slice(&w[grouped * row_bytes..]);
}

/// The inverse of [`i2s_interleave_rows`]: back to the file's layout.
pub(crate) fn i2s_deinterleave_rows(w: &[u8], k: usize, group: usize, out: &mut [u8]) {
    let row_bytes = k / 4;
    assert!(k.is_multiple_of(128) && group > 0 && out.len() == w.len());
    let n_rows = w.len() / row_bytes;
    let grouped = n_rows / group * group;
    for g in (0..grouped).step_by(group) {
        for i in 0..group {
            let dst = &mut out[(g + i) * row_bytes..(g + i + 1) * row_bytes];
            for (b, block) in dst.chunks_exact_mut(32).enumerate() {
                let src = g * row_bytes + (b * group + i) * 32;
                block.copy_from_slice(&w[src..src + 32]);
            }
        }
    }
    out[grouped * row_bytes..].copy_from_slice(&w[grouped * row_bytes..]);
}

/// I2_S rows interleaved by `from` rewritten interleaved by `to` (1: the file's layout).
pub(crate) fn i2s_relayout(w: &[u8], k: usize, from: usize, to: usize, out: &mut [u8]) {
    match (from, to) {
        _ if from == to => out.copy_from_slice(w),
        (1, _) => i2s_interleave_rows(w, k, to, out),
        (_, 1) => i2s_deinterleave_rows(w, k, from, out),
        _ => {
            let mut file_layout = vec![0u8; w.len()];
            i2s_deinterleave_rows(w, k, from, &mut file_layout);
            i2s_interleave_rows(&file_layout, k, to, out);
        }
    }
}

/// Exact ternary × int8 products for I2_S rows:
/// `out[t · n_rows + r] = Σ_k t[r, k] · acts[t · k + k]` for every row `r` of `w`
/// (`n_rows = w.len() / (k/4)`) and every token `t` (`qsums[t] = Σ_k acts[t, k]`).
/// `k` must be a multiple of 128; `w` is in the layout of `isa`'s kernels (rows interleaved
/// by `isa.kernels().i2s_rows`, see [`i2s_interleave_rows`]). Bit-identical on every ISA.
pub fn i2s_matmul(isa: Isa, w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    assert!(k.is_multiple_of(128) && k > 0);
    let n_rows = w.len() / (k / 4);
    assert!(w.len() == n_rows * k / 4);
    assert!(acts.len() >= qsums.len() * k && out.len() >= qsums.len() * n_rows);
    // SAFETY: as in `quantize_row_i8`.
    unsafe { (isa.kernels().i2s_matmul)(w, k, acts, qsums, out) }
}

/// Values in one block of the 1.6-bit decode layout ("T1_6"): 32 bytes of five trits each.
pub const T16_BLOCK_LEN: usize = 160;
/// Bytes of one T1_6 block.
pub const T16_BLOCK_BYTES: usize = 32;
/// Rows T1_6 interleaves (on every ISA, so the layout never changes with the ISA): block `b` of
/// row `g·4 + i` sits at `g·4·row_bytes + (b·4 + i)·32`, then the four rows' tails one after
/// another, so a GEMV over four rows reads one sequential stream and shares each activation
/// load between them, as x86's I2_S layout does. Rows after the last whole group keep plain
/// row order.
pub const T16_ROWS: usize = 4;

/// Bytes of one T1_6 row of `k` values (`k` a multiple of 32): whole 160-value blocks of 32
/// bytes, then the tail of `k mod 160` values at 2 bits each (see [`t16_pack_i2s`]), so a row
/// is never longer than in I2_S and 20 % shorter when `k` is a multiple of 160.
pub fn t16_row_bytes(k: usize) -> usize {
    k / T16_BLOCK_LEN * T16_BLOCK_BYTES + t16_tail_bytes(k)
}

/// Bytes of a T1_6 row's 2-bit tail: 8 per 32 values.
pub fn t16_tail_bytes(k: usize) -> usize {
    k % T16_BLOCK_LEN / 4
}

/// The byte holding `digits.len()` (at most 5) base-3 digits `d_0 d_1 …` (each 0, 1 or 2,
/// `d_0` most significant) as a base-3 fraction scaled to 256 and rounded up:
/// `q = ⌈v · 256 / 3^n⌉` with `v = Σ d_i 3^(n−1−i)`. Digit `i` comes back as
/// `((q · 3^i) mod 256) · 3 >> 8` ([`t16_digit`]): the rounding error `q·3^n/256 − v` is below
/// `3^n / 256 < 1`, so every digit survives (llama.cpp's TQ1_0 packs its five trits this way).
pub fn t16_encode_byte(digits: &[u8]) -> u8 {
    let n = digits.len() as u32;
    debug_assert!(n <= 5);
    let v = digits.iter().fold(0u32, |v, &d| v * 3 + d as u32);
    let p = 3u32.pow(n);
    ((v * 256).div_ceil(p)) as u8
}

/// Digit `i` of a T1_6 byte (see [`t16_encode_byte`]): multiply by `3^i` modulo 256 (the
/// digits above `i` fall off the top), then the top "trit" of the fraction is `x·3 >> 8`.
#[inline(always)]
pub fn t16_digit(q: u8, i: usize) -> u8 {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let x = q.wrapping_mul(POW3[i]) as u16;
    ((x * 3) >> 8) as u8
}

/// Packs I2_S rows in the file's layout (`k/4` bytes each, codes `t + 1`) as T1_6 rows
/// (see [`T16_ROWS`], [`t16_row_bytes`]). Value `160b + 32i + m` of a row is digit `i`
/// ([`t16_encode_byte`]) of byte `m` of its block `b`, as the code `t + 1`. The tail's value
/// `32g + 8j + m` (m < 8) is bits `2j..2j+2` of its byte `8g + m`: one 8-byte load per 32 values,
/// broadcast and shifted by 0, 2, 4, 6, lines the codes up with 32 consecutive activations.
/// Works 32 values at a time in loops the compiler vectorizes: a 2B model packs in well under
/// a second.
pub fn t16_pack_i2s(w: &[u8], k: usize, out: &mut [u8]) {
    let (src_row, dst_row) = (k / 4, t16_row_bytes(k));
    assert!(k.is_multiple_of(128) && k > 0);
    let n_rows = w.len() / src_row;
    assert!(w.len() == n_rows * src_row && out.len() == n_rows * dst_row);
    let grouped = n_rows / T16_ROWS * T16_ROWS;
    let full = k / T16_BLOCK_LEN;
    // The 32 codes of value group `g` of a row (field `g mod 4` of I2_S block `g / 4`).
    let codes = |row: &[u8], g: usize| -> [u8; 32] {
        let (src, shift) = (&row[(g / 4) * 32..(g / 4) * 32 + 32], 6 - 2 * (g % 4));
        std::array::from_fn(|m| (src[m] >> shift) & 3)
    };
    for r in 0..n_rows {
        let row = &w[r * src_row..(r + 1) * src_row];
        for b in 0..full {
            let mut v = [0u16; T16_BLOCK_BYTES];
            for g in 5 * b..5 * b + 5 {
                for (v, c) in v.iter_mut().zip(codes(row, g)) {
                    *v = *v * 3 + c as u16;
                }
            }
            // ⌈v · 256 / 243⌉ (see `t16_encode_byte`): below 62450, inside u16.
            let dst = t16_block_offset(k, grouped, r, b);
            for (o, &v) in out[dst..dst + T16_BLOCK_BYTES].iter_mut().zip(&v) {
                *o = (v * 256).div_ceil(243) as u8;
            }
        }
        let tail = t16_block_offset(k, grouped, r, full);
        for g in 5 * full..k / 32 {
            let c = codes(row, g);
            let dst = &mut out[tail + 8 * (g - 5 * full)..][..8];
            for (m, o) in dst.iter_mut().enumerate() {
                *o = (0..4).fold(0, |o, j| o | c[8 * j + m] << (2 * j));
            }
        }
    }
}

/// Where block `b` of row `r` starts in T1_6 rows of `k` values whose first `grouped` rows are
/// interleaved by [`T16_ROWS`]; `b = k / 160` is the row's 2-bit tail.
#[inline(always)]
pub(crate) fn t16_block_offset(k: usize, grouped: usize, r: usize, b: usize) -> usize {
    let row_bytes = t16_row_bytes(k);
    if r >= grouped {
        return r * row_bytes + b * T16_BLOCK_BYTES;
    }
    let (group, i) = (r - r % T16_ROWS, r % T16_ROWS);
    let full = k / T16_BLOCK_LEN;
    if b < full {
        group * row_bytes + (b * T16_ROWS + i) * T16_BLOCK_BYTES
    } else {
        group * row_bytes + full * T16_ROWS * T16_BLOCK_BYTES + i * t16_tail_bytes(k)
    }
}

/// The exact ternary × int8 products of [`i2s_matmul`] on T1_6 rows ([`t16_pack_i2s`]): the
/// same integers, from 20 % fewer weight bytes, for decoding (the kernels are GEMVs, one token
/// at a time; prefill keeps the I2_S copy). `k` must be a multiple of 32; bit-identical on
/// every ISA.
pub fn t16_matmul(isa: Isa, w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    assert!(k.is_multiple_of(32) && k > 0);
    let n_rows = w.len() / t16_row_bytes(k);
    assert!(w.len() == n_rows * t16_row_bytes(k));
    assert!(acts.len() >= qsums.len() * k && out.len() >= qsums.len() * n_rows);
    // SAFETY: as in `quantize_row_i8`.
    unsafe { (isa.kernels().t16_matmul)(w, k, acts, qsums, out) }
}

/// Ternary × int8 products for TQ2_0 rows (a f16 scale per 256 values):
/// `out[t · n_rows + r] = Σ_b d_b · Σ_{k∈b} t[r, k] · acts[t, k]`, each block's sum exact and
/// the blocks added in order. `block_qsums[t · (k/256) + b]` = Σ of token t's activations in
/// block b. Bit-identical on every ISA.
pub fn tq2_0_matmul(
    isa: Isa,
    w: &[u8],
    k: usize,
    acts: &[i8],
    block_qsums: &[i32],
    out: &mut [f32],
) {
    assert!(k.is_multiple_of(256) && k > 0);
    let n_rows = w.len() / (k / 256 * 66);
    assert!(w.len() == n_rows * k / 256 * 66);
    let n_tokens = block_qsums.len() / (k / 256);
    assert!(acts.len() >= n_tokens * k && out.len() >= n_tokens * n_rows);
    // SAFETY: as in `quantize_row_i8`.
    unsafe { (isa.kernels().tq2_0_matmul)(w, k, acts, block_qsums, out) }
}

/// `out[t · n_rows + r] = Σ_k w[r · k + k] · x[t · k + k]` for f16 weights.
pub fn f16_matmul(isa: Isa, w: &[f16], k: usize, x: &[f32], out: &mut [f32]) {
    assert!(k > 0 && w.len().is_multiple_of(k) && x.len().is_multiple_of(k));
    assert!(out.len() >= w.len() / k * (x.len() / k));
    // SAFETY: as in `quantize_row_i8`.
    unsafe { (isa.kernels().f16_matmul)(w, k, x, out) }
}

/// `Σ a·b` over the shorter length.
pub fn f32_dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: as in `quantize_row_i8` (any lengths).
    unsafe { (isa.kernels().f32_dot)(a, b) }
}

/// `Σ w·x` with f16 `w`, over the shorter length.
pub fn f16_dot(isa: Isa, w: &[f16], x: &[f32]) -> f32 {
    // SAFETY: as in `quantize_row_i8` (any lengths).
    unsafe { (isa.kernels().f16_dot)(w, x) }
}

/// `out += a · v` (f32 `v`), over the shorter length.
pub fn f32_axpy(isa: Isa, out: &mut [f32], a: f32, v: &[f32]) {
    // SAFETY: as in `quantize_row_i8` (any lengths).
    unsafe { (isa.kernels().f32_axpy)(out, a, v) }
}

/// `out += a · v` (f16 `v`), over the shorter length.
pub fn f16_axpy(isa: Isa, out: &mut [f32], a: f32, v: &[f16]) {
    // SAFETY: as in `quantize_row_i8` (any lengths).
    unsafe { (isa.kernels().f16_axpy)(out, a, v) }
}

/// The strided-rows loop every ISA's `*_rows_dot` shares: `out[j] = dot(row j, x)`, the row
/// `x.len()` long at `j·stride + offset`. Each ISA passes its own dot product; inlined, so the
/// call is direct (and inlined in turn) in each ISA's kernel.
#[inline(always)]
pub(crate) fn rows_dot_with<T>(
    rows: &[T],
    stride: usize,
    offset: usize,
    x: &[f32],
    out: &mut [f32],
    dot: impl Fn(&[T], &[f32]) -> f32,
) {
    for (j, o) in out.iter_mut().enumerate() {
        let start = j * stride + offset;
        *o = dot(&rows[start..start + x.len()], x);
    }
}

/// The strided-rows loop every ISA's `*_rows_axpy` shares: `out += p[j] · row j` for each
/// `j`, the row `out.len()` long at `j·stride + offset`, with each ISA's own axpy.
#[inline(always)]
pub(crate) fn rows_axpy_with<T>(
    rows: &[T],
    stride: usize,
    offset: usize,
    p: &[f32],
    out: &mut [f32],
    axpy: impl Fn(&mut [f32], f32, &[T]),
) {
    let n = out.len();
    for (j, &pj) in p.iter().enumerate() {
        let start = j * stride + offset;
        axpy(out, pj, &rows[start..start + n]);
    }
}

/// Panics unless every row `j < n` of length `len` at `j·stride + offset` lies in `total`.
fn check_rows(total: usize, stride: usize, offset: usize, len: usize, n: usize) {
    if n > 0 {
        assert!(
            (n - 1) * stride + offset + len <= total,
            "strided rows out of bounds"
        );
    }
}

/// Dot products of `x` with `out.len()` strided f16 rows:
/// `out[j] = Σ_d rows[j·stride + offset + d] · x[d]` (attention scores over a KV cache).
pub fn f16_rows_dot(
    isa: Isa,
    rows: &[f16],
    stride: usize,
    offset: usize,
    x: &[f32],
    out: &mut [f32],
) {
    check_rows(rows.len(), stride, offset, x.len(), out.len());
    // SAFETY: as in `quantize_row_i8`; bounds checked above.
    unsafe { (isa.kernels().f16_rows_dot)(rows, stride, offset, x, out) }
}

/// The f32 twin of [`f16_rows_dot`].
pub fn f32_rows_dot(
    isa: Isa,
    rows: &[f32],
    stride: usize,
    offset: usize,
    x: &[f32],
    out: &mut [f32],
) {
    check_rows(rows.len(), stride, offset, x.len(), out.len());
    // SAFETY: as in `quantize_row_i8`; bounds checked above.
    unsafe { (isa.kernels().f32_rows_dot)(rows, stride, offset, x, out) }
}

/// `out += Σ_j p[j] · rows[j·stride + offset ..]` over `p.len()` strided f16 rows (the
/// attention output from cached values).
pub fn f16_rows_axpy(
    isa: Isa,
    rows: &[f16],
    stride: usize,
    offset: usize,
    p: &[f32],
    out: &mut [f32],
) {
    check_rows(rows.len(), stride, offset, out.len(), p.len());
    // SAFETY: as in `quantize_row_i8`; bounds checked above.
    unsafe { (isa.kernels().f16_rows_axpy)(rows, stride, offset, p, out) }
}

/// [`f16_rows_dot`] for `m = xs.len() / d` queries of `d` values at once (the query heads that
/// share a KV head): `out[q·n + j] = Σ_i rows[j·stride + offset + i] · xs[q·d + i]` for the
/// `n = out.len() / m` rows. Each key is converted once for all the queries; every value is
/// bit-identical to `f16_rows_dot`'s for its query alone.
pub fn f16_rows_dot_multi(
    isa: Isa,
    rows: &[f16],
    stride: usize,
    offset: usize,
    xs: &[f32],
    d: usize,
    out: &mut [f32],
) {
    assert!(d > 0 && xs.len().is_multiple_of(d));
    let m = xs.len() / d;
    if m == 0 {
        return;
    }
    assert!(out.len().is_multiple_of(m));
    let n = out.len() / m;
    check_rows(rows.len(), stride, offset, d, n);
    match isa.kernels().f16_rows_dot_multi {
        // SAFETY: as in `quantize_row_i8`; bounds checked above.
        Some(f) => unsafe { f(rows, stride, offset, xs, d, out) },
        None => {
            for (x, o) in xs.chunks_exact(d).zip(out.chunks_exact_mut(n)) {
                f16_rows_dot(isa, rows, stride, offset, x, o);
            }
        }
    }
}

/// [`f16_rows_axpy`] for `m = out.len() / d` outputs of `d` values at once:
/// `out[q·d ..] += Σ_j p[q·n + j] · rows[j·stride + offset ..]` over the `n = p.len() / m`
/// rows. Each value row is converted once for all the outputs; every output is bit-identical
/// to `f16_rows_axpy`'s for its probabilities alone.
pub fn f16_rows_axpy_multi(
    isa: Isa,
    rows: &[f16],
    stride: usize,
    offset: usize,
    p: &[f32],
    d: usize,
    out: &mut [f32],
) {
    assert!(d > 0 && out.len().is_multiple_of(d));
    let m = out.len() / d;
    if m == 0 {
        return;
    }
    assert!(p.len().is_multiple_of(m));
    let n = p.len() / m;
    check_rows(rows.len(), stride, offset, d, n);
    match isa.kernels().f16_rows_axpy_multi {
        // SAFETY: as in `quantize_row_i8`; bounds checked above.
        Some(f) => unsafe { f(rows, stride, offset, p, d, out) },
        None => {
            for (pq, o) in p.chunks_exact(n).zip(out.chunks_exact_mut(d)) {
                f16_rows_axpy(isa, rows, stride, offset, pq, o);
            }
        }
    }
}

/// The f32 twin of [`f16_rows_axpy`].
pub fn f32_rows_axpy(
    isa: Isa,
    rows: &[f32],
    stride: usize,
    offset: usize,
    p: &[f32],
    out: &mut [f32],
) {
    check_rows(rows.len(), stride, offset, out.len(), p.len());
    // SAFETY: as in `quantize_row_i8`; bounds checked above.
    unsafe { (isa.kernels().f32_rows_axpy)(rows, stride, offset, p, out) }
}

/// `out[t · n_rows + r] = Σ_k w[r, k] · x[t · k + k]` for Q8_0 rows (the optional 8-bit output
/// matrix). As in llama.cpp, each row of `x` is first quantized to int8 per 32 values
/// (`scalar::Q8Blocks`); each block's product is an exact integer. The x86 paths differ from
/// the scalar one only in the order the scaled blocks are added; the AArch64 ones add them in
/// its order and are bit-identical to it.
pub fn q8_0_matmul(isa: Isa, w: &[u8], k: usize, x: &[f32], out: &mut [f32]) {
    assert!(k > 0 && k.is_multiple_of(32));
    let row_bytes = k / 32 * 34;
    assert!(w.len().is_multiple_of(row_bytes) && x.len().is_multiple_of(k));
    let n_rows = w.len() / row_bytes;
    assert!(out.len() >= n_rows * (x.len() / k));
    let rows_fn = isa.kernels().q8_0_rows;
    for (t, xt) in x.chunks_exact(k).enumerate() {
        let qx = scalar::Q8Blocks::quantize(xt);
        // SAFETY: as in `quantize_row_i8`; whole rows of `k / 32` blocks, one output each.
        unsafe { rows_fn(w, &qx, &mut out[t * n_rows..(t + 1) * n_rows]) };
    }
}

/// The same for Q6_K rows (the optional 6-bit output matrix). As in llama.cpp, each row of `x`
/// is first quantized to int8 per 256 values (`scalar::Q8K`); each block's product is then an
/// exact integer, and the SIMD paths differ from the scalar one only in the order the scaled
/// blocks are added.
pub fn q6_k_matmul(isa: Isa, w: &[u8], k: usize, x: &[f32], out: &mut [f32]) {
    assert!(k > 0 && k.is_multiple_of(256));
    let row_bytes = k / 256 * 210;
    assert!(w.len().is_multiple_of(row_bytes) && x.len().is_multiple_of(k));
    let n_rows = w.len() / row_bytes;
    assert!(out.len() >= n_rows * (x.len() / k));
    let rows_fn = isa.kernels().q6_k_rows;
    for (t, xt) in x.chunks_exact(k).enumerate() {
        let qx = scalar::Q8K::quantize(xt);
        // SAFETY: as in `quantize_row_i8`; whole rows of `k / 256` blocks, one output each.
        unsafe { rows_fn(w, &qx, &mut out[t * n_rows..(t + 1) * n_rows]) };
    }
}
