//! The key/value cache: rotated keys and values of every past position, per layer.

use half::f16;

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

impl Store {
    fn view(&self) -> KvSlice<'_> {
        match self {
            Store::F16(d) => KvSlice::F16(bytemuck::cast_slice(d)),
            Store::F32(d) => KvSlice::F32(d),
        }
    }

    fn new(ty: CacheType, n: usize) -> Store {
        match ty {
            CacheType::F16 => Store::F16(vec![0u16; n]),
            CacheType::F32 => Store::F32(vec![0f32; n]),
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
}

impl KvCache {
    pub fn new(n_layer: usize, kv_dim: usize, capacity: usize, ty: CacheType) -> KvCache {
        KvCache {
            ty,
            capacity,
            kv_dim,
            len: 0,
            layers: (0..n_layer)
                .map(|_| {
                    (
                        Store::new(ty, capacity * kv_dim),
                        Store::new(ty, capacity * kv_dim),
                    )
                })
                .collect(),
        }
    }

    pub fn cache_type(&self) -> CacheType {
        self.ty
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it can hold (the context length).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes allocated for keys and values.
    pub fn bytes(&self) -> usize {
        let elem = match self.ty {
            CacheType::F16 => 2,
            CacheType::F32 => 4,
        };
        2 * self.layers.len() * self.capacity * self.kv_dim * elem
    }

    /// Forgets positions from `len` on (the next token goes to position `len`).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

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

    /// Keys and values of `layer` (all `capacity` positions; the first `len` are valid, plus
    /// whatever the current forward pass wrote).
    pub(crate) fn layer(&self, layer: usize) -> (KvSlice<'_>, KvSlice<'_>) {
        let (k, v) = &self.layers[layer];
        (k.view(), v.view())
    }
}
