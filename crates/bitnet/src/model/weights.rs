//! Weights behind two traits, so the model never names a storage format:
//! - `TernaryLinear`: a BitLinear layer's ternary weights with their scales, multiplied by
//!   int8-quantized activations (I2_S, TQ2_0, TQ1_0, or float weights ternarized at load);
//! - `DenseMatrix`: the unquantized embedding / output matrix (F16, BF16, F32, Q8_0).
//!
//! Weight bytes stay in the memory-mapped file when they can (zero-copy).

use std::ops::Range;
use std::sync::Arc;

use crate::formats::gguf::{GgufFile, TensorInfo};
use crate::formats::types::{self, i2_s, q6_k, q8_0, tq1_0, tq2_0, TensorType};
use crate::kernels::threads::with_scratch_i32;
use crate::kernels::{self, DecodeLayout, Isa};

use super::ModelError;

/// Bytes of one tensor: a range of the mapped file, or an owned copy.
pub(crate) enum WeightBytes {
    Mapped {
        file: Arc<GgufFile>,
        range: Range<usize>,
    },
    Owned(OwnedBytes),
}

impl WeightBytes {
    /// A tensor's bytes in the file, copied into aligned memory only if the file placed them
    /// at an address that is not 8-byte aligned (possible with `general.alignment` < 8).
    pub fn from_file(file: &Arc<GgufFile>, info: &TensorInfo) -> WeightBytes {
        let range = file.tensor_range(info);
        let bytes = &file.bytes()[range.clone()];
        if (bytes.as_ptr() as usize).is_multiple_of(8) {
            WeightBytes::Mapped {
                file: Arc::clone(file),
                range,
            }
        } else {
            WeightBytes::owned(bytes.to_vec())
        }
    }

    pub(crate) fn owned(bytes: Vec<u8>) -> WeightBytes {
        WeightBytes::owned_with(bytes.len(), |out| out.copy_from_slice(&bytes))
    }

    /// Owned bytes of length `len`, written by `fill`.
    pub(crate) fn owned_with(len: usize, fill: impl FnOnce(&mut [u8])) -> WeightBytes {
        let mut bytes = OwnedBytes::zeroed(len);
        fill(bytes.as_mut_slice());
        WeightBytes::Owned(bytes)
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            WeightBytes::Mapped { file, range } => &file.bytes()[range.clone()],
            WeightBytes::Owned(bytes) => bytes.as_slice(),
        }
    }

    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self, WeightBytes::Mapped { .. })
    }

    /// Replaces these bytes with `new`; mapped file pages this process no longer needs leave
    /// its resident memory.
    fn replace(&mut self, new: WeightBytes) {
        if let WeightBytes::Mapped { file, range } = &*self {
            file.release(range.clone());
        }
        *self = new;
    }

    /// Copies mapped bytes into owned memory (huge pages where the OS gives them): a decode
    /// step streams every weight, and 4 KiB file pages cost TLB misses and stop the hardware
    /// prefetchers at each page (measured ~30 % slower generation on this project's machines).
    pub(crate) fn make_resident(&mut self) {
        if let WeightBytes::Mapped { file, range } = &*self {
            let src = &file.bytes()[range.clone()];
            // In pieces, each piece's file pages released once copied: the peak memory stays
            // the copy plus one piece, not twice the tensor.
            const PIECE: usize = 64 << 20;
            let new = WeightBytes::owned_with(src.len(), |out| {
                for (i, (o, s)) in out.chunks_mut(PIECE).zip(src.chunks(PIECE)).enumerate() {
                    o.copy_from_slice(s);
                    let start = range.start + i * PIECE;
                    file.release(start..start + s.len());
                }
            });
            *self = new;
        }
    }
}

/// Owned weight bytes, 64-byte aligned, in anonymous memory advised to use transparent huge
/// pages. Tensors of a few MB (a layer's q/k/v/o) would each straddle huge pages, so they are
/// carved out of shared 64 MiB regions; larger ones get a map of their own, 2 MiB aligned.
pub(crate) struct OwnedBytes {
    region: Arc<Region>,
    offset: usize,
    len: usize,
}

/// One anonymous map that [`OwnedBytes`] carve disjoint ranges out of.
struct Region {
    map: memmap2::MmapMut,
    /// The map's first byte (taken once: ranges are written through it, never the map).
    base: *mut u8,
}

// SAFETY: a region is only written through disjoint ranges, each owned by one `OwnedBytes`.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

const HUGE_PAGE: usize = 2 << 20;
const REGION_BYTES: usize = 64 << 20;

impl Region {
    /// An anonymous map of at least `len` bytes with huge pages advised from `offset`
    /// (the first 2 MiB boundary), or None when the OS refuses the memory.
    fn new(len: usize) -> Option<(Arc<Region>, usize)> {
        let mut map = memmap2::MmapMut::map_anon(len + HUGE_PAGE).ok()?;
        let addr = map.as_ptr() as usize;
        let offset = addr.next_multiple_of(HUGE_PAGE) - addr;
        #[cfg(target_os = "linux")]
        let _ = map.advise_range(memmap2::Advice::HugePage, offset, len);
        let base = map.as_mut_ptr();
        Some((Arc::new(Region { map, base }), offset))
    }
}

/// The region small allocations are carved from, and how much of it is taken.
static CURRENT_REGION: std::sync::Mutex<Option<(Arc<Region>, usize)>> = std::sync::Mutex::new(None);

