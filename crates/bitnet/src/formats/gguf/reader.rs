//! The GGUF reader: parses the header from a byte slice (usually a memory map) with every count,
//! length and offset checked against the bytes that are really there, and hands out tensor data
//! as zero-copy slices.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::metadata::{Metadata, Value, ValueType};
use super::{GgufError, GgufErrorKind, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
use crate::formats::types::{DecodeError, TensorType, Ternary};

/// Where the file's bytes live.
enum Bytes {
    Mmap(Mmap),
    /// Read into anonymous memory (transparent huge pages where the OS allows).
    Anon(memmap2::MmapMut),
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mmap(m) => m,
            Bytes::Anon(m) => m,
            Bytes::Static(s) => s,
            Bytes::Owned(v) => v,
        }
    }
}

/// One tensor's header entry, validated against the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml order: `dims[0]` is the fastest-varying (row length, input features).
    pub dims: Vec<u64>,
    /// Its element type.
    pub ty: TensorType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data (from the type and dims).
    pub size: u64,
}

impl TensorInfo {
    /// The number of elements (the product of the dims).
    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }

    /// `dims[0]`, the row length.
    pub fn ne0(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// The product of the other dims: how many rows.
    pub fn rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Shape as `[a, b]` text, in ggml order.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.dims.iter().map(u64::to_string).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// A tensor's info and its bytes in the file.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// The tensor's header entry.
    pub info: &'a TensorInfo,
    /// Its data, as stored.
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// All values as f32 (scalar decoders).
    pub fn to_f32(&self) -> Result<Vec<f32>, DecodeError> {
        crate::formats::types::dequantize(self.info.ty, &self.info.dims, self.data)
    }

    /// Ternary values and scales (I2_S, TQ1_0, TQ2_0 only).
    pub fn to_ternary(&self) -> Result<Ternary, DecodeError> {
        crate::formats::types::decode_ternary(self.info.ty, &self.info.dims, self.data)
    }
}

