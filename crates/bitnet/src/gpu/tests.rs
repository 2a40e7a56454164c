//! The WGSL kernels against the CPU's scalar kernels (the reference twin), on random shapes
//! with ragged tails. They run on whatever adapter `--device gpu` would take (lavapipe in
//! CI); with none they print a note and pass, except under CI=true, where a missing adapter
//! fails them (a broken lavapipe install must not pass silently).

use std::sync::{Arc, OnceLock};

use half::f16;
use proptest::prelude::*;

use super::context::Gpu;
use super::ops::{self, AttnShape, DenseMatrix, DenseScratch, KvLayer, NormSpec, Quantized};
use super::Device;
use crate::formats::types::{i2_s, q6_k, q8_0, TensorType};
use crate::kernels::scalar;
use crate::model::Activation;

/// The test device, opened once; None (after a note) when there is none outside CI.
pub(crate) fn test_gpu() -> Option<Arc<Gpu>> {
    static GPU: OnceLock<Option<Arc<Gpu>>> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::open(Device::Gpu) {
        Ok(g) => g,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but the GPU tests found no adapter: {e}");
            }
            eprintln!("note: GPU tests skipped: {e}");
            None
        }
    })
    .clone()
}

/// xorshift values for one case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32s(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
            .collect()
    }
    fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.next() as i8).collect()
    }
    fn ternary(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| (self.next() % 3) as i8 - 1).collect()
    }
}