impl OwnedBytes {
    /// `len` zero bytes (fresh anonymous memory reads as zeros). Aborts like a `Vec` would
    /// when the OS has no memory to give.
    fn zeroed(len: usize) -> OwnedBytes {
        let (region, offset) = if len > REGION_BYTES / 2 {
            Region::new(len)
        } else {
            let mut current = CURRENT_REGION.lock().unwrap_or_else(|e| e.into_inner());
            let fits = current
                .as_ref()
                .is_some_and(|(r, used)| used + len <= r.map.len());
            if !fits {
                *current = Region::new(REGION_BYTES);
            }
            current.as_mut().map(|(region, used)| {
                let offset = *used;
                *used = (offset + len).next_multiple_of(64);
                (Arc::clone(region), offset)
            })
        }
        .unwrap_or_else(|| std::alloc::handle_alloc_error(std::alloc::Layout::new::<[u8; 64]>()));
        OwnedBytes {
            region,
            offset,
            len,
        }
    }

    fn as_slice(&self) -> &[u8] {
        assert!(self.offset + self.len <= self.region.map.len());
        // SAFETY: in bounds (checked); the range is written only through `as_mut_slice`,
        // which needs `&mut self`. (Going through the map's own slice would borrow the whole
        // map, other tensors' ranges included.)
        unsafe { std::slice::from_raw_parts(self.region.base.add(self.offset), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        assert!(self.offset + self.len <= self.region.map.len());
        // SAFETY: in bounds (checked); this range belongs to this `OwnedBytes` alone, and
        // `&mut self` makes this the only reference to it.
        unsafe { std::slice::from_raw_parts_mut(self.region.base.add(self.offset), self.len) }
    }
}

/// Activations of `n_tokens` rows quantized to int8, one scale per row (`x ≈ q / scale`).
/// Borrowed, so the forward pass can keep the buffers between calls.
#[derive(Clone, Copy)]
pub(crate) struct QuantizedActs<'a> {
    pub q: &'a [i8],
    pub scales: &'a [f32],
    /// `Σ q` of each row (the I2_S kernels multiply by the codes `t + 1`, then subtract it).
    pub qsums: &'a [i32],
    pub row_len: usize,
}

impl QuantizedActs<'_> {
    pub(crate) fn n_tokens(&self) -> usize {
        self.scales.len()
    }

    pub fn row(&self, t: usize) -> &[i8] {
        &self.q[t * self.row_len..(t + 1) * self.row_len]
    }
}

/// Owned buffers for [`QuantizedActs`].
#[derive(Clone, Debug, Default)]
pub(crate) struct QuantizedBuffers {
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
    pub qsums: Vec<i32>,
    pub row_len: usize,
}

impl QuantizedBuffers {
    /// Sizes the buffers for `n_tokens` rows of `row_len` (capacity is kept when shrinking).
    pub fn fit(&mut self, n_tokens: usize, row_len: usize) {
        self.q.resize(n_tokens * row_len, 0);
        self.scales.resize(n_tokens, 0.0);
        self.qsums.resize(n_tokens, 0);
        self.row_len = row_len;
    }

    pub fn view(&self) -> QuantizedActs<'_> {
        QuantizedActs {
            q: &self.q,
            scales: &self.scales,
            qsums: &self.qsums,
            row_len: self.row_len,
        }
    }
}

/// A BitLinear layer's weights: ternary values with scales, `out_features` rows of
/// `in_features`.
pub(crate) trait TernaryLinear: Send + Sync {
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    /// The storage format the kernels read (the layout, for display and kernel choice).
    fn format(&self) -> TensorType;
    /// The format the file holds the weights in (differs from [`TernaryLinear::format`] when
    /// they were re-encoded at load).
    fn file_format(&self) -> TensorType {
        self.format()
    }
    /// Bytes of weight data in the layout prefill reads.
    fn weight_bytes(&self) -> usize;
    /// Bytes a one-token product reads (less than [`TernaryLinear::weight_bytes`] when a
    /// smaller decode copy is used).
    fn decode_bytes(&self) -> usize {
        self.weight_bytes()
    }
    /// Decodes (one-token products) from `layout` where the format has it: T1_6 builds the
    /// copy the first time (kept, unused, after a switch back until
    /// [`TernaryLinear::release_unused`]). Returns the layout one-token products now read;
    /// None when the format has only its own.
    fn set_decode_layout(&mut self, _layout: DecodeLayout) -> Option<DecodeLayout> {
        None
    }
    /// The layout one-token products read (None: the format's own, not I2_S-based).
    fn decode_layout(&self) -> Option<DecodeLayout> {
        None
    }
    /// Frees a decode copy that is not in use.
    fn release_unused(&mut self) {}
    /// `out[t * rows.len() + (r - rows.start)] = Σ_k w[r, k] · x[t, k]` for the output rows in
    /// `rows` and every token `t` of `x`, with `x` dequantized as `q / scale`.
    fn matmul(&self, isa: Isa, x: &QuantizedActs<'_>, rows: Range<usize>, out: &mut [f32]);

    /// Puts the weights where and how `isa`'s kernels want them: in their layout, and (with
    /// `resident`) in owned huge-page memory rather than the mapped file. Called at load and
    /// whenever the ISA changes; [`TernaryLinear::matmul`] may then only use ISAs with the
    /// same layout.
    fn place(&mut self, _isa: Isa, _resident: bool) {}

    /// The weights as I2_S bytes in the file's row layout (`out × in/4`) with the per-tensor
    /// scale, for the GPU backend; None for per-block formats, which it does not take.
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    fn i2s_file_layout(&self) -> Option<(std::borrow::Cow<'_, [u8]>, f32)> {
        None
    }

    /// For the per-block formats (TQ2_0, TQ1_0 kept as they are): the codes in I2_S's byte
    /// layout (`out × in/4`, TQ2_0's code 3 kept) and each 256-value block's scale (`out ×
    /// in/256`, the f16 widened), for the GPU backend; None for other formats.
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    fn i2s_block_layout(&self) -> Option<(Vec<u8>, Vec<f32>)> {
        None
    }

    /// Seconds [`TernaryLinear::matmul`] takes on `isa` for `n_tokens` tokens over the first
    /// `rows` output rows (best of three runs after a warm-up), to choose kernels per shape.
    fn time_matmul(&self, isa: Isa, n_tokens: usize, rows: usize) -> f64 {
        let k = self.in_features();
        let rows = rows.clamp(1, self.out_features());
        let mut acts = QuantizedBuffers::default();
        acts.fit(n_tokens, k);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for q in acts.q.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *q = x as i8;
        }
        for (t, row) in acts.q.chunks_exact(k).enumerate() {
            acts.qsums[t] = row.iter().map(|&v| v as i32).sum();
            acts.scales[t] = 1.0;
        }
        let mut out = vec![0f32; n_tokens * rows];
        let mut best = f64::INFINITY;
        for run in 0..4 {
            let start = std::time::Instant::now();
            self.matmul(isa, &acts.view(), 0..rows, &mut out);
            if run > 0 {
                best = best.min(start.elapsed().as_secs_f64());
            }
        }
        best
    }
}

