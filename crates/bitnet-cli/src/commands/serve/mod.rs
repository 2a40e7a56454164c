//! `bitnet serve`: an OpenAI-compatible HTTP server with continuous batching, and a web chat
//! page at `/`.
//!
//! The server only translates: HTTP requests into the library's [`Job`]s, and the scheduler's
//! token events into JSON or server-sent events. Slots, batching, prefix reuse, queueing and
//! sampling are the library's [`Scheduler`]; see its documentation.
//!
//! - `openai.rs`: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.
//! - `embeddings.rs`: `/v1/embeddings` (also `/embeddings`, which under `--pooling none` is
//!   llama-server's native one), and llama-server's `/embedding`.
//! - `responses.rs`: `/v1/responses`, translated to a chat completion.
//! - `anthropic.rs`: Anthropic's `/v1/messages` and `/v1/messages/count_tokens`, translated
//!   to a chat completion by the library.
//! - `llama.rs`: llama-server's dialect: `/completion`, `/tokenize`, `/detokenize`,
//!   `/apply-template`, `/props`, `/slots`, and its `timings` and context-overflow error.
//! - `ops.rs`: errors as OpenAI JSON, API key, CORS, the request log, `/metrics`, `/health`,
//!   the request body's deadline.
//! - `conn.rs`: connections: timeouts, connection and header limits, accept errors.
//! - `lifecycle.rs`: binding before the model loads (`/health` 503 "loading"), `/livez`, and
//!   the drain on SIGTERM.
//! - `router_metrics.rs`: `/metrics` in vLLM's and llama-server's names, for routers.
//! - `chat.html`: the web page, compiled into the binary.
//!
//! [`Job`]: bitnet::generate::Job

mod anthropic;
mod conn;
mod embeddings;
mod lifecycle;
mod llama;
mod openai;
mod ops;
mod responses;
mod router_metrics;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use bitnet::generate::constraint::ConstraintCompiler;
use bitnet::generate::{SamplerConfig, Scheduler, SchedulerConfig};
use bitnet::model::human_bytes;
use bitnet::tokenizer::{ChatTemplate, Tokenizer};
use std::io::Write as _;

use crate::model_args::{ModelArgs, SamplingArgs, SpecArgs, TemplateArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Defaults for requests that do not set their own sampling fields (a request without a
    /// `seed` gets a fresh random one unless --seed is given here)
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    template: TemplateArgs,
    /// Speculative decoding for every slot
    #[command(flatten)]
    spec: SpecArgs,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the chosen one is printed)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests generating at once (slots), each with its own KV cache of -c tokens
    #[arg(long = "parallel", visible_alias = "np", default_value_t = 4)]
    parallel: usize,
    /// Requests that may wait for a free slot; beyond that the answer is 503 with Retry-After
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Prompt tokens run per step over all new requests: smaller keeps running streams
    /// smoother while a long prompt is read, larger reads prompts faster (llama-server's
    /// `-b` / `--batch-size`)
    #[arg(long, short = 'b', visible_alias = "batch-size", default_value_t = 128)]
    prefill_chunk: usize,
    /// Model ids, comma-separated (llama-server's): the first in sorted order (as
    /// llama-server keeps them in a sorted set) is shown in responses and /v1/models (which
    /// lists all under `aliases`), any is found at /v1/models/{id} (default: the model's file
    /// name)
    #[arg(short = 'a', long, value_delimiter = ',')]
    alias: Vec<String>,
    /// Model tags, comma-separated, shown in /v1/models (information only, as llama-server's)
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// Require `Authorization: Bearer KEY` (or `X-Api-Key: KEY`) on the API and /metrics
    /// (not on /, /health and the model list);
    /// also read from the BITNET_API_KEY environment variable, which `ps` does not show
    #[arg(long)]
    api_key: Option<String>,
    /// Browser pages allowed to call the API: by default any origin, as llama-server and
    /// vLLM allow; these origins only (repeatable or comma-separated, as llama-server's
    /// --cors-origins); `none` for no CORS headers at all
    #[arg(
        long = "cors-origin",
        visible_alias = "cors-origins",
        value_delimiter = ','
    )]
    cors_origin: Vec<String>,
    /// Default `max_tokens` for requests that do not set it (-1: until end of generation or
    /// a full context, as llama-server's)
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 256,
        allow_negative_numbers = true
    )]
    n_predict: i64,
    /// On SIGTERM or Ctrl-C: seconds running requests may go on before they are ended (keep
    /// it below the orchestrator's grace period, e.g. Kubernetes'
    /// terminationGracePeriodSeconds, 30 by default)
    #[arg(long, default_value_t = 25.0)]
    shutdown_timeout: f64,
    /// When a generation fills its slot's context, keep the first --keep tokens, drop half of
    /// the rest and go on (llama.cpp's context shift) instead of stopping with "length"
    #[arg(long, visible_alias = "context-shift")]
    ctx_shift: bool,
    /// Prompt tokens the context shift never drops, after BOS (-1: the whole prompt);
    /// a request's `n_keep` overrides it
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    keep: i64,
    /// Seconds a client has to send a request's headers, and again its body; a connection
    /// idle that long between requests is closed, and so is one whose client reads nothing
    /// of its response for that long (llama-server's --timeout)
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Connections open at once; more are answered 503 and closed (capped by the limit on
    /// open files, whose soft limit is raised to the hard one at start)
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Folder for `POST /slots/{id}?action=save|restore` with `{"filename": ...}` (a slot's
    /// cached tokens and KV cache, as llama-server's --slot-save-path); without it those
    /// actions answer 501
    #[arg(long)]
    slot_save_path: Option<std::path::PathBuf>,
    /// Answer `GET /slots` with 501, as llama-server's --no-slots
    #[arg(long, overrides_with = "slots")]
    no_slots: bool,
    /// Serve `GET /slots` (the default; llama-server's --slots)
    #[arg(long, overrides_with = "no_slots")]
    slots: bool,
    /// No web chat page: `/` answers 404 (llama-server's --no-webui)
    #[arg(long, overrides_with = "webui")]
    no_webui: bool,
    /// Serve the web chat page at `/` (the default; llama-server's --webui)
    #[arg(long, overrides_with = "no_webui")]
    webui: bool,
    /// Pooling of the embedding endpoints: none (every token's vector, on /embedding only),
    /// mean, cls or last (default: the model's own); `rank` needs a reranker head, which
    /// BitNet models have not
    #[arg(long, value_parser = ["none", "mean", "cls", "last", "rank"])]
    pooling: Option<String>,
    /// Unload the model and the KV caches after this many seconds with no request running
    /// or waiting, and load them again for the next request (llama-server's
    /// --sleep-idle-seconds; -1: never). /health, /props, /metrics and the model list answer
    /// without waking it; cached prompt prefixes are lost
    #[arg(
        long,
        visible_alias = "sleep-idle-seconds",
        default_value_t = -1.0,
        allow_negative_numbers = true
    )]
    sleep_after: f64,
}

