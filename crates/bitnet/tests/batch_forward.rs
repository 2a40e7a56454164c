//! Batch invariance of the batched forward pass: a sequence's logits are the same bits whether
//! it runs alone or with seven others in one `forward_batch` (some prefilling while others
//! decode), for every cache type and output matrix format, and so are its greedy tokens.

use std::path::PathBuf;

use bitnet::formats::types::TensorType;
use bitnet::model::{BatchEntry, BitnetModel, CacheType, KvCache, Logits};
use bitnet::tokenizer::{EncodeOptions, Tokenizer};

fn demo_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/bitnet-shakespeare-7m-i2_s.gguf")
}

const PROMPTS: [&str; 8] = [
    "ROMEO:\n",
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n",
    "HAMLET:\nTo be, or not to be, that is the question:\n",
    "KING LEAR:\n",
    "MACBETH:\nIs this a dagger which I see before me,\nThe handle toward my hand?\n",
    "OTHELLO:\nIt is the cause, it is the cause, my soul.\n",
    "PORTIA:\nThe quality of mercy is not strained;\n",
    "PUCK:\nIf we shadows have offended,\nThink but this, and all is mended,\n",
];

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Greedy decoding of one prompt alone: every step's logits.
fn alone(model: &BitnetModel, prompt: &[u32], steps: usize, ty: CacheType) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(256, ty).unwrap();
    let mut logits = model.forward(prompt, &mut cache, Logits::Last).unwrap();
    let mut out = vec![logits.clone()];
    for _ in 1..steps {
        let t = argmax(&logits);
        logits = model.forward(&[t], &mut cache, Logits::Last).unwrap();
        out.push(logits.clone());
    }
    out
}

/// The same prompts decoded together: sequence `i` joins at step `i` (so prefills share a
/// batch with other sequences' decode steps), prompts are fed in chunks of 5 tokens, and
/// each sequence leaves after `steps` logits.
fn together(
    model: &BitnetModel,
    prompts: &[Vec<u32>],
    steps: usize,
    ty: CacheType,
) -> Vec<Vec<Vec<f32>>> {
    struct Seq {
        cache: KvCache,
        fed: usize,
        next: Option<u32>,
        logits: Vec<Vec<f32>>,
    }
    let mut seqs: Vec<Seq> = prompts
        .iter()
        .map(|_| Seq {
            cache: model.new_cache(256, ty).unwrap(),
            fed: 0,
            next: None,
            logits: Vec::new(),
        })
        .collect();
    let mut step = 0;
    while seqs.iter().any(|s| s.logits.len() < steps) {
        let mut inputs: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            if i > step || s.logits.len() >= steps {
                continue;
            }
            let p = &prompts[i];
            let tokens = match s.next {
                Some(t) => vec![t],
                None => p[s.fed..(s.fed + 5).min(p.len())].to_vec(),
            };
            inputs.push((i, tokens));
        }
        let mut batch: Vec<BatchEntry> = Vec::new();
        let mut which = Vec::new();
        for (i, s) in seqs.iter_mut().enumerate() {
            let Some((_, tokens)) = inputs.iter().find(|(j, _)| *j == i) else {
                continue;
            };
            which.push(i);
            batch.push(BatchEntry {
                tokens,
                cache: &mut s.cache,
                logits: Logits::Last,
            });
        }
        let out = if batch.is_empty() {
            Vec::new()
        } else {
            model.forward_batch(&mut batch).unwrap()
        };
        drop(batch);
        for (i, logits) in which.into_iter().zip(out) {
            let s = &mut seqs[i];
            let fed_now = inputs.iter().find(|(j, _)| *j == i).unwrap().1.len();
            if s.next.is_none() {
                s.fed += fed_now;
                if s.fed < prompts[i].len() {
                    continue; // still prefilling: these logits are not a step's
                }
            }
            s.next = Some(argmax(&logits));
            s.logits.push(logits);
        }
        step += 1;
    }
    seqs.into_iter().map(|s| s.logits).collect()
}

#[test]
fn a_sequence_gives_the_same_bits_alone_and_in_a_batch_of_eight() {
    let file = std::sync::Arc::new(bitnet::formats::gguf::GgufFile::open(demo_path()).unwrap());
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| {
            tokenizer.encode(
                p,
                EncodeOptions {
                    add_bos: true,
                    parse_special: false,
                },
            )
        })
        .collect();
    let steps = 12;
    // F16 output (as in the file) with both cache types, then the 8-bit output formats,
    // whose products quantize each row of activations on its own.
    for (output, ty) in [
        (None, CacheType::F16),
        (None, CacheType::F32),
        (Some(TensorType::Q8_0), CacheType::F16),
        (Some(TensorType::Q6K), CacheType::F16),
    ] {
        let mut model = BitnetModel::from_gguf(std::sync::Arc::clone(&file)).unwrap();
        model.set_threads(2);
        if let Some(o) = output {
            model.set_output_type(o).unwrap();
        }
        let batched = together(&model, &prompts, steps, ty);
        let mut firsts = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let solo = alone(&model, p, steps, ty);
            assert_eq!(solo.len(), batched[i].len());
            for (step, (a, b)) in solo.iter().zip(&batched[i]).enumerate() {
                assert!(
                    bits(a) == bits(b),
                    "{output:?} {ty:?}: prompt {i} step {step}: logits differ in a batch"
                );
            }
            let tokens = |l: &[Vec<f32>]| l.iter().map(|x| argmax(x)).collect::<Vec<_>>();
            assert_eq!(tokens(&solo), tokens(&batched[i]));
            firsts.push(bits(&solo[0]));
        }
        // The sequences really are different (a batch mixing up rows would show).
        assert!(firsts.iter().any(|f| *f != firsts[0]));
    }
}

#[test]
fn a_batch_entry_that_does_not_fit_is_refused_before_any_cache_changes() {
    let model = BitnetModel::open(demo_path()).unwrap();
    let mut a = model.new_cache(16, CacheType::F16).unwrap();
    let mut b = model.new_cache(4, CacheType::F16).unwrap();
    let mut batch = [
        BatchEntry {
            tokens: &[1, 2, 3],
            cache: &mut a,
            logits: Logits::Last,
        },
        BatchEntry {
            tokens: &[1, 2, 3, 4, 5],
            cache: &mut b,
            logits: Logits::All,
        },
    ];
    assert!(model.forward_batch(&mut batch).is_err());
    assert_eq!((a.len(), b.len()), (0, 0));
    let mut batch = [
        BatchEntry {
            tokens: &[1, 2, 3],
            cache: &mut a,
            logits: Logits::Last,
        },
        BatchEntry {
            tokens: &[1, 2, 3, 4],
            cache: &mut b,
            logits: Logits::All,
        },
    ];
    let out = model.forward_batch(&mut batch).unwrap();
    let v = model.config().n_vocab;
    assert_eq!((out[0].len(), out[1].len()), (v, 4 * v));
    assert_eq!((a.len(), b.len()), (3, 4));
}
