//! The key/value cache: rotated keys and values of every past position, per layer.
//!
//! Its memory is allocated fallibly and checked against what the machine has before that, so
//! a context too large for the machine is an error naming the sizes, not an abort.

use half::f16;

use super::ModelError;

/// Element type of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CacheType {
    /// Half the memory, as llama.cpp and bitnet.cpp store it (the default).
    #[default]
    F16,
    /// Exact float32, closest to transformers.
    F32,
}

impl std::str::FromStr for CacheType {
    type Err = String;
    fn from_str(s: &str) -> Result<CacheType, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(CacheType::F16),
            "f32" => Ok(CacheType::F32),
            other => Err(format!("unknown cache type `{other}` (use f16 or f32)")),
        }
    }
}

/// One layer's keys or values, `capacity × kv_dim`. f16 is kept as raw bits so that the
/// zeroed allocation stays untouched (and unresident) until positions are written.
enum Store {
    F16(Vec<u16>),
    F32(Vec<f32>),
}

/// A layer's keys or values, `capacity × kv_dim`.
#[derive(Clone, Copy)]
pub(crate) enum KvSlice<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

/// `n` zeroed elements, or `None` if the allocator refuses. Not `try_reserve` + `resize`: that
/// would write every page, while `alloc_zeroed` gets fresh zero pages from the OS that stay
/// unresident until a position is written (a 4096-token cache costs nothing until used).
fn try_zeroed<T: bytemuck::Zeroable>(n: usize) -> Option<Vec<T>> {
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).ok()?;
    // SAFETY: the layout has a non-zero size (checked above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of `n` `T`s (what `Vec`
    // itself would request), and all-zero bytes are a valid `T` (`Zeroable`).
    Some(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

impl Store {
    fn view(&self) -> KvSlice<'_> {
        match self {
            Store::F16(d) => KvSlice::F16(bytemuck::cast_slice(d)),
            Store::F32(d) => KvSlice::F32(d),
        }
    }

    fn try_new(ty: CacheType, n: usize) -> Option<Store> {
        Some(match ty {
            CacheType::F16 => Store::F16(try_zeroed(n)?),
            CacheType::F32 => Store::F32(try_zeroed(n)?),
        })
    }

    fn read(&self, at: usize, out: &mut [f32]) {
        match self {
            Store::F16(d) => {
                let n = out.len();
                for (o, &v) in out.iter_mut().zip(&d[at..at + n]) {
                    *o = f16::from_bits(v).to_f32();
                }
            }
            Store::F32(d) => out.copy_from_slice(&d[at..at + out.len()]),
        }
    }

    /// Moves `len` elements from `src` to `dst` unchanged.
    fn copy_within(&mut self, src: usize, dst: usize, len: usize) {
        match self {
            Store::F16(d) => d.copy_within(src..src + len, dst),
            Store::F32(d) => d.copy_within(src..src + len, dst),
        }
    }

    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            Store::F16(d) => {
                for (o, &v) in d[at..at + src.len()].iter_mut().zip(src) {
                    *o = f16::from_f32(v).to_bits();
                }
            }
            Store::F32(d) => d[at..at + src.len()].copy_from_slice(src),
        }
    }
}

/// The cache for one sequence: `len` positions filled out of `capacity`.
pub struct KvCache {
    ty: CacheType,
    capacity: usize,
    kv_dim: usize,
    len: usize,
    layers: Vec<(Store, Store)>,
    /// The keys and values on the GPU instead (then `layers` holds nothing).
    #[cfg(feature = "gpu")]
    device: Option<crate::gpu::GpuKv>,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("ty", &self.ty)
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl CacheType {
    /// Bytes per stored element.
    pub(crate) fn element_bytes(self) -> usize {
        match self {
            CacheType::F16 => 2,
            CacheType::F32 => 4,
        }
    }

    /// The name `--cache-type` takes (`f16`, `f32`).
    pub fn name(self) -> &'static str {
        match self {
            CacheType::F16 => "f16",
            CacheType::F32 => "f32",
        }
    }
}