/// What the handlers share.
pub(crate) struct AppState {
    /// The model id: the first `--alias`, or the model's file name.
    pub name: String,
    /// Every id `/v1/models/{id}` answers to: the `--alias` list (empty without one).
    pub aliases: Vec<String>,
    /// `--tags`, shown in `/v1/models`.
    pub tags: Vec<String>,
    /// What `-m` named (the demo model's file name without `-m`): `/props`' `model_path`,
    /// which llama-server reports whatever `--alias` says.
    pub model_path: String,
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template, or why it does not compile (then only the chat endpoint fails).
    pub template: Result<ChatTemplate, String>,
    pub scheduler: Scheduler,
    pub constraints: ConstraintCompiler,
    pub defaults: SamplerConfig,
    /// Whether the sampling defaults carry a seed given on the command line (otherwise each
    /// request without one gets a fresh random seed).
    pub fixed_seed: bool,
    /// `-n`: `max_tokens` for requests without one; `None` (-1): until the end of generation
    /// or a full context.
    pub n_predict: Option<usize>,
    pub ctx_shift: bool,
    pub keep: i64,
    pub api_key: Option<String>,
    pub cors: ops::Cors,
    /// `GET /slots` answers (not with `--no-slots`).
    pub slots_endpoint: bool,
    /// `--pooling`: the embedding endpoints' pooling (`None`: the model's own).
    pub pooling: Option<bitnet::model::Pooling>,
    pub metrics: ops::Metrics,
    pub started: std::time::SystemTime,
    /// `--timeout`: the request body's deadline.
    pub timeout: Duration,
    /// The model's vocabulary size (token ids in embedding inputs are checked against it).
    pub n_vocab: usize,
    /// The model's width (an embedding's dimensions).
    pub n_embd: usize,
    /// Whether speculative decoding runs (`--spec ngram` or `--model-draft`).
    pub speculative: bool,
    /// `--slot-save-path`.
    pub slot_save_path: Option<std::path::PathBuf>,
}

/// Descriptors kept free of connections: the listener, the model file, stdio, the runtime's.
const RESERVED_FDS: usize = 64;