/// I2_S: one scale per tensor; rows are `in/4` packed bytes.
pub(crate) struct I2sLinear {
    /// The packed values (no trailer), rows interleaved in groups of `rows_interleaved`.
    bytes: WeightBytes,
    /// The same values in the T1_6 decode layout, once built.
    t16: Option<WeightBytes>,
    /// Whether one-token products read `t16`.
    decode_t16: bool,
    rows_interleaved: usize,
    in_features: usize,
    out_features: usize,
    scale: f32,
    /// The file's type: I2_S, or the type re-encoded as I2_S at load.
    from: TensorType,
}

impl I2sLinear {
    pub fn new(
        bytes: WeightBytes,
        in_features: usize,
        out_features: usize,
    ) -> Result<I2sLinear, String> {
        if !in_features.is_multiple_of(i2_s::BLOCK_LEN) {
            return Err(format!(
                "I2_S rows of {in_features} values are not whole {}-value blocks",
                i2_s::BLOCK_LEN
            ));
        }
        let data = bytes.as_slice();
        let packed = in_features * out_features / 4;
        if let Some(offset) = i2_s::find_invalid_code(&data[..packed]) {
            return Err(format!("I2_S byte {offset} holds the unused 2-bit code 3"));
        }
        let scale = i2_s::scale(data, packed).ok_or("I2_S data has no scale")?;
        if !scale.is_finite() {
            return Err(format!("I2_S scale {scale} is not finite"));
        }
        Ok(I2sLinear {
            bytes,
            t16: None,
            decode_t16: false,
            rows_interleaved: 1,
            in_features,
            out_features,
            scale,
            from: TensorType::I2S,
        })
    }

    /// Packs ternary values (row-major, `out × in`) with one scale.
    pub(crate) fn from_ternary(
        values: &[i8],
        scale: f32,
        in_features: usize,
        out_features: usize,
        from: TensorType,
    ) -> I2sLinear {
        let mut packed = i2_s::encode(values, scale);
        packed.truncate(in_features * out_features / 4);
        I2sLinear {
            bytes: WeightBytes::owned(packed),
            t16: None,
            decode_t16: false,
            rows_interleaved: 1,
            in_features,
            out_features,
            scale,
            from,
        }
    }

    /// TQ2_0 / TQ1_0 weights re-encoded as I2_S, when the tensor fits one per-tensor scale:
    /// every block with a nonzero f16 scale has the same one (BitNet models have one scale
    /// per tensor, so converted files always do). The I2_S kernels then compute the same
    /// integer sums times the same scale (the f16 widened to f32): products bit-identical to
    /// an I2_S file holding that scale, at I2_S's speed. A block whose scale is zero weighs
    /// zero whatever its codes, so it is written as zeros. None (keep the per-block path)
    /// when scales differ or are not finite, or a TQ2_0 code is 3 (the value 2, which I2_S
    /// cannot hold). The result is owned memory, even when the file is memory-mapped.
    pub(crate) fn repack_tq(
        ty: TensorType,
        data: &[u8],
        in_features: usize,
        out_features: usize,
    ) -> Option<I2sLinear> {
        let block_bytes = match ty {
            TensorType::TQ2_0 => std::mem::size_of::<tq2_0::BlockTQ2_0>(),
            TensorType::TQ1_0 => std::mem::size_of::<tq1_0::BlockTQ1_0>(),
            _ => return None,
        };
        const BLOCK: usize = tq2_0::BLOCK_LEN;
        // A TQ row is whole 256-value blocks, so whole I2_S 128-value blocks too.
        if in_features == 0 || !in_features.is_multiple_of(BLOCK) {
            return None;
        }
        let n_blocks = in_features / BLOCK * out_features;
        let data = data.get(..n_blocks * block_bytes)?;
        // The f16 scale is each block's last two bytes.
        let scale_of =
            |b: &[u8]| half::f16::from_le_bytes([b[block_bytes - 2], b[block_bytes - 1]]);
        let mut common: Option<half::f16> = None;
        for b in data.chunks_exact(block_bytes) {
            let d = scale_of(b);
            if d.to_f32() == 0.0 {
                continue;
            }
            match common {
                None => common = Some(d),
                Some(c) if c.to_bits() == d.to_bits() => {}
                Some(_) => return None,
            }
        }
        let scale = common.map_or(0.0, |d| d.to_f32());
        if !scale.is_finite() {
            return None;
        }
        let luts = RepackLuts::new();
        // Each 256-value block becomes 64 I2_S bytes (two 128-value blocks); in parallel over
        // the blocks, as many threads as the machine runs (a 2B model holds 8M blocks).
        let out_len = n_blocks * BLOCK / 4;
        let bytes = WeightBytes::owned_with(out_len, |out| {
            let threads = crate::kernels::threads::ThreadPool::default_threads();
            let per = n_blocks.div_ceil(threads.max(1)).max(1);
            std::thread::scope(|scope| {
                for (o, src) in out.chunks_mut(per * 64).zip(data.chunks(per * block_bytes)) {
                    let luts = &luts;
                    scope.spawn(move || {
                        for (o, b) in o.chunks_exact_mut(64).zip(src.chunks_exact(block_bytes)) {
                            let o: &mut [u8; 64] = o.try_into().expect("64-byte chunk");
                            if scale_of(b).to_f32() == 0.0 {
                                o.fill(0x55);
                            } else if ty == TensorType::TQ2_0 {
                                luts.tq2_0(b, o);
                            } else {
                                luts.tq1_0(b, o);
                            }
                        }
                    });
                }
            });
        });
        // TQ2_0's code 3 (the value 2) survives the repack as code 3: I2_S cannot hold it.
        if i2_s::find_invalid_code(bytes.as_slice()).is_some() {
            return None;
        }
        Some(I2sLinear {
            bytes,
            t16: None,
            decode_t16: false,
            rows_interleaved: 1,
            in_features,
            out_features,
            scale,
            from: ty,
        })
    }
}