/// Bytes of a cache of `capacity` positions: keys and values of every layer
/// (`n_layer × 2 × kv_dim × capacity × element bytes`); `None` if that overflows.
pub fn cache_bytes(n_layer: usize, kv_dim: usize, capacity: usize, ty: CacheType) -> Option<u64> {
    (n_layer as u64)
        .checked_mul(2)?
        .checked_mul(kv_dim as u64)?
        .checked_mul(capacity as u64)?
        .checked_mul(ty.element_bytes() as u64)
}

/// Memory this process can still get, where the platform tells: Linux's `MemAvailable`,
/// lowered to what a cgroup (v2) memory limit leaves. `None` elsewhere (no check is made).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let mut available = kib.saturating_mul(1024);
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    // "max" (no limit) does not parse and leaves MemAvailable alone.
    if let (Some(max), Some(current)) = (read("memory.max"), read("memory.current")) {
        available = available.min(max.saturating_sub(current));
    }
    Some(available)
}

/// Bytes in the units people read (GB for large sizes).
pub fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GB", b as f64 / 1e9)
    } else {
        format!("{:.1} MB", b as f64 / 1e6)
    }
}

impl KvCache {
    /// A cache of `capacity` positions. Refused with [`ModelError::ContextTooLarge`] when it
    /// needs more memory than the machine has available, or with [`ModelError::OutOfMemory`]
    /// when the allocation fails; never an abort.
    pub fn new(
        n_layer: usize,
        kv_dim: usize,
        capacity: usize,
        ty: CacheType,
    ) -> Result<KvCache, ModelError> {
        let needed = cache_bytes(n_layer, kv_dim, capacity, ty).unwrap_or(u64::MAX);
        let per_position = cache_bytes(n_layer, kv_dim, 1, ty)
            .unwrap_or(u64::MAX)
            .max(1);
        if let Some(available) = available_memory() {
            if needed > available {
                return Err(ModelError::ContextTooLarge {
                    n_ctx: capacity,
                    cache_type: ty.name(),
                    needed,
                    available,
                    fits: (available / per_position) as usize,
                });
            }
        }
        let oom = || ModelError::OutOfMemory {
            n_ctx: capacity,
            bytes: needed,
        };
        let elements = capacity.checked_mul(kv_dim).ok_or_else(oom)?;
        let mut layers = Vec::new();
        layers.try_reserve_exact(n_layer).map_err(|_| oom())?;
        for _ in 0..n_layer {
            let k = Store::try_new(ty, elements).ok_or_else(oom)?;
            let v = Store::try_new(ty, elements).ok_or_else(oom)?;
            layers.push((k, v));
        }
        Ok(KvCache {
            ty,
            capacity,
            kv_dim,
            len: 0,
            layers,
            #[cfg(feature = "gpu")]
            device: None,
        })
    }

    /// A cache whose keys and values live on the GPU.
    #[cfg(feature = "gpu")]
    pub(crate) fn on_device(
        kv_dim: usize,
        capacity: usize,
        ty: CacheType,
        device: crate::gpu::GpuKv,
    ) -> KvCache {
        KvCache {
            ty,
            capacity,
            kv_dim,
            len: 0,
            layers: Vec::new(),
            device: Some(device),
        }
    }

    /// The GPU part, for a cache on the device.
    #[cfg(feature = "gpu")]
    pub(crate) fn device(&self) -> Option<&crate::gpu::GpuKv> {
        self.device.as_ref()
    }

    fn on_host(&self) -> bool {
        #[cfg(feature = "gpu")]
        if self.device.is_some() {
            return false;
        }
        true
    }

