//! The continuous-batching scheduler, driven directly (no HTTP): batch invariance, requests
//! joining and leaving, cancellation, KV cache use, prefix reuse across slots, the queue bound,
//! shutdown, constrained JSON output and log-probabilities.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitnet::formats::gguf::GgufFile;
use bitnet::generate::constraint::ConstraintCompiler;
use bitnet::generate::scheduler::{
    DraftModel, Event, Finished, Job, Scheduler, SchedulerConfig, Sleep, SubmitError,
};
use bitnet::generate::{GenerationConfig, Sampler, SamplerConfig, Session, StopReason};
use bitnet::model::{BitnetModel, CacheType};
use bitnet::tokenizer::{EncodeOptions, Tokenizer};

fn demo() -> (Arc<BitnetModel>, Arc<Tokenizer>) {
    let file = Arc::new(GgufFile::open(demo_path()).unwrap());
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    (Arc::new(demo_model(file).unwrap()), Arc::new(tokenizer))
}

fn demo_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/bitnet-shakespeare-7m-i2_s.gguf")
}

/// The demo model on two threads.
fn demo_model(file: Arc<GgufFile>) -> Result<BitnetModel, bitnet::model::ModelError> {
    let mut model = BitnetModel::from_gguf(file)?;
    model.set_threads(2);
    Ok(model)
}

fn encode(t: &Tokenizer, text: &str) -> Vec<u32> {
    t.encode(
        text,
        EncodeOptions {
            add_bos: true,
            parse_special: false,
        },
    )
}

/// A request's events, collected on a channel.
struct Run {
    rx: mpsc::Receiver<Event>,
}

impl Run {
    /// Every event until the request ends (panics after 60 s).
    fn collect(&self) -> (Vec<u32>, String, Finished, Vec<Event>) {
        let (mut ids, mut text, mut events) = (Vec::new(), String::new(), Vec::new());
        loop {
            match self.rx.recv_timeout(Duration::from_secs(60)).unwrap() {
                Event::Token { id, text: t, .. } => {
                    ids.push(id);
                    text.push_str(&t);
                }
                Event::Done(f) => {
                    text.push_str(&f.tail);
                    return (ids, text, f, events);
                }
                Event::Failed(e) => panic!("failed: {e}"),
                e => events.push(e),
            }
        }
    }
}

fn collector() -> (bitnet::generate::scheduler::Sink, Run) {
    let (tx, rx) = mpsc::channel();
    let sink = Box::new(move |e: Event| match tx.send(e) {
        Ok(()) => ControlFlow::Continue(()),
        Err(_) => ControlFlow::Break(()),
    });
    (sink, Run { rx })
}

fn config(slots: usize) -> SchedulerConfig {
    SchedulerConfig {
        slots,
        n_ctx: 256,
        cache_type: CacheType::F16,
        max_queue: 64,
        prefill_chunk: 7,
        speculative: None,
        sleep: None,
        draft: None,
    }
}

const PROMPTS: [&str; 8] = [
    "ROMEO:\n",
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n",
    "HAMLET:\nTo be, or not to be, that is the question:\n",
    "KING LEAR:\n",
    "MACBETH:\nIs this a dagger which I see before me,\n",
    "OTHELLO:\nIt is the cause, it is the cause, my soul.\n",
    "PORTIA:\nThe quality of mercy is not strained;\n",
    "PUCK:\nIf we shadows have offended,\n",
];

fn sampler(i: usize) -> SamplerConfig {
    // Half greedy, half sampled with a fixed seed.
    if i.is_multiple_of(2) {
        SamplerConfig::greedy()
    } else {
        SamplerConfig {
            seed: 1000 + i as u64,
            ..SamplerConfig::default()
        }
    }
}

#[test]
fn eight_requests_together_give_what_each_gives_alone() {
    let (model, tokenizer) = demo();
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode(&tokenizer, p)).collect();
    let job = |i: usize| {
        let mut j = Job::new(prompts[i].clone(), sampler(i));
        j.max_tokens = Some(24);
        j.ignore_eos = true;
        j
    };
    // Alone: one slot, one request at a time; and the single-sequence session.
    let mut alone = Vec::new();
    {
        let s = Scheduler::start(Arc::clone(&model), Arc::clone(&tokenizer), config(1)).unwrap();
        for i in 0..8 {
            let (sink, run) = collector();
            let _t = s.submit(job(i), sink).unwrap();
            alone.push(run.collect().0);
        }
    }
    for (i, ids) in alone.iter().enumerate() {
        let mut session = Session::new(&model, &tokenizer, 256, CacheType::F16).unwrap();
        let g = session
            .generate(
                &prompts[i],
                &GenerationConfig {
                    max_tokens: Some(24),
                    ignore_eos: true,
                    ..GenerationConfig::default()
                },
                &mut Sampler::new(sampler(i)),
                |_| ControlFlow::Continue(()),
            )
            .unwrap();
        assert_eq!(&g.generated, ids, "request {i}: scheduler vs session");
    }
    // Together: eight slots, submitted at once (prompts are taken in 7 tokens per step, so
    // later requests prefill while earlier ones decode).
    let s = Scheduler::start(Arc::clone(&model), Arc::clone(&tokenizer), config(8)).unwrap();
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let (sink, run) = collector();
            (s.submit(job(i), sink).unwrap(), run)
        })
        .collect();
    for (i, (_ticket, run)) in runs.iter().enumerate() {
        let (ids, _, f, _) = run.collect();
        assert_eq!(ids, alone[i], "request {i}: together vs alone");
        assert_eq!(f.stop, StopReason::MaxTokens);
        assert_eq!(f.generated_tokens, 24);
    }
    let st = s.status();
    assert_eq!(st.generated_tokens, 8 * 24);
    // Batching happened: far fewer steps than tokens.
    assert!(st.steps < 8 * 24, "{} steps", st.steps);
}