/// Byte tables for [`I2sLinear::repack_tq`].
struct RepackLuts {
    /// A TQ2_0 byte's four 2-bit fields in reverse order: TQ2_0 keeps value `32l + m` of a
    /// 128-value half at shift `2l` of byte `m`, I2_S at shift `6 - 2l`, both as `t + 1`.
    rev: [u8; 256],
    /// A TQ1_0 byte's five trits as codes `t + 1`, most significant first.
    trits: [[u8; 5]; 256],
    /// The first four of those packed as one I2_S byte (shifts 6, 4, 2, 0).
    first4: [u8; 256],
}

impl RepackLuts {
    fn new() -> RepackLuts {
        let mut luts = RepackLuts {
            rev: [0; 256],
            trits: [[0; 5]; 256],
            first4: [0; 256],
        };
        for b in 0..256 {
            let byte = b as u8;
            luts.rev[b] = (0..4).fold(0, |r, l| r | ((byte >> (2 * l)) & 3) << (6 - 2 * l));
            for n in 0..5 {
                luts.trits[b][n] = (tq1_0::trit(byte, n) + 1) as u8;
            }
            let t = luts.trits[b];
            luts.first4[b] = t[0] << 6 | t[1] << 4 | t[2] << 2 | t[3];
        }
        luts
    }

    /// One TQ2_0 block (its 64 code bytes, then the scale) as two I2_S blocks.
    fn tq2_0(&self, block: &[u8], out: &mut [u8; 64]) {
        for (o, &b) in out.iter_mut().zip(&block[..64]) {
            *o = self.rev[b as usize];
        }
    }

    /// One TQ1_0 block (48 `qs` bytes, 4 `qh` bytes, the scale) as two I2_S blocks. Value
    /// `32n + m` (m < 32) is trit n of `qs[m]` for n < 5; `160 + 16n + m` (m < 16) trit n of
    /// `qs[32 + m]`; `240 + 4n + j` trit n of `qh[j]`. I2_S puts value `128h + 32g + m` at
    /// shift `6 - 2g` of byte `32h + m`.
    fn tq1_0(&self, block: &[u8], out: &mut [u8; 64]) {
        let (qs, qh) = (&block[..48], &block[48..52]);
        for m in 0..32 {
            out[m] = self.first4[qs[m] as usize];
            let g0 = self.trits[qs[m] as usize][4];
            let mid = &self.trits[qs[32 + m % 16] as usize];
            let (g1, g2) = (mid[m / 16], mid[2 + m / 16]);
            let g3 = if m < 16 {
                self.trits[qs[32 + m] as usize][4]
            } else {
                self.trits[qh[(m - 16) % 4] as usize][(m - 16) / 4]
            };
            out[32 + m] = g0 << 6 | g1 << 4 | g2 << 2 | g3;
        }
    }
}