    /// The element type.
    pub fn cache_type(&self) -> CacheType {
        self.ty
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it can hold (the context length).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes allocated for keys and values, in host memory or, for a cache on the GPU, in
    /// the device's.
    pub fn bytes(&self) -> usize {
        #[cfg(feature = "gpu")]
        let n_layer = match &self.device {
            Some(device) => device.n_layer(),
            None => self.layers.len(),
        };
        #[cfg(not(feature = "gpu"))]
        let n_layer = self.layers.len();
        2 * n_layer * self.capacity * self.kv_dim * self.ty.element_bytes()
    }

    /// Forgets positions from `len` on (the next token goes to position `len`).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Empties the cache (the memory stays allocated).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity);
        self.len = len;
    }

    /// Stores the key and value rows of position `pos` in `layer`.
    pub(crate) fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let at = pos * self.kv_dim;
        let (ks, vs) = &mut self.layers[layer];
        ks.write(at, k);
        vs.write(at, v);
    }

    /// Removes positions `keep .. keep + n` and moves the later ones down by `n` (llama.cpp's
    /// context shift). Values move unchanged; keys are stored after RoPE, so each moved key
    /// row goes through `rotate_key`, which must rotate it back by `n` positions
    /// (`R(p − n) k = R(−n) R(p) k`). Cheaper than a new prefill, though not identical to
    /// one: the kept positions' values still carry what they attended to before the shift.
    pub(crate) fn discard(
        &mut self,
        keep: usize,
        n: usize,
        mut rotate_key: impl FnMut(&mut [f32]),
    ) -> Result<(), ModelError> {
        let len = self.len;
        if !self.on_host() {
            // `BitnetModel::shift_cache` takes a cache on the GPU to `discard_on_device`.
            return Err(ModelError::Gpu(crate::gpu::GpuError::Backend(
                "a context shift on the host of a cache on the GPU".into(),
            )));
        }
        self.check_discard(keep, n)?;
        if n == 0 {
            return Ok(());
        }
        let kv = self.kv_dim;
        let mut row = vec![0f32; kv];
        for (keys, values) in &mut self.layers {
            for pos in keep + n..len {
                keys.read(pos * kv, &mut row);
                rotate_key(&mut row);
                keys.write((pos - n) * kv, &row);
            }
            values.copy_within((keep + n) * kv, keep * kv, (len - keep - n) * kv);
        }
        self.len = len - n;
        Ok(())
    }

    /// Whether positions `keep .. keep + n` are all cached.
    fn check_discard(&self, keep: usize, n: usize) -> Result<(), ModelError> {
        let len = self.len;
        if keep.checked_add(n).is_none_or(|end| end > len) {
            return Err(ModelError::BadShift { keep, n, len });
        }
        Ok(())
    }

    /// [`KvCache::discard`] of a cache on the GPU: `shift` moves (and rotates) the device's
    /// rows, given the positions filled before the shift.
    #[cfg(feature = "gpu")]
    pub(crate) fn discard_on_device(
        &mut self,
        keep: usize,
        n: usize,
        shift: impl FnOnce(&crate::gpu::GpuKv, usize) -> Result<(), crate::gpu::GpuError>,
    ) -> Result<(), ModelError> {
        let len = self.len;
        self.check_discard(keep, n)?;
        let Some(device) = &self.device else {
            return Err(ModelError::Gpu(crate::gpu::GpuError::Backend(
                "a context shift on the GPU of a cache in host memory".into(),
            )));
        };
        shift(device, len)?;
        self.len = len - n;
        Ok(())
    }

    /// Keys and values of `layer` (all `capacity` positions; the first `len` are valid, plus
    /// whatever the current forward pass wrote).
    pub(crate) fn layer(&self, layer: usize) -> (KvSlice<'_>, KvSlice<'_>) {
        let (k, v) = &self.layers[layer];
        (k.view(), v.view())
    }
}

/// The first bytes of a saved cache (llama-server's slot save, `bitnet serve --slot-save-path`).
const FILE_MAGIC: &[u8; 8] = b"BNKVSLOT";
/// The layout below; a change to it takes a new number, and older files are refused by name.
const FILE_VERSION: u32 = 1;