#[test]
fn requests_join_and_leave_and_wait_for_a_slot() {
    let (model, tokenizer) = demo();
    let s = Scheduler::start(model, Arc::clone(&tokenizer), config(2)).unwrap();
    let runs: Vec<_> = (0..5)
        .map(|i| {
            let mut j = Job::new(encode(&tokenizer, PROMPTS[i]), SamplerConfig::greedy());
            j.max_tokens = Some(3 + 4 * i);
            j.ignore_eos = true;
            let (sink, run) = collector();
            (s.submit(j, sink).unwrap(), run, 3 + 4 * i)
        })
        .collect();
    let mut finished = Vec::new();
    for (_t, run, n) in &runs {
        let (ids, _, f, _) = run.collect();
        assert_eq!(ids.len(), *n);
        assert_eq!(f.generated_tokens, *n);
        finished.push(f);
    }
    // The last one waited for two others to leave, the first of them at least.
    let slack = Duration::from_millis(20);
    assert!(finished[4].queued + slack >= finished[0].total);
    let st = s.status();
    assert_eq!(st.requests_finished, 5);
    assert_eq!(st.slots_busy(), 0);
    assert_eq!(st.queued, 0);
}

/// llama-server's `id_slot`: a pinned request runs in its slot, waiting for it while it is
/// busy without holding up a request behind it that may take the free one; a slot that does
/// not exist is refused.
#[test]
fn a_request_pinned_to_a_busy_slot_waits_for_it_alone() {
    let (model, tokenizer) = demo();
    let s = Scheduler::start(model, Arc::clone(&tokenizer), config(2)).unwrap();
    let job = |i: usize, n: usize, slot: Option<usize>| {
        let mut j = Job::new(encode(&tokenizer, PROMPTS[i]), SamplerConfig::greedy());
        j.max_tokens = Some(n);
        j.ignore_eos = true;
        j.slot = slot;
        j
    };
    let (sink, long) = collector();
    let a_sent = Instant::now();
    let _a = s.submit(job(0, 48, Some(1)), sink).unwrap();
    // Wait until it holds slot 1.
    loop {
        if let Event::Token { .. } = long.rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            break;
        }
    }
    let (sink, pinned) = collector();
    let _b = s.submit(job(1, 4, Some(1)), sink).unwrap();
    let (sink, free) = collector();
    let c_sent = Instant::now();
    let _c = s.submit(job(2, 4, None), sink).unwrap();
    let (_, _, c, _) = free.collect();
    let (_, _, a, _) = long.collect();
    let (_, _, b, _) = pinned.collect();
    assert_eq!((a.slot, b.slot, c.slot), (Some(1), Some(1), Some(0)));
    // The free request went ahead of the pinned one: it ended while slot 1 still ran the
    // long one (behind a blocked queue head it would have started only after it).
    assert!(c_sent + c.total < a_sent + a.total, "{c:?} {a:?}");
    match s.submit(job(3, 4, Some(2)), collector().0) {
        Err(SubmitError::NoSuchSlot { slot: 2, slots: 2 }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// llama-server's `return_progress`: the prompt's progress when it takes its slot (what the
/// cache holds) and after each piece (here 7 tokens a step), up to the whole prompt, before
/// the first token; a prompt run again starts from its cached prefix.
#[test]
fn prompt_progress_comes_per_piece_before_the_first_token() {
    let (model, tokenizer) = demo();
    let s = Scheduler::start(model, Arc::clone(&tokenizer), config(1)).unwrap();
    let prompt = encode(&tokenizer, PROMPTS[3]);
    let run = |progress: bool| {
        let mut j = Job::new(prompt.clone(), SamplerConfig::greedy());
        j.max_tokens = Some(3);
        j.progress = progress;
        let (sink, run) = collector();
        let _t = s.submit(j, sink).unwrap();
        let mut order = Vec::new();
        loop {
            match run.rx.recv_timeout(Duration::from_secs(60)).unwrap() {
                Event::Progress(p) => order.push(Some(p)),
                Event::Token { .. } => order.push(None),
                Event::Done(_) => return order,
                Event::Failed(e) => panic!("{e}"),
                _ => {}
            }
        }
    };
    for (cached, reports) in [(0, prompt.len().div_ceil(7) + 1), (prompt.len() - 1, 2)] {
        let order = run(true);
        let progress: Vec<_> = order.iter().map_while(|p| *p).collect();
        assert_eq!(progress.len(), reports, "{order:?}");
        assert!(order[reports..].iter().all(Option::is_none), "{order:?}");
        assert_eq!((progress[0].cache, progress[0].processed), (cached, cached));
        for w in progress.windows(2) {
            assert!(
                w[1].processed > w[0].processed && w[1].cache == cached,
                "{w:?}"
            );
            assert!(w[1].processed - w[0].processed <= 7, "{w:?}");
        }
        let last = progress[reports - 1];
        assert_eq!((last.total, last.processed), (prompt.len(), prompt.len()));
    }
    // Without asking, none.
    assert!(run(false).iter().all(Option::is_none));
}

#[test]
fn a_dropped_ticket_cancels_and_frees_the_slot() {
    let (model, tokenizer) = demo();
    let s = Scheduler::start(model, Arc::clone(&tokenizer), config(1)).unwrap();
    let mut j = Job::new(encode(&tokenizer, "ROMEO:\n"), SamplerConfig::greedy());
    j.max_tokens = None;
    j.ignore_eos = true;
    let (sink, run) = collector();
    let ticket = s.submit(j, sink).unwrap();
    // Wait for a few tokens, then go away.
    let mut seen = 0;
    while seen < 3 {
        if let Event::Token { .. } = run.rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            seen += 1;
        }
    }
    drop(ticket);
    // The next request gets the only slot and runs normally.
    let mut j = Job::new(encode(&tokenizer, "JULIET:\n"), SamplerConfig::greedy());
    j.max_tokens = Some(5);
    let (sink2, run2) = collector();
    let _t2 = s.submit(j, sink2).unwrap();
    let (_, _, f, _) = run2.collect();
    assert!(f.generated_tokens <= 5);
    // The cancelled one got no Done.
    let rest: Vec<Event> = run.rx.try_iter().collect();
    assert!(!rest.iter().any(|e| matches!(e, Event::Done(_))));
    assert_eq!(s.status().requests_cancelled, 1);
}

/// The figures routers read: KV cache use counts only what running requests hold (an idle
/// slot's cached prefix is free to overwrite), and the batch size per step adds up.
#[test]
fn kv_cache_usage_counts_running_requests_only() {
    let (model, tokenizer) = demo();
    let s = Scheduler::start(model, Arc::clone(&tokenizer), config(2)).unwrap();
    let st = s.status();
    assert_eq!(st.kv_cache_tokens_capacity(), 2 * 256);
    assert_eq!(st.kv_cache_usage(), 0.0);
    let prompt = encode(&tokenizer, PROMPTS[1]);
    let mut j = Job::new(prompt.clone(), SamplerConfig::greedy());
    j.max_tokens = None;
    j.ignore_eos = true;
    let (sink, run) = collector();
    let ticket = s.submit(j, sink).unwrap();
    let mut seen = 0;
    while seen < 3 {
        if let Event::Token { .. } = run.rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            seen += 1;
        }
    }
    // Published after each step: two steps at least have run since the first token.
    let st = s.status();
    let used = st.kv_cache_tokens_used();
    assert!(used > prompt.len(), "{used} of {}", prompt.len());
    assert_eq!(st.kv_cache_usage(), used as f64 / 512.0);
    assert!(st.kv_cache_usage() <= 0.5);
    assert!(st.sequences_stepped >= st.steps && st.steps > 0);
    assert!(!s.is_shutting_down());
    drop(ticket);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.status().slots_busy() > 0 {
        assert!(
            Instant::now() < deadline,
            "the cancelled request kept its slot"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = s.status();
    assert!(st.slots.iter().any(|slot| slot.cached_tokens > 0));
    assert_eq!(st.kv_cache_tokens_used(), 0);
    assert_eq!(st.kv_cache_usage(), 0.0);
    s.shutdown(Duration::ZERO);
    assert!(s.is_shutting_down());
}

#[test]
fn a_request_goes_to_the_slot_holding_its_prefix() {
    let (model, tokenizer) = demo();
    let s = Scheduler::start(model, Arc::clone(&tokenizer), config(2)).unwrap();
    let run = |prompt: Vec<u32>| {
        let mut j = Job::new(prompt, SamplerConfig::greedy());
        j.max_tokens = Some(6);
        j.ignore_eos = true;
        let (sink, run) = collector();
        let _t = s.submit(j, sink).unwrap();
        let (ids, _, f, events) = run.collect();
        let cached = events.iter().find_map(|e| match e {
            Event::Prompt { cached_tokens, .. } => Some(*cached_tokens),
            _ => None,
        });
        (ids, f, cached)
    };
    let a = encode(&tokenizer, PROMPTS[1]);
    let (ids_a, _, cached) = run(a.clone());
    assert_eq!(cached, Some(0));
    // Another conversation in between takes the other slot...
    let b = encode(&tokenizer, PROMPTS[2]);
    let (_, _, cached) = run(b);
    assert_eq!(cached, Some(0));
    // ...and the continuation of the first finds its tokens: the prompt and all generated
    // tokens but the last (which was sampled, never run).
    let mut cont = a.clone();
    cont.extend_from_slice(&ids_a);
    cont.extend(encode(&tokenizer, "ROMEO:\n").into_iter().skip(1));
    let (_, f, cached) = run(cont);
    assert_eq!(cached, Some(a.len() + ids_a.len() - 1));
    assert_eq!(f.cached_tokens, a.len() + ids_a.len() - 1);
    assert!(s.status().cached_prompt_tokens >= (a.len() + ids_a.len() - 1) as u64);
}

#[test]
fn the_queue_is_bounded() {
    let (model, tokenizer) = demo();
    let s = Scheduler::start(
        model,
        Arc::clone(&tokenizer),
        SchedulerConfig {
            max_queue: 1,
            ..config(1)
        },
    )
    .unwrap();
    let long = || {
        let mut j = Job::new(encode(&tokenizer, "ROMEO:\n"), SamplerConfig::greedy());
        j.max_tokens = None;
        j.ignore_eos = true;
        j
    };
    let (sa, _ra) = collector();
    let (sb, _rb) = collector();
    let (sc, _rc) = collector();
    let _a = s.submit(long(), sa).unwrap();
    let _b = s.submit(long(), sb).unwrap();
    match s.submit(long(), sc) {
        Err(SubmitError::Busy { .. }) => {}
        other => panic!("expected Busy, got {:?}", other.map(|t| t.id())),
    }
    assert!(matches!(
        s.submit(Job::new(Vec::new(), SamplerConfig::greedy()), collector().0),
        Err(SubmitError::EmptyPrompt)
    ));
    assert!(matches!(
        s.submit(
            Job::new(vec![1; 300], SamplerConfig::greedy()),
            collector().0
        ),
        Err(SubmitError::PromptTooLong { .. })
    ));
    assert!(matches!(
        s.submit(
            Job::new(vec![1, 99_999], SamplerConfig::greedy()),
            collector().0
        ),
        Err(SubmitError::TokenOutOfRange { .. })
    ));
}

#[test]
fn shutdown_ends_running_and_waiting_requests_with_a_final_event() {
    let (model, tokenizer) = demo();
    let s = Scheduler::start(model, Arc::clone(&tokenizer), config(1)).unwrap();
    let long = || {
        let mut j = Job::new(encode(&tokenizer, "ROMEO:\n"), SamplerConfig::greedy());
        j.max_tokens = None;
        j.ignore_eos = true;
        j
    };
    let (sa, ra) = collector();
    let (sb, rb) = collector();
    let _a = s.submit(long(), sa).unwrap();
    let _b = s.submit(long(), sb).unwrap();
    // Let the first one generate a little.
    while !matches!(
        ra.rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        Event::Token { .. }
    ) {}
    let t = Instant::now();
    s.shutdown(Duration::from_millis(50));
    assert_eq!(ra.collect().2.stop, StopReason::Shutdown);
    assert_eq!(rb.collect().2.stop, StopReason::Shutdown);
    s.join();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(matches!(
        s.submit(long(), collector().0),
        Err(SubmitError::ShuttingDown)
    ));
}

#[test]
fn constrained_output_follows_the_json_schema() {
    let (model, tokenizer) = demo();
    let compiler = ConstraintCompiler::new(Arc::clone(&tokenizer)).unwrap();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": ["Romeo", "Juliet", "Mercutio"]},
            "age": {"type": "integer", "minimum": 0, "maximum": 99},
            "alive": {"type": "boolean"}
        },
        "required": ["name", "age", "alive"],
        "additionalProperties": false
    });
    let s = Scheduler::start(model, Arc::clone(&tokenizer), config(2)).unwrap();
    for seed in 0..3 {
        let mut j = Job::new(
            encode(&tokenizer, "ROMEO:\n"),
            SamplerConfig {
                seed,
                ..SamplerConfig::default()
            },
        );
        j.max_tokens = Some(64);
        j.constraint = Some(compiler.json_schema(&schema).unwrap());
        let (sink, run) = collector();
        let _t = s.submit(j, sink).unwrap();
        let (_, text, f, _) = run.collect();
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(["Romeo", "Juliet", "Mercutio"].contains(&v["name"].as_str().unwrap()));
        assert!(v["age"].as_u64().unwrap() <= 99);
        assert!(v["alive"].is_boolean());
        assert!(
            matches!(
                f.stop,
                StopReason::Constraint | StopReason::EndOfGeneration(_)
            ),
            "{:?}",
            f.stop
        );
    }
    assert!(compiler.json_schema(&serde_json::json!(3)).is_err());
}