impl TernaryLinear for I2sLinear {
    fn in_features(&self) -> usize {
        self.in_features
    }
    fn out_features(&self) -> usize {
        self.out_features
    }
    fn format(&self) -> TensorType {
        TensorType::I2S
    }
    fn file_format(&self) -> TensorType {
        self.from
    }
    fn weight_bytes(&self) -> usize {
        self.in_features * self.out_features / 4
    }
    fn place(&mut self, isa: Isa, resident: bool) {
        let rows = isa.kernels().i2s_rows;
        if rows == self.rows_interleaved && !(resident && self.bytes.is_mapped()) {
            return;
        }
        let k = self.in_features;
        let src = &self.bytes.as_slice()[..self.weight_bytes()];
        let from = self.rows_interleaved;
        let new = WeightBytes::owned_with(src.len(), |out| {
            kernels::i2s_relayout(src, k, from, rows, out)
        });
        self.bytes.replace(new);
        self.rows_interleaved = rows;
    }
    fn i2s_file_layout(&self) -> Option<(std::borrow::Cow<'_, [u8]>, f32)> {
        let src = &self.bytes.as_slice()[..self.weight_bytes()];
        if self.rows_interleaved == 1 {
            return Some((std::borrow::Cow::Borrowed(src), self.scale));
        }
        let mut out = vec![0u8; src.len()];
        kernels::i2s_relayout(src, self.in_features, self.rows_interleaved, 1, &mut out);
        Some((std::borrow::Cow::Owned(out), self.scale))
    }
    fn decode_bytes(&self) -> usize {
        match &self.t16 {
            Some(t16) if self.decode_t16 => t16.as_slice().len(),
            _ => self.weight_bytes(),
        }
    }
    fn set_decode_layout(&mut self, layout: DecodeLayout) -> Option<DecodeLayout> {
        if layout == DecodeLayout::T16 && self.t16.is_none() {
            let (k, n) = (self.in_features, self.out_features);
            let src = self.i2s_file_layout().map(|(b, _)| b)?;
            let row_bytes = kernels::t16_row_bytes(k);
            let t16 = WeightBytes::owned_with(n * row_bytes, |out| {
                // In parallel over groups of rows (whole interleaved groups per thread).
                let threads = crate::kernels::threads::ThreadPool::default_threads().max(1);
                let per = n.div_ceil(threads).next_multiple_of(kernels::T16_ROWS);
                std::thread::scope(|scope| {
                    for (o, w) in out.chunks_mut(per * row_bytes).zip(src.chunks(per * k / 4)) {
                        scope.spawn(move || kernels::t16_pack_i2s(w, k, o));
                    }
                });
            });
            self.t16 = Some(t16);
        }
        self.decode_t16 = layout == DecodeLayout::T16;
        self.decode_layout()
    }
    fn decode_layout(&self) -> Option<DecodeLayout> {
        Some(if self.decode_t16 {
            DecodeLayout::T16
        } else {
            DecodeLayout::I2s
        })
    }
    fn release_unused(&mut self) {
        if !self.decode_t16 {
            self.t16 = None;
        }
    }
    fn matmul(&self, isa: Isa, x: &QuantizedActs<'_>, rows: Range<usize>, out: &mut [f32]) {
        if let (Some(t16), true, 1) = (&self.t16, self.decode_t16, x.n_tokens()) {
            // Row ranges start at a whole group of T16_ROWS (the model's chunks are multiples
            // of 16 rows), so the slice is in the layout the kernels expect.
            assert!(rows.start.is_multiple_of(kernels::T16_ROWS));
            let row_bytes = kernels::t16_row_bytes(self.in_features);
            let w = &t16.as_slice()[rows.start * row_bytes..rows.end * row_bytes];
            with_scratch_i32(rows.len(), |dots| {
                kernels::t16_matmul(isa, w, self.in_features, x.q, x.qsums, dots);
                let s = x.scales[0];
                for (o, &d) in out.iter_mut().zip(dots.iter()) {
                    *o = d as f32 / s * self.scale;
                }
            });
            return;
        }
        // The model places the weights for the ISAs it uses (see `place`); row ranges start
        // at a whole group (the model's chunks are multiples of 16 rows).
        assert_eq!(
            isa.kernels().i2s_rows,
            self.rows_interleaved,
            "I2_S layout of {isa}"
        );
        assert!(rows.start.is_multiple_of(self.rows_interleaved));
        let row_bytes = self.in_features / 4;
        let w = &self.bytes.as_slice()[rows.start * row_bytes..rows.end * row_bytes];
        with_scratch_i32(x.n_tokens() * rows.len(), |dots| {
            kernels::i2s_matmul(isa, w, self.in_features, x.q, x.qsums, dots);
            for ((o, d), &s) in out
                .chunks_exact_mut(rows.len())
                .zip(dots.chunks_exact(rows.len()))
                .zip(x.scales)
            {
                for (o, &d) in o.iter_mut().zip(d) {
                    *o = d as f32 / s * self.scale;
                }
            }
        });
    }
}

/// TQ2_0 / TQ1_0: a f16 scale per 256-value block.
pub(crate) struct BlockTernaryLinear {
    bytes: WeightBytes,
    ty: TensorType,
    in_features: usize,
    out_features: usize,
}

impl BlockTernaryLinear {
    /// `out_features` rows of TQ2_0 or TQ1_0 blocks held in memory (the GPU kernels' tests).
    #[cfg(all(test, feature = "gpu"))]
    pub(crate) fn owned(
        ty: TensorType,
        data: Vec<u8>,
        in_features: usize,
        out_features: usize,
    ) -> BlockTernaryLinear {
        BlockTernaryLinear {
            bytes: WeightBytes::owned(data),
            ty,
            in_features,
            out_features,
        }
    }
}

impl TernaryLinear for BlockTernaryLinear {
    fn in_features(&self) -> usize {
        self.in_features
    }
    fn out_features(&self) -> usize {
        self.out_features
    }
    fn format(&self) -> TensorType {
        self.ty
    }
    fn weight_bytes(&self) -> usize {
        self.bytes.as_slice().len()
    }
    fn place(&mut self, _isa: Isa, resident: bool) {
        if resident {
            self.bytes.make_resident();
        }
    }
    fn i2s_block_layout(&self) -> Option<(Vec<u8>, Vec<f32>)> {
        let block_bytes = self.ty.block_bytes() as usize;
        const BLOCK: usize = tq2_0::BLOCK_LEN;
        if !self.in_features.is_multiple_of(BLOCK) {
            return None;
        }
        let n_blocks = self.in_features / BLOCK * self.out_features;
        let data = self.bytes.as_slice().get(..n_blocks * block_bytes)?;
        let luts = RepackLuts::new();
        let mut codes = vec![0u8; n_blocks * BLOCK / 4];
        let mut scales = Vec::with_capacity(n_blocks);
        for (o, b) in codes
            .chunks_exact_mut(64)
            .zip(data.chunks_exact(block_bytes))
        {
            let o: &mut [u8; 64] = o.try_into().ok()?;
            match self.ty {
                TensorType::TQ2_0 => luts.tq2_0(b, o),
                TensorType::TQ1_0 => luts.tq1_0(b, o),
                _ => return None,
            }
            let d = half::f16::from_le_bytes([b[block_bytes - 2], b[block_bytes - 1]]);
            scales.push(d.to_f32());
        }
        Some((codes, scales))
    }
    fn matmul(&self, isa: Isa, x: &QuantizedActs<'_>, rows: Range<usize>, out: &mut [f32]) {
        let k = self.in_features;
        let row_bytes = (k as u64 / self.ty.block_len() * self.ty.block_bytes()) as usize;
        let w = &self.bytes.as_slice()[rows.start * row_bytes..rows.end * row_bytes];
        let n = rows.len();
        match self.ty {
            TensorType::TQ2_0 => {
                let block_qsums: Vec<i32> =
                    x.q.chunks_exact(tq2_0::BLOCK_LEN)
                        .map(|b| b.iter().map(|&v| v as i32).sum())
                        .collect();
                kernels::tq2_0_matmul(isa, w, k, x.q, &block_qsums, out);
            }
            _ => {
                for (t, row_out) in out.chunks_exact_mut(n).enumerate() {
                    for (r, o) in row_out.iter_mut().enumerate() {
                        let wr = &w[r * row_bytes..(r + 1) * row_bytes];
                        *o = kernels::scalar::tq1_0_dot(wr, x.row(t));
                    }
                }
            }
        }
        for (o, &s) in out.chunks_exact_mut(n).zip(x.scales) {
            o.iter_mut().for_each(|v| *v /= s);
        }
    }
}

