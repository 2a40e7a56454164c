//! Every SIMD kernel against its scalar twin, on random shapes with ragged tails, for each
//! instruction set this CPU has (each path forced, not only the auto-detected one).
//! Integer results must be bit-identical; float reductions agree within a stated tolerance
//! (they differ only in summation order and FMA rounding).

use bitnet::formats::types::{float, i2_s, q6_k, q8_0, tq2_0};
use bitnet::kernels::{self, scalar, Isa};
use half::f16;
use proptest::prelude::*;

mod props;
use props::{int8, reference, ternary, xorshift};

fn simd_isas() -> Vec<Isa> {
    Isa::available()
        .into_iter()
        .filter(|&i| i != Isa::Scalar)
        .collect()
}

/// I2_S rows (the file's layout) in the layout `isa`'s kernels take.
fn layout_for(isa: Isa, w: &[u8], k: usize) -> Vec<u8> {
    let mut out = vec![0u8; w.len()];
    kernels::i2s_interleave_rows(w, k, isa.kernels().i2s_rows, &mut out);
    out
}

/// Whether `isa` adds the Q8_0 and Q6_K scaled block products in the scalar twin's order, and
/// so must match it bit for bit (the x86 paths add them in f32 lanes: another order).
fn adds_blocks_in_order(isa: Isa) -> bool {
    !matches!(isa, Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx)
}

/// Q8_0 rows against every row of `x`, on `isa` and on the scalar twin: bit-identical where
/// [`adds_blocks_in_order`], else within the float tolerance of the sum of absolute products.
fn check_q8_0(isa: Isa, w: &[u8], k: usize, x: &[f32]) -> Result<(), String> {
    let rows = w.len() / (k / 32 * 34);
    let tokens = x.len() / k;
    let mut expected = vec![0f32; rows * tokens];
    scalar::q8_0_matmul(w, k, x, &mut expected);
    let mut out = vec![0f32; rows * tokens];
    kernels::q8_0_matmul(isa, w, k, x, &mut out);
    let row_bytes = k / 32 * 34;
    for t in 0..tokens {
        let xt = &x[t * k..(t + 1) * k];
        for r in 0..rows {
            let (a, b) = (out[t * rows + r], expected[t * rows + r]);
            // Σ |w·x| over the row, decoding Q8_0 blocks (f16 scale, 32 int8) by hand: the
            // size the float error is measured against.
            let scale: f32 = w[r * row_bytes..(r + 1) * row_bytes]
                .chunks_exact(34)
                .zip(xt.chunks(32))
                .map(|(blk, xb)| {
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    blk[2..]
                        .iter()
                        .zip(xb)
                        .map(|(&q, &xv)| (d * q as i8 as f32 * xv).abs())
                        .sum::<f32>()
                })
                .sum();
            let ok = if adds_blocks_in_order(isa) {
                a.to_bits() == b.to_bits()
            } else {
                close(a, b, scale)
            };
            if !ok {
                return Err(format!("{isa} q8_0 row {r} token {t}: {a} vs {b}"));
            }
        }
    }
    Ok(())
}

/// Float tolerance: relative to the sum of absolute products.
fn close(a: f32, b: f32, scale: f32) -> bool {
    (a - b).abs() <= 1e-5 * scale + 1e-6
}

fn ternary_strategy(n: usize) -> impl Strategy<Value = Vec<i8>> {
    prop::collection::vec(-1i8..=1, n)
}