#[test]
fn forced_tool_calls_parse_as_calls_valid_for_their_schemas() {
    use bitnet::generate::tools::{parse_reply, Tools};
    let (model, tokenizer) = demo();
    let compiler = ConstraintCompiler::new(Arc::clone(&tokenizer)).unwrap();
    let defs = serde_json::json!([
        {"type": "function", "function": {"name": "duel", "parameters": {
            "type": "object",
            "properties": {"with": {"type": "string", "enum": ["Tybalt", "Paris"]},
                           "rounds": {"type": "integer", "minimum": 1, "maximum": 3}},
            "required": ["with", "rounds"]}}},
        {"type": "function", "function": {"name": "flee"}}
    ]);
    let s = Scheduler::start(model, Arc::clone(&tokenizer), config(2)).unwrap();
    for (choice, parallel) in [
        (serde_json::json!("required"), false),
        (
            serde_json::json!({"type": "function", "function": {"name": "duel"}}),
            false,
        ),
        (serde_json::json!("required"), true),
    ] {
        let tools = Tools::new(&defs, Some(&choice), parallel).unwrap();
        let mut j = Job::new(encode(&tokenizer, "ROMEO:\n"), SamplerConfig::greedy());
        j.max_tokens = Some(60);
        j.constraint = Some(compiler.lark(&tools.grammar()).unwrap());
        let (sink, run) = collector();
        let _t = s.submit(j, sink).unwrap();
        let (_, text, f, _) = run.collect();
        let reply = parse_reply(&tools, &text);
        assert_eq!(reply.content, None, "{text:?}");
        // Without parallel calls the grammar ends after one; with them, all whole ones count.
        let whole = match f.stop {
            StopReason::MaxTokens => reply.calls.len() - 1,
            _ => reply.calls.len(),
        };
        assert!(whole >= 1, "{choice} {text:?}");
        if !parallel {
            assert_eq!(reply.calls.len(), 1, "{text:?}");
            assert!(!matches!(f.stop, StopReason::MaxTokens), "{text:?}");
        }
        for c in &reply.calls[..whole] {
            let args: serde_json::Value = serde_json::from_str(&c.arguments).unwrap();
            match c.name.as_str() {
                "duel" => {
                    assert!(["Tybalt", "Paris"].contains(&args["with"].as_str().unwrap()));
                    assert!((1..=3).contains(&args["rounds"].as_u64().unwrap()));
                }
                "flee" => assert_eq!(args, serde_json::json!({})),
                other => panic!("{other}"),
            }
            if choice.is_object() {
                assert_eq!(c.name, "duel");
            }
        }
    }
}

