//! Compute kernels: the ternary × int8 products, the dense output product, and the small float
//! operations of the forward pass. Knows the formats' block types, nothing of models.
//!
//! Every operation has a plain scalar twin in [`scalar`] (the reference, and the fallback on
//! every CPU without a SIMD path). SIMD paths live in per-ISA modules and are chosen at run time
//! with [`Isa`]; each caller passes the ISA explicitly so tests can force every path.
//! Integer results (the ternary products, activation quantization) are bit-identical across
//! ISAs; float reductions (f16/f32 dot products) differ only by summation order.

pub mod membw;
pub mod scalar;
pub mod threads;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use half::f16;

pub use scalar::{rms_norm, rope_neox, softmax};

/// An instruction set the kernels have a path for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Scalar,
    /// AVX2 with FMA and F16C (maddubs-based ternary products).
    Avx2,
    /// AVX-512 F/BW/VL with VNNI (vpdpbusd ternary products).
    Avx512Vnni,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    /// Whether this CPU can run the path (detected once).
    pub fn is_available(self) -> bool {
        static AVAILABLE: OnceLock<[bool; 3]> = OnceLock::new();
        AVAILABLE.get_or_init(|| Isa::ALL.map(Isa::detect))[self as usize]
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
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every path this CPU can run.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The fastest available path, or the one named by `BITNET_ISA` (scalar, avx2, avx512vnni)
    /// when that is set and available. Detected once.
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
}

impl std::str::FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Isa, String> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown ISA `{s}` (scalar, avx2, avx512vnni)"))
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs the x86 path when the ISA asks for it (and it was checked available), else the
/// scalar expression.
macro_rules! dispatch {
    ($isa:expr, avx512 => $v512:expr, avx2 => $v2:expr, scalar => $s:expr) => {{
        match $isa {
            // SAFETY: an `Isa` other than Scalar is only used after `is_available()`; the
            // callers below check slice lengths before dispatching.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni if Isa::Avx512Vnni.is_available() => unsafe { $v512 },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni if Isa::Avx2.is_available() => unsafe { $v2 },
            _ => $s,
        }
    }};
}

/// Per-token absmax int8 quantization (see [`scalar::quantize_row_i8`]); returns the scale.
/// Bit-identical on every ISA.
pub fn quantize_row_i8(isa: Isa, x: &[f32], q: &mut [i8]) -> f32 {
    assert!(q.len() >= x.len());
    dispatch!(isa,
        avx512 => x86::avx2::quantize_row_i8(x, q),
        avx2 => x86::avx2::quantize_row_i8(x, q),
        scalar => scalar::quantize_row_i8(x, q))
}

/// Exact ternary × int8 products for I2_S rows:
/// `out[t · n_rows + r] = Σ_k t[r, k] · acts[t · k + k]` for every row `r` of `w`
/// (`n_rows = w.len() / (k/4)`) and every token `t` (`qsums[t] = Σ_k acts[t, k]`).
/// `k` must be a multiple of 128. Bit-identical on every ISA.
pub fn i2s_matmul(isa: Isa, w: &[u8], k: usize, acts: &[i8], qsums: &[i32], out: &mut [i32]) {
    assert!(k.is_multiple_of(128) && k > 0);
    let n_rows = w.len() / (k / 4);
    assert!(w.len() == n_rows * k / 4);
    assert!(acts.len() >= qsums.len() * k && out.len() >= qsums.len() * n_rows);
    dispatch!(isa,
        avx512 => x86::avx512::i2s_matmul(w, k, acts, qsums, out),
        avx2 => x86::avx2::i2s_matmul(w, k, acts, qsums, out),
        scalar => scalar::i2s_matmul(w, k, acts, out))
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
    dispatch!(isa,
        avx512 => x86::avx2::tq2_0_matmul(w, k, acts, block_qsums, out),
        avx2 => x86::avx2::tq2_0_matmul(w, k, acts, block_qsums, out),
        scalar => scalar::tq2_0_matmul(w, k, acts, out))
}

/// `out[t · n_rows + r] = Σ_k w[r · k + k] · x[t · k + k]` for f16 weights.
pub fn f16_matmul(isa: Isa, w: &[f16], k: usize, x: &[f32], out: &mut [f32]) {
    assert!(k > 0 && w.len().is_multiple_of(k) && x.len().is_multiple_of(k));
    assert!(out.len() >= w.len() / k * (x.len() / k));
    dispatch!(isa,
        avx512 => x86::avx2::f16_matmul(w, k, x, out),
        avx2 => x86::avx2::f16_matmul(w, k, x, out),
        scalar => scalar::f16_matmul(w, k, x, out))
}

