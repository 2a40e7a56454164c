//! `bitnet bench [-m FILE] -p 128 -n 128 -t 1,2 -r 3 [--json]`: prompt processing (ppN: N random
//! tokens as one batch) and generation (tgN: N tokens one at a time) in tokens/s, like
//! llama-bench, plus a memory-bandwidth probe run in the same invocation so each tg figure is
//! also shown as a fraction of the measured roofline (bytes read per token / bandwidth): the
//! probe runs just before and after every timed generation run, and each run is compared with
//! the mean of its two probes.
//!
//! `-np 1,4,8` adds llama-batched-bench's parallel mode: N sequences, each with its own KV
//! cache, run together through the batched forward pass that `bitnet serve` uses (their
//! prompts in one pass, then one token each per step), reporting the aggregate generation
//! t/s and the time to first token of a request that joins N−1 sequences already generating.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bitnet::formats::types::TensorType;
use bitnet::kernels::Isa;
use bitnet::model::{
    BatchEntry, BitnetModel, CacheType, EmbedOptions, KvCache, Logits, ModelError,
};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// The model: a GGUF file, a Hugging Face folder or hf:OWNER/REPO[:FILE] (default: the
    /// bundled demo model)
    #[arg(short = 'm', long = "model")]
    model: Option<String>,
    /// Prompt lengths to test (pp), comma-separated; 0 skips
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_prompt: Vec<usize>,
    /// Generation lengths to test (tg), comma-separated; 0 skips
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Thread counts, comma-separated (default: all cores)
    #[arg(short = 't', long = "threads", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Repetitions of each test
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    repetitions: usize,
    /// Parallel sequences to test together (llama-batched-bench's mode; `-np 1,4,8` works
    /// too), each with a prompt of the first -p length and the first -n generated tokens
    #[arg(long = "np", alias = "parallel", value_delimiter = ',')]
    np: Vec<usize>,
    /// KV cache type
    #[arg(long, default_value = "f16")]
    cache_type: CacheType,
    /// Context size for the cache (default: the model's)
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    ctx_size: usize,
    /// Kernel instruction set (default: the best this CPU has)
    #[arg(long)]
    isa: Option<Isa>,
    /// Store the output matrix as q8_0 or q6_k (re-encoded at load)
    #[arg(long)]
    output_type: Option<String>,
    #[command(flatten)]
    residency: crate::model_args::Residency,
    /// Where the model runs: cpu, gpu or auto (see `generate --help`)
    #[arg(long, default_value = "cpu")]
    device: bitnet::gpu::Device,
    /// Decode layouts of the I2_S weights to time generation with, comma-separated, each run
    /// in turn per thread count: i2_s, t1_6 (five trits a byte, 20 % fewer bytes; a second
    /// copy next to I2_S's, which prefill keeps) or auto (the faster per layer shape, timed at
    /// load: the default)
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    decode_layout: Vec<String>,
    /// Skip the memory-bandwidth probe
    #[arg(long)]
    no_bandwidth: bool,
    /// Time the prompts as embeddings (`embedN`: the forward pass without the output
    /// product, then pooling and normalisation, as `bitnet embed` runs them); the default for
    /// a model whose file declares a pooling type (the BitNet embedding models)
    #[arg(long)]
    embed: bool,
    /// Also time generation of the first -n length with and without prompt-lookup
    /// speculative decoding, alternating, with the drafts' acceptance: `copyN` (greedy, after a
    /// passage of Romeo and Juliet and its first words again: the model quoting it) and
    /// `sampleN` (seeded sampling after the first -p length of random tokens, at a temperature
    /// as wide as the model's logits spread: text without repeats, so drafts almost never
    /// match, what speculation costs when it cannot help); fails if speculation changed a
    /// token; needs the file's tokenizer
    #[arg(long)]
    spec: bool,
    /// With --spec: draft with this model (same vocabulary; loaded as -m is, same threads)
    /// instead of prompt lookup; the rows say `+draft`
    #[arg(long = "model-draft", value_name = "FILE", requires = "spec")]
    model_draft: Option<String>,
    /// With --model-draft: most tokens drafted per step
    #[arg(long, default_value_t = 8)]
    draft_max: usize,
    /// With --model-draft: a draft stops at a token the draft model gives less probability
    #[arg(long, default_value_t = 0.75)]
    draft_p_min: f32,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
}