#[test]
fn logprobs_of_generated_and_prompt_tokens() {
    let (model, tokenizer) = demo();
    let s = Scheduler::start(model, Arc::clone(&tokenizer), config(1)).unwrap();
    let prompt = encode(&tokenizer, PROMPTS[1]);
    let mut j = Job::new(prompt.clone(), SamplerConfig::greedy());
    j.max_tokens = Some(5);
    j.ignore_eos = true;
    j.logprobs = Some(3);
    j.prompt_logprobs = true;
    // A strong bias makes a token the greedy choice.
    j.logit_bias = vec![(42, 100.0)];
    let (sink, run) = collector();
    let _t = s.submit(j, sink).unwrap();
    let mut prompt_lp = None;
    let mut tokens = Vec::new();
    loop {
        match run.rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            Event::Prompt { logprobs, .. } => prompt_lp = logprobs,
            Event::Token { id, logprob, .. } => tokens.push((id, logprob.unwrap())),
            Event::Done(_) => break,
            Event::Failed(e) => panic!("{e}"),
            Event::Embedding(_) => panic!("an embedding from a generation"),
            Event::Progress(_) => panic!("progress nobody asked for"),
        }
    }
    let prompt_lp = prompt_lp.unwrap();
    assert_eq!(prompt_lp.len(), prompt.len());
    assert!(prompt_lp[0].is_none());
    for (i, lp) in prompt_lp.iter().enumerate().skip(1) {
        let lp = lp.as_ref().unwrap();
        assert_eq!(lp.token, prompt[i]);
        assert!(lp.logprob <= 0.0 && lp.logprob.is_finite());
    }
    for (id, lp) in &tokens {
        assert_eq!(*id, 42);
        assert_eq!(lp.token, 42);
        assert_eq!(lp.top.len(), 3);
        assert_eq!(lp.top[0].0, 42);
        assert!(lp.top[0].1 >= lp.top[1].1 && lp.top[1].1 >= lp.top[2].1);
        assert!(lp.logprob > -0.01, "{}", lp.logprob);
    }
}

