//! A regression corpus of malformed GGUF files. Each case starts from one small valid file
//! (every metadata type, nested arrays, tensors of types F32, F16, BF16, Q8_0, TQ2_0, TQ1_0 and
//! I2_S), breaks exactly one thing, and expects the specific `GgufErrorKind` naming the key or
//! tensor and the byte offset. A counting allocator checks that no count read from the file is
//! trusted for an allocation, and a proptest feeds random mutations of the valid file through the
//! reader and the decoders.
//!
//! The fuzz seeds in `fuzz/seeds/gguf_reader/` are written by the ignored test
//! `write_fuzz_seeds` (`cargo test -p bitnet --test gguf_malformed -- --ignored`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;

use bitnet::formats::gguf::{
    GgufErrorKind, GgufFile, GgufWriter, Metadata, TensorSpec, Value, ValueType, WriteError,
    MAX_ARRAY_DEPTH,
};
use bitnet::formats::types::{float, i2_s, q8_0, tq1_0, tq2_0, ShapeError, TensorType};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// An allocator that remembers the largest single allocation made on the current thread.

struct Meter;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Meter = Meter;

/// Runs `f`; returns its result and the largest single allocation it made.
fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(|l| l.get()))
}

/// The most a parse (and decode) may allocate at once for a file of `len` bytes: a fixed
/// allowance plus a small multiple of the file (a u8 array element becomes a 32-byte `Value`, an
/// I2_S byte becomes four f32).
fn alloc_bound(len: usize) -> usize {
    64 * len + (64 << 10)
}

#[test]
fn the_meter_sees_large_allocations() {
    let (v, largest) = largest_alloc(|| vec![0u8; 1 << 20]);
    assert_eq!(v.len(), 1 << 20);
    assert!(largest >= 1 << 20);
}

// ---------------------------------------------------------------------------------------------
// Raw GGUF pieces, so that a test can break any one of them and knows where each starts.

const LABEL: &str = "malformed.gguf";

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A value's payload (without its type id).
fn payload(v: &Value) -> Vec<u8> {
    match v {
        Value::U8(x) => vec![*x],
        Value::I8(x) => vec![*x as u8],
        Value::U16(x) => x.to_le_bytes().to_vec(),
        Value::I16(x) => x.to_le_bytes().to_vec(),
        Value::U32(x) => x.to_le_bytes().to_vec(),
        Value::I32(x) => x.to_le_bytes().to_vec(),
        Value::F32(x) => x.to_le_bytes().to_vec(),
        Value::Bool(x) => vec![*x as u8],
        Value::String(s) => string(s.as_bytes()),
        Value::U64(x) => x.to_le_bytes().to_vec(),
        Value::I64(x) => x.to_le_bytes().to_vec(),
        Value::F64(x) => x.to_le_bytes().to_vec(),
        Value::Array(ty, items) => {
            let mut out = ty.id().to_le_bytes().to_vec();
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                out.extend(payload(item));
            }
            out
        }
    }
}

