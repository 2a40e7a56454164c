//! Prompt-lookup speculative decoding is lossless: on the trained demo model, greedy and
//! seeded sampling give the same tokens, text and stop with and without it, on prompts that
//! repeat themselves (many drafts accepted) and that do not (drafts rejected), with stop
//! strings and token limits landing inside a draft; and the session it leaves behind holds
//! exactly the tokens of a plain run (a follow-up turn reusing the cache gives the same
//! result).

use std::ops::ControlFlow;

use bitnet::generate::{DraftModel, GenerationConfig, Sampler, SamplerConfig, Session, SpecConfig};
use bitnet::tokenizer::EncodeOptions;
use bitnet::Model;

const PASSAGE: &str = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n";

fn run(
    model: &Model,
    prompts: &[String],
    sampler: &SamplerConfig,
    config: &GenerationConfig,
) -> Vec<(Vec<u32>, String, String)> {
    run_drafted(model, prompts, sampler, config, None)
}

fn run_drafted(
    model: &Model,
    prompts: &[String],
    sampler: &SamplerConfig,
    config: &GenerationConfig,
    draft: Option<DraftModel>,
) -> Vec<(Vec<u32>, String, String)> {
    let mut session = Session::new(
        model.inner(),
        model.tokenizer(),
        512,
        bitnet::model::CacheType::F16,
    )
    .unwrap();
    session.set_draft_model(draft).unwrap();
    let mut out = Vec::new();
    let mut sequence = Vec::new();
    for p in prompts {
        sequence.extend(model.tokenizer().encode(
            p,
            EncodeOptions {
                add_bos: sequence.is_empty(),
                parse_special: false,
            },
        ));
        let mut s = Sampler::new(sampler.clone());
        let g = session
            .generate(&sequence, config, &mut s, |_| ControlFlow::Continue(()))
            .unwrap();
        sequence.extend_from_slice(&g.generated);
        out.push((
            g.generated.clone(),
            g.text.clone(),
            g.stop.as_str().to_string(),
        ));
        // What the session holds after the run is what a plain run leaves.
        out.push((
            vec![session.context_used() as u32],
            String::new(),
            String::new(),
        ));
    }
    out
}

#[test]
fn the_same_tokens_with_and_without_speculation() {
    let model = Model::demo().unwrap();
    let repeated = format!("{PASSAGE}{PASSAGE}{PASSAGE}ROMEO:\nBut soft,");
    let cases: Vec<Vec<String>> = vec![
        vec![repeated.clone()],
        vec!["JULIET:\n".into()],
        // Two turns in one session: the second reuses the first's cache.
        vec![repeated, "\n\nJULIET:\nAy me!".into()],
    ];
    let samplers = [
        SamplerConfig::greedy(),
        SamplerConfig {
            temperature: 0.8,
            seed: 11,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            temperature: 1.0,
            repeat_penalty: 1.3,
            seed: 3,
            ..SamplerConfig::default()
        },
    ];
    let configs = [
        GenerationConfig {
            max_tokens: Some(96),
            ..GenerationConfig::default()
        },
        GenerationConfig {
            max_tokens: Some(37),
            stop: vec!["sun".into(), "\n\n\n".into()],
            ..GenerationConfig::default()
        },
    ];
    let mut accepted = 0;
    for prompts in &cases {
        for sampler in &samplers {
            for config in &configs {
                let plain = run(&model, prompts, sampler, config);
                for spec in [
                    SpecConfig::default(),
                    SpecConfig {
                        max_draft: 3,
                        min_ngram: 1,
                        max_ngram: 2,
                    },
                ] {
                    let with = GenerationConfig {
                        speculative: Some(spec),
                        ..config.clone()
                    };
                    let fast = run(&model, prompts, sampler, &with);
                    assert_eq!(plain, fast, "{prompts:?} {sampler:?} {config:?} {spec:?}");
                    accepted += 1;
                }
                // A draft model (the model itself: what greedy decoding would pick).
                for (max, min, p_min) in [(6, 1, 0.0), (4, 2, 0.5)] {
                    let draft = DraftModel {
                        model: model.shared_inner(),
                        max,
                        min,
                        p_min,
                    };
                    let fast = run_drafted(&model, prompts, sampler, config, Some(draft));
                    assert_eq!(
                        plain, fast,
                        "{prompts:?} {sampler:?} {config:?} draft {max}"
                    );
                    accepted += 1;
                }
            }
        }
    }
    assert_eq!(accepted, 72);
}

#[test]
fn drafts_are_accepted_on_repeated_text() {
    let model = Model::demo().unwrap();
    let prompt = format!("{PASSAGE}{PASSAGE}{PASSAGE}{PASSAGE}ROMEO:\nBut soft,");
    let mut session = model.session().unwrap();
    let ids = model.tokenize(&prompt);
    let config = GenerationConfig {
        max_tokens: Some(64),
        speculative: Some(SpecConfig::default()),
        ..GenerationConfig::default()
    };
    let mut s = Sampler::new(SamplerConfig::greedy());
    let g = session
        .generate(&ids, &config, &mut s, |_| ControlFlow::Continue(()))
        .unwrap();
    let sp = g.speculative;
    assert!(sp.drafts > 0 && sp.accepted > 0, "{sp:?}");
    assert!(sp.accepted <= sp.drafted);
    // A run stopped by its token limit has run every generated token (as a plain run does).
    assert_eq!(session.context_used(), ids.len() + g.generated.len());
}

#[test]
fn a_draft_model_through_context_shifts() {
    let model = Model::demo().unwrap();
    let ids = model.tokenize(&format!("{PASSAGE}{PASSAGE}"));
    let generate = |draft: Option<DraftModel>, sampler: &SamplerConfig| {
        let mut session = Session::new(
            model.inner(),
            model.tokenizer(),
            64,
            bitnet::model::CacheType::F16,
        )
        .unwrap();
        session.set_draft_model(draft).unwrap();
        let config = GenerationConfig {
            max_tokens: Some(150),
            ignore_eos: true,
            context_shift: Some(4),
            ..GenerationConfig::default()
        };
        let mut s = Sampler::new(sampler.clone());
        session
            .generate(&ids, &config, &mut s, |_| ControlFlow::Continue(()))
            .unwrap()
    };
    let draft = DraftModel {
        model: model.shared_inner(),
        max: 5,
        min: 1,
        p_min: 0.0,
    };
    for sampler in [
        SamplerConfig::greedy(),
        SamplerConfig {
            temperature: 0.9,
            seed: 4,
            ..SamplerConfig::default()
        },
    ] {
        let plain = generate(None, &sampler);
        let fast = generate(Some(draft.clone()), &sampler);
        assert!(plain.shifts.len() >= 2, "{:?}", plain.shifts);
        assert_eq!(
            (&plain.generated, &plain.shifts),
            (&fast.generated, &fast.shifts)
        );
        assert!(fast.speculative.drafted > 0);
        if sampler.temperature <= 0.0 {
            // Its own model drafts what greedy decoding picks: drafts are kept, but where a
            // shifted cache (keys rotated in place) and a draft cache that ran the shifted
            // text afresh part by a rounding.
            let sp = fast.speculative;
            assert!(sp.accepted * 20 >= sp.drafted * 19, "{sp:?}");
        }
    }
    // A draft model of another vocabulary is refused.
    let other = bitnet::Model::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/embedding/qwen3-wide/model.gguf"
    ))
    .unwrap();
    let mut session = model.session().unwrap();
    let refused = session.set_draft_model(Some(DraftModel {
        model: other.shared_inner(),
        ..draft
    }));
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("share the served model's vocabulary"));
}