/// One line to the log (stderr). A failed write is dropped: the server runs on when its log
/// goes nowhere (`bitnet serve 2>&1 | head` ends the pipe), where `eprintln!` would panic.
pub(crate) fn log(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The bundled demo model's file name.
const DEMO_FILE_NAME: &str = "bitnet-shakespeare-7m-i2_s.gguf";

/// The model id without `--alias`: the file name of what `-m` names (the demo model's file
/// name without `-m`; `hf:` specs as given).
fn model_id(args: &Args) -> String {
    match &args.model.model {
        None => DEMO_FILE_NAME.to_string(),
        Some(m) if !m.starts_with("hf:") => Path::new(m)
            .file_name()
            .map_or_else(|| m.clone(), |f| f.to_string_lossy().into_owned()),
        Some(m) => m.clone(),
    }
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        (1..=256).contains(&args.parallel),
        "--parallel {}: must be between 1 and 256",
        args.parallel
    );
    anyhow::ensure!(
        args.shutdown_timeout.is_finite() && args.shutdown_timeout >= 0.0,
        "--shutdown-timeout {}: must be a number of seconds ≥ 0",
        args.shutdown_timeout
    );
    anyhow::ensure!(
        args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 86_400.0,
        "--timeout {}: must be a number of seconds above 0 (at most a day)",
        args.timeout
    );
    let sleep_after = match args.sleep_after {
        -1.0 => None,
        s if s.is_finite() && s > 0.0 && s <= 1e9 => Some(Duration::from_secs_f64(s)),
        s => anyhow::bail!(
            "--sleep-idle-seconds {s}: must be a number of seconds above 0, or -1 (never)"
        ),
    };
    anyhow::ensure!(
        args.max_connections >= 1,
        "--max-connections 0: must be at least 1"
    );
    let n_predict = crate::model_args::n_predict(args.n_predict)?;
    let cors = ops::Cors::from_flag(&args.cors_origin).map_err(anyhow::Error::msg)?;
    let pooling = match args.pooling.as_deref() {
        None => None,
        Some("rank") => anyhow::bail!(
            "--pooling rank: ranking needs a reranker head (llama-server's --rerank models), \
             which BitNet models have not; use none, mean, cls or last"
        ),
        Some(p) => Some(
            p.parse::<bitnet::model::Pooling>()
                .map_err(anyhow::Error::msg)?,
        ),
    };
    let mut aliases: Vec<String> = Vec::new();
    for a in args.alias.iter().map(|a| a.trim()) {
        anyhow::ensure!(!a.is_empty(), "--alias: an alias must not be empty");
        aliases.push(a.to_string());
    }
    // llama-server keeps its aliases in a `std::set` (sorted, each once): the model id is the
    // smallest.
    aliases.sort();
    aliases.dedup();
    args.template.check()?;
    if let Some(dir) = &args.slot_save_path {
        anyhow::ensure!(
            dir.is_dir(),
            "--slot-save-path {}: not a folder (create it first)",
            dir.display()
        );
    }
    let mut max_connections = args.max_connections;
    if let Some(files) = conn::raise_open_file_limit() {
        let room = files.saturating_sub(RESERVED_FDS).max(1);
        if room < max_connections {
            log(&format!(
                "note: at most {room} connections (the limit on open files is {files}; \
                 raise it with ulimit -Hn)"
            ));
            max_connections = room;
        }
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let defaults = args.sampling.config()?;
    let speculative = args.spec.config()?;
    let fixed_seed = matches!(args.sampling.seed, Some(s) if s >= 0);
    // The port is bound and served before the model loads, so that probes and routers see
    // "loading" (503) instead of a refused connection; see lifecycle.rs.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((
            args.host.as_str(),
            args.port,
        )))
        .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let signals = {
        let _runtime = runtime.enter();
        lifecycle::Signals::install().context("installing the SIGTERM and SIGINT handlers")?
    };
    // (No URL in this line: scripts take the first one as the sign the server is ready.)
    log(&format!(
        "bound {addr}; loading the model (/health answers 503 until it is ready)"
    ));
    let ready = lifecycle::Ready::default();
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
    let grace = Duration::from_secs_f64(args.shutdown_timeout);
    let limits = conn::Limits {
        timeout,
        max_connections,
    };
    let server = runtime.spawn(conn::serve(
        listener,
        lifecycle::front(Arc::clone(&ready)),
        limits,
        lifecycle::course(loaded_rx, grace, signals),
    ));
    lifecycle::hold_load_for_tests();
    let crate::model_args::Loaded {
        model,
        mut tokenizer,
        ..
    } = args.model.load()?;
    args.template.apply(&mut tokenizer)?;
    let name = aliases.first().cloned().unwrap_or_else(|| model_id(&args));
    let model_path = args
        .model
        .model
        .clone()
        .unwrap_or_else(|| DEMO_FILE_NAME.to_string());
    let tokenizer = Arc::new(tokenizer);
    let template = tokenizer.chat_template().map_err(|e| e.to_string());
    if let Err(e) = &template {
        eprintln!(
            "warning: the chat template does not compile ({e}): /v1/chat/completions will \
             answer 500 until the server is restarted with --chat-template"
        );
    }
    let constraints = ConstraintCompiler::new(Arc::clone(&tokenizer))?;
    let threads = model.threads();
    // An embedding model's vectors are compared at 1e-3: f16 keys and values move them by
    // ~6e-3 (measured on the transformers fixtures), so its slots keep f32 caches.
    let mut cache_type = args.model.cache_type;
    if model.config().pooling.is_some() && cache_type == bitnet::model::CacheType::F16 {
        log("note: an embedding model: KV caches in f32 (f16 would move the vectors by ~6e-3)");
        cache_type = bitnet::model::CacheType::F32;
    }
    let (n_vocab, n_embd) = (model.config().n_vocab, model.config().n_embd);
    let draft = args.spec.load_draft(&args.model, &tokenizer)?;
    let is_speculative = speculative.is_some() || draft.is_some();
    // The scheduler holds the only reference to the model, so that sleeping frees it.
    let model = Arc::new(model);
    let sleep = sleep_after.map(|after| {
        let reload_args = args.model.clone();
        let reload: bitnet::generate::scheduler::Reload = Arc::new(move || {
            let start = std::time::Instant::now();
            log("waking up: loading the model again");
            let loaded = reload_args.load_quietly().map_err(|e| format!("{e:#}"))?;
            log(&format!(
                "awake: the model loaded again in {:.2} s",
                start.elapsed().as_secs_f64()
            ));
            Ok(loaded.model)
        });
        let on_sleep: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            log(&format!(
                "sleeping: the model and KV caches are unloaded after {} s idle; the next \
                 request loads them again",
                after.as_secs_f64()
            ))
        });
        bitnet::generate::scheduler::Sleep {
            after,
            reload,
            on_sleep: Some(on_sleep),
        }
    });
    let scheduler = Scheduler::start(
        model,
        Arc::clone(&tokenizer),
        SchedulerConfig {
            slots: args.parallel,
            n_ctx: args.model.ctx_size,
            cache_type,
            max_queue: args.queue,
            prefill_chunk: args.prefill_chunk,
            speculative,
            sleep,
            draft,
        },
    )?;
    let status = scheduler.status();
    log(&format!(
        "{} slots × {} tokens of context, KV cache {} ({}) in all; queue of {}; {} threads",
        args.parallel,
        scheduler.context_size(),
        human_bytes(status.kv_cache_bytes as u64),
        cache_type.name(),
        args.queue,
        threads,
    ));
    let state = Arc::new(AppState {
        name,
        aliases,
        tags: args
            .tags
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        model_path,
        tokenizer,
        template,
        scheduler,
        constraints,
        defaults,
        fixed_seed,
        n_predict,
        ctx_shift: args.ctx_shift,
        keep: args.keep,
        api_key: args
            .api_key
            .clone()
            .or_else(|| std::env::var("BITNET_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        cors,
        // (Whichever of --slots and --no-slots comes last is set.)
        slots_endpoint: args.slots || !args.no_slots,
        pooling,
        metrics: ops::Metrics::default(),
        started: std::time::SystemTime::now(),
        timeout,
        n_vocab,
        n_embd,
        speculative: is_speculative,
        slot_save_path: args.slot_save_path.clone(),
    });
    let mut app = Router::new();
    if args.webui || !args.no_webui {
        app = app.route("/", get(ops::page));
    }
    let app = app
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*id}", get(openai::model))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/embeddings", post(embeddings::unprefixed))
        .route("/embedding", post(embeddings::native))
        // llama-server serves the OpenAI routes without `/v1` too (clients whose base URL
        // lacks it); its `/completions` is the native endpoint, not OpenAI's.
        .route("/models", get(openai::models))
        .route("/chat/completions", post(openai::chat_completions))
        .route(
            "/v1/chat/completions/input_tokens",
            post(openai::chat_input_tokens),
        )
        .route(
            "/chat/completions/input_tokens",
            post(openai::chat_input_tokens),
        )
        .route("/v1/responses", post(responses::responses))
        .route("/responses", post(responses::responses))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .merge(llama::routes())
        // Around the routes only, the outer one first: the API key, then the body. A path no
        // route serves is a 404 without the key, its body unread.
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            ops::read_body,
        ))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            ops::require_key,
        ))
        .fallback(ops::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(ops::MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            ops::gate,
        ))
        .with_state(Arc::clone(&state));
    // The API answers from here on; the course (lifecycle.rs) takes it to the drain.
    let _ = ready.set(app);
    let _ = loaded_tx.send(Arc::clone(&state));
    log(&format!(
        "listening on http://{addr} (model {}; web chat at http://{addr}/)",
        state.name
    ));
    runtime
        .block_on(server)
        .context("the server's task failed")?;
    state.scheduler.join();
    log("stopped");
    Ok(())
}