/// One metadata entry from raw parts.
fn kv_raw(key: &[u8], type_id: u32, value: &[u8]) -> Vec<u8> {
    let mut out = string(key);
    out.extend_from_slice(&type_id.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn kv(key: &str, v: &Value) -> Vec<u8> {
    kv_raw(key.as_bytes(), v.value_type().id(), &payload(v))
}

/// One tensor info from raw parts.
fn info_raw(name: &[u8], dims: &[u64], type_id: u32, offset: u64) -> Vec<u8> {
    let mut out = string(name);
    out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&type_id.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out
}

/// A GGUF file as its pieces. `bytes()` lays them out as the writer does: header, zero padding
/// to the alignment (only when there are tensors), data.
#[derive(Clone)]
struct Raw {
    magic: Vec<u8>,
    version: u32,
    tensor_count: u64,
    kv_count: u64,
    kvs: Vec<Vec<u8>>,
    infos: Vec<Vec<u8>>,
    alignment: u64,
    data: Vec<u8>,
}

impl Raw {
    fn header(&self) -> Vec<u8> {
        let mut out = self.magic.clone();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.tensor_count.to_le_bytes());
        out.extend_from_slice(&self.kv_count.to_le_bytes());
        for piece in self.kvs.iter().chain(&self.infos) {
            out.extend_from_slice(piece);
        }
        out
    }

    fn data_offset(&self) -> u64 {
        let end = self.header().len() as u64;
        if self.infos.is_empty() {
            end
        } else {
            end.div_ceil(self.alignment) * self.alignment
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.header();
        out.resize(self.data_offset() as usize, 0);
        out.extend_from_slice(&self.data);
        out
    }

    /// Byte offset of metadata entry `i` (`i == kvs.len()`: the first tensor info).
    fn kv_offset(&self, i: usize) -> u64 {
        24 + self.kvs[..i].iter().map(|k| k.len() as u64).sum::<u64>()
    }

    /// Byte offset of tensor info `i`.
    fn info_offset(&self, i: usize) -> u64 {
        self.kv_offset(self.kvs.len()) + self.infos[..i].iter().map(|t| t.len() as u64).sum::<u64>()
    }

    /// Index of a metadata entry by key.
    fn kv_index(&self, key: &str) -> usize {
        let prefix = string(key.as_bytes());
        self.kvs
            .iter()
            .position(|k| k.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no key {key}"))
    }

    fn set_kv(&mut self, key: &str, v: &Value) {
        let i = self.kv_index(key);
        self.kvs[i] = kv(key, v);
    }

    /// Replaces tensor `i`'s info, keeping its name and offset unless given.
    fn set_info(&mut self, i: usize, name: Option<&[u8]>, dims: &[u64], type_id: u32) {
        let t = &BASE_TENSORS[i];
        let offset = base_offsets()[i];
        self.infos[i] = info_raw(name.unwrap_or(t.0.as_bytes()), dims, type_id, offset);
    }
}

fn put_u32(bytes: &mut [u8], at: u64, v: u32) {
    bytes[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: u64, v: u64) {
    bytes[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// The valid base file.

fn base_metadata() -> Metadata {
    let mut m = Metadata::new();
    m.set(
        "general.architecture",
        Value::String("malformed-test".into()),
    );
    m.set("general.alignment", Value::U32(32));
    m.set("t.u8", Value::U8(7));
    m.set("t.i8", Value::I8(-7));
    m.set("t.u16", Value::U16(65535));
    m.set("t.i16", Value::I16(-300));
    m.set("t.u32", Value::U32(1 << 31));
    m.set("t.i32", Value::I32(-1));
    m.set("t.f32", Value::F32(0.5));
    m.set("t.bool", Value::Bool(true));
    m.set("t.u64", Value::U64(u64::MAX));
    m.set("t.i64", Value::I64(i64::MIN));
    m.set("t.f64", Value::F64(-1e300));
    m.set(
        "t.strings",
        Value::Array(
            ValueType::String,
            vec![
                Value::String("a".into()),
                Value::String("bc".into()),
                Value::String(String::new()),
                Value::String("ünï".into()),
            ],
        ),
    );
    m.set(
        "t.bytes",
        Value::Array(ValueType::U8, vec![Value::U8(1); 5]),
    );
    m.set(
        "t.nested",
        Value::Array(
            ValueType::Array,
            vec![
                Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-2)]),
                Value::Array(ValueType::F64, vec![]),
                Value::Array(
                    ValueType::Array,
                    vec![Value::Array(ValueType::Bool, vec![Value::Bool(false)])],
                ),
            ],
        ),
    );
    m.set("t.empty", Value::Array(ValueType::U64, vec![]));
    m
}

/// Name, type, dims of the base tensors. The last one's size is a multiple of the alignment, so
/// every proper prefix of the file is missing some tensor bytes.
const BASE_TENSORS: [(&str, TensorType, &[u64]); 7] = [
    ("t.f32", TensorType::F32, &[4, 2]),
    ("t.f16", TensorType::F16, &[8]),
    ("t.q8_0", TensorType::Q8_0, &[32, 2]),
    ("t.tq2_0", TensorType::TQ2_0, &[256]),
    ("t.tq1_0", TensorType::TQ1_0, &[256]),
    ("t.bf16", TensorType::BF16, &[16]),
    ("t.i2_s", TensorType::I2S, &[128, 2]),
];

/// Deterministic values in [-1, 1).
fn wave(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)).rotate_left(7);
            (h % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn base_tensor_data() -> Vec<Vec<u8>> {
    let ternary: Vec<i8> = wave(256, 9)
        .iter()
        .map(|&x| (x * 1.5).round().clamp(-1.0, 1.0) as i8)
        .collect();
    vec![
        float::encode_f32(&wave(8, 1)),
        float::encode_f16(&wave(8, 2)),
        q8_0::quantize(&wave(64, 3)),
        tq2_0::quantize(&wave(256, 4)),
        tq1_0::quantize(&wave(256, 5)),
        float::encode_bf16(&wave(16, 6)),
        i2_s::encode(&ternary, 0.25),
    ]
}

fn base_offsets() -> Vec<u64> {
    let mut offsets = Vec::new();
    let mut at = 0u64;
    for (_, ty, dims) in BASE_TENSORS {
        offsets.push(at);
        at += ty.data_size(dims).unwrap().div_ceil(32) * 32;
    }
    offsets
}

/// The base file written by `GgufWriter`.
fn written_base() -> Vec<u8> {
    write(&base_metadata(), &BASE_TENSORS, &base_tensor_data())
}

fn write(metadata: &Metadata, tensors: &[(&str, TensorType, &[u64])], data: &[Vec<u8>]) -> Vec<u8> {
    let specs = tensors
        .iter()
        .map(|(name, ty, dims)| TensorSpec {
            name: name.to_string(),
            ty: *ty,
            dims: dims.to_vec(),
        })
        .collect();
    let mut w = GgufWriter::new(Vec::new(), metadata, specs).unwrap();
    for ((name, _, _), bytes) in tensors.iter().zip(data) {
        w.write_tensor(name, bytes).unwrap();
    }
    w.finish().unwrap()
}

/// The base file as raw pieces (checked to be byte-identical to the writer's output).
fn base() -> Raw {
    let metadata = base_metadata();
    let offsets = base_offsets();
    let mut data = Vec::new();
    for (bytes, offset) in base_tensor_data().iter().zip(&offsets) {
        data.resize(*offset as usize, 0);
        data.extend_from_slice(bytes);
    }
    data.resize(data.len().div_ceil(32) * 32, 0);
    Raw {
        magic: b"GGUF".to_vec(),
        version: 3,
        tensor_count: BASE_TENSORS.len() as u64,
        kv_count: metadata.len() as u64,
        kvs: metadata.iter().map(|(k, v)| kv(k, v)).collect(),
        infos: BASE_TENSORS
            .iter()
            .zip(&offsets)
            .map(|((name, ty, dims), &offset)| info_raw(name.as_bytes(), dims, ty.id(), offset))
            .collect(),
        alignment: 32,
        data,
    }
}

/// Parses bytes that must be rejected; returns what was wrong.
fn reject(bytes: Vec<u8>) -> GgufErrorKind {
    let len = bytes.len();
    let (result, largest) = largest_alloc(|| GgufFile::from_vec(LABEL, bytes));
    assert!(
        largest <= alloc_bound(len),
        "a {len}-byte file made a {largest}-byte allocation"
    );
    match result {
        Ok(_) => panic!("a malformed file was accepted"),
        Err(e) => {
            assert_eq!(e.file, LABEL);
            assert!(e.to_string().starts_with(LABEL), "{e}");
            e.kind
        }
    }
}

/// Asserts that an error kind matches a pattern and runs the checks on its fields.
macro_rules! expect {
    ($kind:expr, $pat:pat => $checks:expr) => {
        match $kind {
            $pat => $checks,
            other => panic!("expected {}, got {other:?}", stringify!($pat)),
        }
    };
    ($kind:expr, $pat:pat) => {
        expect!($kind, $pat => ())
    };
}

// ---------------------------------------------------------------------------------------------
// The base is valid.

#[test]
fn base_file_is_valid_and_matches_the_writer() {
    let raw = base();
    let bytes = raw.bytes();
    assert_eq!(bytes, written_base(), "raw pieces and GgufWriter disagree");
    let gguf = GgufFile::from_vec(LABEL, bytes.clone()).unwrap();
    assert_eq!(gguf.version(), 3);
    assert_eq!(gguf.data_offset(), raw.data_offset());
    assert_eq!(gguf.metadata().len(), base_metadata().len());
    for (k, v) in base_metadata().iter() {
        assert_eq!(gguf.metadata().get(k), Some(v), "{k}");
    }
    for (((name, ty, dims), data), offset) in BASE_TENSORS
        .iter()
        .zip(base_tensor_data())
        .zip(base_offsets())
    {
        let view = gguf.tensor(name).unwrap();
        assert_eq!((view.info.ty, view.info.dims.as_slice()), (*ty, *dims));
        assert_eq!(view.info.offset, offset);
        assert_eq!(view.data, data.as_slice());
        let values = view.to_f32().unwrap();
        assert_eq!(values.len() as u64, view.info.element_count());
        assert_eq!(view.to_ternary().is_ok(), ty.is_ternary(), "{name}");
    }
    // Version 2 has the same layout.
    let mut v2 = raw.clone();
    v2.version = 2;
    assert_eq!(GgufFile::from_vec(LABEL, v2.bytes()).unwrap().version(), 2);
    // The last tensor ends exactly at the end of the file.
    assert_eq!(
        raw.data_offset() + base_offsets()[6] + TensorType::I2S.data_size(&[128, 2]).unwrap(),
        bytes.len() as u64
    );
}

// ---------------------------------------------------------------------------------------------
// Truncation and the file header.

#[test]
fn every_truncation_is_an_error_naming_what_is_missing() {
    let raw = base();
    let bytes = raw.bytes();
    let header_end = raw.header().len();
    let data_offset = raw.data_offset();
    let offsets = base_offsets();
    for len in 0..bytes.len() {
        let kind = reject(bytes[..len].to_vec());
        let len64 = len as u64;
        if len < 4 {
            expect!(kind, GgufErrorKind::BadMagic { found } => assert_eq!(found, &bytes[..len]));
        } else if len < header_end {
            match kind {
                GgufErrorKind::Truncated {
                    offset,
                    needed,
                    available,
                    ..
                } => {
                    assert_eq!(offset + available, len64, "len {len}");
                    assert!(needed > available, "len {len}");
                }
                GgufErrorKind::CountTooLarge {
                    offset, available, ..
                } => assert_eq!(offset + available, len64, "len {len}"),
                other => panic!("cut at {len} inside the header: {other:?}"),
            }
        } else {
            // Cut in the padding or the data: the first tensor that does not fit is named.
            let first_cut = BASE_TENSORS
                .iter()
                .zip(&offsets)
                .find(|((_, ty, dims), &off)| {
                    data_offset + off + ty.data_size(dims).unwrap() > len64
                })
                .unwrap();
            let ((name, ty, dims), off) = first_cut;
            expect!(kind, GgufErrorKind::TensorOutOfBounds { tensor, start, size, file_len } => {
                assert_eq!(tensor, *name);
                assert_eq!(start, data_offset + off);
                assert_eq!(size, ty.data_size(dims).unwrap());
                assert_eq!(file_len, len64);
            });
        }
    }
}

#[test]
fn bad_magic_is_rejected() {
    let mut raw = base();
    for magic in [&b"GGML"[..], b"gguf", b"FUGG", b"\0\0\0\0"] {
        raw.magic = magic.to_vec();
        expect!(reject(raw.bytes()), GgufErrorKind::BadMagic { found } => assert_eq!(found, magic));
    }
    expect!(reject(Vec::new()), GgufErrorKind::BadMagic { found } => assert!(found.is_empty()));
    // The message shows text as text and other bytes in hex (it showed `[23, 20, 42, 69]`
    // for a Markdown file, which reads as decimal).
    raw.magic = b"# Bi".to_vec();
    assert_eq!(
        reject(raw.bytes()).to_string(),
        "not a GGUF file: it starts with \"# Bi\" (hex 23 20 42 69), expected \"GGUF\""
    );
    raw.magic = vec![0x7f, b'E', b'L', b'F'];
    assert_eq!(
        reject(raw.bytes()).to_string(),
        "not a GGUF file: it starts with the bytes 7f 45 4c 46, expected \"GGUF\""
    );
    expect!(reject(b"GGUF".to_vec()), GgufErrorKind::Truncated { offset: 4, needed: 4, available: 0, what } => {
        assert_eq!(what, "version");
    });
}

#[test]
fn unsupported_versions_are_rejected() {
    let mut raw = base();
    for version in [0, 1, 4, u32::MAX] {
        raw.version = version;
        expect!(reject(raw.bytes()), GgufErrorKind::UnsupportedVersion { version: v } => {
            assert_eq!(v, version);
        });
    }
}

#[test]
fn huge_metadata_and_tensor_counts_are_refused_before_allocating() {
    let raw = base();
    let len = raw.bytes().len() as u64;
    for count in [1 << 60, u64::MAX, len] {
        let mut r = raw.clone();
        r.kv_count = count;
        expect!(reject(r.bytes()), GgufErrorKind::CountTooLarge { offset: 24, what, count: c, available } => {
            assert_eq!(c, count);
            assert_eq!(available, len - 24);
            assert!(what.contains("metadata"), "{what}");
        });

        let mut r = raw.clone();
        r.tensor_count = count;
        let at = raw.info_offset(0);
        expect!(reject(r.bytes()), GgufErrorKind::CountTooLarge { offset, what, count: c, available } => {
            assert_eq!(offset, at);
            assert_eq!(c, count);
            assert_eq!(available, len - at);
            assert!(what.contains("tensor"), "{what}");
        });
    }
    // One entry more than there is: the first tensor info is read as metadata and fails.
    let mut r = raw.clone();
    r.kv_count += 1;
    reject(r.bytes());
}

#[test]
fn huge_array_lengths_are_refused_before_allocating() {
    let raw = base();
    let len = raw.bytes().len() as u64;
    for key in ["t.strings", "t.bytes", "t.nested", "t.empty"] {
        let i = raw.kv_index(key);
        // key string, value type, element type, then the length.
        let length_at = raw.kv_offset(i) + 8 + key.len() as u64 + 4 + 4;
        for count in [1 << 60, u64::MAX, 1 << 32, len] {
            let mut bytes = raw.bytes();
            put_u64(&mut bytes, length_at, count);
            expect!(reject(bytes), GgufErrorKind::CountTooLarge { offset, what, count: c, available } => {
                assert_eq!(offset, length_at + 8);
                assert_eq!(c, count);
                assert_eq!(available, len - offset);
                assert!(what.contains(key), "{what}");
            });
        }
    }
}

#[test]
fn huge_string_lengths_are_truncation_errors() {
    let raw = base();
    let len = raw.bytes().len() as u64;
    for count in [1 << 60, u64::MAX, len] {
        // A key.
        let mut bytes = raw.bytes();
        put_u64(&mut bytes, raw.kv_offset(3), count);
        expect!(reject(bytes), GgufErrorKind::Truncated { offset, what, needed, available } => {
            assert_eq!(offset, raw.kv_offset(3) + 8);
            assert_eq!((needed, available), (count, len - offset));
            assert_eq!(what, "metadata key #3");
        });

        // A string value.
        let key = "general.architecture";
        let at = raw.kv_offset(raw.kv_index(key)) + 8 + key.len() as u64 + 4;
        let mut bytes = raw.bytes();
        put_u64(&mut bytes, at, count);
        expect!(reject(bytes), GgufErrorKind::Truncated { offset, what, needed, .. } => {
            assert_eq!((offset, needed), (at + 8, count));
            assert!(what.contains(key), "{what}");
        });

        // A string inside an array.
        let key = "t.strings";
        let at = raw.kv_offset(raw.kv_index(key)) + 8 + key.len() as u64 + 4 + 4 + 8;
        let mut bytes = raw.bytes();
        put_u64(&mut bytes, at, count);
        expect!(reject(bytes), GgufErrorKind::Truncated { offset, what, needed, .. } => {
            assert_eq!((offset, needed), (at + 8, count));
            assert!(what.contains(key), "{what}");
        });

        // A tensor name.
        let mut bytes = raw.bytes();
        put_u64(&mut bytes, raw.info_offset(2), count);
        expect!(reject(bytes), GgufErrorKind::Truncated { offset, what, needed, .. } => {
            assert_eq!((offset, needed), (raw.info_offset(2) + 8, count));
            assert_eq!(what, "name of tensor #2");
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata.

#[test]
fn unknown_value_types_name_the_key_and_offset() {
    let raw = base();
    let key = "t.u16";
    let type_at = raw.kv_offset(raw.kv_index(key)) + 8 + key.len() as u64;
    for id in [13, 99, u32::MAX] {
        let mut bytes = raw.bytes();
        put_u32(&mut bytes, type_at, id);
        expect!(reject(bytes), GgufErrorKind::UnknownValueType { key: k, id: i, offset } => {
            assert_eq!((k.as_str(), i, offset), (key, id, type_at));
        });
    }

    // An array's element type.
    let key = "t.bytes";
    let elem_at = raw.kv_offset(raw.kv_index(key)) + 8 + key.len() as u64 + 4;
    let mut bytes = raw.bytes();
    put_u32(&mut bytes, elem_at, 13);
    let kind = reject(bytes);
    let message = kind.to_string();
    expect!(kind, GgufErrorKind::UnknownValueType { key: k, id: 13, offset } => {
        assert_eq!((k.as_str(), offset), (key, elem_at));
    });
    assert!(message.contains("`t.bytes`") && message.contains(&format!("byte {elem_at}")));

    // An inner array's element type.
    let mut r = raw.clone();
    let i = r.kv_index("t.nested");
    let mut inner = payload(&Value::Array(ValueType::U8, vec![]));
    inner[..4].copy_from_slice(&77u32.to_le_bytes());
    let mut value = ValueType::Array.id().to_le_bytes().to_vec();
    value.extend_from_slice(&1u64.to_le_bytes());
    value.extend_from_slice(&inner);
    r.kvs[i] = kv_raw(b"t.nested", ValueType::Array.id(), &value);
    let inner_at = r.kv_offset(i) + 8 + 8 + 4 + 4 + 8;
    expect!(reject(r.bytes()), GgufErrorKind::UnknownValueType { key, id: 77, offset } => {
        assert_eq!((key.as_str(), offset), ("t.nested", inner_at));
    });
}

#[test]
fn invalid_bools_are_rejected() {
    let raw = base();
    let key = "t.bool";
    let at = raw.kv_offset(raw.kv_index(key)) + 8 + key.len() as u64 + 4;
    for value in [2u8, 0xff] {
        let mut bytes = raw.bytes();
        bytes[at as usize] = value;
        expect!(reject(bytes), GgufErrorKind::InvalidBool { key: k, offset, value: v } => {
            assert_eq!((k.as_str(), offset, v), (key, at, value));
        });
    }

    // Inside an array.
    let mut r = raw.clone();
    let mut value = payload(&Value::Array(
        ValueType::Bool,
        vec![Value::Bool(true), Value::Bool(false)],
    ));
    value[12 + 1] = 3;
    let i = r.kv_index("t.empty");
    r.kvs[i] = kv_raw(b"t.empty", ValueType::Array.id(), &value);
    let at = r.kv_offset(i) + 8 + 7 + 4 + 12 + 1;
    expect!(reject(r.bytes()), GgufErrorKind::InvalidBool { key, offset, value: 3 } => {
        assert_eq!((key.as_str(), offset), ("t.empty", at));
    });
}

#[test]
fn invalid_utf8_is_rejected_with_its_offset() {
    let mut r = base();
    r.kvs[4] = kv_raw(b"t.\xff\xfe", ValueType::U8.id(), &[1]);
    let at = r.kv_offset(4) + 8;
    expect!(reject(r.bytes()), GgufErrorKind::InvalidUtf8 { offset, what } => {
        assert_eq!((offset, what.as_str()), (at, "metadata key #4"));
    });

    // A string value.
    let mut r = base();
    let i = r.kv_index("general.architecture");
    r.kvs[i] = kv_raw(
        b"general.architecture",
        ValueType::String.id(),
        &string(b"ok\xc3("),
    );
    let at = r.kv_offset(i) + 8 + 20 + 4 + 8;
    expect!(reject(r.bytes()), GgufErrorKind::InvalidUtf8 { offset, what } => {
        assert_eq!(offset, at);
        assert!(what.contains("general.architecture"), "{what}");
    });

    // A tensor name.
    let mut r = base();
    r.set_info(3, Some(b"t.\x80"), &[256], TensorType::TQ2_0.id());
    let at = r.info_offset(3) + 8;
    expect!(reject(r.bytes()), GgufErrorKind::InvalidUtf8 { offset, what } => {
        assert_eq!((offset, what.as_str()), (at, "name of tensor #3"));
    });
}

#[test]
fn duplicate_keys_are_rejected_at_the_second() {
    let mut r = base();
    r.kvs.push(kv("t.u8", &Value::U8(8)));
    r.kv_count += 1;
    let at = r.kv_offset(r.kvs.len() - 1);
    let kind = reject(r.bytes());
    let message = kind.to_string();
    expect!(kind, GgufErrorKind::DuplicateKey { key, offset } => {
        assert_eq!((key.as_str(), offset), ("t.u8", at));
    });
    assert!(message.contains("`t.u8`") && message.contains(&format!("byte {at}")));

    // Same key with another type.
    let mut r = base();
    r.kvs.insert(3, kv("general.alignment", &Value::U64(32)));
    r.kv_count += 1;
    let at = r.kv_offset(3);
    expect!(reject(r.bytes()), GgufErrorKind::DuplicateKey { key, offset } => {
        assert_eq!((key.as_str(), offset), ("general.alignment", at));
    });
}

#[test]
fn bad_alignments_are_rejected() {
    for (v, shown) in [
        (Value::U32(0), "0"),
        (Value::U32(3), "3"),
        (Value::U64(96), "96"),
        (Value::I32(-32), "-32"),
        (Value::String("32".into()), "\"32\""),
        (Value::F32(32.0), "32"),
        (Value::Bool(true), "true"),
        (Value::Array(ValueType::U32, vec![Value::U32(32)]), "[32]"),
    ] {
        let mut r = base();
        r.set_kv("general.alignment", &v);
        expect!(reject(r.bytes()), GgufErrorKind::BadAlignment { value } => {
            assert!(value.contains(shown), "{value} for {v:?}");
        });
    }

    // A valid but larger alignment makes the writer's 32-byte offsets misaligned.
    let mut r = base();
    r.set_kv("general.alignment", &Value::U64(64));
    expect!(reject(r.bytes()), GgufErrorKind::MisalignedTensor { tensor, offset: 32, alignment: 64 } => {
        assert_eq!(tensor, "t.f16");
    });

    // 2^63 is a power of two: the data section would start past any file.
    let mut r = base();
    r.set_kv("general.alignment", &Value::U64(1 << 63));
    r.infos.truncate(1);
    r.tensor_count = 1;
    r.alignment = 32;
    expect!(reject(r.bytes()), GgufErrorKind::TensorOutOfBounds { tensor, start, .. } => {
        assert_eq!((tensor.as_str(), start), ("t.f32", 1 << 63));
    });
    // Without tensors that file is fine.
    r.infos.clear();
    r.tensor_count = 0;
    r.data.clear();
    let gguf = GgufFile::from_vec(LABEL, r.bytes()).unwrap();
    assert_eq!(gguf.alignment(), 1 << 63);
}

/// `levels` arrays nested in one another, the innermost holding one u8.
fn nested(levels: usize) -> Value {
    let mut v = Value::Array(ValueType::U8, vec![Value::U8(1)]);
    for _ in 1..levels {
        v = Value::Array(ValueType::Array, vec![v]);
    }
    v
}

#[test]
fn arrays_nested_deeper_than_the_limit_are_rejected() {
    let mut r = base();
    r.set_kv("t.nested", &nested(MAX_ARRAY_DEPTH));
    let gguf = GgufFile::from_vec(LABEL, r.bytes()).unwrap();
    assert_eq!(
        gguf.metadata().get("t.nested"),
        Some(&nested(MAX_ARRAY_DEPTH))
    );

    for levels in [MAX_ARRAY_DEPTH + 1, 10_000] {
        let mut r = base();
        // Raw bytes, so that a very deep value costs no recursion in the test itself.
        let mut value = Vec::new();
        for _ in 1..levels {
            value.extend_from_slice(&ValueType::Array.id().to_le_bytes());
            value.extend_from_slice(&1u64.to_le_bytes());
        }
        value.extend_from_slice(&payload(&Value::Array(ValueType::U8, vec![Value::U8(1)])));
        let i = r.kv_index("t.nested");
        r.kvs[i] = kv_raw(b"t.nested", ValueType::Array.id(), &value);
        expect!(reject(r.bytes()), GgufErrorKind::ArrayTooDeep { key, max } => {
            assert_eq!((key.as_str(), max), ("t.nested", MAX_ARRAY_DEPTH));
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor infos.

#[test]
fn too_many_dims_are_rejected() {
    for n_dims in [5u32, 64, u32::MAX] {
        let raw = base();
        let mut bytes = raw.bytes();
        let at = raw.info_offset(2);
        put_u32(&mut bytes, at + 8 + "t.q8_0".len() as u64, n_dims);
        expect!(reject(bytes), GgufErrorKind::TooManyDims { tensor, offset, n_dims: n } => {
            assert_eq!((tensor.as_str(), offset, n), ("t.q8_0", at, n_dims));
        });
    }
}

#[test]
fn unknown_tensor_types_name_the_id_and_the_tensor() {
    for id in [4u32, 5, 29, 33, 37, 99, u32::MAX] {
        let mut r = base();
        r.set_info(2, None, &[32, 2], id);
        let at = r.info_offset(2);
        let e = GgufFile::from_vec(LABEL, r.bytes()).unwrap_err();
        let message = e.to_string();
        for part in [
            LABEL,
            "`t.q8_0`",
            &format!("type id {id}"),
            &format!("byte {at}"),
        ] {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
        expect!(e.kind, GgufErrorKind::UnknownTensorType { tensor, offset, id: i } => {
            assert_eq!((tensor.as_str(), offset, i), ("t.q8_0", at, id));
        });
    }
}

#[test]
fn ragged_rows_of_block_types_are_bad_shapes() {
    for (i, ty, dims, ne0) in [
        (2, TensorType::Q8_0, &[33u64, 2][..], 33),
        (2, TensorType::Q8_0, &[16, 4], 16),
        (3, TensorType::TQ2_0, &[128, 2], 128),
        (4, TensorType::TQ1_0, &[255], 255),
        (6, TensorType::I2S, &[64, 4], 64),
        (6, TensorType::I2S, &[1], 1),
        (6, TensorType::I2S, &[], 1),
    ] {
        let mut r = base();
        r.set_info(i, None, dims, ty.id());
        let e = GgufFile::from_vec(LABEL, r.bytes()).unwrap_err();
        assert!(e.to_string().contains(BASE_TENSORS[i].0), "{e}");
        expect!(e.kind, GgufErrorKind::BadShape { tensor, source } => {
            assert_eq!(tensor, BASE_TENSORS[i].0);
            assert_eq!(source, ShapeError::RaggedRow { ty, ne0, block_len: ty.block_len() });
        });
    }
}

#[test]
fn dims_whose_product_overflows_are_bad_shapes() {
    for (ty, dims) in [
        (TensorType::F32, &[1u64 << 32, 1 << 32][..]),
        (TensorType::F32, &[u64::MAX, 2]),
        (TensorType::F32, &[2, 2, 2, u64::MAX]),
        (TensorType::F32, &[1 << 62, 2]),
        (TensorType::F16, &[1 << 63, 1]),
        (TensorType::Q8_0, &[1 << 63, 2]),
        (TensorType::Q8_0, &[32, 1 << 62]),
        (TensorType::I2S, &[1 << 63, 2]),
        (TensorType::I2S, &[1 << 57, 1 << 7]),
    ] {
        let mut r = base();
        r.set_info(0, None, dims, ty.id());
        expect!(reject(r.bytes()), GgufErrorKind::BadShape { tensor, source: ShapeError::Overflow } => {
            assert_eq!(tensor, "t.f32");
        });
    }

    // Large but representable sizes are out of bounds instead.
    for dims in [&[1u64 << 40][..], &[1 << 20, 1 << 20, 1 << 20], &[0, 0]] {
        let mut r = base();
        r.set_info(0, None, dims, TensorType::F32.id());
        let size = TensorType::F32.data_size(dims).unwrap();
        if size == 0 {
            GgufFile::from_vec(LABEL, r.bytes()).unwrap();
            continue;
        }
        expect!(reject(r.bytes()), GgufErrorKind::TensorOutOfBounds { tensor, size: s, .. } => {
            assert_eq!((tensor.as_str(), s), ("t.f32", size));
        });
    }
}

#[test]
fn misaligned_tensor_offsets_are_rejected() {
    let raw = base();
    let t = 3;
    let name = BASE_TENSORS[t].0;
    let offset_at = raw.info_offset(t + 1) - 8;
    for delta in [1u64, 2, 16, 31] {
        let mut bytes = raw.bytes();
        let offset = base_offsets()[t] + delta;
        put_u64(&mut bytes, offset_at, offset);
        expect!(reject(bytes), GgufErrorKind::MisalignedTensor { tensor, offset: o, alignment: 32 } => {
            assert_eq!((tensor.as_str(), o), (name, offset));
        });
    }
}

#[test]
fn tensor_offsets_past_the_end_are_rejected() {
    let raw = base();
    let len = raw.bytes().len() as u64;
    let t = 5;
    let name = BASE_TENSORS[t].0;
    let size = TensorType::BF16.data_size(&[16]).unwrap();
    let offset_at = raw.info_offset(t + 1) - 8;
    for offset in [
        len - raw.data_offset(),
        len,
        1 << 62,
        u64::MAX - 31,
        (1 << 63) + 32,
    ] {
        let mut bytes = raw.bytes();
        put_u64(&mut bytes, offset_at, offset);
        let e = GgufFile::from_vec(LABEL, bytes).unwrap_err();
        let message = e.to_string();
        expect!(e.kind, GgufErrorKind::TensorOutOfBounds { tensor, start, size: s, file_len } => {
            assert_eq!((tensor.as_str(), s, file_len), (name, size, len));
            assert_eq!(start, raw.data_offset().saturating_add(offset));
            for part in [LABEL, "`t.bf16`", &format!("byte {start}"), &format!("({len} bytes)")] {
                assert!(message.contains(part), "{message:?} lacks {part:?}");
            }
        });
    }
}

#[test]
fn duplicate_tensor_names_are_rejected_at_the_second() {
    let mut r = base();
    r.set_info(4, Some(b"t.q8_0"), &[256], TensorType::TQ1_0.id());
    let at = r.info_offset(4);
    let kind = reject(r.bytes());
    let message = kind.to_string();
    expect!(kind, GgufErrorKind::DuplicateTensor { tensor, offset } => {
        assert_eq!((tensor.as_str(), offset), ("t.q8_0", at));
    });
    assert!(message.contains("`t.q8_0`") && message.contains(&format!("byte {at}")));
}

#[test]
fn missing_tensors_are_named() {
    let gguf = GgufFile::from_vec(LABEL, base().bytes()).unwrap();
    let e = gguf.tensor("t.nope").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{LABEL}: tensor `t.nope` is missing")
    );
    expect!(e.kind, GgufErrorKind::MissingTensor { name } => assert_eq!(name, "t.nope"));
}

#[test]
fn invalid_i2s_codes_fail_at_decode_not_parse() {
    let raw = base();
    let mut bytes = raw.bytes();
    let at = (raw.data_offset() + base_offsets()[6] + 10) as usize;
    bytes[at] = 0xff;
    let gguf = GgufFile::from_vec(LABEL, bytes).unwrap();
    let view = gguf.tensor("t.i2_s").unwrap();
    assert!(view.to_f32().is_err());
    assert!(view.to_ternary().is_err());
}

// ---------------------------------------------------------------------------------------------
// Error messages.

#[test]
fn messages_name_the_file_the_key_and_the_offset() {
    let raw = base();
    let key = "t.bool";
    let at = raw.kv_offset(raw.kv_index(key)) + 8 + key.len() as u64 + 4;
    let mut bytes = raw.bytes();
    bytes[at as usize] = 7;
    let e = GgufFile::from_vec("models/x.gguf", bytes).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("models/x.gguf: metadata key `t.bool`: bool at byte {at} is 7, not 0 or 1")
    );

    let bytes = raw.bytes();
    let cut = raw.info_offset(6) + 3;
    let e = GgufFile::from_vec("models/x.gguf", bytes[..cut as usize].to_vec()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "models/x.gguf: file ends early at byte {}: length of name of tensor #6 needs 8 bytes, 3 left",
            cut - 3
        )
    );
    let e = GgufFile::from_vec("models/x.gguf", bytes[..100].to_vec()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "models/x.gguf: metadata entries at byte 24: a count of 17 cannot fit in the 76 bytes left"
    );

    let mut r = base();
    r.set_info(1, None, &[8, 1, 1, 1, 1], TensorType::F16.id());
    let e = GgufFile::from_vec("models/x.gguf", r.bytes()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "models/x.gguf: tensor `t.f16` (info at byte {}) has 5 dimensions, at most 4 are allowed",
            r.info_offset(1)
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Writer errors.

fn specs() -> Vec<TensorSpec> {
    BASE_TENSORS
        .iter()
        .map(|(name, ty, dims)| TensorSpec {
            name: name.to_string(),
            ty: *ty,
            dims: dims.to_vec(),
        })
        .collect()
}

#[test]
fn writer_rejects_wrong_sizes_order_and_unfinished_files() {
    let data = base_tensor_data();
    let mut w = GgufWriter::new(Vec::new(), &base_metadata(), specs()).unwrap();
    match w.write_tensor("t.f32", &data[0][..31]) {
        Err(WriteError::WrongSize {
            tensor,
            expected: 32,
            actual: 31,
        }) => assert_eq!(tensor, "t.f32"),
        other => panic!("{other:?}"),
    }
    match w.write_tensor("t.f16", &data[1]) {
        Err(WriteError::OutOfOrder { tensor, expected }) => {
            assert_eq!((tensor.as_str(), expected.as_str()), ("t.f16", "t.f32"))
        }
        other => panic!("{other:?}"),
    }
    w.write_tensor("t.f32", &data[0]).unwrap();
    w.write_tensor("t.f16", &data[1]).unwrap();
    match w.finish() {
        Err(WriteError::Unfinished {
            written: 2,
            total: 7,
        }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }

    let mut w = GgufWriter::new(Vec::new(), &base_metadata(), specs()).unwrap();
    for ((name, _, _), bytes) in BASE_TENSORS.iter().zip(&data) {
        w.write_tensor(name, bytes).unwrap();
    }
    match w.write_tensor("t.f32", &data[0]) {
        Err(WriteError::OutOfOrder { tensor, .. }) => assert_eq!(tensor, "t.f32"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.finish().unwrap(), base().bytes());
}

#[test]
fn writer_rejects_bad_headers() {
    let mut m = base_metadata();
    m.set(
        "t.mixed",
        Value::Array(ValueType::U8, vec![Value::U8(1), Value::I8(2)]),
    );
    match GgufWriter::new(Vec::new(), &m, specs()) {
        Err(WriteError::MixedArray {
            key,
            expected: ValueType::U8,
            found: ValueType::I8,
        }) => assert_eq!(key, "t.mixed"),
        other => panic!("{:?}", other.map(|_| ())),
    }

    let mut m = base_metadata();
    m.set(
        "t.mixed",
        Value::Array(
            ValueType::Array,
            vec![Value::Array(ValueType::U8, vec![Value::Bool(true)])],
        ),
    );
    assert!(matches!(
        GgufWriter::new(Vec::new(), &m, specs()),
        Err(WriteError::MixedArray {
            expected: ValueType::U8,
            found: ValueType::Bool,
            ..
        })
    ));

    let mut bad = specs();
    bad[2].dims = vec![33, 2];
    match GgufWriter::new(Vec::new(), &base_metadata(), bad) {
        Err(WriteError::Shape { tensor, source }) => {
            assert_eq!(tensor, "t.q8_0");
            assert!(matches!(source, ShapeError::RaggedRow { ne0: 33, .. }));
        }
        other => panic!("{:?}", other.map(|_| ())),
    }

    for v in [Value::U32(0), Value::U32(48), Value::String("32".into())] {
        let mut m = base_metadata();
        m.set("general.alignment", v);
        assert!(matches!(
            GgufWriter::new(Vec::new(), &m, specs()),
            Err(WriteError::BadAlignment(_))
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Random mutations.

#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: prop::sample::Index,
        bit: u8,
    },
    Set {
        at: prop::sample::Index,
        byte: u8,
    },
    Word {
        at: prop::sample::Index,
        value: u64,
        wide: bool,
    },
    Truncate {
        at: prop::sample::Index,
    },
    Insert {
        at: prop::sample::Index,
        bytes: Vec<u8>,
    },
    Remove {
        at: prop::sample::Index,
        n: usize,
    },
}

/// Values that sit on the reader's boundaries: type ids, small counts, powers of two, maxima.
const INTERESTING: [u64; 22] = [
    0,
    1,
    2,
    3,
    4,
    5,
    8,
    9,
    12,
    13,
    31,
    32,
    34,
    35,
    36,
    37,
    255,
    1 << 31,
    u32::MAX as u64,
    1 << 60,
    1 << 63,
    u64::MAX,
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<prop::sample::Index>;
    prop_oneof![
        3 => (at(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => (at(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        3 => (at(), prop::sample::select(INTERESTING.to_vec()), any::<bool>())
            .prop_map(|(at, value, wide)| Mutation::Word { at, value, wide }),
        1 => at().prop_map(|at| Mutation::Truncate { at }),
        1 => (at(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (at(), 1usize..16).prop_map(|(at, n)| Mutation::Remove { at, n }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    if len == 0 {
        return;
    }
    match m {
        Mutation::Flip { at, bit } => bytes[at.index(len)] ^= 1 << bit,
        Mutation::Set { at, byte } => bytes[at.index(len)] = *byte,
        Mutation::Word { at, value, wide } => {
            let width = if *wide { 8 } else { 4 };
            let start = at.index(bytes.len());
            let le = value.to_le_bytes();
            for (b, v) in bytes[start..].iter_mut().zip(&le[..width]) {
                *b = *v;
            }
        }
        Mutation::Truncate { at } => bytes.truncate(at.index(bytes.len())),
        Mutation::Insert { at, bytes: new } => {
            let i = at.index(bytes.len() + 1);
            bytes.splice(i..i, new.iter().copied());
        }
        Mutation::Remove { at, n } => {
            let i = at.index(bytes.len());
            bytes.drain(i..(i + n).min(bytes.len()));
        }
    }
}

/// Parses, and on success decodes every tensor and renders every value; panics only on a
/// broken invariant.
fn exercise(bytes: Vec<u8>) -> Result<usize, String> {
    let len = bytes.len();
    let gguf = match GgufFile::from_vec("mutant", bytes) {
        Ok(g) => g,
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("mutant: "), "{message}");
            return Err(message);
        }
    };
    for (_, v) in gguf.metadata().iter() {
        let _ = v.summary(8);
        let _ = v.to_json(Some(8));
    }
    for info in gguf.tensors() {
        assert!(gguf.tensor_range(info).end <= len);
        let view = gguf.tensor(&info.name).unwrap();
        assert_eq!(view.data.len() as u64, info.size);
        if let Ok(values) = view.to_f32() {
            assert_eq!(values.len() as u64, info.element_count());
        }
        if let Ok(t) = view.to_ternary() {
            assert_eq!(t.values.len() as u64, info.element_count());
        }
    }
    Ok(gguf.tensors().len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn random_mutations_never_panic(mutations in prop::collection::vec(mutation(), 1..6)) {
        let mut bytes = base().bytes();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let len = bytes.len();
        let (_, largest) = largest_alloc(|| exercise(bytes));
        prop_assert!(largest <= alloc_bound(len), "{largest} bytes allocated for {len}");
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz seeds.

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Writes the seed corpus of `fuzz/gguf_reader` (run on purpose: `-- --ignored`).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = repo("fuzz/seeds/gguf_reader");
    std::fs::create_dir_all(&dir).unwrap();
    let put = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();

    let raw = base();
    put("base.gguf", &raw.bytes());
    let mut v2 = raw.clone();
    v2.version = 2;
    put("base-v2.gguf", &v2.bytes());

    // Metadata only, with deep arrays, as a vocab-only file.
    let mut m = base_metadata();
    m.set("t.deep", nested(MAX_ARRAY_DEPTH));
    put("metadata-only.gguf", &write(&m, &[], &[]));

    // Alignment 64, one tensor per decodable type with two rows each.
    let mut m = Metadata::new();
    m.set("general.alignment", Value::U32(64));
    let tensors: [(&str, TensorType, &[u64]); 7] = [
        ("a", TensorType::F32, &[3, 2]),
        ("b", TensorType::F16, &[5, 2]),
        ("c", TensorType::BF16, &[1, 1, 1, 3]),
        ("d", TensorType::Q8_0, &[32, 2]),
        ("e", TensorType::TQ1_0, &[256, 2]),
        ("f", TensorType::TQ2_0, &[256, 2]),
        ("g", TensorType::I2S, &[128, 1]),
    ];
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, ty, dims)| {
            let x = wave(TensorType::element_count(dims).unwrap() as usize, 11);
            match ty {
                TensorType::F32 => float::encode_f32(&x),
                TensorType::F16 => float::encode_f16(&x),
                TensorType::BF16 => float::encode_bf16(&x),
                TensorType::Q8_0 => q8_0::quantize(&x),
                TensorType::TQ1_0 => tq1_0::quantize(&x),
                TensorType::TQ2_0 => tq2_0::quantize(&x),
                _ => i2_s::encode(&[1; 128], 0.5),
            }
        })
        .collect();
    put("align64.gguf", &write(&m, &tensors, &data));

    // The visible bitnet.cpp model's header (tokenizer included) with three of its tensors.
    let model = GgufFile::open(repo("testdata/visible/model-i2_s.gguf")).unwrap();
    let keep = [
        "blk.0.attn_norm.weight",
        "blk.0.attn_k.weight",
        "blk.0.attn_q.weight",
    ];
    let tensors: Vec<(&str, TensorType, &[u64])> = keep
        .iter()
        .map(|name| {
            let info = model.tensor_info(name).unwrap();
            (*name, info.ty, info.dims.as_slice())
        })
        .collect();
    let data: Vec<Vec<u8>> = keep
        .iter()
        .map(|name| model.tensor(name).unwrap().data.to_vec())
        .collect();
    put(
        "model-i2_s-small.gguf",
        &write(model.metadata(), &tensors, &data),
    );
}
