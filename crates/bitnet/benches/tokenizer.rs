//! Encode throughput on 1 MB of English: ours against the Hugging Face `tokenizers` crate on
//! the same Llama 3 tokenizer.json and the same text, in the same run, single-threaded.
//!
//! `cargo bench --bench tokenizer`. The text is the license texts of
//! /usr/share/common-licenses repeated to 1,000,000 bytes (or, where that folder is missing,
//! the English of testdata/tokenizer/tokenizer-cases.jsonl).
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
    use std::path::{Path, PathBuf};

    use bitnet::tokenizer::{EncodeOptions, Tokenizer};
    use criterion::{criterion_group, Criterion, Throughput};

    const TEXT_BYTES: usize = 1_000_000;

    fn testdata(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata")
            .join(rel)
    }

    /// About 1 MB of English prose, built the same way on every run.
    fn english_text() -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/usr/share/common-licenses") {
            let mut paths: Vec<PathBuf> = dir
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .collect();
            paths.sort();
            parts.extend(paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
        }
        if parts.is_empty() {
            let cases = std::fs::read_to_string(testdata("tokenizer/tokenizer-cases.jsonl"))
                .unwrap_or_else(|e| panic!("tokenizer-cases.jsonl: {e}"));
            for line in cases.lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    parts.extend(v["text"].as_str().map(str::to_string));
                }
            }
        }
        let one: String = parts.join("\n");
        assert!(!one.is_empty(), "no text to benchmark with");
        let mut text = String::with_capacity(TEXT_BYTES + one.len());
        while text.len() < TEXT_BYTES {
            text.push_str(&one);
        }
        let mut end = TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text
    }

    fn encode_english(c: &mut Criterion) {
        // The tokenizers crate parallelises only batches; make sure it stays on one thread.
        std::env::set_var("TOKENIZERS_PARALLELISM", "false");
        std::env::set_var("RAYON_NUM_THREADS", "1");
        let json = testdata("tokenizer/llama3-tokenizer.json");
        let ours = Tokenizer::load(&json).unwrap_or_else(|e| panic!("{e}"));
        let theirs =
            tokenizers::Tokenizer::from_file(&json).unwrap_or_else(|e| panic!("tokenizers: {e}"));
        let text = english_text();
        let options = EncodeOptions {
            add_bos: false,
            parse_special: false,
        };

        // Same ids, or the comparison means nothing.
        let ids = ours.encode(&text, options);
        let want = theirs
            .encode_fast(text.as_str(), false)
            .unwrap_or_else(|e| panic!("tokenizers: {e}"));
        assert_eq!(
            ids,
            want.get_ids(),
            "the two tokenizers disagree on the text"
        );
        println!(
            "text: {} bytes, {} tokens ({:.2} bytes/token)",
            text.len(),
            ids.len(),
            text.len() as f64 / ids.len() as f64
        );

        let mut group = c.benchmark_group("encode_1MB_english");
        group.throughput(Throughput::BytesDecimal(text.len() as u64));
        group.sample_size(20);
        group.bench_function("bitnet", |b| {
            b.iter(|| ours.encode(black_box(&text), options))
        });
        group.bench_function("hf_tokenizers", |b| {
            b.iter(|| {
                theirs
                    .encode_fast(black_box(text.as_str()), false)
                    .map(|e| e.len())
            })
        });
        group.finish();

        let mut group = c.benchmark_group("decode_1MB_english");
        group.throughput(Throughput::BytesDecimal(text.len() as u64));
        group.sample_size(20);
        group.bench_function("bitnet", |b| b.iter(|| ours.decode(black_box(&ids))));
        group.bench_function("hf_tokenizers", |b| {
            b.iter(|| theirs.decode(black_box(&ids), false))
        });
        group.finish();
    }

    criterion_group!(benches, encode_english);
}