/// Why a saved cache could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum KvFileError {
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a file [`KvCache::save`] wrote.
    #[error("not a saved bitnet KV cache (its first bytes are not {FILE_MAGIC:?})")]
    NotACacheFile,
    /// Written by a build with another layout.
    #[error("a saved KV cache of format version {0}: this build reads version {FILE_VERSION}")]
    Version(u32),
    /// Saved from another model.
    #[error("the file holds the cache of model `{saved}`, not of `{current}`")]
    OtherModel {
        /// The model named in the file.
        saved: String,
        /// The model restoring it.
        current: String,
    },
    /// Saved from a cache of another element type.
    #[error("the file holds an {saved} cache but this one is {current} (--cache-type)")]
    OtherCacheType {
        /// The file's.
        saved: &'static str,
        /// This cache's.
        current: &'static str,
    },
    /// Saved from a model of another shape (the same name for another file?).
    #[error(
        "the file's cache has {saved_layers} layers of {saved_dim} values per position, this \
         model's {layers} of {dim}"
    )]
    OtherShape {
        /// Layers in the file.
        saved_layers: usize,
        /// Values per position in the file.
        saved_dim: usize,
        /// Layers here.
        layers: usize,
        /// Values per position here.
        dim: usize,
    },
    /// More positions than this cache holds.
    #[error("the file holds {saved} positions but this context holds {capacity} (-c)")]
    TooLong {
        /// Positions in the file.
        saved: usize,
        /// Positions this cache holds.
        capacity: usize,
    },
    /// Ends early or holds more than its header says.
    #[error("the file is truncated or corrupt")]
    Corrupt,
    /// The cache lives on the GPU.
    #[error("a KV cache on the GPU cannot be saved or restored")]
    OnDevice,
}

fn read_u32(r: &mut dyn std::io::Read) -> Result<u32, KvFileError> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut dyn std::io::Read) -> Result<u64, KvFileError> {
    let mut b = [0u8; 8];
    read_exact(r, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// `read_exact`, with an early end reported as a corrupt file.
fn read_exact(r: &mut dyn std::io::Read, buf: &mut [u8]) -> Result<(), KvFileError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => KvFileError::Corrupt,
        _ => KvFileError::Io(e),
    })
}

impl KvCache {
    /// Writes the first `tokens.len()` positions (at most [`KvCache::len`]) with their tokens:
    /// a header (magic, format version, the model's name, the element type, layers, values per
    /// position, positions), the token ids, then each layer's keys and values as stored
    /// (little-endian). Returns the bytes written.
    pub fn save(
        &self,
        model: &str,
        tokens: &[u32],
        w: &mut dyn std::io::Write,
    ) -> Result<u64, KvFileError> {
        if !self.on_host() {
            return Err(KvFileError::OnDevice);
        }
        let n = tokens.len().min(self.len);
        let mut out = Vec::with_capacity(64 + model.len() + 4 * n);
        out.extend_from_slice(FILE_MAGIC);
        out.extend_from_slice(&FILE_VERSION.to_le_bytes());
        out.extend_from_slice(&(model.len() as u32).to_le_bytes());
        out.extend_from_slice(model.as_bytes());
        out.extend_from_slice(&(self.ty.element_bytes() as u32).to_le_bytes());
        out.extend_from_slice(&(self.layers.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.kv_dim as u32).to_le_bytes());
        out.extend_from_slice(&(n as u64).to_le_bytes());
        for t in &tokens[..n] {
            out.extend_from_slice(&t.to_le_bytes());
        }
        w.write_all(&out)?;
        let mut written = out.len() as u64;
        let elements = n * self.kv_dim;
        for (k, v) in &self.layers {
            for store in [k, v] {
                let bytes: Vec<u8> = match store {
                    Store::F16(d) => d[..elements].iter().flat_map(|x| x.to_le_bytes()).collect(),
                    Store::F32(d) => d[..elements].iter().flat_map(|x| x.to_le_bytes()).collect(),
                };
                w.write_all(&bytes)?;
                written += bytes.len() as u64;
            }
        }
        w.flush()?;
        Ok(written)
    }