#[test]
fn a_full_context_shifts_and_generation_goes_on_as_in_a_session() {
    let (model, tokenizer) = demo();
    let prompt = encode(&tokenizer, "ROMEO:\n");
    let (n_ctx, keep, max_tokens) = (48, 2, 100);
    let job = || {
        let mut j = Job::new(prompt.clone(), SamplerConfig::greedy());
        j.max_tokens = Some(max_tokens);
        j.ignore_eos = true;
        j.context_shift = Some(keep);
        j
    };
    // The single-sequence session shifts the same way (llama.cpp's rule: keep the first
    // `keep` tokens after BOS, drop half of the rest).
    let mut session = Session::new(&model, &tokenizer, n_ctx, CacheType::F16).unwrap();
    let expected = session
        .generate(
            &prompt,
            &GenerationConfig {
                max_tokens: Some(max_tokens),
                ignore_eos: true,
                context_shift: Some(keep),
                ..GenerationConfig::default()
            },
            &mut Sampler::new(SamplerConfig::greedy()),
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(expected.generated.len(), max_tokens);
    let s = Scheduler::start(
        Arc::clone(&model),
        Arc::clone(&tokenizer),
        SchedulerConfig { n_ctx, ..config(2) },
    )
    .unwrap();
    // Two at once, so the shift happens inside a batched step.
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (sink, run) = collector();
            (s.submit(job(), sink).unwrap(), run)
        })
        .collect();
    for (_ticket, run) in &runs {
        let (ids, _, f, _) = run.collect();
        assert_eq!(
            f.stop,
            StopReason::MaxTokens,
            "went past the {n_ctx}-token context"
        );
        assert_eq!(f.generated_tokens, max_tokens);
        assert_eq!(ids, expected.generated);
    }
    // Without the shift the same request stops when the context is full.
    let (sink, run) = collector();
    let mut j = job();
    j.context_shift = None;
    let _t = s.submit(j, sink).unwrap();
    let (ids, _, f, _) = run.collect();
    assert_eq!(f.stop, StopReason::ContextFull);
    assert!(ids.len() < n_ctx);
}