/// Random I2_S rows × int8 tokens: the scalar twin equals the product computed the obvious way
/// from the decoded weights, and every ISA this CPU has equals it bit for bit.
fn check_i2s_matmul(
    rows: usize,
    blocks: usize,
    tokens: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let k = blocks * 128;
    let mut next = xorshift(seed);
    let t = ternary(&mut next, rows * k);
    let w = i2_s::encode(&t, 1.0);
    let w = &w[..rows * k / 4];
    let acts = int8(&mut next, tokens * k);
    let qsums: Vec<i32> = acts
        .chunks(k)
        .map(|r| r.iter().map(|&v| v as i32).sum())
        .collect();
    let mut expected = vec![0i32; tokens * rows];
    scalar::i2s_matmul(w, k, &acts, &mut expected);
    prop_assert_eq!(&expected, &reference(&t, &acts, rows, k));
    for isa in Isa::available() {
        let mut out = vec![0i32; tokens * rows];
        kernels::i2s_matmul(isa, &layout_for(isa, w, k), k, &acts, &qsums, &mut out);
        prop_assert_eq!(&out, &expected, "{}", isa);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Up to 19 blocks: past the points (every 4 blocks, every 512 values) where the plain
    /// NEON paths flush narrow accumulators; up to 9 tokens and 12 rows: full and ragged GEMM
    /// tiles of every path.
    #[test]
    fn i2s_matmul_is_bit_identical(
        (rows, blocks, tokens) in (1usize..13, 1usize..20, 1usize..10),
        seed in any::<u64>(),
    ) {
        check_i2s_matmul(rows, blocks, tokens, seed)?;
    }

    /// Prefill-sized shapes: up to 70 rows (whole and ragged 16- and 32-row tiles, rows past
    /// the last whole tile) and 50 tokens (whole and ragged 16-token tiles, odd tile counts), as
    /// the AMX GEMM takes them; every path bit-identical to the scalar twin.
    #[test]
    fn i2s_matmul_is_bit_identical_on_prefill_tiles(
        (rows, blocks, tokens) in (1usize..71, 1usize..6, 1usize..51),
        seed in any::<u64>(),
    ) {
        check_i2s_matmul(rows, blocks, tokens, seed)?;
    }

    #[test]
    fn tq2_0_matmul_is_bit_identical(
        (rows, blocks, tokens) in (1usize..7, 1usize..4, 1usize..4),
        values in ternary_strategy(6 * 3 * 256),
        acts in prop::collection::vec(any::<i8>(), 3 * 3 * 256),
        scales in prop::collection::vec(0.001f32..2.0, 6 * 3),
    ) {
        let k = blocks * 256;
        let w: Vec<f32> = (0..rows * k).map(|i| values[i] as f32 * scales[i / 256]).collect();
        let w = tq2_0::quantize(&w);
        let acts = &acts[..tokens * k];
        let block_qsums: Vec<i32> = acts.chunks(256).map(|b| b.iter().map(|&v| v as i32).sum()).collect();
        let mut expected = vec![0f32; tokens * rows];
        scalar::tq2_0_matmul(&w, k, acts, &mut expected);
        for isa in simd_isas() {
            let mut out = vec![0f32; tokens * rows];
            kernels::tq2_0_matmul(isa, &w, k, acts, &block_qsums, &mut out);
            let same = out.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
            prop_assert!(same, "{}: {:?} vs {:?}", isa, out, expected);
        }
    }

    /// Exact ties (x · s lands on k + 0.5 with s = 1) and values that saturate at -128.
    #[test]
    fn activation_quantization_ties_are_bit_identical(
        halves in prop::collection::vec(-254i32..=254, 1..70),
    ) {
        let mut x: Vec<f32> = halves.iter().map(|&h| h as f32 / 2.0).collect();
        x.push(127.0); // max |x| = 127, so s = 1 and every half-integer is a tie
        let mut expected = vec![0i8; x.len()];
        scalar::quantize_row_i8(&x, &mut expected);
        for isa in simd_isas() {
            let mut q = vec![0i8; x.len()];
            kernels::quantize_row_i8(isa, &x, &mut q);
            prop_assert_eq!(&q, &expected, "{}", isa);
        }
    }

    #[test]
    fn activation_quantization_is_bit_identical(
        x in prop::collection::vec(-100f32..100.0, 1..300),
        scale in prop::sample::select(vec![1e-6f32, 1e-3, 1.0, 1e3]),
    ) {
        let x: Vec<f32> = x.iter().map(|v| v * scale).collect();
        let mut expected = vec![0i8; x.len()];
        let s = scalar::quantize_row_i8(&x, &mut expected);
        for isa in simd_isas() {
            let mut q = vec![0i8; x.len()];
            let s2 = kernels::quantize_row_i8(isa, &x, &mut q);
            prop_assert_eq!(s.to_bits(), s2.to_bits(), "{}", isa);
            prop_assert_eq!(&q, &expected, "{}", isa);
        }
    }

    #[test]
    fn f16_matmul_matches_within_tolerance(
        (rows, k, tokens) in (1usize..11, 1usize..300, 1usize..4),
        seed in any::<u64>(),
    ) {
        let mut bits = xorshift(seed);
        let mut next = || (bits() % 2001) as f32 / 1000.0 - 1.0;
        let w: Vec<f16> = (0..rows * k).map(|_| f16::from_f32(next())).collect();
        let x: Vec<f32> = (0..tokens * k).map(|_| next() * 3.0).collect();
        let mut expected = vec![0f32; rows * tokens];
        scalar::f16_matmul(&w, k, &x, &mut expected);
        for isa in simd_isas() {
            let mut out = vec![0f32; rows * tokens];
            kernels::f16_matmul(isa, &w, k, &x, &mut out);
            for t in 0..tokens {
                for r in 0..rows {
                    let scale: f32 = (0..k).map(|c| (w[r * k + c].to_f32() * x[t * k + c]).abs()).sum();
                    let (a, b) = (out[t * rows + r], expected[t * rows + r]);
                    prop_assert!(close(a, b, scale), "{}: {} vs {}", isa, a, b);
                }
            }
        }
    }

    /// Batch invariance at the kernel: a token's products are bit-identical whether it is
    /// multiplied alone or among others (what `serve`'s batch invariance rests on).
    #[test]
    fn f16_matmul_of_a_token_does_not_depend_on_the_others(
        (rows, k, tokens) in (1usize..7, 1usize..300, 2usize..8),
        seed in any::<u64>(),
    ) {
        let mut bits = xorshift(seed);
        let mut next = || (bits() % 2001) as f32 / 1000.0 - 1.0;
        let w: Vec<f16> = (0..rows * k).map(|_| f16::from_f32(next())).collect();
        let x: Vec<f32> = (0..tokens * k).map(|_| next() * 3.0).collect();
        for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
            let mut together = vec![0f32; rows * tokens];
            kernels::f16_matmul(isa, &w, k, &x, &mut together);
            for t in 0..tokens {
                let mut alone = vec![0f32; rows];
                kernels::f16_matmul(isa, &w, k, &x[t * k..(t + 1) * k], &mut alone);
                for r in 0..rows {
                    prop_assert_eq!(together[t * rows + r].to_bits(), alone[r].to_bits(), "{} token {} row {}", isa, t, r);
                }
            }
        }
    }

    #[test]
    fn dots_and_axpys_match_within_tolerance(
        a in prop::collection::vec(-4f32..4.0, 0..200),
        b_seed in any::<u64>(),
        coef in -2f32..2.0,
    ) {
        let n = a.len();
        let mut bits = xorshift(b_seed | 1);
        let b: Vec<f32> = (0..n).map(|_| (bits() % 1000) as f32 / 250.0 - 2.0).collect();
        let b16: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
        let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
        for isa in simd_isas() {
            prop_assert!(close(kernels::f32_dot(isa, &a, &b), scalar::f32_dot(&a, &b), scale));
            prop_assert!(close(kernels::f16_dot(isa, &b16, &a), scalar::f16_dot(&b16, &a), scale));
            let mut o1 = a.clone();
            let mut o2 = a.clone();
            kernels::f32_axpy(isa, &mut o1, coef, &b);
            scalar::f32_axpy(&mut o2, coef, &b);
            prop_assert!(o1.iter().zip(&o2).all(|(x, y)| close(*x, *y, 8.0)));
            let mut o1 = a.clone();
            let mut o2 = a.clone();
            kernels::f16_axpy(isa, &mut o1, coef, &b16);
            scalar::f16_axpy(&mut o2, coef, &b16);
            prop_assert!(o1.iter().zip(&o2).all(|(x, y)| close(*x, *y, 8.0)));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The attention kernels over strided cache rows (scores and the weighted value sum).
    #[test]
    fn strided_row_kernels_match_within_tolerance(
        (n_rows, len, extra) in (0usize..40, 1usize..140, 0usize..9),
        seed in any::<u64>(),
    ) {
        let stride = len + extra;
        let offset = extra / 2;
        let mut bits = xorshift(seed | 1);
        let mut next = || (bits() % 2001) as f32 / 1000.0 - 1.0;
        let rows: Vec<f32> = (0..n_rows * stride + offset + len).map(|_| next()).collect();
        let rows16: Vec<f16> = rows.iter().map(|&v| f16::from_f32(v)).collect();
        let x: Vec<f32> = (0..len).map(|_| next()).collect();
        let p: Vec<f32> = (0..n_rows).map(|_| next().abs()).collect();
        for isa in simd_isas() {
            let (mut a, mut b) = (vec![0f32; n_rows], vec![0f32; n_rows]);
            kernels::f32_rows_dot(isa, &rows, stride, offset, &x, &mut a);
            scalar::f32_rows_dot(&rows, stride, offset, &x, &mut b);
            prop_assert!(a.iter().zip(&b).all(|(u, v)| close(*u, *v, len as f32)));
            kernels::f16_rows_dot(isa, &rows16, stride, offset, &x, &mut a);
            scalar::f16_rows_dot(&rows16, stride, offset, &x, &mut b);
            prop_assert!(a.iter().zip(&b).all(|(u, v)| close(*u, *v, len as f32)));
            let (mut a, mut b) = (vec![0.5f32; len], vec![0.5f32; len]);
            kernels::f32_rows_axpy(isa, &rows, stride, offset, &p, &mut a);
            scalar::f32_rows_axpy(&rows, stride, offset, &p, &mut b);
            prop_assert!(a.iter().zip(&b).all(|(u, v)| close(*u, *v, n_rows as f32)));
            kernels::f16_rows_axpy(isa, &rows16, stride, offset, &p, &mut a);
            scalar::f16_rows_axpy(&rows16, stride, offset, &p, &mut b);
            prop_assert!(a.iter().zip(&b).all(|(u, v)| close(*u, *v, n_rows as f32)));
            // The f16 ones (the KV cache's type) are the same ISA's dot and axpy row by row,
            // bit for bit, however their loops are arranged: the model's results must not
            // depend on which one a path calls.
            let (mut a, mut b) = (vec![0f32; n_rows], vec![0f32; n_rows]);
            kernels::f16_rows_dot(isa, &rows16, stride, offset, &x, &mut a);
            for (j, o) in b.iter_mut().enumerate() {
                let start = j * stride + offset;
                *o = kernels::f16_dot(isa, &rows16[start..start + len], &x);
            }
            prop_assert_eq!(bits_of(&a), bits_of(&b), "{} rows_dot", isa);
            let (mut a, mut b) = (x.clone(), x.clone());
            kernels::f16_rows_axpy(isa, &rows16, stride, offset, &p, &mut a);
            for (j, &pj) in p.iter().enumerate() {
                let start = j * stride + offset;
                kernels::f16_axpy(isa, &mut b, pj, &rows16[start..start + len]);
            }
            prop_assert_eq!(bits_of(&a), bits_of(&b), "{} rows_axpy", isa);
        }
    }

    /// The grouped attention kernels (the query heads sharing a KV head, 1 to 9 of them: whole
    /// and ragged groups of every path's width) give each query the bits of the single-query
    /// kernel, for head sizes with and without 32- and 64-value blocks.
    #[test]
    fn grouped_attention_kernels_are_the_single_ones_bit_for_bit(
        (n_rows, len, extra, m) in (1usize..40, 1usize..200, 0usize..9, 1usize..10),
        seed in any::<u64>(),
    ) {
        let stride = len + extra;
        let offset = extra / 2;
        let mut bits = xorshift(seed | 1);
        let mut next = || (bits() % 2001) as f32 / 1000.0 - 1.0;
        let rows16: Vec<f16> =
            (0..n_rows * stride + offset + len).map(|_| f16::from_f32(next())).collect();
        let xs: Vec<f32> = (0..m * len).map(|_| next()).collect();
        let p: Vec<f32> = (0..m * n_rows).map(|_| next().abs()).collect();
        let start: Vec<f32> = (0..m * len).map(|_| next()).collect();
        for isa in Isa::available() {
            let mut grouped = vec![0f32; m * n_rows];
            kernels::f16_rows_dot_multi(isa, &rows16, stride, offset, &xs, len, &mut grouped);
            let mut single = vec![0f32; m * n_rows];
            for (x, o) in xs.chunks_exact(len).zip(single.chunks_exact_mut(n_rows)) {
                kernels::f16_rows_dot(isa, &rows16, stride, offset, x, o);
            }
            prop_assert_eq!(bits_of(&grouped), bits_of(&single), "{} rows_dot_multi", isa);
            let mut grouped = start.clone();
            kernels::f16_rows_axpy_multi(isa, &rows16, stride, offset, &p, len, &mut grouped);
            let mut single = start.clone();
            for (pq, o) in p.chunks_exact(n_rows).zip(single.chunks_exact_mut(len)) {
                kernels::f16_rows_axpy(isa, &rows16, stride, offset, pq, o);
            }
            prop_assert_eq!(bits_of(&grouped), bits_of(&single), "{} rows_axpy_multi", isa);
        }
    }
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Q8_0 rows as a file may hold them (any int8 weights, −128 included, any f16 scale) on
    /// random shapes: up to 19 blocks, ragged against the SIMD paths' steps of 4 and 8 blocks.
    #[test]
    fn q8_0_matmul_matches_the_scalar_twin(
        (rows, blocks, tokens) in (1usize..8, 1usize..20, 1usize..3),
        seed in any::<u64>(),
    ) {
        let k = blocks * 32;
        let mut next = xorshift(seed | 1);
        let mut w = Vec::with_capacity(rows * blocks * 34);
        for _ in 0..rows * blocks {
            let d = ((next() % 4001) as f32 / 1000.0 - 2.0) * 0.01;
            w.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            w.extend((0..32).map(|_| next() as u8));
        }
        let x: Vec<f32> = (0..tokens * k).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
        for isa in simd_isas() {
            prop_assert_eq!(check_q8_0(isa, &w, k, &x), Ok(()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The optional 8- and 6-bit output matrices.
    #[test]
    fn quantized_output_matmuls_match_within_tolerance(
        (rows, blocks, tokens) in (1usize..6, 1usize..4, 1usize..3),
        seed in any::<u64>(),
    ) {
        let k = blocks * 256;
        let mut bits = xorshift(seed | 1);
        let mut next = || (bits() % 2001) as f32 / 1000.0 - 1.0;
        let w: Vec<f32> = (0..rows * k).map(|_| next() * 0.1).collect();
        let x: Vec<f32> = (0..tokens * k).map(|_| next() * 2.0).collect();
        let scale = (k as f32) * 0.2;
        let q8 = q8_0::quantize(&w);
        let mut expected = vec![0f32; rows * tokens];
        scalar::q8_0_matmul(&q8, k, &x, &mut expected);
        for isa in simd_isas() {
            let mut out = vec![0f32; rows * tokens];
            kernels::q8_0_matmul(isa, &q8, k, &x, &mut out);
            for (a, b) in out.iter().zip(&expected) {
                prop_assert!(close(*a, *b, scale), "{} q8_0: {} vs {}", isa, a, b);
            }
        }
        // Q6_K: exact integer blocks, added in order (bit-identical) or in another order.
        let q6 = q6_k::quantize(&w);
        scalar::q6_k_matmul(&q6, k, &x, &mut expected);
        for isa in simd_isas() {
            let mut out = vec![0f32; rows * tokens];
            kernels::q6_k_matmul(isa, &q6, k, &x, &mut out);
            for (a, b) in out.iter().zip(&expected) {
                let ok = if adds_blocks_in_order(isa) { a.to_bits() == b.to_bits() } else { close(*a, *b, scale) };
                prop_assert!(ok, "{} q6_k: {} vs {}", isa, a, b);
            }
        }
        // And the Q6_K product is close to the float one of its dequantized weights.
        let mut deq = vec![0f32; rows * k];
        bitnet::formats::types::q6_k::dequantize(&q6, &mut deq);
        for t in 0..tokens {
            for r in 0..rows {
                let exact: f32 = (0..k).map(|c| deq[r * k + c] * x[t * k + c]).sum();
                let amax = x[t * k..(t + 1) * k].iter().fold(0f32, |m, v| m.max(v.abs()));
                let bound = deq[r * k..(r + 1) * k].iter().map(|v| v.abs()).sum::<f32>() * amax / 127.0 + 1e-4;
                prop_assert!((expected[t * rows + r] - exact).abs() <= bound);
            }
        }
    }
}

/// TQ2_0's largest sums: every weight +1 (or −1) against activations all −128 (or 127), over
/// the widest BitNet row (6912), for a GEMV and for GEMMs (I2_S's are below).
#[test]
fn tq2_0_extreme_products_are_exact() {
    let k = 6912;
    let rows = 5;
    for t in [-1i8, 1] {
        let tq = tq2_0::quantize(&vec![t as f32; rows * k]);
        for a in [-128i8, 127] {
            for tokens in [1, 3, 9] {
                let acts = vec![a; tokens * k];
                let block_qsums = vec![a as i32 * 256; tokens * k / 256];
                let mut expected = vec![0f32; tokens * rows];
                scalar::tq2_0_matmul(&tq, k, &acts, &mut expected);
                assert_eq!(expected[0], (t as i32 * a as i32 * k as i32) as f32);
                for isa in simd_isas() {
                    let mut out = vec![0f32; tokens * rows];
                    kernels::tq2_0_matmul(isa, &tq, k, &acts, &block_qsums, &mut out);
                    assert_eq!(out, expected, "{isa} t={t} a={a} tokens={tokens}");
                }
            }
        }
    }
}

/// Q8_0's largest block products: every weight −128 (or 127) against activations that
/// quantize to ±127, over the widest BitNet row, so that no path keeps a narrow accumulator
/// too long.
#[test]
fn q8_0_extreme_products_are_exact() {
    let k = 6912;
    for w in [-128i8, 127] {
        let mut row = Vec::new();
        for _ in 0..k / 32 {
            row.extend_from_slice(&f16::from_f32(1.0).to_le_bytes());
            row.extend([w as u8; 32]);
        }
        let m = row.repeat(3);
        for a in [-1f32, 1.0] {
            let x = vec![a; 2 * k];
            let mut expected = vec![0f32; 6];
            scalar::q8_0_matmul(&m, k, &x, &mut expected);
            // Each block's product is 32 · w · ±127, its scale 1/127.
            let exact = w as f32 * a * k as f32;
            assert!(
                (expected[0] - exact).abs() <= 1e-5 * exact.abs(),
                "{expected:?}"
            );
            for isa in simd_isas() {
                check_q8_0(isa, &m, k, &x).unwrap();
            }
        }
    }
}

/// Q6_K's largest block products: every code 0 (value −32) or 63 (value 31), every scale −128
/// or 127, against activations that quantize to ±127 (so each 16-value group sums to ±2032,
/// the offset term's extreme), over the widest BitNet row: no path may keep a sum in a lane
/// too narrow for it.
#[test]
fn q6_k_extreme_products_are_exact() {
    let k = 6912;
    for (code_bytes, value) in [(0x00u8, -32f32), (0xff, 31.0)] {
        for scale in [-128i8, 127] {
            let mut block = vec![code_bytes; 192];
            block.extend([scale as u8; 16]);
            block.extend_from_slice(&f16::from_f32(1.0).to_le_bytes());
            let m = block.repeat(3 * k / 256);
            for a in [-1f32, 1.0] {
                let x = vec![a; 2 * k];
                // Each activation is ±127 with scale 1/127; each value `scale · value`.
                let exact = k as f32 * scale as f32 * value * a;
                let mut expected = vec![0f32; 6];
                scalar::q6_k_matmul(&m, k, &x, &mut expected);
                for isa in Isa::available() {
                    let mut out = vec![0f32; 6];
                    kernels::q6_k_matmul(isa, &m, k, &x, &mut out);
                    for v in out {
                        assert!(
                            (v - exact).abs() <= 1e-5 * exact.abs(),
                            "{isa} codes {code_bytes:#x} scale {scale} a {a}: {v} vs {exact}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn this_machine_runs_every_simd_path_it_claims() {
    let isas = Isa::available();
    assert!(isas.contains(&Isa::Scalar));
    eprintln!("kernel paths tested: {isas:?}");
    // CI names the paths each machine (or emulated CPU) must have, so that a detection bug
    // cannot silently skip one: e.g. BITNET_EXPECT_ISAS=scalar,neon,dotprod under qemu's
    // neoverse-n1.
    if let Ok(expected) = std::env::var("BITNET_EXPECT_ISAS") {
        let expected: Vec<Isa> = expected.split(',').map(|s| s.parse().unwrap()).collect();
        assert_eq!(isas, expected);
    }
    // Keep the encoders honest: f16 encoding used by the tests round-trips.
    let bytes = float::encode_f16(&[1.5, -2.0]);
    let mut out = [0f32; 2];
    float::f16_to_f32(&bytes, &mut out);
    assert_eq!(out, [1.5, -2.0]);
}

/// The SIMD paths keep partial sums in 16-bit lanes for a while before widening them: the
/// largest products (every weight +1 or every weight −1 against −128 or 127) over rows long
/// enough to cross every widening boundary must still be exact, for a GEMV (5 rows: a ragged
/// pair and a ragged group of 4) and for GEMMs (up to 9 tokens: past an 8-token tile).
#[test]
fn i2s_partial_sums_do_not_overflow_at_the_extremes() {
    for k in [128usize, 2048, 2176, 4096, 4224, 6912] {
        for (weight, act) in [(1i8, -128i8), (1, 127), (-1, -128), (-1, 127)] {
            for tokens in [1usize, 2, 5, 9] {
                let rows = 5;
                let t = vec![weight; rows * k];
                let w = i2_s::encode(&t, 1.0);
                let w = &w[..rows * k / 4];
                let acts = vec![act; tokens * k];
                let qsums: Vec<i32> = vec![act as i32 * k as i32; tokens];
                let expected = vec![weight as i32 * act as i32 * k as i32; tokens * rows];
                for isa in Isa::available() {
                    let mut out = vec![0i32; tokens * rows];
                    kernels::i2s_matmul(isa, &layout_for(isa, w, k), k, &acts, &qsums, &mut out);
                    assert_eq!(
                        out, expected,
                        "{isa} k={k} w={weight} a={act} tokens={tokens}"
                    );
                }
            }
        }
    }
}
