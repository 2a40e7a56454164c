//! The block decoders and encoders against an outside reference: gguf-py (llama.cpp's Python
//! package), whose `gguf.quants` module has numpy ports of ggml's reference quantizers.
//! `tools/make_type_fixtures.py` wrote its inputs and outputs to `testdata/types/` (see the
//! README there). Every comparison is exact: bytes for the encoders, f32 bit patterns (NaN
//! payloads and signed zeros included) for the decoders.
//!
//! One documented difference, for F16 signalling NaNs only: numpy keeps a signalling NaN
//! signalling when it converts between f32 and f16 (gguf-py's F16 is numpy's `astype`), while
//! ggml's C code quiets it (F16C `vcvtps2ph`/`vcvtph2ps`, and its scalar fallback returns a quiet
//! NaN too), and so does `half`, which we use. Those elements are checked against ggml's rule
//! instead (see [`Reference::F16`]); every other element, and every other type, is exact. No real
//! weight file holds signalling NaNs.
//!
//! I2_S is bitnet.cpp's own type and not in gguf-py; `gguf_fixtures.rs` checks it against
//! bitnet.cpp's files.

use std::path::PathBuf;

use bitnet::formats::types::{self, float, q8_0, tq1_0, tq2_0, TensorType};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/types")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Which reference an element is held to.
#[derive(Clone, Copy, PartialEq)]
enum Reference {
    /// gguf-py, bit for bit.
    GgufPy,
    /// gguf-py, except that where it has a signalling NaN we have ggml's quiet NaN.
    F16,
}

const F32_QUIET: u32 = 0x0040_0000;
const F16_QUIET: u16 = 0x0200;

fn is_f32_signalling_nan(bits: u32) -> bool {
    bits & 0x7f80_0000 == 0x7f80_0000 && bits & 0x007f_ffff != 0 && bits & F32_QUIET == 0
}

fn is_f16_signalling_nan(bits: u16) -> bool {
    bits & 0x7c00 == 0x7c00 && bits & 0x03ff != 0 && bits & F16_QUIET == 0
}

/// ggml's f32 → f16 for a NaN (F16C `vcvtps2ph`): sign, quiet bit, top payload bits.
fn ggml_f16_nan(x: f32) -> u16 {
    let bits = x.to_bits();
    ((bits >> 16) & 0x8000) as u16 | 0x7c00 | F16_QUIET | ((bits & 0x007f_ffff) >> 13) as u16
}

/// Asserts our decoded values equal the reference's bit for bit, naming the first difference;
/// returns how many elements fell under the F16 NaN rule.
fn assert_same_bits(ours: &[f32], theirs: &[f32], reference: Reference, what: &str) -> usize {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let mut quieted = 0;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let (a, b) = (a.to_bits(), b.to_bits());
        if reference == Reference::F16 && is_f32_signalling_nan(b) {
            // ggml's f16 → f32 (`vcvtph2ps`) sets the quiet bit and keeps the payload.
            assert_eq!(a, b | F32_QUIET, "{what}: value {i}, a signalling NaN");
            quieted += 1;
        } else if a != b {
            panic!(
                "{what}: value {i} is {} ({a:#010x}), gguf-py has {} ({b:#010x})",
                f32::from_bits(a),
                f32::from_bits(b),
            );
        }
    }
    quieted
}

/// Asserts our encoding equals the reference's byte for byte, naming the first differing block
/// and byte; returns how many elements fell under the F16 NaN rule.
fn assert_same_bytes(
    ours: &[u8],
    theirs: &[u8],
    block_bytes: usize,
    input: &[f32],
    reference: Reference,
    what: &str,
) -> usize {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let mut quieted = 0;
    if reference == Reference::F16 {
        for (i, (a, b)) in ours.chunks_exact(2).zip(theirs.chunks_exact(2)).enumerate() {
            let (a, b) = (
                u16::from_le_bytes([a[0], a[1]]),
                u16::from_le_bytes([b[0], b[1]]),
            );
            if is_f16_signalling_nan(b) {
                assert_eq!(
                    a,
                    ggml_f16_nan(input[i]),
                    "{what}: value {i}, a signalling NaN"
                );
                quieted += 1;
            } else {
                assert_eq!(a, b, "{what}: value {i} ({})", input[i]);
            }
        }
        return quieted;
    }
    if let Some(i) = (0..ours.len()).find(|&i| ours[i] != theirs[i]) {
        let block = i / block_bytes;
        let block_len = input.len() / (ours.len() / block_bytes);
        panic!(
            "{what}: byte {i} (block {block}, byte {} of it) is {:#04x}, gguf-py has {:#04x}; \
             block input {:?}",
            i % block_bytes,
            ours[i],
            theirs[i],
            &input[block * block_len..(block + 1) * block_len]
        );
    }
    quieted
}