/// Embedding jobs share the steps of generation requests: the vectors equal the library's
/// batched `embed` bit for bit (per-sequence results do not depend on the batch), and a
/// generation running beside them gives the tokens it gives alone.
#[test]
fn embedding_jobs_run_beside_generations() {
    use bitnet::model::EmbedOptions;
    let (model, tok) = demo();
    let mut cfg = config(3);
    cfg.cache_type = CacheType::F32;
    let alone = {
        let s = Scheduler::start(Arc::clone(&model), Arc::clone(&tok), cfg.clone()).unwrap();
        let (sink, run) = collector();
        let mut job = Job::new(encode(&tok, "ROMEO:"), SamplerConfig::greedy());
        job.max_tokens = Some(12);
        let _t = s.submit(job, sink).unwrap();
        run.collect().0
    };
    let s = Scheduler::start(Arc::clone(&model), Arc::clone(&tok), cfg).unwrap();
    let (sink, gen) = collector();
    let mut job = Job::new(encode(&tok, "ROMEO:"), SamplerConfig::greedy());
    job.max_tokens = Some(12);
    let _g = s.submit(job, sink).unwrap();
    let texts = [
        "JULIET:\nO Romeo",
        "What light",
        "A plague o' both your houses",
    ];
    let options = EmbedOptions {
        dimensions: Some(32),
        ..EmbedOptions::default()
    };
    let mut runs = Vec::new();
    for t in texts {
        let (sink, run) = collector();
        runs.push((
            s.submit(Job::embed(encode(&tok, t), options), sink)
                .unwrap(),
            run,
        ));
    }
    for (t, (_ticket, run)) in texts.iter().zip(&runs) {
        let (ids, _, finished, events) = run.collect();
        assert!(ids.is_empty());
        assert_eq!(finished.stop, StopReason::Embedded);
        let vector = events
            .iter()
            .find_map(|e| match e {
                Event::Embedding(v) => Some(v.clone()),
                _ => None,
            })
            .expect("an Embedding event");
        let ids = encode(&tok, t);
        let want = model.embed(&[ids.as_slice()], &options).unwrap().remove(0);
        assert_eq!(vector, want, "{t}");
    }
    assert_eq!(gen.collect().0, alone);
}

