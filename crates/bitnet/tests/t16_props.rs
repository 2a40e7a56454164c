//! The 1.6-bit decode layout (T1_6: five trits a byte) against the ternary values it was packed
//! from: the byte code round-trips every digit string, and every ISA's product on random shapes
//! with ragged tails (rows not a multiple of the interleave, `k` not a multiple of 160) equals
//! the dot product computed the obvious way from the values, bit for bit.

use bitnet::formats::types::i2_s;
use bitnet::kernels::{self, Isa};
use proptest::prelude::*;

mod props;
use props::{int8, reference, ternary, xorshift};

/// `rows × k` ternary values packed as T1_6 (through the file's I2_S layout, as the model
/// packs them at load).
fn pack(t: &[i8], rows: usize, k: usize) -> Vec<u8> {
    let i2s = i2_s::encode(t, 1.0);
    let mut out = vec![0u8; rows * kernels::t16_row_bytes(k)];
    kernels::t16_pack_i2s(&i2s[..rows * k / 4], k, &mut out);
    out
}

fn product(isa: Isa, w: &[u8], k: usize, acts: &[i8]) -> Vec<i32> {
    let tokens = acts.len() / k;
    let rows = w.len() / kernels::t16_row_bytes(k);
    let qsums: Vec<i32> = acts
        .chunks(k)
        .map(|r| r.iter().map(|&v| v as i32).sum())
        .collect();
    let mut out = vec![0i32; tokens * rows];
    kernels::t16_matmul(isa, w, k, acts, &qsums, &mut out);
    out
}

#[test]
fn every_digit_string_round_trips() {
    for n in 1..=5u32 {
        for v in 0..3u32.pow(n) {
            let digits: Vec<u8> = (0..n)
                .map(|i| (v / 3u32.pow(n - 1 - i) % 3) as u8)
                .collect();
            let q = kernels::t16_encode_byte(&digits);
            let back: Vec<u8> = (0..n as usize).map(|i| kernels::t16_digit(q, i)).collect();
            assert_eq!(back, digits, "{n} digits, value {v}, byte {q}");
        }
    }
}

#[test]
fn the_layout_is_a_fifth_smaller_than_i2s() {
    // 2B-4T's shapes: 2560 = 16 · 160 exactly; 6912 = 43 · 160 + 32 (an 8-byte 2-bit tail).
    assert_eq!(kernels::t16_row_bytes(2560) * 5, 2560 / 4 * 4);
    assert_eq!(kernels::t16_row_bytes(6912), 43 * 32 + 8);
    // Never longer than I2_S: a 128-value tail is 32 bytes, as in I2_S.
    for k in (128..4096).step_by(128) {
        assert!(kernels::t16_row_bytes(k) <= k / 4, "{k}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `k` = 128..2432: every tail length (k mod 160 ∈ {0, 32, 64, 96, 128}); 1..13 rows:
    /// whole and ragged groups of four; a few tokens (the kernels are GEMVs, one token at a
    /// time).
    #[test]
    fn t16_matmul_is_exact_on_every_isa(
        (rows, blocks, tokens) in (1usize..13, 1usize..20, 1usize..4),
        seed in any::<u64>(),
    ) {
        let k = blocks * 128;
        let mut next = xorshift(seed | 1);
        let t = ternary(&mut next, rows * k);
        let acts = int8(&mut next, tokens * k);
        let w = pack(&t, rows, k);
        prop_assert_eq!(w.len(), rows * (k / 160 * 32 + k % 160 / 4));
        let expected = reference(&t, &acts, rows, k);
        for isa in Isa::available() {
            prop_assert_eq!(&product(isa, &w, k, &acts), &expected, "{}", isa);
        }
    }
}

/// The largest sums the accumulators meet: every weight ±1 against every activation at −128
/// (and 127), over the longest rows a model has (and more), on every ISA.
#[test]
fn extreme_products_are_exact() {
    for k in [6912, 13824, 32768] {
        for (w, a) in [(1i8, -128i8), (-1, -128), (1, 127), (-1, 127), (0, -128)] {
            let rows = 5;
            let t = vec![w; rows * k];
            let acts = vec![a; k];
            let w = pack(&t, rows, k);
            let expected = reference(&t, &acts, rows, k);
            for isa in Isa::available() {
                assert_eq!(product(isa, &w, k, &acts), expected, "{isa} k {k}");
            }
        }
    }
}