/// An open GGUF file: parsed header plus the (memory-mapped) bytes.
pub struct GgufFile {
    source: String,
    bytes: Bytes,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("source", &self.source)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses a file. Only the header is read; tensor data pages are touched
    /// when used.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let source = path.display().to_string();
        let io = |e: std::io::Error| GgufError::new(&source, GgufErrorKind::Io(e));
        let file = File::open(path).map_err(io)?;
        // A directory opens fine on Unix and only fails at the map, with ENODEV.
        if file.metadata().map_err(io)?.is_dir() {
            return Err(GgufError::new(&source, GgufErrorKind::IsDirectory));
        }
        // SAFETY: the map is read-only. As with every mmap-based loader (llama.cpp included), a
        // file truncated or rewritten by another process while mapped is outside our control;
        // we never hold a reference into it across such a change on purpose.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        GgufFile::from_source(source, Bytes::Mmap(map))
    }

    /// Reads the whole file into anonymous memory backed by transparent huge pages where the
    /// OS allows (llama.cpp's `--no-mmap`). Streaming the weights every token then costs fewer
    /// TLB misses than through the file's 4 KiB page-cache pages: measured +13 % read bandwidth
    /// for the 2B model's output matrix on this project's machines. Takes the time to read the
    /// file at load; the resident memory is the same as a fully touched map.
    pub fn read_into_memory(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        use std::io::Read;
        let path = path.as_ref();
        let source = path.display().to_string();
        let io = |e: std::io::Error| GgufError::new(&source, GgufErrorKind::Io(e));
        let mut file = File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.is_dir() {
            return Err(GgufError::new(&source, GgufErrorKind::IsDirectory));
        }
        let len = file.metadata().map_err(io)?.len() as usize;
        let mut mem = memmap2::MmapMut::map_anon(len.max(1)).map_err(io)?;
        #[cfg(target_os = "linux")]
        let _ = mem.advise(memmap2::Advice::HugePage);
        file.read_exact(&mut mem[..len]).map_err(io)?;
        if len == 0 {
            return GgufFile::from_source(source, Bytes::Owned(Vec::new()));
        }
        GgufFile::from_source(source, Bytes::Anon(mem))
    }

    /// Whether anonymous memory advised for huge pages gets them here: Linux with transparent
    /// huge pages enabled ("always" or "madvise").
    pub fn huge_pages_available() -> bool {
        #[cfg(target_os = "linux")]
        {
            std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .is_ok_and(|s| !s.contains("[never]"))
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// Parses a file held in memory (tests, fuzzing, embedded models).
    pub fn from_vec(label: impl Into<String>, bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::from_source(label.into(), Bytes::Owned(bytes))
    }

    /// Parses bytes compiled into the program (the bundled demo model).
    pub fn from_static(
        label: impl Into<String>,
        bytes: &'static [u8],
    ) -> Result<GgufFile, GgufError> {
        GgufFile::from_source(label.into(), Bytes::Static(bytes))
    }

    fn from_source(source: String, bytes: Bytes) -> Result<GgufFile, GgufError> {
        let header = parse(bytes.as_slice()).map_err(|kind| GgufError::new(&source, kind))?;
        Ok(GgufFile {
            source,
            bytes,
            version: header.version,
            metadata: header.metadata,
            tensor_index: header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: header.tensors,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    /// The path (or label) the file was opened from, as used in error messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensors, in header order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The data section's alignment (`general.alignment`, 32 by default).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The file's size in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// The header entry of the tensor `name`, if the file has one.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Absolute byte range of a tensor's data in the file.
    pub fn tensor_range(&self, info: &TensorInfo) -> std::ops::Range<usize> {
        // Both ends were checked against the file length when the header was parsed.
        let start = (self.data_offset + info.offset) as usize;
        start..start + info.size as usize
    }

    /// Tells the OS this process no longer needs the pages of `range` (absolute file offsets)
    /// resident: they leave its RSS and are read again from the file if touched. A no-op for
    /// files not memory-mapped. Only whole pages inside the range are released.
    pub fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let Bytes::Mmap(map) = &self.bytes {
            const PAGE: usize = 4096;
            let start = range.start.div_ceil(PAGE) * PAGE;
            let end = (range.end.min(map.len()) / PAGE) * PAGE;
            if start < end {
                // SAFETY: the map is a read-only shared file mapping: dropped pages come back
                // with the same contents from the file on the next access.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = range;
    }

    /// A tensor by name, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, GgufError> {
        let info = self.tensor_info(name).ok_or_else(|| {
            self.error(GgufErrorKind::MissingTensor {
                name: name.to_string(),
            })
        })?;
        Ok(TensorView {
            info,
            data: &self.bytes.as_slice()[self.tensor_range(info)],
        })
    }

    /// Wraps an error with this file's name.
    pub fn error(&self, kind: GgufErrorKind) -> GgufError {
        GgufError::new(&self.source, kind)
    }
}

/// What the header says, after validation.
pub(crate) struct Header {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

/// A bounds-checked little-endian cursor over the file.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufErrorKind> {
        if n > self.remaining() {
            return Err(GgufErrorKind::Truncated {
                offset: self.pos as u64,
                what: what(),
                needed: n,
                available: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.data[start..self.pos])
    }

    fn array<const N: usize>(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> Result<[u8; N], GgufErrorKind> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufErrorKind> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufErrorKind> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Checks that `count` items of at least `min_len` bytes each can fit in what is left,
    /// before anything is allocated for them.
    fn check_count(
        &self,
        count: u64,
        min_len: u64,
        what: &dyn Fn() -> String,
    ) -> Result<usize, GgufErrorKind> {
        let fits = count
            .checked_mul(min_len)
            .is_some_and(|bytes| bytes <= self.remaining());
        if !fits {
            return Err(GgufErrorKind::CountTooLarge {
                offset: self.pos as u64,
                what: what(),
                count,
                available: self.remaining(),
            });
        }
        Ok(count as usize)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufErrorKind> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let start = self.pos as u64;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(GgufErrorKind::InvalidUtf8 {
                offset: start,
                what: what(),
            }),
        }
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value, GgufErrorKind> {
        let what = || format!("value of `{key}`");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(&what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(&what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => {
                let offset = self.pos as u64;
                match self.array::<1>(&what)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(GgufErrorKind::InvalidBool {
                            key: key.to_string(),
                            offset,
                            value: b,
                        })
                    }
                }
            }
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufErrorKind::ArrayTooDeep {
                        key: key.to_string(),
                        max: MAX_ARRAY_DEPTH,
                    });
                }
                let type_offset = self.pos as u64;
                let elem_id = self.u32(&|| format!("array element type of `{key}`"))?;
                let elem =
                    ValueType::from_id(elem_id).ok_or_else(|| GgufErrorKind::UnknownValueType {
                        key: key.to_string(),
                        id: elem_id,
                        offset: type_offset,
                    })?;
                let count = self.u64(&|| format!("array length of `{key}`"))?;
                let count = self.check_count(count, elem.min_encoded_len(), &|| {
                    format!("array `{key}` of {elem}")
                })?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

/// Parses and validates a whole GGUF header against the file's bytes.
pub(crate) fn parse(data: &[u8]) -> Result<Header, GgufErrorKind> {
    let mut c = Cursor { data, pos: 0 };
    let magic = c.take(4.min(data.len() as u64), &|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufErrorKind::BadMagic {
            found: magic.to_vec(),
        });
    }
    let version = c.u32(&|| "version".into())?;
    if !(2..=3).contains(&version) {
        return Err(GgufErrorKind::UnsupportedVersion { version });
    }
    let tensor_count = c.u64(&|| "tensor count".into())?;
    let kv_count = c.u64(&|| "metadata count".into())?;

    // Each key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
    let kv_count = c.check_count(kv_count, 13, &|| "metadata entries".into())?;
    let mut metadata = Metadata::new();
    for i in 0..kv_count {
        let key_offset = c.pos as u64;
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let type_offset = c.pos as u64;
        let type_id = c.u32(&|| format!("value type of `{key}`"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufErrorKind::UnknownValueType {
            key: key.clone(),
            id: type_id,
            offset: type_offset,
        })?;
        let value = c.value(ty, &key, 0)?;
        if !metadata.push_new(key.clone(), value) {
            return Err(GgufErrorKind::DuplicateKey {
                key,
                offset: key_offset,
            });
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => {
                return Err(GgufErrorKind::BadAlignment {
                    value: v.summary(4),
                })
            }
        },
    };

    // Each tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
    let tensor_count = c.check_count(tensor_count, 24, &|| "tensor infos".into())?;
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count);
    let mut names: HashMap<String, ()> = HashMap::with_capacity(tensor_count);
    for i in 0..tensor_count {
        let info_offset = c.pos as u64;
        let name = c.string(&|| format!("name of tensor #{i}"))?;
        let n_dims = c.u32(&|| format!("dimension count of tensor `{name}`"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufErrorKind::TooManyDims {
                tensor: name,
                offset: info_offset,
                n_dims,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dimension {d} of tensor `{name}`"))?);
        }
        let type_id = c.u32(&|| format!("type of tensor `{name}`"))?;
        let ty = TensorType::from_id(type_id).ok_or_else(|| GgufErrorKind::UnknownTensorType {
            tensor: name.clone(),
            offset: info_offset,
            id: type_id,
        })?;
        let offset = c.u64(&|| format!("data offset of tensor `{name}`"))?;
        let size = ty
            .data_size(&dims)
            .map_err(|source| GgufErrorKind::BadShape {
                tensor: name.clone(),
                source,
            })?;
        if names.insert(name.clone(), ()).is_some() {
            return Err(GgufErrorKind::DuplicateTensor {
                tensor: name,
                offset: info_offset,
            });
        }
        if offset % alignment != 0 {
            return Err(GgufErrorKind::MisalignedTensor {
                tensor: name,
                offset,
                alignment,
            });
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            size,
        });
    }

    let header_end = c.pos as u64;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let file_len = data.len() as u64;
    for t in &tensors {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|start| start.checked_add(t.size));
        if end.is_none_or(|end| end > file_len) {
            return Err(GgufErrorKind::TensorOutOfBounds {
                tensor: t.name.clone(),
                start: data_offset.saturating_add(t.offset),
                size: t.size,
                file_len,
            });
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}