/// BitNet's absmean ternarization of master weights: `m = max(mean|W|, 1e-5)`,
/// `t = clamp(round_half_even(W · (1/m)), -1, 1)` (float32, as transformers computes it).
/// Weights that are already ternary times one scale (`{-a, 0, +a}`, as bitnet.cpp's F32
/// converter writes them) give back exactly `t` and `a`.
pub fn ternarize(w: &[f32]) -> (Vec<i8>, f32) {
    let a = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    if a > 0.0 && w.iter().all(|&v| v == 0.0 || v.abs() == a) {
        let t = w.iter().map(|&v| (v / a) as i8).collect();
        return (t, a);
    }
    let mean = (w.iter().map(|&v| v.abs() as f64).sum::<f64>() / w.len().max(1) as f64) as f32;
    let m = mean.max(1e-5);
    let inv = 1.0 / m;
    let t = w
        .iter()
        .map(|&v| (v * inv).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    (t, m)
}

/// Rows of `len` values widened to `padded` with zeros.
fn pad_rows(values: &[i8], len: usize, padded: usize) -> Vec<i8> {
    if len == padded {
        return values.to_vec();
    }
    let mut out = Vec::with_capacity(values.len() / len * padded);
    for row in values.chunks_exact(len) {
        out.extend_from_slice(row);
        out.resize(out.len() + padded - len, 0);
    }
    out
}

/// Builds the linear layer for a GGUF tensor of shape `[in, out]`, whatever its format. Its
/// `in_features` may exceed the tensor's (rows padded to whole blocks): the caller quantizes
/// activations to that width with zeros after the real values.
pub(crate) fn ternary_linear_from_gguf(
    file: &Arc<GgufFile>,
    info: &TensorInfo,
) -> Result<Box<dyn TernaryLinear>, ModelError> {
    let err = |message: String| ModelError::Tensor {
        file: file.source().to_string(),
        tensor: info.name.clone(),
        message,
    };
    let (in_features, out_features) = match info.dims[..] {
        [i, o] => (i as usize, o as usize),
        _ => {
            return Err(err(format!(
                "a linear weight must have 2 dimensions, found {}",
                info.shape_string()
            )))
        }
    };
    match info.ty {
        TensorType::I2S => I2sLinear::new(
            WeightBytes::from_file(file, info),
            in_features,
            out_features,
        )
        .map(|l| Box::new(l) as Box<dyn TernaryLinear>)
        .map_err(err),
        TensorType::TQ2_0 | TensorType::TQ1_0 => {
            let range = file.tensor_range(info);
            let data = &file.bytes()[range.clone()];
            // BITNET_TQ_REPACK=0 keeps the per-block layout (to compare the two paths).
            let repack = std::env::var_os("BITNET_TQ_REPACK").is_none_or(|v| v != "0");
            let repacked = repack
                .then(|| I2sLinear::repack_tq(info.ty, data, in_features, out_features))
                .flatten();
            if let Some(l) = repacked {
                // The file's pages of this tensor are no longer needed.
                file.release(range);
                return Ok(Box::new(l));
            }
            Ok(Box::new(BlockTernaryLinear {
                bytes: WeightBytes::from_file(file, info),
                ty: info.ty,
                in_features,
                out_features,
            }))
        }
        TensorType::F32 | TensorType::F16 | TensorType::BF16 => {
            let w = file
                .tensor(&info.name)?
                .to_f32()
                .map_err(|e| err(e.to_string()))?;
            let (t, scale) = ternarize(&w);
            // Rows whose length is not a multiple of I2_S's 128-value block (1bitLLM 3B's
            // ffn_down has 8640 inputs; converters keep such weights in float) get zero
            // weights appended: the forward pass gives them zero activations, so every
            // product is unchanged.
            let padded = in_features.next_multiple_of(i2_s::BLOCK_LEN);
            let t = pad_rows(&t, in_features, padded);
            Ok(Box::new(I2sLinear::from_ternary(
                &t,
                scale,
                padded,
                out_features,
                info.ty,
            )))
        }
        other => Err(err(format!(
            "type {other} cannot be used as a BitLinear weight (use I2_S, TQ2_0, TQ1_0, F32, F16 or BF16)"
        ))),
    }
}

/// An unquantized matrix of `rows` rows by `cols` columns: the token embedding (row lookup)
/// and the output projection (a float product with the final hidden state).
pub(crate) trait DenseMatrix: Send + Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    fn format(&self) -> TensorType;
    /// Bytes of weight data.
    fn weight_bytes(&self) -> usize;
    /// Row `r` as f32.
    fn row_to_f32(&self, r: usize, out: &mut [f32]);
    /// `out[t * rows.len() + (r - rows.start)] = Σ_k m[r, k] · x[t * cols + k]`.
    fn matmul(&self, isa: Isa, x: &[f32], rows: Range<usize>, out: &mut [f32]);
    /// Lets memory-mapped rows leave the process's resident memory (they were read for a
    /// one-off pass and will rarely be needed again).
    fn release_rows(&self, _rows: Range<usize>) {}
    /// Copies mapped bytes into owned huge-page memory (see [`WeightBytes::make_resident`]).
    fn make_resident(&mut self) {}
    /// The encoded bytes of every row (the GPU backend uploads them).
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    fn raw(&self) -> &[u8];
}