    /// Reads what [`KvCache::save`] wrote into this cache and returns its tokens (the cache
    /// then holds that many positions). A file of another model, element type or shape, or
    /// longer than this cache, is refused with the reason, and the cache is left as it was.
    pub fn restore(
        &mut self,
        model: &str,
        r: &mut dyn std::io::Read,
    ) -> Result<Vec<u32>, KvFileError> {
        if !self.on_host() {
            return Err(KvFileError::OnDevice);
        }
        let mut magic = [0u8; 8];
        read_exact(r, &mut magic).map_err(|e| match e {
            KvFileError::Corrupt => KvFileError::NotACacheFile,
            e => e,
        })?;
        if &magic != FILE_MAGIC {
            return Err(KvFileError::NotACacheFile);
        }
        let version = read_u32(r)?;
        if version != FILE_VERSION {
            return Err(KvFileError::Version(version));
        }
        let name_len = read_u32(r)? as usize;
        if name_len > 4096 {
            return Err(KvFileError::Corrupt);
        }
        let mut name = vec![0u8; name_len];
        read_exact(r, &mut name)?;
        let saved = String::from_utf8_lossy(&name).into_owned();
        if saved != model {
            return Err(KvFileError::OtherModel {
                saved,
                current: model.to_string(),
            });
        }
        let element = read_u32(r)?;
        if element as usize != self.ty.element_bytes() {
            return Err(KvFileError::OtherCacheType {
                saved: match element {
                    2 => "f16",
                    4 => "f32",
                    _ => return Err(KvFileError::Corrupt),
                },
                current: self.ty.name(),
            });
        }
        let layers = read_u32(r)? as usize;
        let dim = read_u32(r)? as usize;
        if layers != self.layers.len() || dim != self.kv_dim {
            return Err(KvFileError::OtherShape {
                saved_layers: layers,
                saved_dim: dim,
                layers: self.layers.len(),
                dim: self.kv_dim,
            });
        }
        let n = usize::try_from(read_u64(r)?).map_err(|_| KvFileError::Corrupt)?;
        if n > self.capacity {
            return Err(KvFileError::TooLong {
                saved: n,
                capacity: self.capacity,
            });
        }
        let mut raw = vec![0u8; 4 * n];
        read_exact(r, &mut raw)?;
        let tokens: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // Everything is read before the cache changes, so that a short file leaves it whole.
        let elements = n * self.kv_dim;
        let mut data = vec![0u8; 2 * self.layers.len() * elements * self.ty.element_bytes()];
        read_exact(r, &mut data)?;
        let mut extra = [0u8; 1];
        if r.read(&mut extra)? != 0 {
            return Err(KvFileError::Corrupt);
        }
        let mut chunks = data.chunks_exact(elements * self.ty.element_bytes());
        for (k, v) in &mut self.layers {
            for store in [k, v] {
                let bytes = chunks.next().ok_or(KvFileError::Corrupt)?;
                match store {
                    Store::F16(d) => {
                        for (o, c) in d[..elements].iter_mut().zip(bytes.chunks_exact(2)) {
                            *o = u16::from_le_bytes([c[0], c[1]]);
                        }
                    }
                    Store::F32(d) => {
                        for (o, c) in d[..elements].iter_mut().zip(bytes.chunks_exact(4)) {
                            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                        }
                    }
                }
            }
        }
        self.len = n;
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BitnetModel, Logits};
    use crate::tokenizer::{EncodeOptions, Tokenizer};