struct Row {
    threads: usize,
    test: String,
    /// Generation runs: the decode layout and the bytes each token read.
    decode: Option<(String, f64)>,
    samples: Vec<f64>,
    /// Speculative rows: drafted tokens accepted per drafted token, and tokens drafted per
    /// timed run (how often there was a draft at all).
    acceptance: Option<(f64, f64)>,
    /// The roofline (t/s) next to each sample: generation runs only, when the probe runs.
    rooflines: Vec<f64>,
}

impl Row {
    /// Mean roofline and mean fraction of it (each sample against its own roofline).
    fn roofline(&self) -> Option<(f64, f64)> {
        if self.rooflines.is_empty() || self.rooflines.len() != self.samples.len() {
            return None;
        }
        let n = self.rooflines.len() as f64;
        let fraction = self
            .samples
            .iter()
            .zip(&self.rooflines)
            .map(|(s, r)| s / r)
            .sum::<f64>()
            / n;
        Some((self.rooflines.iter().sum::<f64>() / n, fraction))
    }
}

/// The memory-bandwidth probe of wherever the model runs: the CPU's threads reading a buffer
/// in host memory, or (`gpu`) a kernel reading a buffer in the card's memory.
struct Probe {
    cpu: Option<bitnet::kernels::membw::BandwidthProbe>,
    gpu: bool,
}

impl Probe {
    /// GB/s now, at `threads` for the CPU (`passes` reads); `None` when there is no probe or
    /// the GPU's failed (said in the log).
    fn measure(&self, model: &BitnetModel, threads: usize, passes: usize) -> Option<f64> {
        if self.gpu {
            return match model.gpu_bandwidth(PROBE_BYTES as u64, passes.min(5))? {
                Ok(gbs) => Some(gbs),
                Err(e) => {
                    log::warn!("GPU bandwidth probe failed: {e}");
                    None
                }
            };
        }
        self.cpu.as_ref().map(|p| p.measure(threads, passes))
    }
}

/// Bytes the bandwidth probe reads (well beyond any last-level cache).
const PROBE_BYTES: usize = 512 << 20;
/// Probe passes (best kept) before and after each timed generation run.
const PROBE_PASSES: usize = 3;

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Tokens per second of `repetitions` runs of `run` over `n` tokens, after one untimed run
/// that warms the caches and page tables. `setup` (not timed) prepares each run's input; `run`
/// returns the time its work took (so it can do untimed work around it).
fn measure<S>(
    repetitions: usize,
    n: usize,
    mut setup: impl FnMut(usize) -> Result<S, bitnet::model::ModelError>,
    mut run: impl FnMut(&mut S) -> Result<Duration, bitnet::model::ModelError>,
) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(repetitions);
    for rep in 0..repetitions + 1 {
        let mut input = setup(rep)?;
        let s = run(&mut input)?.as_secs_f64();
        if rep > 0 {
            samples.push(n as f64 / s);
        }
    }
    Ok(samples)
}

/// The layout the ternary weights decode from: one name when every I2_S-based shape uses the
/// same, "mixed" when they differ (`auto` chose per shape), "own" for per-block formats.
fn decode_layout_name(model: &BitnetModel) -> String {
    let mut names: Vec<&str> = model
        .decode_layouts()
        .iter()
        .map(|(_, _, _, l)| l.name())
        .collect();
    names.sort_unstable();
    names.dedup();
    match names.as_slice() {
        [] => "own".into(),
        [one] => (*one).into(),
        _ => "mixed".into(),
    }
}