/// A dense matrix stored as F32, F16, BF16 or Q8_0 bytes.
pub(crate) struct DenseTensor {
    bytes: WeightBytes,
    ty: TensorType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
}

impl DenseTensor {
    pub fn from_gguf(file: &Arc<GgufFile>, info: &TensorInfo) -> Result<DenseTensor, ModelError> {
        let err = |message: String| ModelError::Tensor {
            file: file.source().to_string(),
            tensor: info.name.clone(),
            message,
        };
        let (cols, rows) = match info.dims[..] {
            [c, r] => (c as usize, r as usize),
            _ => {
                return Err(err(format!(
                    "expected 2 dimensions, found {}",
                    info.shape_string()
                )))
            }
        };
        if !DenseTensor::supports(info.ty) {
            return Err(err(format!(
                "type {} cannot be used for the embedding or output matrix (use F16, BF16, F32, Q8_0 or Q6_K)",
                info.ty
            )));
        }
        let row_bytes = info
            .ty
            .row_bytes(cols as u64)
            .map_err(|e| err(e.to_string()))? as usize;
        Ok(DenseTensor {
            bytes: WeightBytes::from_file(file, info),
            ty: info.ty,
            rows,
            cols,
            row_bytes,
        })
    }

    /// The storage types a dense matrix can have.
    pub(crate) fn supports(ty: TensorType) -> bool {
        matches!(
            ty,
            TensorType::F32
                | TensorType::F16
                | TensorType::BF16
                | TensorType::Q8_0
                | TensorType::Q6K
        )
    }

    /// Re-encodes `source` (any supported type) as `ty` (Q8_0, Q6_K, F16, ...) in memory,
    /// rows split between `threads` threads. Used to trade the output matrix's precision for
    /// fewer bytes read per token.
    pub(crate) fn requantize(
        source: &dyn DenseMatrix,
        ty: TensorType,
        pool: &crate::kernels::threads::ThreadPool,
    ) -> Result<DenseTensor, String> {
        let (rows, cols) = (source.rows(), source.cols());
        let row_bytes = ty
            .row_bytes(cols as u64)
            .map_err(|e| format!("cannot store the output matrix as {ty}: {e}"))?
            as usize;
        let encode: fn(&[f32]) -> Vec<u8> = match ty {
            TensorType::Q8_0 => q8_0::quantize,
            TensorType::Q6K => q6_k::quantize,
            TensorType::F16 => types::float::encode_f16,
            TensorType::BF16 => types::float::encode_bf16,
            TensorType::F32 => types::float::encode_f32,
            other => return Err(format!("the output matrix cannot be stored as {other}")),
        };
        let mut bytes = vec![0u8; rows * row_bytes];
        {
            let out = crate::kernels::threads::SharedOut::new(&mut bytes);
            pool.for_chunks(rows, 64, cols * 8, &|range| {
                let mut row = vec![0f32; cols];
                for chunk_start in range.clone().step_by(1024) {
                    let chunk = chunk_start..(chunk_start + 1024).min(range.end);
                    for r in chunk.clone() {
                        source.row_to_f32(r, &mut row);
                        // SAFETY: each thread writes only its own rows.
                        unsafe { out.slice_mut(r * row_bytes..(r + 1) * row_bytes) }
                            .copy_from_slice(&encode(&row));
                    }
                    // Keeps the peak RSS at the new matrix plus a chunk of the old one.
                    source.release_rows(chunk);
                }
            });
        }
        Ok(DenseTensor {
            bytes: WeightBytes::owned(bytes),
            ty,
            rows,
            cols,
            row_bytes,
        })
    }

