//! Each kernel against its scalar twin, same inputs, same run: `cargo bench --bench kernels`.
//! Shapes are the 2B-4T model's: a decode GEMV (one token, 2560 → 2560 and 6912 → 2560), a
//! prefill GEMM (128 tokens), the F16 output product, the activation quantizer, and decoding's
//! other weight streams (the 1.6-bit T1_6 layout, the Q6_K output matrix) in cache and from
//! memory (huge pages, as the model's weights are held).
//!
//! criterion is an x86-64-only dev-dependency (it stays out of the aarch64 test build that CI
//! runs under qemu), so elsewhere this bench is an empty program.

#[cfg(target_arch = "x86_64")]
criterion::criterion_main!(bench::benches);

#[cfg(not(target_arch = "x86_64"))]
fn main() {}

#[cfg(target_arch = "x86_64")]
mod bench {
    use std::hint::black_box;

    use bitnet::formats::types::tq2_0;
    use bitnet::kernels::{self, Isa};
    use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
    use half::f16;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    /// Valid I2_S bytes (codes 0..=2 only) for `rows × k` weights.
    fn i2s_weights(rows: usize, k: usize) -> Vec<u8> {
        let mut s = 1;
        (0..rows * k / 4)
            .map(|_| (0..4).fold(0u8, |b, i| b | (((lcg(&mut s) % 3) as u8) << (2 * i))))
            .collect()
    }

    /// `bytes` copied into anonymous memory backed by huge pages where the OS gives them, as
    /// the model's weights are at load: through 4 KiB pages a stream from memory stalls at
    /// every page and measures paging, not the kernel.
    fn huge_pages(bytes: &[u8]) -> memmap2::MmapMut {
        let mut map = memmap2::MmapMut::map_anon(bytes.len()).expect("anonymous map");
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        map.copy_from_slice(bytes);
        map
    }

    fn acts(n: usize) -> Vec<i8> {
        let mut s = 7;
        (0..n).map(|_| (lcg(&mut s) % 255) as i8).collect()
    }

    fn bench_i2s(c: &mut Criterion) {
        let mut g = c.benchmark_group("i2s_matmul");
        // The third GEMV's 42 MB may sit in a large L3; the fourth streams 335 MB from memory.
        for &(rows, k, tokens) in &[
            (2560usize, 2560usize, 1usize),
            (2560, 6912, 1),
            (65536, 2560, 1),
            (524288, 2560, 1),
            (256, 2560, 128),
        ] {
            let w = i2s_weights(rows, k);
            let q = acts(tokens * k);
            let qsums: Vec<i32> = q
                .chunks(k)
                .map(|r| r.iter().map(|&v| v as i32).sum())
                .collect();
            let mut out = vec![0i32; rows * tokens];
            g.throughput(Throughput::Elements((rows * k * tokens) as u64));
            for isa in Isa::available() {
                if isa == Isa::Scalar && (tokens > 1 || rows > 65536) {
                    continue; // seconds to minutes per iteration; the small GEMVs show its speed
                }
                // Each ISA's kernels take the weights in their own layout.
                let mut w_isa = vec![0u8; w.len()];
                kernels::i2s_interleave_rows(&w, k, isa.kernels().i2s_rows, &mut w_isa);
                let w = &huge_pages(&w_isa);
                let id = BenchmarkId::new(isa.name(), format!("{rows}x{k}x{tokens}"));
                g.bench_function(id, |b| {
                    b.iter(|| kernels::i2s_matmul(isa, black_box(w), k, &q, &qsums, &mut out))
                });
            }
        }
        g.finish();
    }

    fn bench_tq2_0(c: &mut Criterion) {
        let mut g = c.benchmark_group("tq2_0_matmul");
        let (rows, k) = (2560usize, 2560usize);
        let mut s = 3;
        let wf: Vec<f32> = (0..rows * k)
            .map(|_| (lcg(&mut s) % 3) as f32 - 1.0)
            .collect();
        let w = tq2_0::quantize(&wf);
        let q = acts(k);
        let block_qsums: Vec<i32> = q
            .chunks(256)
            .map(|b| b.iter().map(|&v| v as i32).sum())
            .collect();
        let mut out = vec![0f32; rows];
        g.throughput(Throughput::Elements((rows * k) as u64));
        for isa in Isa::available() {
            g.bench_function(isa.name(), |b| {
                b.iter(|| kernels::tq2_0_matmul(isa, black_box(&w), k, &q, &block_qsums, &mut out))
            });
        }
        g.finish();
    }