fn close(a: &[f32], b: &[f32], tol: f32) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        prop_assert!(
            (x - y).abs() <= tol * scale,
            "index {}: gpu {} cpu {} (tolerance {} × {})",
            i,
            x,
            y,
            tol,
            scale
        );
    }
    Ok(())
}

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    /// Bare quantization: int8 values, scales and sums bit-equal to `quantize_row_i8`.
    #[test]
    fn quantize_is_bit_equal(n in 1usize..300, tokens in 1usize..4, seed in 1u64..u64::MAX) {
        let Some(gpu) = test_gpu() else { return Ok(()) };
        let mut rng = Rng(seed);
        let width = n.div_ceil(4) * 4 + 4 * (seed as usize % 3);
        let mut x = rng.f32s(n * tokens, 3.0);
        x[0] = 0.0;
        let xb = gpu.upload(&x);
        let out = Quantized::new(&gpu, tokens, width);
        let mut enc = gpu.encoder();
        let norm = NormSpec { gain: None, eps: 0.0, act_eps: None, act_gain: None };
        ops::quantize(&gpu, &mut enc, &xb, n, tokens, n, width, norm, &out);
        gpu.submit(enc).unwrap();
        let q: Vec<i8> = gpu.read(gpu.encoder(), &out.q, tokens * width).unwrap();
        let s: Vec<f32> = gpu.read(gpu.encoder(), &out.scales, tokens).unwrap();
        let sums: Vec<i32> = gpu.read(gpu.encoder(), &out.qsums, tokens).unwrap();
        for t in 0..tokens {
            let mut want = vec![0i8; width];
            let ws = scalar::quantize_row_i8(&x[t * n..(t + 1) * n], &mut want[..n]);
            prop_assert_eq!(&q[t * width..(t + 1) * width], &want[..]);
            prop_assert_eq!(s[t].to_bits(), ws.to_bits());
            prop_assert_eq!(sums[t], want.iter().map(|&v| v as i32).sum::<i32>());
        }
    }

    /// With the block's RMSNorm and the weightless one: the CPU's int8 values within one
    /// step (the norms' f64 and f32 sums differ in the last bits), scales within 1e-5.
    #[test]
    fn norm_quantize_matches(n in 1usize..300, seed in 1u64..u64::MAX) {
        let Some(gpu) = test_gpu() else { return Ok(()) };
        let mut rng = Rng(seed);
        let x = rng.f32s(n, 5.0);
        let g = rng.f32s(n, 2.0);
        let (eps, act_eps) = (1e-5f32, 1e-6f32);
        let (xb, gb) = (gpu.upload(&x), gpu.upload(&g));
        let width = n.div_ceil(4) * 4;
        let out = Quantized::new(&gpu, 1, width);
        let mut enc = gpu.encoder();
        let norm = NormSpec { gain: Some(&gb), eps, act_eps: Some(act_eps), act_gain: None };
        ops::quantize(&gpu, &mut enc, &xb, n, 1, n, width, norm, &out);
        gpu.submit(enc).unwrap();
        let q: Vec<i8> = gpu.read(gpu.encoder(), &out.q, width).unwrap();
        let s: Vec<f32> = gpu.read(gpu.encoder(), &out.scales, 1).unwrap();
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        scalar::rms_norm(&x, &g, eps, &mut a);
        scalar::rms_norm(&a, &vec![1.0; n], act_eps, &mut b);
        let mut want = vec![0i8; n];
        let ws = scalar::quantize_row_i8(&b, &mut want);
        for (i, (&got, &w)) in q.iter().zip(&want).enumerate() {
            prop_assert!((got as i32 - w as i32).abs() <= 1, "value {}: {} vs {}", i, got, w);
        }
        prop_assert!((s[0] - ws).abs() <= 1e-5 * ws);
    }

    /// The I2_S product: integer sums bit-equal to `i2s_matmul`, on both kernels (the
    /// `dot4I8Packed` one where the adapter has it, and the plain loop).
    #[test]
    fn ternary_is_bit_equal(
        blocks in 1usize..9,
        rows in 1usize..70,
        tokens in 1usize..4,
        seed in 1u64..u64::MAX,
    ) {
        let Some(gpu) = test_gpu() else { return Ok(()) };
        let mut rng = Rng(seed);
        let k = blocks * i2_s::BLOCK_LEN;
        let w = rng.ternary(rows * k);
        let packed = &i2_s::encode(&w, 1.0)[..rows * k / 4];
        let acts = rng.i8s(tokens * k);
        let mut want = vec![0i32; tokens * rows];
        scalar::i2s_matmul(packed, k, &acts, &mut want);
        let sums: Vec<i32> = acts.chunks(k).map(|r| r.iter().map(|&v| v as i32).sum()).collect();
        let q = Quantized {
            q: gpu.upload(&acts),
            scales: gpu.upload(&vec![1f32; tokens]),
            qsums: gpu.upload(&sums),
        };
        let lin = ops::Ternary::upload(&gpu, packed, k, rows, 1.0, None, None);
        for plain in [false, true] {
            let out = gpu.buffer((4 * tokens * rows) as u64);
            let mut enc = gpu.encoder();
            ops::ternary(&gpu, &mut enc, &lin, &q, tokens, &out, plain);
            let got: Vec<f32> = gpu.read(enc, &out, tokens * rows).unwrap();
            let got: Vec<i32> = got.iter().map(|&v| v as i32).collect();
            prop_assert_eq!(&got, &want, "plain kernel: {}", plain);
        }
    }

    /// The float rescale after the integer sum: activation scale, weight scale, output
    /// scale and bias, as `I2sLinear::matmul` and `linear_group` apply them.
    #[test]
    fn ternary_rescale_matches(rows in 1usize..40, seed in 1u64..u64::MAX) {
        let Some(gpu) = test_gpu() else { return Ok(()) };
        let mut rng = Rng(seed);
        let k = 256;
        let w = rng.ternary(rows * k);
        let packed = &i2_s::encode(&w, 0.5)[..rows * k / 4];
        let x = rng.f32s(k, 2.0);
        let mut q8 = vec![0i8; k];
        let s = scalar::quantize_row_i8(&x, &mut q8);
        let mut dots = vec![0i32; rows];
        scalar::i2s_matmul(packed, k, &q8, &mut dots);
        let bias = rng.f32s(rows, 1.0);
        let want: Vec<f32> = dots
            .iter()
            .zip(&bias)
            .map(|(&d, b)| d as f32 / s * 0.37 * 1.5 + b)
            .collect();
        let xb = gpu.upload(&x);
        let q = Quantized::new(&gpu, 1, k);
        let lin = ops::Ternary::upload(&gpu, packed, k, rows, 0.37, Some(1.5), Some(&bias));
        let out = gpu.buffer((4 * rows) as u64);
        let mut enc = gpu.encoder();
        let norm = NormSpec { gain: None, eps: 0.0, act_eps: None, act_gain: None };
        ops::quantize(&gpu, &mut enc, &xb, k, 1, k, k, norm, &q);
        ops::ternary(&gpu, &mut enc, &lin, &q, 1, &out, false);
        let got: Vec<f32> = gpu.read(enc, &out, rows).unwrap();
        close(&got, &want, 1e-6)?;
    }

    /// RMSNorm, plain and rounded to f16.
    #[test]
    fn rms_norm_matches(n in 1usize..400, tokens in 1usize..3, seed in 1u64..u64::MAX) {
        let Some(gpu) = test_gpu() else { return Ok(()) };
        let mut rng = Rng(seed);
        let x = rng.f32s(n * tokens, 4.0);
        let g = rng.f32s(n, 1.5);
        let (xb, gb) = (gpu.upload(&x), gpu.upload(&g));
        for round in [false, true] {
            let out = gpu.buffer((4 * n * tokens) as u64);
            let mut enc = gpu.encoder();
            ops::rms_norm(&gpu, &mut enc, &xb, &gb, tokens, n, 1e-6, round, &out);
            let got: Vec<f32> = gpu.read(enc, &out, n * tokens).unwrap();
            let mut want = vec![0f32; n * tokens];
            for t in 0..tokens {
                let r = t * n..(t + 1) * n;
                scalar::rms_norm(&x[r.clone()], &g, 1e-6, &mut want[r]);
            }
            if round {
                want.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32());
            }
            close(&got, &want, if round { 1e-3 } else { 1e-5 })?;
        }
    }

    /// RoPE, both pairings, on query-like and key-like rows.
    #[test]
    fn rope_matches(heads in 1usize..5, half in 1usize..40, tokens in 1usize..4, seed in 1u64..u64::MAX) {
        let Some(gpu) = test_gpu() else { return Ok(()) };
        let mut rng = Rng(seed);
        let hd = 2 * half;
        let x = rng.f32s(tokens * heads * hd, 3.0);
        let angles = rng.f32s(tokens * half, 50.0);
        let mut table: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        table.extend(angles.iter().map(|a| a.sin()));
        let tb = gpu.upload(&table);
        for interleaved in [false, true] {
            let xb = gpu.upload(&x);
            let mut enc = gpu.encoder();
            ops::rope(&gpu, &mut enc, &xb, &tb, tokens, heads, hd, interleaved);
            let got: Vec<f32> = gpu.read(enc, &xb, x.len()).unwrap();
            let mut want = x.clone();
            for t in 0..tokens {
                let cos = &table[t * half..(t + 1) * half];
                let sin = &table[tokens * half + t * half..tokens * half + (t + 1) * half];
                for head in want[t * heads * hd..(t + 1) * heads * hd].chunks_exact_mut(hd) {
                    if interleaved {
                        for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                            let (u, v) = (pair[0], pair[1]);
                            pair[0] = u * c - v * s;
                            pair[1] = v * c + u * s;
                        }
                    } else {
                        scalar::rope_neox(head, cos, sin);
                    }
                }
            }
            close(&got, &want, 1e-6)?;
        }
    }

    /// The gated activations: relu², SiLU and tanh-GELU (PyTorch's formula, as the CPU).
    #[test]
    fn gate_matches(n in 1usize..5000, seed in 1u64..u64::MAX) {
        let Some(gpu) = test_gpu() else { return Ok(()) };
        let mut rng = Rng(seed);
        let up = rng.f32s(n, 3.0);
        let g = rng.f32s(n, 6.0);
        for act in [Activation::Relu2, Activation::Silu, Activation::GeluTanh] {
            let (ub, gb) = (gpu.upload(&up), gpu.upload(&g));
            let mut enc = gpu.encoder();
            ops::gate(&gpu, &mut enc, &ub, &gb, n, act);
            let got: Vec<f32> = gpu.read(enc, &ub, n).unwrap();
            let want: Vec<f32> = up
                .iter()
                .zip(&g)
                .map(|(&u, &g)| match act {
                    Activation::Silu => u * (g / (1.0 + (-g).exp())),
                    Activation::Relu2 => {
                        let r = g.max(0.0);
                        u * (r * r)
                    }
                    Activation::GeluTanh => {
                        const K: f32 = 0.797_884_6;
                        u * (0.5 * g * (1.0 + (K * (g + 0.044715 * g * g * g)).tanh()))
                    }
                })
                .collect();
            close(&got, &want, 1e-6)?;
        }
    }

    /// Attention over an f32 and an f16 cache (grouped query heads, several new tokens at
    /// once after earlier positions, as rows `row0 ..` of a batch's queries; causal or over
    /// the whole sequence, with or without a sliding window, any scale), against the CPU's
    /// kernels and its `attention`'s mask.
    #[test]
    fn attention_matches(
        n_head_kv in 1usize..3,
        group in 1usize..3,
        half in 1usize..20,
        pos0 in 0usize..40,
        tokens in 1usize..4,
        row0 in 0usize..3,
        window in 0usize..6,
        causal in proptest::bool::ANY,
        seed in 1u64..u64::MAX,
    ) {
        let Some(gpu) = test_gpu() else { return Ok(()) };
        let mut rng = Rng(seed);
        let (hd, n_head) = (2 * half, n_head_kv * group);
        let scale = 0.1 + (seed % 7) as f32 * 0.05;
        let (h, kv) = (n_head * hd, n_head_kv * hd);
        let capacity = pos0 + tokens + 3;
        let keys = rng.f32s(capacity * kv, 2.0);
        let values = rng.f32s(capacity * kv, 2.0);
        // The batch's rows before this sequence's hold other queries.
        let q_all = rng.f32s((row0 + tokens) * h, 2.0);
        let q = &q_all[row0 * h..];
        for f16_cache in [false, true] {
            let (kc, vc) = if f16_cache {
                (gpu.upload(&ops::f16_bits(&keys)), gpu.upload(&ops::f16_bits(&values)))
            } else {
                (gpu.upload(&keys), gpu.upload(&values))
            };
            let layer = KvLayer { k: kc, v: vc };
            let shape = AttnShape {
                n_head, n_head_kv, hd, capacity, f16: f16_cache, scale, window, causal,
            };
            let scratch = gpu.buffer((4 * (row0 + tokens) * n_head * capacity) as u64);
            let out = gpu.buffer((4 * (row0 + tokens) * h) as u64);
            let qb = gpu.upload(&q_all);
            let mut enc = gpu.encoder();
            let rows = ops::Rows { row0, pos0, n_tokens: tokens };
            ops::attention(&gpu, &mut enc, shape, &layer, &qb, rows, &scratch, &out);
            let got: Vec<f32> = gpu.read(enc, &out, (row0 + tokens) * h).unwrap();
            // Only this sequence's rows are written.
            prop_assert_eq!(&got[..row0 * h], &vec![0f32; row0 * h][..]);
            let got = &got[row0 * h..];
            let round = |v: &f32| if f16_cache { f16::from_f32(*v).to_f32() } else { *v };
            let (k32, v32): (Vec<f32>, Vec<f32>) =
                (keys.iter().map(round).collect(), values.iter().map(round).collect());
            let mut want = vec![0f32; tokens * h];
            for t in 0..tokens {
                // The CPU's `attention`: the positions first ..= last.
                let pos = pos0 + t;
                let last = if causal { pos } else { pos0 + tokens - 1 };
                let first = if window > 0 { (pos + 1).saturating_sub(window) } else { 0 };
                let visible = last + 1 - first;
                for head in 0..n_head {
                    let off = (head / group) * hd;
                    let qh = &q[t * h + head * hd..t * h + (head + 1) * hd];
                    let mut scores = vec![0f32; visible];
                    scalar::f32_rows_dot(&k32[first * kv..], kv, off, qh, &mut scores);
                    scores.iter_mut().for_each(|s| *s *= scale);
                    scalar::softmax(&mut scores);
                    let o = &mut want[t * h + head * hd..t * h + (head + 1) * hd];
                    scalar::f32_rows_axpy(&v32[first * kv..], kv, off, &scores, o);
                }
            }
            close(got, &want, 1e-5)?;
        }
    }

    /// The cache writes (of rows `row0 ..` of a batch's keys and values): f32 exact, f16 as
    /// the CPU rounds.
    #[test]
    fn kv_write_matches(
        kv_half in 1usize..40,
        pos0 in 0usize..8,
        tokens in 1usize..4,
        row0 in 0usize..3,
        seed in 1u64..u64::MAX,
    ) {
        let Some(gpu) = test_gpu() else { return Ok(()) };
        let mut rng = Rng(seed);
        let hd = 2 * kv_half;
        let capacity = pos0 + tokens;
        let rows = row0 + tokens;
        let (k_all, v_all) = (rng.f32s(rows * hd, 3.0), rng.f32s(rows * hd, 3.0));
        let (kb, vb) = (gpu.upload(&k_all), gpu.upload(&v_all));
        let (k, v) = (k_all[row0 * hd..].to_vec(), v_all[row0 * hd..].to_vec());
        for f16_cache in [false, true] {
            let bytes = (capacity * hd * if f16_cache { 2 } else { 4 }) as u64;
            let layer = KvLayer { k: gpu.buffer(bytes), v: gpu.buffer(bytes) };
            let shape = AttnShape {
                n_head: 1, n_head_kv: 1, hd, capacity, f16: f16_cache,
                scale: 1.0, window: 0, causal: true,
            };
            let mut enc = gpu.encoder();
            let rows = ops::Rows { row0, pos0, n_tokens: tokens };
            ops::kv_write(&gpu, &mut enc, shape, &layer, &kb, &vb, rows);
            gpu.submit(enc).unwrap();
            for (buf, src) in [(&layer.k, &k), (&layer.v, &v)] {
                let got: Vec<f32> = if f16_cache {
                    let raw: Vec<u16> = gpu.read(gpu.encoder(), buf, capacity * hd).unwrap();
                    raw.iter().map(|&b| f16::from_bits(b).to_f32()).collect()
                } else {
                    gpu.read(gpu.encoder(), buf, capacity * hd).unwrap()
                };
                let want: Vec<f32> = src
                    .iter()
                    .map(|&x| if f16_cache { f16::from_f32(x).to_f32() } else { x })
                    .collect();
                prop_assert_eq!(&got[..pos0 * hd], &vec![0f32; pos0 * hd][..]);
                close(&got[pos0 * hd..], &want, if f16_cache { 1e-3 } else { 0.0 })?;
            }
        }
    }

    /// The output product for F16, Q8_0 and Q6_K matrices against the CPU's.
    #[test]
    fn dense_matches(blocks in 1usize..4, rows in 1usize..50, tokens in 1usize..3, seed in 1u64..u64::MAX) {
        let Some(gpu) = test_gpu() else { return Ok(()) };
        let mut rng = Rng(seed);
        let k = blocks * 256;
        let m = rng.f32s(rows * k, 1.0);
        let x = rng.f32s(tokens * k, 2.0);
        let xb = gpu.upload(&x);
        let scratch = DenseScratch::new(&gpu, tokens, k);
        for ty in [TensorType::F16, TensorType::Q8_0, TensorType::Q6K] {
            let mut want = vec![0f32; tokens * rows];
            let data: Vec<u8> = match ty {
                TensorType::F16 => {
                    let h: Vec<f16> = m.iter().map(|&v| f16::from_f32(v)).collect();
                    scalar::f16_matmul(&h, k, &x, &mut want);
                    bytemuck::cast_slice(&h).to_vec()
                }
                TensorType::Q8_0 => {
                    let d = q8_0::quantize(&m);
                    scalar::q8_0_matmul(&d, k, &x, &mut want);
                    d
                }
                _ => {
                    let d = q6_k::quantize(&m);
                    scalar::q6_k_matmul(&d, k, &x, &mut want);
                    d
                }
            };
            let dm = DenseMatrix::upload(&gpu, ty, &data, k, rows).unwrap();
            let out = gpu.buffer((4 * tokens * rows) as u64);
            let mut enc = gpu.encoder();
            ops::dense(&gpu, &mut enc, &dm, &xb, tokens, &scratch, &out);
            let got: Vec<f32> = gpu.read(enc, &out, tokens * rows).unwrap();
            close(&got, &want, 1e-5)?;
        }
    }

    /// A context shift of one layer (positions `keep .. keep + n` dropped, the later ones
    /// moved down, keys rotated back, values unchanged), f32 and f16, both pairings, against
    /// the CPU cache's `discard` with the CPU's rotation: f32 within the RoPE kernel's bound,
    /// f16 within one f16 step.
    #[test]
    fn kv_shift_matches(
        heads in 1usize..3,
        half in 1usize..20,
        keep in 0usize..4,
        n in 1usize..6,
        after in 0usize..8,
        seed in 1u64..u64::MAX,
    ) {
        use crate::model::{CacheType, KvCache};
        let Some(gpu) = test_gpu() else { return Ok(()) };
        let mut rng = Rng(seed);
        let hd = 2 * half;
        let kv = heads * hd;
        let len = keep + n + after;
        let capacity = len + 2;
        let keys = rng.f32s(capacity * kv, 3.0);
        let values = rng.f32s(capacity * kv, 3.0);
        let angles = rng.f32s(half, 50.0);
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| -a.sin()).collect();
        let mut table = cos.clone();
        table.extend_from_slice(&sin);
        let tb = gpu.upload(&table);
        for (f16_cache, interleaved) in [(false, false), (false, true), (true, false), (true, true)] {
            let ty = if f16_cache { CacheType::F16 } else { CacheType::F32 };
            let mut cpu = KvCache::new(1, kv, capacity, ty).unwrap();
            for pos in 0..len {
                let r = pos * kv..(pos + 1) * kv;
                cpu.write(0, pos, &keys[r.clone()], &values[r]);
            }
            cpu.set_len(len);
            cpu.discard(keep, n, |row| {
                for head in row.chunks_exact_mut(hd) {
                    if interleaved {
                        for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(&cos).zip(&sin) {
                            let (u, v) = (pair[0], pair[1]);
                            pair[0] = u * c - v * s;
                            pair[1] = v * c + u * s;
                        }
                    } else {
                        scalar::rope_neox(head, &cos, &sin);
                    }
                }
            }).unwrap();
            let layer = if f16_cache {
                KvLayer { k: gpu.upload(&ops::f16_bits(&keys)), v: gpu.upload(&ops::f16_bits(&values)) }
            } else {
                KvLayer { k: gpu.upload(&keys), v: gpu.upload(&values) }
            };
            let bytes = (after * kv * if f16_cache { 2 } else { 4 }) as u64;
            let (tk, tv) = (gpu.buffer(bytes), gpu.buffer(bytes));
            let mut enc = gpu.encoder();
            ops::kv_shift(
                &gpu, &mut enc, &layer, (kv, hd, f16_cache, interleaved), (keep, n, after), &tb,
                (&tk, &tv),
            );
            gpu.submit(enc).unwrap();
            let kept = (len - n) * kv;
            let (ck, cv) = cpu.layer(0);
            for (buf, want, what) in [(&layer.k, ck, "keys"), (&layer.v, cv, "values")] {
                let (got, want): (Vec<f32>, Vec<f32>) = match want {
                    crate::model::KvSlice::F16(w) => {
                        let raw: Vec<u16> = gpu.read(gpu.encoder(), buf, kept).unwrap();
                        (
                            raw.iter().map(|&b| f16::from_bits(b).to_f32()).collect(),
                            w[..kept].iter().map(|v| v.to_f32()).collect(),
                        )
                    }
                    crate::model::KvSlice::F32(w) => {
                        (gpu.read(gpu.encoder(), buf, kept).unwrap(), w[..kept].to_vec())
                    }
                };
                let exact = got.iter().zip(&want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
                prop_assert!(
                    what == "keys" || exact == kept,
                    "{}: {} of {} values moved unchanged", what, exact, kept
                );
                close(&got, &want, if f16_cache { 1e-3 } else { 1e-6 })
                    .map_err(|e| TestCaseError::fail(format!("{what}, f16 {f16_cache}, interleaved {interleaved}: {e}")))?;
            }
        }
    }

    /// The product with a scale per 256-value block (TQ2_0 with its code 3, the value 2,
    /// and TQ1_0; every block its own scale; output scale and bias) against the CPU's
    /// per-block kernels: bit-equal, the integer block sums scaled and added in the same
    /// order.
    #[test]
    fn ternary_blocks_are_bit_equal(
        blocks in 1usize..11,
        rows in 1usize..40,
        tokens in 1usize..4,
        seed in 1u64..u64::MAX,
    ) {
        use crate::kernels::Isa;
        use crate::model::weights::{BlockTernaryLinear, QuantizedBuffers, TernaryLinear};
        let Some(gpu) = test_gpu() else { return Ok(()) };
        let mut rng = Rng(seed);
        let k = blocks * 256;
        let mut acts = QuantizedBuffers::default();
        acts.fit(tokens, k);
        acts.q = rng.i8s(tokens * k);
        for t in 0..tokens {
            acts.qsums[t] = acts.q[t * k..(t + 1) * k].iter().map(|&v| v as i32).sum();
            acts.scales[t] = 20.0 + (rng.next() % 1000) as f32 / 7.0;
        }
        let bias = rng.f32s(rows, 1.0);
        for ty in [TensorType::TQ2_0, TensorType::TQ1_0] {
            let size = ty.block_bytes() as usize;
            let mut data: Vec<u8> = (0..rows * blocks * size).map(|_| rng.next() as u8).collect();
            for b in data.chunks_exact_mut(size) {
                let d = 0.001 + (rng.next() % 1000) as f32 * 1e-4;
                b[size - 2..].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            }
            let cpu = BlockTernaryLinear::owned(ty, data, k, rows);
            let mut want = vec![0f32; tokens * rows];
            cpu.matmul(Isa::best(), &acts.view(), 0..rows, &mut want);
            want.chunks_exact_mut(rows).for_each(|row| {
                row.iter_mut().zip(&bias).for_each(|(o, b)| *o = *o * 1.5 + b)
            });
            let (packed, d) = cpu.i2s_block_layout().unwrap();
            let lin = ops::Ternary::upload_blocks(&gpu, &packed, &d, k, rows, Some(1.5), Some(&bias));
            let q = Quantized {
                q: gpu.upload(&acts.q),
                scales: gpu.upload(&acts.scales),
                qsums: gpu.upload(&acts.qsums),
            };
            let out = gpu.buffer((4 * tokens * rows) as u64);
            let mut enc = gpu.encoder();
            ops::ternary(&gpu, &mut enc, &lin, &q, tokens, &out, false);
            let got: Vec<f32> = gpu.read(enc, &out, tokens * rows).unwrap();
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(got, want, "{}", ty);
        }
    }
}