/// Checks one type: gguf-py's bytes decode to gguf-py's values (its own encodings and random
/// blocks), and our encoder writes gguf-py's bytes for the same inputs. Returns how many
/// elements fell under the F16 NaN rule.
fn check(name: &str, ty: TensorType, encode: fn(&[f32]) -> Vec<u8>, reference: Reference) -> usize {
    let input = f32s(&fixture(&format!("{name}.input.f32")));
    let bytes = fixture(&format!("{name}.gguf-py.bin"));
    let values = f32s(&fixture(&format!("{name}.gguf-py.dequant.f32")));
    let n = input.len() as u64;
    assert_eq!(ty.data_size(&[n]).unwrap(), bytes.len() as u64, "{name}");
    let mut quieted = 0;

    let decoded = types::dequantize(ty, &[n], &bytes).unwrap();
    quieted += assert_same_bits(
        &decoded,
        &values,
        reference,
        &format!("{name} dequantize(gguf-py bytes)"),
    );

    let random = fixture(&format!("{name}.random.bin"));
    let random_values = f32s(&fixture(&format!("{name}.random.dequant.f32")));
    let decoded = types::dequantize(ty, &[random_values.len() as u64], &random).unwrap();
    quieted += assert_same_bits(
        &decoded,
        &random_values,
        reference,
        &format!("{name} dequantize(random bytes)"),
    );

    quieted += assert_same_bytes(
        &encode(&input),
        &bytes,
        ty.block_bytes() as usize,
        &input,
        reference,
        &format!("{name} encoder"),
    );

    // The ternary view of the same bytes gives the same weights.
    if ty.is_ternary() {
        for (bytes, values) in [(&bytes, &values), (&random, &random_values)] {
            let t = types::decode_ternary(ty, &[values.len() as u64], bytes).unwrap();
            let mut weights = vec![0f32; values.len()];
            t.to_f32_into(&mut weights);
            assert_same_bits(
                &weights,
                values,
                reference,
                &format!("{name} decode_ternary"),
            );
        }
    }
    quieted
}

#[test]
fn q8_0_matches_gguf_py() {
    let quieted = check("q8_0", TensorType::Q8_0, q8_0::quantize, Reference::GgufPy);
    assert_eq!(quieted, 0);
}

#[test]
fn tq1_0_matches_gguf_py() {
    let quieted = check(
        "tq1_0",
        TensorType::TQ1_0,
        tq1_0::quantize,
        Reference::GgufPy,
    );
    assert_eq!(quieted, 0);
}

#[test]
fn tq2_0_matches_gguf_py() {
    let quieted = check(
        "tq2_0",
        TensorType::TQ2_0,
        tq2_0::quantize,
        Reference::GgufPy,
    );
    assert_eq!(quieted, 0);
}

#[test]
fn f16_matches_gguf_py() {
    // The two signalling NaN inputs, their two encodings, and those among the random bytes.
    let quieted = check("f16", TensorType::F16, float::encode_f16, Reference::F16);
    assert!(quieted >= 4, "{quieted}");
}

#[test]
fn bf16_matches_gguf_py() {
    let quieted = check(
        "bf16",
        TensorType::BF16,
        float::encode_bf16,
        Reference::GgufPy,
    );
    assert_eq!(quieted, 0);
}

fn is_f16_subnormal(d: &half::f16) -> bool {
    d.to_bits() & 0x7c00 == 0 && d.to_bits() & 0x03ff != 0
}

/// The fixtures hold the edge cases they claim to, so that the comparisons above mean something.
#[test]
fn fixtures_cover_ties_zero_and_overflowing_scales() {
    let q = fixture("q8_0.gguf-py.bin");
    let scales: Vec<half::f16> = q
        .chunks_exact(34)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert!(
        scales.iter().any(|d| d.to_f32() == 0.0),
        "an all-zero block"
    );
    assert!(scales.iter().any(|d| d.to_f32() == 1.0), "the tie block");
    assert!(
        scales.iter().any(|d| d.is_infinite()),
        "an overflowing scale"
    );
    assert!(scales.iter().any(is_f16_subnormal), "a subnormal scale");
    for name in ["tq1_0", "tq2_0"] {
        let q = fixture(&format!("{name}.gguf-py.bin"));
        let block = q.len() / 12;
        let scales: Vec<half::f16> = q
            .chunks_exact(block)
            .map(|b| half::f16::from_le_bytes([b[block - 2], b[block - 1]]))
            .collect();
        assert!(
            scales.iter().any(|d| d.to_f32() == 2.0),
            "{name}: the tie block"
        );
        assert!(
            scales.iter().any(is_f16_subnormal),
            "{name}: a subnormal scale"
        );
        assert!(
            scales.iter().any(|d| d.is_infinite()),
            "{name}: an overflowing scale"
        );
    }

    let input = f32s(&fixture("f16.input.f32"));
    assert!(input.iter().any(|x| x.is_nan()));
    assert!(input.contains(&65520.0) && input.contains(&(1.0 + 2f32.powi(-11))));
    let input = f32s(&fixture("bf16.input.f32"));
    assert!(input.iter().any(|x| x.is_nan()) && input.contains(&f32::MAX));
}

/// Q6_K (the optional 6-bit output matrix): gguf-py's dequantization of random blocks.
#[test]
fn q6_k_dequantizes_like_gguf_py() {
    let random = fixture("q6_k.random.bin");
    let expected = f32s(&fixture("q6_k.random.dequant.f32"));
    let ours = types::dequantize(TensorType::Q6K, &[expected.len() as u64], &random).unwrap();
    assert_eq!(ours.len(), expected.len());
    for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "value {i}: {a} vs {b}");
    }
}