    fn bench_f16(c: &mut Criterion) {
        let mut g = c.benchmark_group("f16_matmul");
        let k = 2560;
        // 84 MB, and the 2B-4T output matrix's 128256 rows (657 MB, from memory).
        for rows in [16384usize, 128256] {
            let mut s = 5;
            let w: Vec<f16> = (0..rows * k)
                .map(|_| f16::from_f32((lcg(&mut s) % 1000) as f32 / 500.0 - 1.0))
                .collect();
            let map = huge_pages(bytemuck::cast_slice(&w));
            drop(w);
            let w: &[f16] = bytemuck::cast_slice(&map[..]);
            let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut out = vec![0f32; rows];
            g.throughput(Throughput::Bytes((rows * k * 2) as u64));
            for isa in Isa::available() {
                let id = BenchmarkId::new(isa.name(), format!("{rows}x{k}"));
                g.bench_function(id, |b| {
                    b.iter(|| kernels::f16_matmul(isa, black_box(w), k, &x, &mut out))
                });
            }
        }
        g.finish();
    }

    fn bench_quantize(c: &mut Criterion) {
        let mut g = c.benchmark_group("quantize_row_i8");
        let x: Vec<f32> = (0..6912).map(|i| (i as f32 * 0.11).sin() * 3.0).collect();
        let mut q = vec![0i8; x.len()];
        g.throughput(Throughput::Elements(x.len() as u64));
        for isa in Isa::available() {
            g.bench_function(isa.name(), |b| {
                b.iter(|| kernels::quantize_row_i8(isa, black_box(&x), &mut q))
            });
        }
        g.finish();
    }

    /// Decoding's two other weight streams: the 1.6-bit T1_6 layout of the I2_S weights (five
    /// trits a byte, unpacked in registers) and the Q6_K output matrix. Each shape twice: in
    /// the last-level cache (the arithmetic's pace) and streamed from memory, where decoding
    /// runs (Q6_K at the output matrix's full 128256 rows, T1_6 at 524288 rows: 268 MB).
    fn bench_decode_layouts(c: &mut Criterion) {
        let mut g = c.benchmark_group("t16_matmul");
        let k = 2560;
        for rows in [4096usize, 524288] {
            let w = i2s_weights(rows, k);
            let mut t16 = vec![0u8; rows * kernels::t16_row_bytes(k)];
            kernels::t16_pack_i2s(&w, k, &mut t16);
            let t16 = huge_pages(&t16);
            let q = acts(k);
            let qsums = [q.iter().map(|&v| v as i32).sum::<i32>()];
            let mut out = vec![0i32; rows];
            g.throughput(Throughput::Bytes(t16.len() as u64));
            for isa in Isa::available().into_iter().filter(|&i| i != Isa::Scalar) {
                let id = BenchmarkId::new(isa.name(), format!("{rows}x{k}"));
                g.bench_function(id, |b| {
                    b.iter(|| kernels::t16_matmul(isa, black_box(&t16), k, &q, &qsums, &mut out))
                });
            }
        }
        g.finish();
        let mut g = c.benchmark_group("q6_k_matmul");
        for rows in [4096usize, 128256] {
            let mut s = 11;
            let mut w: Vec<u8> = (0..rows * k / 256 * 210)
                .map(|_| lcg(&mut s) as u8)
                .collect();
            // A finite block scale (bytes 208-209) in every block.
            for blk in w.chunks_exact_mut(210) {
                blk[208..].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
            }
            let w = huge_pages(&w);
            let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut out = vec![0f32; rows];
            g.throughput(Throughput::Bytes(w.len() as u64));
            for isa in Isa::available().into_iter().filter(|&i| i != Isa::Scalar) {
                let id = BenchmarkId::new(isa.name(), format!("{rows}x{k}"));
                g.bench_function(id, |b| {
                    b.iter(|| kernels::q6_k_matmul(isa, black_box(&w), k, &x, &mut out))
                });
            }
        }
        g.finish();
    }

    criterion_group!(
        benches,
        bench_i2s,
        bench_tq2_0,
        bench_f16,
        bench_quantize,
        bench_decode_layouts
    );
}