    fn demo() -> (BitnetModel, Vec<u32>) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/bitnet-shakespeare-7m-i2_s.gguf"
        );
        let file = std::sync::Arc::new(crate::formats::gguf::GgufFile::open(path).unwrap());
        let tokenizer = Tokenizer::from_gguf(&file).unwrap();
        let text = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, \
                    and Juliet is the sun.\nArise, fair sun, and kill the envious moon,\nWho \
                    is already sick and pale with grief.\nJULIET:\n";
        let ids = tokenizer.encode(
            text,
            EncodeOptions {
                add_bos: true,
                parse_special: false,
            },
        );
        (BitnetModel::from_gguf(file).unwrap(), ids)
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn rows(s: KvSlice<'_>, from: usize, to: usize, kv: usize) -> Vec<f32> {
        match s {
            KvSlice::F16(d) => d[from * kv..to * kv].iter().map(|v| v.to_f32()).collect(),
            KvSlice::F32(d) => d[from * kv..to * kv].to_vec(),
        }
    }

    /// After dropping positions `keep..keep+n`, the cache must hold what a fresh prefill of
    /// the kept tokens would put there where that is context-free (layer 0's keys and values
    /// depend on the token and its position only), and the next token's logits must be close
    /// to a fresh prefill's (deeper layers still carry what the kept tokens once attended to).
    #[test]
    fn a_shifted_cache_matches_a_fresh_prefill_of_the_kept_tokens() {
        let (model, ids) = demo();
        let (keep, n) = (3, 16);
        assert!(ids.len() > keep + n + 8, "{}", ids.len());
        let kept: Vec<u32> = ids[..keep]
            .iter()
            .chain(&ids[keep + n..])
            .copied()
            .collect();
        let next = ids[ids.len() - 1];
        let kv = model.config().kv_dim();
        for ty in [CacheType::F32, CacheType::F16] {
            let mut shifted = model.new_cache(64, ty).unwrap();
            model.forward(&ids, &mut shifted, Logits::Last).unwrap();
            model.shift_cache(&mut shifted, keep, n).unwrap();
            assert_eq!(shifted.len(), kept.len());
            let mut fresh = model.new_cache(64, ty).unwrap();
            model.forward(&kept, &mut fresh, Logits::Last).unwrap();

            let (sk, sv) = shifted.layer(0);
            let (fk, fv) = fresh.layer(0);
            let len = kept.len();
            // One extra rounding of the rotated key in f16 (half an ulp of values near 8).
            let key_tol = if ty == CacheType::F32 { 1e-4 } else { 8e-3 };
            let d = max_diff(&rows(sk, 0, len, kv), &rows(fk, 0, len, kv));
            assert!(d < key_tol, "{ty:?}: layer-0 keys differ by {d}");
            let d = max_diff(&rows(sv, 0, len, kv), &rows(fv, 0, len, kv));
            assert!(d < 1e-6, "{ty:?}: layer-0 values differ by {d}");

            // Without the re-rotation the keys would sit at their old positions.
            let unrotated = rows(sk, keep, keep + 1, kv);
            let mut plain = model.new_cache(64, ty).unwrap();
            model.forward(&ids, &mut plain, Logits::Last).unwrap();
            let (pk, _) = plain.layer(0);
            let old = rows(pk, keep + n, keep + n + 1, kv);
            assert!(max_diff(&unrotated, &old) > 100.0 * key_tol);

            let a = model.forward(&[next], &mut shifted, Logits::Last).unwrap();
            let b = model.forward(&[next], &mut fresh, Logits::Last).unwrap();
            let argmax = |v: &[f32]| {
                v.iter()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(y.1))
                    .map(|(i, _)| i)
            };
            let d = max_diff(&a, &b);
            let spread = b.iter().fold(f32::MIN, |m, &v| m.max(v))
                - b.iter().fold(f32::MAX, |m, &v| m.min(v));
            eprintln!("{ty:?}: logits differ by at most {d} (spread {spread})");
            assert!(d < 0.1 * spread, "{ty:?}: logits differ by {d} of {spread}");
            assert_eq!(argmax(&a), argmax(&b), "{ty:?}");
        }
    }

    #[test]
    fn discarding_past_the_end_is_an_error() {
        let mut c = KvCache::new(1, 4, 8, CacheType::F32).unwrap();
        c.set_len(5);
        assert!(matches!(
            c.discard(3, 3, |_| {}),
            Err(ModelError::BadShift { .. })
        ));
        c.discard(3, 2, |_| {}).unwrap();
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn a_cache_larger_than_memory_is_an_error_not_an_abort() {
        let Some(available) = available_memory() else {
            return; // no way to tell on this platform
        };
        // 1e9 positions of a 2B-shaped cache: 2.5 TB.
        match KvCache::new(30, 640, 1_000_000_000, CacheType::F16) {
            Err(ModelError::ContextTooLarge { needed, fits, .. }) => {
                assert_eq!(needed, 30 * 2 * 640 * 1_000_000_000 * 2);
                // Free memory moves between the two readings when other programs run:
                // the figure must be the same order, not the same byte.
                let expected = available / (30 * 2 * 640 * 2);
                let fits = fits as u64;
                assert!(
                    fits.abs_diff(expected) <= expected / 4 + 1,
                    "fits {fits} positions, expected about {expected}"
                );
            }
            other => panic!("{:?}", other.map(|c| c.capacity())),
        }
    }

    #[test]
    fn a_saved_cache_restores_exactly_and_a_mismatched_file_is_refused() {
        let (model, ids) = demo();
        let mut cache = model.new_cache(64, CacheType::F16).unwrap();
        model.forward(&ids, &mut cache, Logits::Last).unwrap();
        let mut file = Vec::new();
        let written = cache.save("demo", &ids, &mut file).unwrap();
        assert_eq!(written as usize, file.len());
        let mut back = model.new_cache(64, CacheType::F16).unwrap();
        assert_eq!(back.restore("demo", &mut file.as_slice()).unwrap(), ids);
        assert_eq!(back.len(), ids.len());
        let kv = cache.kv_dim;
        for layer in 0..cache.layers.len() {
            let ((k0, v0), (k1, v1)) = (cache.layer(layer), back.layer(layer));
            assert_eq!(rows(k0, 0, ids.len(), kv), rows(k1, 0, ids.len(), kv));
            assert_eq!(rows(v0, 0, ids.len(), kv), rows(v1, 0, ids.len(), kv));
        }
        // Another model's name, another element type, a shorter context, a cut file, not a
        // cache at all: each refused with its reason, the cache left as it was.
        let e = back.restore("other", &mut file.as_slice()).unwrap_err();
        assert!(
            e.to_string().contains("model `demo`, not of `other`"),
            "{e}"
        );
        let mut f32_cache = model.new_cache(64, CacheType::F32).unwrap();
        let e = f32_cache.restore("demo", &mut file.as_slice()).unwrap_err();
        assert!(
            matches!(
                e,
                KvFileError::OtherCacheType {
                    saved: "f16",
                    current: "f32"
                }
            ),
            "{e}"
        );
        let mut small = model.new_cache(2, CacheType::F16).unwrap();
        assert!(matches!(
            small.restore("demo", &mut file.as_slice()),
            Err(KvFileError::TooLong { .. })
        ));
        let e = back
            .restore("demo", &mut &file[..file.len() - 1])
            .unwrap_err();
        assert!(matches!(e, KvFileError::Corrupt), "{e}");
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(
            back.restore("demo", &mut longer.as_slice()),
            Err(KvFileError::Corrupt)
        ));
        let e = back
            .restore("demo", &mut &b"GGUF and more bytes"[..])
            .unwrap_err();
        assert!(matches!(e, KvFileError::NotACacheFile), "{e}");
        let mut newer = file.clone();
        newer[8] = 9;
        assert!(matches!(
            back.restore("demo", &mut newer.as_slice()),
            Err(KvFileError::Version(9))
        ));
        assert_eq!(back.len(), ids.len());
    }
}