/// Speculative decoding in the scheduler is lossless: the same tokens for several requests
/// at once (greedy and seeded, a repeating prompt that drafts well and one that does not),
/// with drafts accepted and counted.
#[test]
fn speculative_slots_give_the_same_tokens() {
    use bitnet::generate::SpecConfig;
    let (model, tok) = demo();
    let passage = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n";
    let prompts = [
        format!("{passage}{passage}{passage}ROMEO:\nBut soft,"),
        "JULIET:\n".to_string(),
        format!("{passage}{passage}"),
    ];
    let samplers = [
        SamplerConfig::greedy(),
        SamplerConfig {
            temperature: 0.9,
            seed: 5,
            ..SamplerConfig::default()
        },
    ];
    let run = |cfg: SchedulerConfig, samplers: &[SamplerConfig]| {
        let s = Scheduler::start(Arc::clone(&model), Arc::clone(&tok), cfg).unwrap();
        let mut out = Vec::new();
        for sampler in samplers {
            let mut runs = Vec::new();
            for p in &prompts {
                let (sink, run) = collector();
                let mut job = Job::new(encode(&tok, p), sampler.clone());
                job.max_tokens = Some(48);
                job.stop = vec!["light".into()];
                runs.push((s.submit(job, sink).unwrap(), run));
            }
            for (_t, r) in &runs {
                let (ids, text, f, _) = r.collect();
                out.push((ids, text, f.stop));
            }
        }
        (out, s.status())
    };
    let (plain, _) = run(config(3), &samplers);
    let ngram = SchedulerConfig {
        speculative: Some(SpecConfig::default()),
        ..config(3)
    };
    let (fast, status) = run(ngram, &samplers);
    assert_eq!(plain, fast);
    assert!(status.spec_drafted_tokens > 0 && status.spec_accepted_tokens > 0);
    assert!(status.spec_accepted_tokens <= status.spec_drafted_tokens);

    // A draft model (here the model itself, which proposes what greedy decoding picks):
    // the same tokens, whatever it drafts and however much of it is kept.
    let drafted = |max, min, p_min| SchedulerConfig {
        draft: Some(DraftModel {
            model: Arc::clone(&model),
            max,
            min,
            p_min,
        }),
        ..config(3)
    };
    for (max, min, p_min) in [(6, 1, 0.0), (4, 2, 0.4), (16, 8, 0.0)] {
        let (fast, status) = run(drafted(max, min, p_min), &samplers);
        assert_eq!(plain, fast, "draft max {max} min {min} p_min {p_min}");
        assert!(status.spec_drafted_tokens > 0, "{max} {min} {p_min}");
    }
    // Through context shifts (the draft cache shifts with the slot's) and a prompt longer
    // than a step's catch-up of the draft cache.
    let shifting = |draft: Option<DraftModel>| {
        let s = Scheduler::start(
            Arc::clone(&model),
            Arc::clone(&tok),
            SchedulerConfig {
                n_ctx: 40,
                draft,
                ..config(2)
            },
        )
        .unwrap();
        let runs: Vec<_> = samplers
            .iter()
            .map(|sampler| {
                let (sink, run) = collector();
                let mut job = Job::new(encode(&tok, &prompts[2]), sampler.clone());
                job.max_tokens = Some(90);
                job.context_shift = Some(3);
                (s.submit(job, sink).unwrap(), run)
            })
            .collect();
        let out: Vec<_> = runs.iter().map(|(_t, r)| r.collect().0).collect();
        (out, s.status())
    };
    let (plain_shifted, _) = shifting(None);
    let (drafted_shifted, status) = shifting(drafted(6, 1, 0.0).draft);
    assert_eq!(plain_shifted, drafted_shifted);
    assert!(plain_shifted.iter().all(|ids| ids.len() == 90));
    assert!(status.spec_drafted_tokens > 0);
    // Greedy requests keep every draft of their own model: the batched verification sees
    // the logits the draft saw one token at a time.
    let (_, status) = run(drafted(6, 1, 0.0), &samplers[..1]);
    assert!(status.spec_drafted_tokens > 0);
    assert_eq!(status.spec_accepted_tokens, status.spec_drafted_tokens);
}