/// `Σ a·b` over the shorter length.
pub fn f32_dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    dispatch!(isa,
        avx512 => x86::avx2::f32_dot(a, b),
        avx2 => x86::avx2::f32_dot(a, b),
        scalar => scalar::f32_dot(a, b))
}

/// `Σ w·x` with f16 `w`, over the shorter length.
pub fn f16_dot(isa: Isa, w: &[f16], x: &[f32]) -> f32 {
    dispatch!(isa,
        avx512 => x86::avx2::f16_dot(w, x),
        avx2 => x86::avx2::f16_dot(w, x),
        scalar => scalar::f16_dot(w, x))
}

/// `out += a · v` (f32 `v`).
pub fn f32_axpy(isa: Isa, out: &mut [f32], a: f32, v: &[f32]) {
    dispatch!(isa,
        avx512 => x86::avx2::f32_axpy(out, a, v),
        avx2 => x86::avx2::f32_axpy(out, a, v),
        scalar => scalar::f32_axpy(out, a, v))
}

/// `out += a · v` (f16 `v`).
pub fn f16_axpy(isa: Isa, out: &mut [f32], a: f32, v: &[f16]) {
    dispatch!(isa,
        avx512 => x86::avx2::f16_axpy(out, a, v),
        avx2 => x86::avx2::f16_axpy(out, a, v),
        scalar => scalar::f16_axpy(out, a, v))
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
    dispatch!(isa,
        avx512 => x86::avx2::f16_rows_dot(rows, stride, offset, x, out),
        avx2 => x86::avx2::f16_rows_dot(rows, stride, offset, x, out),
        scalar => scalar::f16_rows_dot(rows, stride, offset, x, out))
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
    dispatch!(isa,
        avx512 => x86::avx2::f32_rows_dot(rows, stride, offset, x, out),
        avx2 => x86::avx2::f32_rows_dot(rows, stride, offset, x, out),
        scalar => scalar::f32_rows_dot(rows, stride, offset, x, out))
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
    dispatch!(isa,
        avx512 => x86::avx2::f16_rows_axpy(rows, stride, offset, p, out),
        avx2 => x86::avx2::f16_rows_axpy(rows, stride, offset, p, out),
        scalar => scalar::f16_rows_axpy(rows, stride, offset, p, out))
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
    dispatch!(isa,
        avx512 => x86::avx2::f32_rows_axpy(rows, stride, offset, p, out),
        avx2 => x86::avx2::f32_rows_axpy(rows, stride, offset, p, out),
        scalar => scalar::f32_rows_axpy(rows, stride, offset, p, out))
}

/// `out[t · n_rows + r] = Σ_k w[r, k] · x[t · k + k]` for Q8_0 rows (the optional 8-bit output
/// matrix). AVX-512 path; elsewhere the scalar twin.
pub fn q8_0_matmul(isa: Isa, w: &[u8], k: usize, x: &[f32], out: &mut [f32]) {
    assert!(k > 0 && k.is_multiple_of(32));
    let row_bytes = k / 32 * 34;
    assert!(w.len().is_multiple_of(row_bytes) && x.len().is_multiple_of(k));
    assert!(out.len() >= w.len() / row_bytes * (x.len() / k));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the ISA was checked available; lengths checked above.
        Isa::Avx512Vnni if isa.is_available() => unsafe { x86::avx512::q8_0_matmul(w, k, x, out) },
        _ => scalar::q8_0_matmul(w, k, x, out),
    }
}

/// The same for Q6_K rows (the optional 6-bit output matrix). As in llama.cpp, each row of `x`
/// is first quantized to int8 per 256 values ([`scalar::Q8K`]); each block's product is then an
/// exact integer, so every ISA gives bit-identical results.
pub fn q6_k_matmul(isa: Isa, w: &[u8], k: usize, x: &[f32], out: &mut [f32]) {
    assert!(k > 0 && k.is_multiple_of(256));
    let row_bytes = k / 256 * 210;
    assert!(w.len().is_multiple_of(row_bytes) && x.len().is_multiple_of(k));
    let n_rows = w.len() / row_bytes;
    assert!(out.len() >= n_rows * (x.len() / k));
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni if Isa::Avx2.is_available() => {
            for (t, xt) in x.chunks_exact(k).enumerate() {
                let qx = scalar::Q8K::quantize(xt);
                // SAFETY: AVX2 checked available; lengths checked above.
                unsafe { x86::avx2::q6_k_rows(w, &qx, &mut out[t * n_rows..(t + 1) * n_rows]) };
            }
        }
        _ => scalar::q6_k_matmul(w, k, x, out),
    }
}
