//! Parses arbitrary bytes as a GGUF file. The reader must return `Ok` or a typed error, never
//! panic or make an allocation the input's size does not justify; when it accepts a file, every
//! tensor must decode (or fail to) without panicking, and every metadata value must format.
#![no_main]

use bitnet::formats::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(gguf) = GgufFile::from_vec("fuzz", data.to_vec()) else {
        return;
    };
    for (_, value) in gguf.metadata().iter() {
        let _ = value.summary(8);
        let _ = value.to_json(Some(8));
    }
    for info in gguf.tensors() {
        let range = gguf.tensor_range(info);
        assert!(range.end <= data.len());
        let view = gguf.tensor(&info.name).expect("a listed tensor can be fetched");
        assert_eq!(view.data.len() as u64, info.size);
        if let Ok(values) = view.to_f32() {
            assert_eq!(values.len() as u64, info.element_count());
        }
        if let Ok(t) = view.to_ternary() {
            assert_eq!(t.values.len() as u64, info.element_count());
        }
    }
});