    fn row_bytes(&self, r: usize) -> &[u8] {
        &self.bytes.as_slice()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// The encoded bytes, as a GGUF tensor stores them (`bitnet quantize` writes them out).
    pub fn data(&self) -> &[u8] {
        self.bytes.as_slice()
    }
}

impl DenseMatrix for DenseTensor {
    fn raw(&self) -> &[u8] {
        self.data()
    }
    fn make_resident(&mut self) {
        self.bytes.make_resident();
    }
    fn release_rows(&self, rows: Range<usize>) {
        if let WeightBytes::Mapped { file, range } = &self.bytes {
            let start = range.start + rows.start * self.row_bytes;
            file.release(start..range.start + rows.end * self.row_bytes);
        }
    }
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn format(&self) -> TensorType {
        self.ty
    }
    fn weight_bytes(&self) -> usize {
        self.bytes.as_slice().len()
    }
    fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let b = self.row_bytes(r);
        match self.ty {
            TensorType::F32 => types::float::f32_to_f32(b, out),
            TensorType::F16 => types::float::f16_to_f32(b, out),
            TensorType::BF16 => types::float::bf16_to_f32(b, out),
            TensorType::Q6K => q6_k::dequantize(b, out),
            _ => q8_0::dequantize(b, out),
        }
    }
    fn matmul(&self, isa: Isa, x: &[f32], rows: Range<usize>, out: &mut [f32]) {
        let n_tokens = x.len() / self.cols;
        let n = rows.len();
        let bytes = &self.bytes.as_slice()[rows.start * self.row_bytes..rows.end * self.row_bytes];
        match self.ty {
            TensorType::F16 => {
                return kernels::f16_matmul(isa, bytemuck::cast_slice(bytes), self.cols, x, out)
            }
            TensorType::Q8_0 => return kernels::q8_0_matmul(isa, bytes, self.cols, x, out),
            TensorType::Q6K => return kernels::q6_k_matmul(isa, bytes, self.cols, x, out),
            _ => {}
        }
        // F32 and BF16 rows are decoded once per row, then reused for every token.
        let mut row = vec![0f32; self.cols];
        for r in rows.clone() {
            self.row_to_f32(r, &mut row);
            for t in 0..n_tokens {
                let xt = &x[t * self.cols..(t + 1) * self.cols];
                out[t * n + (r - rows.start)] = kernels::f32_dot(isa, &row, xt);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::types::decode_ternary;

    fn random_bytes(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Random code bytes with every block's scale set to `scale`.
    fn tq_bytes(ty: TensorType, blocks: usize, scale: f32, seed: u64) -> Vec<u8> {
        let size = ty.block_bytes() as usize;
        let mut data = random_bytes(blocks * size, seed);
        for b in data.chunks_exact_mut(size) {
            if ty == TensorType::TQ2_0 {
                // No code 3 (the value 2): clear the high bit of each field that has both.
                for q in &mut b[..64] {
                    *q &= !(*q & (*q << 1) & 0xaa);
                }
            }
            b[size - 2..].copy_from_slice(&half::f16::from_f32(scale).to_le_bytes());
        }
        data
    }

    /// The repack gives the bytes that decoding the blocks (ggml's element order, as the
    /// per-block kernels read them) and encoding the values as I2_S give, for every byte.
    #[test]
    fn repack_matches_decode_then_encode() {
        for ty in [TensorType::TQ2_0, TensorType::TQ1_0] {
            let (k, rows) = (512, 6);
            let data = tq_bytes(ty, k / 256 * rows, 0.3, 0x9e37_79b9 + ty as u64);
            let l = I2sLinear::repack_tq(ty, &data, k, rows).expect("one scale");
            let t = decode_ternary(ty, &[k as u64, rows as u64], &data).unwrap();
            let scale = half::f16::from_f32(0.3).to_f32();
            let want = i2_s::encode(&t.values, scale);
            assert_eq!(l.bytes.as_slice(), &want[..k * rows / 4], "{ty}");
            assert_eq!(l.scale, scale);
            assert_eq!((l.format(), l.file_format()), (TensorType::I2S, ty));
        }
    }

    #[test]
    fn repack_needs_one_scale_and_i2s_values() {
        for ty in [TensorType::TQ2_0, TensorType::TQ1_0] {
            let size = ty.block_bytes() as usize;
            let data = tq_bytes(ty, 4, 0.5, 7);
            assert!(I2sLinear::repack_tq(ty, &data, 256, 4).is_some());
            // A block with another scale: kept per-block.
            let mut other = data.clone();
            other[2 * size - 2..2 * size].copy_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
            assert!(I2sLinear::repack_tq(ty, &other, 256, 4).is_none(), "{ty}");
            // Not finite: kept per-block (as it loads today).
            let inf = tq_bytes(ty, 4, f32::INFINITY, 7);
            assert!(I2sLinear::repack_tq(ty, &inf, 256, 4).is_none(), "{ty}");
            // A block whose scale is zero weighs zero whatever its codes.
            let mut zero = data.clone();
            zero[size - 2..size].copy_from_slice(&[0, 0]);
            let l = I2sLinear::repack_tq(ty, &zero, 256, 4).expect("zero block");
            assert!(l.bytes.as_slice()[..64].iter().all(|&b| b == 0x55), "{ty}");
            assert_eq!(l.scale, 0.5);
        }
        // TQ2_0's code 3 is the value 2, which I2_S cannot hold.
        let mut data = tq_bytes(TensorType::TQ2_0, 4, 0.5, 7);
        data[70] = 0b1100_0000;
        assert!(I2sLinear::repack_tq(TensorType::TQ2_0, &data, 256, 4).is_none());
    }

    /// The repacked weights and the per-block kernels give the same products (up to the
    /// order of float sums; the per-block path scales each block's sum).
    #[test]
    fn repacked_and_per_block_products_agree() {
        let (k, rows, tokens) = (768, 32, 3);
        let mut acts = QuantizedBuffers::default();
        acts.fit(tokens, k);
        for (q, b) in acts.q.iter_mut().zip(random_bytes(tokens * k, 99)) {
            *q = b as i8;
        }
        for t in 0..tokens {
            acts.qsums[t] = acts.q[t * k..(t + 1) * k].iter().map(|&v| v as i32).sum();
            acts.scales[t] = 40.0 + t as f32;
        }
        let isa = Isa::best();
        for ty in [TensorType::TQ2_0, TensorType::TQ1_0] {
            let data = tq_bytes(ty, k / 256 * rows, 0.0123, 5);
            let mut repacked = I2sLinear::repack_tq(ty, &data, k, rows).unwrap();
            repacked.place(isa, false);
            let per_block = BlockTernaryLinear {
                bytes: WeightBytes::owned(data.clone()),
                ty,
                in_features: k,
                out_features: rows,
            };
            let mut a = vec![0f32; tokens * rows];
            let mut b = vec![0f32; tokens * rows];
            repacked.matmul(isa, &acts.view(), 0..rows, &mut a);
            per_block.matmul(isa, &acts.view(), 0..rows, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{ty}: {x} vs {y}");
            }
            assert!(a.iter().any(|&v| v != 0.0));
        }
    }
}