#[test]
fn an_erased_slot_forgets_its_prefix() {
    let (model, tokenizer) = demo();
    let s = Scheduler::start(model, Arc::clone(&tokenizer), config(1)).unwrap();
    let run = |prompt: Vec<u32>| {
        let mut j = Job::new(prompt, SamplerConfig::greedy());
        j.max_tokens = Some(4);
        let (sink, run) = collector();
        let _t = s.submit(j, sink).unwrap();
        let (ids, _, f, _) = run.collect();
        (ids, f)
    };
    let prompt = encode(&tokenizer, PROMPTS[1]);
    let (first, _) = run(prompt.clone());
    let (again, f) = run(prompt.clone());
    assert!(f.cached_tokens > 0);
    let held = s.status().slots[0].cached_tokens;
    assert!(held > 0);
    assert_eq!(s.erase_slot(0).unwrap(), held);
    assert_eq!(s.status().slots[0].cached_tokens, 0);
    let (after, f) = run(prompt);
    assert_eq!(f.cached_tokens, 0);
    // The cache held nothing the output depended on.
    assert_eq!((&first, &again), (&after, &after));
    assert!(matches!(
        s.erase_slot(1),
        Err(bitnet::generate::scheduler::SlotError::NoSuchSlot { slot: 1, slots: 1 })
    ));
    // A slot running a request is not erased.
    let mut j = Job::new(encode(&tokenizer, PROMPTS[2]), SamplerConfig::greedy());
    j.max_tokens = Some(500);
    j.ignore_eos = true;
    let (sink, running) = collector();
    let ticket = s.submit(j, sink).unwrap();
    while !matches!(
        running.rx.recv_timeout(Duration::from_secs(60)).unwrap(),
        Event::Token { .. }
    ) {}
    assert!(matches!(
        s.erase_slot(0),
        Err(bitnet::generate::scheduler::SlotError::Busy(0))
    ));
    drop(ticket);
}

/// Polls the status until `done` holds (panics after 30 s).
fn wait_for(s: &Scheduler, done: impl Fn(&bitnet::generate::scheduler::Status) -> bool) {
    let start = Instant::now();
    while !done(&s.status()) {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A scheduler of `slots` that sleeps after `after_ms` idle and wakes with `reload`.
fn sleeping(
    model: Arc<BitnetModel>,
    tokenizer: &Arc<Tokenizer>,
    after_ms: u64,
    reload: bitnet::generate::scheduler::Reload,
    slots: usize,
) -> Scheduler {
    let sleep = Sleep {
        after: Duration::from_millis(after_ms),
        reload,
        on_sleep: None,
    };
    let config = SchedulerConfig {
        sleep: Some(sleep),
        ..config(slots)
    };
    Scheduler::start(model, Arc::clone(tokenizer), config).unwrap()
}

#[test]
fn an_idle_scheduler_sleeps_without_its_model_and_wakes_for_the_next_request() {
    let (model, tokenizer) = demo();
    let weights = Arc::downgrade(&model);
    let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&loads);
    let reload: bitnet::generate::scheduler::Reload = Arc::new(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(demo_model(Arc::new(GgufFile::open(demo_path())?))?)
    });
    let s = sleeping(model, &tokenizer, 100, reload, 2);
    let job = || Job {
        max_tokens: Some(24),
        ..Job::new(encode(&tokenizer, "ROMEO:\n"), sampler(3))
    };
    let (sink, run) = collector();
    s.submit(job(), sink).unwrap().detach();
    let (awake, _, _, _) = run.collect();

    wait_for(&s, |st| st.sleeping);
    let st = s.status();
    assert_eq!((st.sleeps, st.kv_cache_bytes), (1, 0));
    assert!(st.slots.iter().all(|slot| slot.cached_tokens == 0));
    // The scheduler held the last reference: the weights are gone.
    assert!(weights.upgrade().is_none());
    // Erasing a slot finds it empty and does not wake the model.
    assert_eq!(s.erase_slot(1).unwrap(), 0);
    assert!(s.erase_slot(2).is_err());
    assert!(s.status().sleeping);
    assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 0);

    // The next request loads the model again and gives the same tokens.
    let (sink, run) = collector();
    s.submit(job(), sink).unwrap().detach();
    let (woken, _, finished, _) = run.collect();
    assert_eq!(woken, awake);
    assert_eq!(
        finished.cached_tokens, 0,
        "the cached prefix went with the caches"
    );
    assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_model_that_does_not_load_again_fails_the_request_and_sleeps_on() {
    let (model, tokenizer) = demo();
    let reload: bitnet::generate::scheduler::Reload =
        Arc::new(|| Err("the file is gone".to_string().into()));
    let s = sleeping(model, &tokenizer, 50, reload, 1);
    wait_for(&s, |st| st.sleeping);
    // Each request waiting for the model hears why it did not load.
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let (sink, run) = collector();
            s.submit(Job::new(encode(&tokenizer, "ROMEO:\n"), sampler(0)), sink)
                .unwrap()
                .detach();
            run
        })
        .collect();
    for run in runs {
        match run.rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            Event::Failed(why) => assert!(why.contains("the file is gone"), "{why}"),
            e => panic!("expected a failure, got {e:?}"),
        }
    }
    let st = s.status();
    assert!(st.sleeping);
    assert_eq!((st.queued, st.requests_finished), (0, 3));
    // Shutting down while asleep ends the thread.
    s.shutdown(Duration::ZERO);
    s.join();
}