/// Deterministic "random" token ids, as llama-bench uses random prompts.
fn tokens(n: usize, n_vocab: usize, salt: u64) -> Vec<u32> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ salt;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n_vocab as u64) as u32
        })
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    for &t in &args.threads {
        crate::model_args::check_threads(t)?;
    }
    anyhow::ensure!(
        args.repetitions >= 1,
        "-r 0: at least one repetition is needed"
    );
    let layouts = args
        .decode_layout
        .iter()
        .map(|l| match l.as_str() {
            "auto" => Ok(None),
            l => l.parse::<bitnet::kernels::DecodeLayout>().map(Some),
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| anyhow::anyhow!("--decode-layout: {e}"))?;
    let output_type = args
        .output_type
        .as_deref()
        .map(crate::model_args::output_type)
        .transpose()?;
    let load_start = Instant::now();
    let (name, file) = crate::model_args::open_gguf(args.model.as_deref())?;
    let size = file.file_len();
    let tokenizer = if args.spec {
        Some(bitnet::tokenizer::Tokenizer::from_gguf(&file).map_err(|e| {
            anyhow::anyhow!("--spec generates text, which needs the file's tokenizer: {e}")
        })?)
    } else {
        None
    };
    let options = args.residency.residency().load_options(size);
    let in_memory = options.resident;
    let mut draft_model = match (&args.model_draft, &tokenizer) {
        (Some(path), Some(tokenizer)) => Some(load_draft(path, tokenizer, &args)?),
        _ => None,
    };
    let mut model = BitnetModel::from_gguf_with(file, options)?;
    if let Some(isa) = args.isa {
        anyhow::ensure!(isa.is_available(), "this CPU cannot run {isa} kernels");
        model.set_isa(isa);
    }
    // The output re-encoding is part of what a user waits for at load, so it is timed too.
    if let Some(ty) = output_type {
        model.set_output_type(ty)?;
    }
    model.set_device(args.device)?;
    // The backend column: the CPU's kernels, or the GPU adapter's name.
    let backend = match model.gpu_adapter() {
        Some(a) => format!("GPU {} ({})", a.name, a.backend),
        None => format!("CPU {}", model.isa()),
    };
    let load_s = load_start.elapsed().as_secs_f64();
    let threads = if args.threads.is_empty() {
        vec![model.threads()]
    } else {
        args.threads.clone()
    };
    let n_vocab = model.config().n_vocab;
    let bytes_per_token = model.bytes_read_per_token() as f64;

    // Peak RSS of the load, before the probe allocates its buffer.
    let load_rss = crate::stats::peak_rss_bytes();
    // Where the bandwidth moves from minute to minute (shared cloud hosts), one probe at the
    // end says little about a run minutes earlier: each generation run is measured against
    // probes taken just before and after it.
    // On a GPU the roofline is the card's: its own read probe, not the CPU's.
    let on_gpu = model.gpu_adapter().is_some();
    let probe = if args.no_bandwidth || on_gpu {
        None
    } else {
        bitnet::kernels::membw::BandwidthProbe::new(PROBE_BYTES)
    };
    let probe = Probe {
        cpu: probe,
        gpu: on_gpu && !args.no_bandwidth,
    };
    let mut rows = Vec::new();
    let mut bandwidth: Vec<(usize, Option<f64>)> = Vec::new();
    let embed = args.embed || model.config().pooling.is_some();
    for &t in &threads {
        model.set_threads(t);
        // More threads than CPUs are capped (with a warning): report what ran.
        let t = model.threads();
        for &p in args.n_prompt.iter().filter(|&&p| p > 0) {
            let samples = measure(
                args.repetitions,
                p,
                |rep| {
                    let prompt = tokens(p, n_vocab, rep as u64);
                    let cache = model.new_cache(args.ctx_size.max(p), args.cache_type)?;
                    Ok((prompt, cache))
                },
                |(prompt, cache)| {
                    let start = Instant::now();
                    if embed {
                        model.embed(&[prompt.as_slice()], &EmbedOptions::default())?;
                    } else {
                        model.forward(prompt, cache, Logits::Last)?;
                    }
                    Ok(start.elapsed())
                },
            )?;
            rows.push(Row {
                threads: t,
                test: format!("{}{p}", if embed { "embed" } else { "pp" }),
                decode: None,
                samples,
                rooflines: Vec::new(),
                acceptance: None,
            });
        }
        for (&n, layout) in args
            .n_gen
            .iter()
            .filter(|&&n| n > 0)
            .flat_map(|n| layouts.iter().map(move |l| (n, l)))
        {
            model.set_decode_layout(*layout);
            let bytes_per_token = model.bytes_read_per_token() as f64;
            let layout_name = decode_layout_name(&model);
            let mut probes = Vec::new();
            let samples = measure(
                args.repetitions,
                n,
                |rep| {
                    let ids = tokens(n, n_vocab, 100 + rep as u64);
                    let cache = model.new_cache(args.ctx_size.max(n), args.cache_type)?;
                    Ok((ids, cache, rep))
                },
                |(ids, cache, rep)| {
                    // The untimed warm-up run (rep 0) needs no probes.
                    let measured = *rep > 0;
                    let before = if measured {
                        probe.measure(&model, t, PROBE_PASSES)
                    } else {
                        None
                    };
                    // Only the generation is timed, not the probes.
                    let start = Instant::now();
                    for &id in ids.iter() {
                        model.forward(&[id], cache, Logits::Last)?;
                    }
                    let took = start.elapsed();
                    let after = if measured {
                        probe.measure(&model, t, PROBE_PASSES)
                    } else {
                        None
                    };
                    if let (Some(a), Some(b)) = (before, after) {
                        probes.push((a + b) / 2.0);
                    }
                    Ok(took)
                },
            )?;
            rows.push(Row {
                threads: t,
                test: if layouts.len() > 1 {
                    format!("tg{n} {layout_name}")
                } else {
                    format!("tg{n}")
                },
                decode: Some((layout_name, bytes_per_token)),
                samples,
                rooflines: probes
                    .iter()
                    .map(|gbs| gbs * 1e9 / bytes_per_token)
                    .collect(),
                acceptance: None,
            });
            if !probes.is_empty() {
                let mean = probes.iter().sum::<f64>() / probes.len() as f64;
                bandwidth.retain(|(bt, _)| *bt != t);
                bandwidth.push((t, Some(mean)));
            }
        }
    }
    if let Some(tokenizer) = &tokenizer {
        let p = args.n_prompt.iter().copied().find(|&p| p > 0).unwrap_or(64);
        let n = args.n_gen.iter().copied().find(|&n| n > 0).unwrap_or(128);
        let bos = tokenizer.add_bos_token();
        let copy_prompt = tokenizer.encode(
            &format!("{PASSAGE}\n{}", PASSAGE_START),
            bitnet::tokenizer::EncodeOptions {
                add_bos: bos,
                parse_special: false,
            },
        );
        let temperature = spread_temperature(&model, &tokens(p, n_vocab, 200), args.cache_type)?;
        for &t in &threads {
            model.set_threads(t);
            let t = model.threads();
            // The draft model runs on as many threads (no session holds it between runs).
            let draft = draft_model.take().map(|mut d| {
                if let Some(m) = Arc::get_mut(&mut d.model) {
                    m.set_threads(t);
                }
                d
            });
            // [task][with spec]: samples and (accepted, drafted).
            let mut runs = [
                [(Vec::new(), (0usize, 0usize)), (Vec::new(), (0, 0))],
                Default::default(),
            ];
            // With and without speculation alternate within each repetition, so a load that
            // comes and goes on a shared machine weighs on both alike.
            for rep in 0..args.repetitions + 1 {
                for (task, runs) in runs.iter_mut().enumerate() {
                    let (prompt, sampler) = if task == 0 {
                        (
                            copy_prompt.clone(),
                            bitnet::generate::SamplerConfig::greedy(),
                        )
                    } else {
                        (
                            tokens(p, n_vocab, 200 + rep as u64),
                            wide_sampling(temperature, rep as u64),
                        )
                    };
                    let mut outputs = Vec::new();
                    for (spec, (samples, accepted)) in
                        [None, Some(bitnet::generate::SpecConfig::default())]
                            .into_iter()
                            .zip(runs.iter_mut())
                    {
                        let (spec, drafter) = match (&spec, &draft) {
                            (Some(_), Some(d)) => (None, Some(d.clone())),
                            _ => (spec, None),
                        };
                        let g = spec_run(
                            &model,
                            tokenizer,
                            &prompt,
                            n,
                            (spec, drafter),
                            sampler.clone(),
                            &args,
                        )?;
                        if rep > 0 {
                            samples.push(g.generation_tokens_per_s());
                            accepted.0 += g.speculative.accepted;
                            accepted.1 += g.speculative.drafted;
                        }
                        outputs.push(g.generated);
                    }
                    // Lossless, or the figures mean nothing.
                    anyhow::ensure!(
                        outputs[0] == outputs[1],
                        "speculative decoding changed the output of the {} task",
                        SPEC_TASKS[task]
                    );
                }
            }
            for (task, runs) in runs.into_iter().enumerate() {
                for (with_spec, (samples, accepted)) in runs.into_iter().enumerate() {
                    rows.push(Row {
                        threads: t,
                        test: format!(
                            "{}{n}{}",
                            SPEC_TASKS[task],
                            match (with_spec, &draft) {
                                (0, _) => "",
                                (_, None) => "+spec",
                                (_, Some(_)) => "+draft",
                            }
                        ),
                        decode: None,
                        samples,
                        rooflines: Vec::new(),
                        acceptance: (with_spec == 1).then(|| {
                            let kept = if accepted.1 == 0 {
                                0.0
                            } else {
                                accepted.0 as f64 / accepted.1 as f64
                            };
                            (kept, accepted.1 as f64 / args.repetitions as f64)
                        }),
                    });
                }
            }
            draft_model = draft;
        }
    }
    let mut parallel = Vec::new();
    if !args.np.is_empty() {
        let p = args
            .n_prompt
            .iter()
            .copied()
            .find(|&p| p > 0)
            .unwrap_or(128);
        let n = args.n_gen.iter().copied().find(|&n| n > 0).unwrap_or(128);
        for &t in &threads {
            model.set_threads(t);
            let t = model.threads();
            for &np in &args.np {
                anyhow::ensure!(np >= 1, "-np 0: at least one sequence is needed");
                let ctx = args.ctx_size.max(p + n + 1);
                let mut runs = Vec::with_capacity(args.repetitions);
                for rep in 0..args.repetitions + 1 {
                    let run = parallel_run(&model, np, p, n, ctx, args.cache_type, rep as u64)?;
                    if rep > 0 {
                        runs.push(run);
                    }
                }
                parallel.push((t, np, p, n, runs));
            }
        }
    }
    // Peak RSS of the load and the model runs, without the probe's buffer (resident from
    // after the load to here).
    let peak_rss = match (crate::stats::peak_rss_bytes(), &probe.cpu) {
        (Some(peak), Some(p)) => Some(
            load_rss
                .unwrap_or(0)
                .max(peak.saturating_sub(p.bytes() as u64)),
        ),
        (peak, _) => peak,
    };
    // Thread counts with prompt runs only: one probe for the bandwidth line.
    for r in &rows {
        if !bandwidth.iter().any(|(t, _)| *t == r.threads) {
            bandwidth.push((r.threads, probe.measure(&model, r.threads, 10)));
        }
    }

    let c = model.config();
    let params = model.parameter_count();
    let (linear_type, output_type) = model.weight_formats();
    // The file's type, and the layout it runs in when that differs (TQ repacked as I2_S).
    let linear_label = match model.weight_layouts().first() {
        Some(&(file, layout, _)) if file != layout => format!("{file} as {layout}"),
        _ => linear_type.to_string(),
    };
    let model_name = format!("{} {}L {}", c.arch_name, c.n_layer, linear_label);
    if args.json {
        let results: Vec<_> = rows
            .iter()
            .map(|r| {
                let (mean, sd) = mean_sd(&r.samples);
                json!({
                    "threads": r.threads, "test": r.test, "tokens_per_s": mean, "sd": sd,
                    "samples": r.samples,
                    "roofline_tokens_per_s": r.roofline().map(|(roof, _)| roof),
                    "fraction_of_roofline": r.roofline().map(|(_, f)| f),
                    "sample_rooflines": r.rooflines,
                    "spec_acceptance": r.acceptance.map(|a| a.0),
                    "spec_drafted_per_run": r.acceptance.map(|a| a.1),
                    "decode_layout": r.decode.as_ref().map(|d| d.0.clone()),
                    "decode_bytes_per_token": r.decode.as_ref().map(|d| d.1),
                })
            })
            .collect();
        let out = json!({
            "model": model_name, "file": name, "file_bytes": size,
            "params": params, "linear_type": linear_type.name(), "output_type": output_type.name(),
            "isa": model.isa().name(),
            "gpu_adapter": model.gpu_adapter().map(|a| a.to_string()),
            "weight_layouts": model.weight_layouts().iter().map(|(file, layout, n)| json!({
                "file": file.name(), "layout": layout.name(), "tensors": n,
            })).collect::<Vec<_>>(),
            "kernel_plan": model.kernel_plan().iter().map(|(ty, i, o, isas)| json!({
                "format": ty.name(), "in": i, "out": o,
                "decode": kernel_name(*ty, isas.decode), "prefill": kernel_name(*ty, isas.prefill),
            })).collect::<Vec<_>>(),
            "cache_type": format!("{:?}", args.cache_type).to_lowercase(),
            "load_s": load_s, "weights_in_memory": in_memory, "bytes_read_per_token": bytes_per_token,
            "bandwidth_gb_s": bandwidth.iter().map(|(t, bw)| json!({"threads": t, "gb_s": bw})).collect::<Vec<_>>(),
            "peak_rss_bytes": peak_rss,
            "results": results,
            "parallel": parallel.iter().map(|(t, np, p, n, runs)| {
                let pp: Vec<f64> = runs.iter().map(|r| r.pp_tokens_per_s).collect();
                let tg: Vec<f64> = runs.iter().map(|r| r.tg_tokens_per_s).collect();
                let ttft: Vec<f64> = runs.iter().map(|r| r.ttft_s).collect();
                json!({
                    "threads": t, "np": np, "prompt": p, "generated": n,
                    "pp_tokens_per_s": mean_sd(&pp).0, "tg_tokens_per_s": mean_sd(&tg).0,
                    "tg_tokens_per_s_sd": mean_sd(&tg).1,
                    "tg_tokens_per_s_per_sequence": mean_sd(&tg).0 / *np as f64,
                    "ttft_joining_s": mean_sd(&ttft).0,
                    "samples": runs.iter().map(|r| json!({
                        "pp_tokens_per_s": r.pp_tokens_per_s, "tg_tokens_per_s": r.tg_tokens_per_s,
                        "ttft_joining_s": r.ttft_s,
                    })).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    println!(
        "| model | size | params | backend | threads | test | t/s | roofline |\n\
         | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"
    );
    for r in &rows {
        let (mean, sd) = mean_sd(&r.samples);
        let roof = match (r.roofline(), r.acceptance) {
            (Some((roof, fraction)), _) => format!("{:.0} % of {roof:.1}", 100.0 * fraction),
            (None, Some((a, drafted))) => format!(
                "{drafted:.1} tokens drafted per run, {:.0} % accepted",
                100.0 * a
            ),
            (None, None) => String::new(),
        };
        println!(
            "| {model_name} | {:.2} GiB | {:.2} B | {backend} | {} | {} | {mean:.2} ± {sd:.2} | {roof} |",
            size as f64 / (1u64 << 30) as f64,
            params as f64 / 1e9,
            r.threads,
            r.test,
        );
    }
    if !parallel.is_empty() {
        println!(
            "\n| threads | np | pp | tg | pp t/s (all prompts) | tg t/s (all sequences) | tg t/s per sequence | first token, joining np-1 (s) |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for (t, np, p, n, runs) in &parallel {
            let pp: Vec<f64> = runs.iter().map(|r| r.pp_tokens_per_s).collect();
            let tg: Vec<f64> = runs.iter().map(|r| r.tg_tokens_per_s).collect();
            let ttft: Vec<f64> = runs.iter().map(|r| r.ttft_s).collect();
            let (tg_mean, tg_sd) = mean_sd(&tg);
            println!(
                "| {t} | {np} | {p} | {n} | {:.2} | {tg_mean:.2} ± {tg_sd:.2} | {:.2} | {:.3} |",
                mean_sd(&pp).0,
                tg_mean / *np as f64,
                mean_sd(&ttft).0,
            );
        }
    }
    for (t, bw) in &bandwidth {
        if let Some(bw) = bw {
            let whose = if probe.gpu {
                "GPU memory read bandwidth".to_string()
            } else {
                format!("memory read bandwidth, {t} thread(s)")
            };
            eprintln!(
                "{whose}: {bw:.1} GB/s; {:.2} GB read per token \
                 ({} linears + {} output) → roofline {:.1} t/s",
                bytes_per_token / 1e9,
                linear_type,
                output_type,
                bw * 1e9 / bytes_per_token
            );
        }
    }
    for (file, layout, n) in model.weight_layouts() {
        if file == layout {
            eprintln!("linear weights: {n} × {file}, run in their own layout");
        } else if file.is_ternary() {
            eprintln!(
                "linear weights: {n} × {file}, repacked at load to {layout} (one scale per \
                 tensor; owned memory even with --mmap), run by the {layout} kernels"
            );
        } else {
            eprintln!("linear weights: {n} × {file}, ternarized at load to {layout}");
        }
    }
    let mut seen: Vec<(String, f64)> = Vec::new();
    for (name, bytes) in rows.iter().filter_map(|r| r.decode.clone()) {
        if !seen.iter().any(|(n, _)| *n == name) {
            eprintln!(
                "decode layout {name}: {:.3} GB read per token (ternary weights and output matrix)",
                bytes / 1e9,
            );
            seen.push((name, bytes));
        }
    }
    for (ty, i, o, l) in model.decode_layouts() {
        eprintln!("decode layout for {ty} {i}→{o}: {l} (last one run)");
    }
    for (ty, i, o, isas) in model.kernel_plan() {
        eprintln!(
            "kernels for {ty} {i}→{o}: decode {}, prefill {} (fastest at load)",
            kernel_name(ty, isas.decode),
            kernel_name(ty, isas.prefill)
        );
    }
    eprintln!(
        "load {load_s:.2} s; weights {}; peak RSS {:.2} GB; cache {:?}",
        if in_memory {
            "copied to huge-page memory"
        } else {
            "memory-mapped"
        },
        peak_rss.unwrap_or(0) as f64 / 1e9,
        args.cache_type
    );
    Ok(())
}

/// The `--spec` tasks: `copy` (greedy, the model repeating [`PASSAGE`]) and `sample`
/// (wide sampling after random tokens, [`spread_temperature`]: drafts almost never match).
const SPEC_TASKS: [&str; 2] = ["copy", "sample"];

/// The passage the copy task gives and then starts again (Romeo and Juliet II.2, in the demo
/// model's training text): the model goes on from [`PASSAGE_START`], and drafts come from
/// the passage wherever the model quotes it.
const PASSAGE: &str = "ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.
Arise, fair sun, and kill the envious moon,
Who is already sick and pale with grief,
That thou her maid art far more fair than she:
Be not her maid, since she is envious;
Her vestal livery is but sick and green
And none but fools do wear it; cast it off.
It is my lady, O, it is my love!
O, that she knew she were!
";

/// How the passage starts again after it was given.
const PASSAGE_START: &str = "ROMEO:\nBut, soft! what light";

/// A temperature as wide as the spread (standard deviation) of the model's logits after
/// `prompt`, at least 1: sampling at temperature 1 from a random-weight model, whose logits
/// spread over hundreds, is greedy in all but name, and greedy text loops (drafts match).
fn spread_temperature(model: &BitnetModel, prompt: &[u32], ty: CacheType) -> Result<f32> {
    let mut cache = model.new_cache(prompt.len(), ty)?;
    let logits = model.forward(prompt, &mut cache, Logits::Last)?;
    let (mean, sd) = mean_sd(&logits.iter().map(|&l| f64::from(l)).collect::<Vec<_>>());
    anyhow::ensure!(
        mean.is_finite() && sd.is_finite(),
        "the model's logits are not finite"
    );
    Ok(sd.max(1.0) as f32)
}

/// Sampling from the model's whole distribution (no truncation) at `temperature`, seeded.
fn wide_sampling(temperature: f32, seed: u64) -> bitnet::generate::SamplerConfig {
    bitnet::generate::SamplerConfig {
        temperature,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed,
        ..bitnet::generate::SamplerConfig::greedy()
    }
}

/// One generation of `n` tokens after `prompt` (end-of-generation tokens ignored) in a fresh
/// session, with or without speculation.
fn spec_run(
    model: &BitnetModel,
    tokenizer: &bitnet::tokenizer::Tokenizer,
    prompt: &[u32],
    n: usize,
    (spec, draft): (
        Option<bitnet::generate::SpecConfig>,
        Option<bitnet::generate::DraftModel>,
    ),
    sampler: bitnet::generate::SamplerConfig,
    args: &Args,
) -> Result<bitnet::generate::Generation> {
    let mut session = bitnet::generate::Session::new(
        model,
        tokenizer,
        args.ctx_size.max(prompt.len() + n + 1),
        args.cache_type,
    )?;
    session.set_draft_model(draft)?;
    let config = bitnet::generate::GenerationConfig {
        max_tokens: Some(n),
        ignore_eos: true,
        speculative: spec,
        ..Default::default()
    };
    let mut sampler = bitnet::generate::Sampler::new(sampler);
    Ok(session.generate(prompt, &config, &mut sampler, |_| {
        std::ops::ControlFlow::Continue(())
    })?)
}

/// `--model-draft`, loaded with -m's options, its vocabulary checked against `tokenizer`'s.
fn load_draft(
    path: &str,
    tokenizer: &bitnet::tokenizer::Tokenizer,
    args: &Args,
) -> Result<bitnet::generate::DraftModel> {
    crate::model_args::check_draft_settings(args.draft_max, 0, args.draft_p_min)?;
    let (_, file) = crate::model_args::open_gguf(Some(path))?;
    let theirs = bitnet::tokenizer::Tokenizer::from_gguf(&file)
        .map_err(|e| anyhow::anyhow!("--model-draft {path}: {e}"))?;
    crate::model_args::check_draft_vocabulary(path, tokenizer, &theirs)?;
    let options = args.residency.residency().load_options(file.file_len());
    let mut model = BitnetModel::from_gguf_with(file, options)?;
    if let Some(isa) = args.isa {
        model.set_isa(isa);
    }
    Ok(bitnet::generate::DraftModel {
        model: Arc::new(model),
        max: args.draft_max,
        min: 0,
        p_min: args.draft_p_min,
    })
}

/// One run of the parallel mode.
struct ParallelRun {
    /// Prompt tokens per second with all `np` prompts in one batch.
    pp_tokens_per_s: f64,
    /// Generated tokens per second, all sequences together.
    tg_tokens_per_s: f64,
    /// Seconds until a new request's first token when it joins `np − 1` generating
    /// sequences (its whole prompt in the same step as their next tokens).
    ttft_s: f64,
}

/// `np` sequences with `p`-token prompts (one batched pass), then `n` steps of one token each
/// for all of them, then one more sequence joining `np − 1` of them.
fn parallel_run(
    model: &BitnetModel,
    np: usize,
    p: usize,
    n: usize,
    ctx: usize,
    ty: CacheType,
    rep: u64,
) -> Result<ParallelRun, ModelError> {
    let n_vocab = model.config().n_vocab;
    let mut caches: Vec<KvCache> = (0..np)
        .map(|_| model.new_cache(ctx, ty))
        .collect::<Result<_, _>>()?;
    let prompts: Vec<Vec<u32>> = (0..np)
        .map(|i| tokens(p, n_vocab, 1000 * rep + i as u64))
        .collect();
    let step = |caches: &mut [KvCache], inputs: &[Vec<u32>]| -> Result<(), ModelError> {
        let mut batch: Vec<BatchEntry> = caches
            .iter_mut()
            .zip(inputs)
            .map(|(cache, tokens)| BatchEntry {
                tokens,
                cache,
                logits: Logits::Last,
            })
            .collect();
        model.forward_batch(&mut batch).map(drop)
    };
    let start = Instant::now();
    step(&mut caches, &prompts)?;
    let pp = start.elapsed().as_secs_f64();
    let decode: Vec<Vec<u32>> = (0..n)
        .map(|i| tokens(np, n_vocab, 7_000_000 + 1000 * rep + i as u64))
        .collect();
    let start = Instant::now();
    for ids in &decode {
        let inputs: Vec<Vec<u32>> = ids.iter().map(|&t| vec![t]).collect();
        step(&mut caches, &inputs)?;
    }
    let tg = start.elapsed().as_secs_f64();
    // A request joins: sequence 0 starts over with a fresh prompt while the others decode.
    caches[0].clear();
    let mut inputs: Vec<Vec<u32>> = (0..np)
        .map(|i| vec![(i as u32 + 1) % n_vocab as u32])
        .collect();
    inputs[0] = tokens(p, n_vocab, 9_000_000 + rep);
    let start = Instant::now();
    step(&mut caches, &inputs)?;
    let ttft = start.elapsed().as_secs_f64();
    Ok(ParallelRun {
        pp_tokens_per_s: (np * p) as f64 / pp,
        tg_tokens_per_s: (np * n) as f64 / tg,
        ttft_s: ttft,
    })
}

/// The kernel a layout runs on `isa`: TQ1_0's per-block product has only a scalar one.
fn kernel_name(ty: TensorType, isa: Isa) -> &'static str {
    if ty == TensorType::TQ1_0 {
        "scalar"
    } else {
        isa.name()
    }
}
