//! Continuous batching: many requests generating at once over one model, llama.cpp-server
//! style. A fixed number of slots each own a KV cache; a request takes a free slot (the one
//! whose cached tokens share the longest prefix with its prompt, whose cache it reuses) or
//! waits in a bounded queue. At every step one forward pass runs over all active sequences:
//! each decoding sequence contributes its one new token and each new request a bounded chunk
//! of its prompt, so every weight is read once per step for all of them and running streams
//! keep flowing while a long prompt is taken in. A request joins at the next step and leaves
//! when it stops (end of generation, a stop string, its token budget, a full context, a
//! finished grammar, or cancellation).
//!
//! A sequence's results do not depend on its neighbours ([`BitnetModel::forward_batch`] is
//! batch-invariant) and each request samples with its own seeded RNG, so a request with a
//! fixed seed gives the same tokens alone or among others.
//!
//! The scheduler runs on its own thread; callers talk to it through [`Scheduler::submit`],
//! which hands each request's [`Event`]s to a callback on that thread, and a [`Ticket`] whose
//! drop cancels the request (an HTTP client that goes away drops its response).

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::constraint::Constraint;
use super::sampler::{Sampler, SamplerConfig};
pub use super::speculative::DraftModel;
use super::speculative::{self, DraftCache, SpecConfig};
use super::{find_stop, safe_prefix_len, StopReason};
use crate::model::embed::pool;
use crate::model::{BatchEntry, BitnetModel, CacheType, EmbedOptions, KvCache, Logits, ModelError};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// How the scheduler is set up.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Sequences generating at once, each with its own KV cache.
    pub slots: usize,
    /// Positions each slot's cache holds (0: the model's default context).
    pub n_ctx: usize,
    /// The caches' element type.
    pub cache_type: CacheType,
    /// Requests that may wait for a free slot; beyond that [`Scheduler::submit`] answers
    /// [`SubmitError::Busy`].
    pub max_queue: usize,
    /// Prompt tokens run per step, over all sequences taking in their prompts (at least one
    /// sequence advances each step): bounds how long a step, and so every running stream,
    /// waits for a new request's prompt.
    pub prefill_chunk: usize,
    /// Prompt-lookup speculative decoding for every generating sequence (lossless; see
    /// [`super::speculative`]).
    pub speculative: Option<SpecConfig>,
    /// Unload the model while idle, and load it again for the next request (`None`: keep it
    /// loaded).
    pub sleep: Option<Sleep>,
    /// Speculative decoding with a draft model, in place of [`SchedulerConfig::speculative`]'s
    /// prompt lookup.
    pub draft: Option<DraftModel>,
}

/// Loads the model again after [`Sleep`].
pub type Reload =
    Arc<dyn Fn() -> Result<BitnetModel, Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// Sleeping while idle (llama-server's `--sleep-idle-seconds`, ollama's keep-alive): after
/// `after` with no request running or waiting, the scheduler drops its model and every
/// slot's KV cache, so their memory goes back to the system, and [`Status::sleeping`] says
/// so (a [`DraftModel`]'s caches go too; its weights stay). The next request, or a slot
/// save or restore, loads the model again with `reload` on the scheduler's thread and runs
/// once it has loaded (erasing a slot needs no model: it is empty). The slots' cached
/// prefixes go with their caches.
#[derive(Clone)]
pub struct Sleep {
    /// Idle time before sleeping.
    pub after: Duration,
    /// Loads the same model again (its vocabulary and width must not have changed).
    pub reload: Reload,
    /// Called on the scheduler's thread once the model and caches are freed (a server logs
    /// it).
    pub on_sleep: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleep")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            slots: 4,
            n_ctx: 0,
            cache_type: CacheType::F16,
            max_queue: 256,
            prefill_chunk: 128,
            speculative: None,
            sleep: None,
            draft: None,
        }
    }
}

/// One generation to run.
pub struct Job {
    /// The full prompt, token ids (BOS included where wanted).
    pub prompt: Vec<u32>,
    /// Sampling settings, with the seed this request uses.
    pub sampler: SamplerConfig,
    /// Most tokens to generate (`None`: until a stop or the context is full).
    pub max_tokens: Option<usize>,
    /// Stop before any of these strings (not part of the output).
    pub stop: Vec<String>,
    /// Go on past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Added to the logits of these tokens before sampling (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// Report each generated token's log-probability and this many most likely alternatives.
    pub logprobs: Option<usize>,
    /// With `logprobs`: report them after the sampler chain (penalties, top-k, top-p, min-p,
    /// temperature; greedy gives the pick 1), llama-server's `post_sampling_probs`, instead of
    /// the model's.
    pub post_sampling_probs: bool,
    /// Report every prompt token's log-probability (the prompt is then run whole, not taken
    /// from a cached prefix).
    pub prompt_logprobs: bool,
    /// Output must follow this grammar.
    pub constraint: Option<Constraint>,
    /// When the context fills up: `Some(keep)` drops half of the tokens after the first
    /// `keep` and goes on (llama.cpp's context shift); `None` stops.
    pub context_shift: Option<usize>,
    /// An embedding instead of a generation: the prompt runs whole in one step (no cached
    /// prefix: pooling needs every position's state), then [`Event::Embedding`] and
    /// [`Event::Done`] with [`StopReason::Embedded`].
    pub embedding: Option<EmbedOptions>,
    /// Run on this slot only (llama-server's `id_slot`), waiting for it while it is busy;
    /// requests behind it that may take another slot go ahead. `None`: any slot.
    pub slot: Option<usize>,
    /// Report the prompt's progress ([`Event::Progress`]) when it takes its slot and after
    /// each piece of it runs (llama-server's `return_progress`).
    pub progress: bool,
}

impl Job {
    /// A job with the default settings for `prompt` and `sampler`.
    pub fn new(prompt: Vec<u32>, sampler: SamplerConfig) -> Job {
        Job {
            prompt,
            sampler,
            max_tokens: Some(128),
            stop: Vec::new(),
            ignore_eos: false,
            logit_bias: Vec::new(),
            logprobs: None,
            post_sampling_probs: false,
            prompt_logprobs: false,
            constraint: None,
            context_shift: None,
            embedding: None,
            slot: None,
            progress: false,
        }
    }

    /// An embedding job for `prompt` (see [`Job::embedding`]).
    pub fn embed(prompt: Vec<u32>, options: EmbedOptions) -> Job {
        Job {
            max_tokens: Some(0),
            embedding: Some(options),
            ..Job::new(prompt, SamplerConfig::default())
        }
    }
}

/// A token's log-probability (natural log, from the model's logits with the request's logit
/// bias applied, before penalties, temperature and truncation) and the most likely
/// alternatives at its position, most likely first.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities.
    pub top: Vec<(u32, f32)>,
}

/// What a request's callback receives, in this order: `Prompt` once, then `Token`s, then
/// one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// The prompt has run.
    Prompt {
        /// The slot the request runs in.
        slot: usize,
        /// Prompt tokens whose cache was reused from an earlier request.
        cached_tokens: usize,
        /// With [`Job::prompt_logprobs`]: one per prompt token (`None` for the first).
        logprobs: Option<Vec<Option<TokenLogprob>>>,
    },
    /// A generated token, with the text it completes (possibly empty: a partial UTF-8
    /// character, or text that may be the start of a stop string, is held back).
    Token {
        /// The token id.
        id: u32,
        /// The text it completes.
        text: String,
        /// With [`Job::logprobs`]: its log-probability and the alternatives.
        logprob: Option<TokenLogprob>,
    },
    /// How far the prompt has run ([`Job::progress`]): sent when the request takes its slot
    /// (`processed` equal to `cache`) and after each piece of the prompt, the last with
    /// `processed` equal to `total`.
    Progress(PromptProgress),
    /// An embedding job's vector (before its `Done`).
    Embedding(Vec<f32>),
    /// The request ended normally.
    Done(Finished),
    /// The request could not run (the model failed).
    Failed(String),
}

/// A prompt's progress, in llama-server's `prompt_progress` terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PromptProgress {
    /// Tokens in the prompt.
    pub total: usize,
    /// Of those, taken from the slot's cache.
    pub cache: usize,
    /// Of those, in the cache now (the cached ones included).
    pub processed: usize,
    /// Milliseconds since the request took its slot.
    pub time_ms: f64,
}

/// How a request ended, with its figures.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Why it ended.
    pub stop: StopReason,
    /// Text held back until the end (the rest of a partial character or stop-string prefix).
    pub tail: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose cache was reused.
    pub cached_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Time spent waiting for a slot.
    pub queued: Duration,
    /// From submission to the first generated token.
    pub time_to_first_token: Duration,
    /// From submission to the end.
    pub total: Duration,
    /// The seed the request's sampler used.
    pub seed: u64,
    /// The slot it ran in (`None`: it ended before reaching one).
    pub slot: Option<usize>,
    /// Context shifts while it generated ([`Job::context_shift`]): tokens of its context
    /// were dropped (llama-server reports such a generation as `truncated`).
    pub context_shifts: usize,
}

impl Finished {
    /// Generated tokens per second after the first (the first comes with the prompt).
    pub fn generation_tokens_per_s(&self) -> f64 {
        let t = self.total.saturating_sub(self.time_to_first_token);
        if self.generated_tokens < 2 || t.is_zero() {
            0.0
        } else {
            (self.generated_tokens - 1) as f64 / t.as_secs_f64()
        }
    }
}

/// Why a request was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error("the server is busy: {queued} requests are already waiting for a free slot")]
    Busy {
        /// Requests waiting.
        queued: usize,
    },
    /// [`Scheduler::shutdown`] was called.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// No prompt tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The prompt does not fit a slot's context.
    #[error("the prompt has {prompt} tokens but a slot's context holds {capacity}")]
    PromptTooLong {
        /// Tokens in the prompt.
        prompt: usize,
        /// Positions a slot holds.
        capacity: usize,
    },
    /// A prompt token outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {n_vocab} tokens")]
    TokenOutOfRange {
        /// The id.
        token: u32,
        /// The vocabulary's size.
        n_vocab: usize,
    },
    /// [`Job::slot`] names a slot that does not exist.
    #[error("there is no slot {slot}: this server has {slots} (0 to {})", .slots - 1)]
    NoSuchSlot {
        /// The slot asked for.
        slot: usize,
        /// Slots there are.
        slots: usize,
    },
}

/// Why a slot's cache could not be erased, saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// No slot has this index.
    #[error("there is no slot {slot}: this scheduler has {slots} (0 to {})", .slots - 1)]
    NoSuchSlot {
        /// The index asked for.
        slot: usize,
        /// Slots there are.
        slots: usize,
    },
    /// The slot is running a request.
    #[error("slot {0} is running a request")]
    Busy(usize),
    /// The scheduler has stopped.
    #[error("the scheduler has stopped")]
    Stopped,
    /// The model did not load again after [`Sleep`].
    #[error("the model did not load again after sleeping: {0}")]
    Reload(String),
    /// Saving or restoring the slot's cache failed.
    #[error("{file}: {source}")]
    File {
        /// The file's name.
        file: String,
        /// Why.
        source: crate::model::KvFileError,
    },
}

/// What [`Scheduler::save_slot`] or [`Scheduler::restore_slot`] moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotFile {
    /// Tokens (cache positions) saved or restored.
    pub tokens: usize,
    /// Bytes of the file.
    pub bytes: u64,
}

/// Receives a request's events on the scheduler's thread; `Break` cancels the request.
pub type Sink = Box<dyn FnMut(Event) -> ControlFlow<()> + Send>;

/// A submitted request. Dropping it cancels the request (it leaves at the next step);
/// [`Ticket::detach`] lets it run to its end instead.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    cancel: Arc<AtomicBool>,
    detached: bool,
}

impl Ticket {
    /// The request's id (unique within the scheduler, as [`SlotStatus::request`] shows it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Cancels the request: it leaves at the next step, and its sink hears nothing more.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Keeps the request running after the ticket is dropped.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.detached {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
}

/// What a slot is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// No request.
    Idle,
    /// Taking in a prompt.
    Prompt,
    /// Generating tokens.
    Generating,
}

impl SlotState {
    /// `idle`, `prompt` or `generating`.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Idle => "idle",
            SlotState::Prompt => "prompt",
            SlotState::Generating => "generating",
        }
    }
}

/// One slot as [`Scheduler::status`] shows it.
#[derive(Clone, Debug)]
pub struct SlotStatus {
    /// What it is doing.
    pub state: SlotState,
    /// Tokens in its cache (kept after a request, for prefix reuse).
    pub cached_tokens: usize,
    /// Positions its cache holds.
    pub n_ctx: usize,
    /// The request it runs.
    pub request: Option<u64>,
}

/// A snapshot of the scheduler, and its counters since start.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Every slot.
    pub slots: Vec<SlotStatus>,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Bytes of KV cache allocated for all slots (the bound on its memory).
    pub kv_cache_bytes: usize,
    /// Requests that ended or failed (cancelled ones are counted apart).
    pub requests_finished: u64,
    /// Requests cancelled.
    pub requests_cancelled: u64,
    /// Prompt tokens of all requests.
    pub prompt_tokens: u64,
    /// Prompt tokens served from a slot's cached prefix.
    pub cached_prompt_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Forward passes run.
    pub steps: u64,
    /// Sequences run, over all forward passes (a pass's batch size, summed): over `steps`,
    /// the mean batch (llama-server's `n_busy_slots_per_decode`).
    pub sequences_stepped: u64,
    /// Seconds spent in forward passes.
    pub busy_seconds: f64,
    /// Generated tokens per second over recent steps, all sequences together.
    pub generation_tokens_per_s: f64,
    /// Speculative decoding: tokens drafted, and those the sampler kept.
    pub spec_drafted_tokens: u64,
    /// Drafted tokens accepted.
    pub spec_accepted_tokens: u64,
    /// Whether [`Scheduler::shutdown`] was called.
    pub shutting_down: bool,
    /// Whether the model and the KV caches are unloaded while idle ([`Sleep`]); the next
    /// request loads them again.
    pub sleeping: bool,
    /// Times the scheduler went to sleep.
    pub sleeps: u64,
}

impl Status {
    /// Slots running a request.
    pub fn slots_busy(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state != SlotState::Idle)
            .count()
    }

    /// KV cache positions held by running requests. An idle slot's cached tokens are not
    /// counted: the next request that does not share them overwrites them (as vLLM counts a
    /// prefix-cached block no running request holds as free).
    pub fn kv_cache_tokens_used(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state != SlotState::Idle)
            .map(|s| s.cached_tokens)
            .sum()
    }

    /// KV cache positions in all slots.
    pub fn kv_cache_tokens_capacity(&self) -> usize {
        self.slots.iter().map(|s| s.n_ctx).sum()
    }

    /// [`Status::kv_cache_tokens_used`] as a fraction of the capacity, 0 to 1 (what routers
    /// read as vLLM's `kv_cache_usage_perc`).
    pub fn kv_cache_usage(&self) -> f64 {
        let capacity = self.kv_cache_tokens_capacity();
        if capacity == 0 {
            0.0
        } else {
            self.kv_cache_tokens_used() as f64 / capacity as f64
        }
    }
}

enum Msg {
    Submit(Box<Pending>),
    Shutdown {
        grace: Duration,
    },
    /// Forget an idle slot's cached tokens; the answer is how many.
    Erase {
        slot: usize,
        reply: mpsc::Sender<Result<usize, SlotError>>,
    },
    /// Write an idle slot's cache to a file, or read one into it.
    File {
        slot: usize,
        model: String,
        path: std::path::PathBuf,
        restore: bool,
        reply: mpsc::Sender<Result<SlotFile, SlotError>>,
    },
}

/// A submitted request, before and while it runs.
struct Pending {
    id: u64,
    job: Job,
    sink: Sink,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
}

struct Shared {
    status: Mutex<Status>,
    /// Requests submitted and not yet in a slot.
    waiting: AtomicUsize,
    idle_slots: AtomicUsize,
    shutting_down: AtomicBool,
}

/// The scheduler's handle: submit requests, read its status, shut it down.
pub struct Scheduler {
    tx: Mutex<mpsc::Sender<Msg>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    next_id: AtomicU64,
    max_queue: usize,
    n_ctx: usize,
    n_vocab: usize,
    n_slots: usize,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("n_ctx", &self.n_ctx)
            .field("max_queue", &self.max_queue)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Allocates every slot's cache (so the KV memory is bounded and known from the start;
    /// an error, not an abort, when it does not fit) and starts the scheduler's thread.
    pub fn start(
        model: Arc<BitnetModel>,
        tokenizer: Arc<Tokenizer>,
        config: SchedulerConfig,
    ) -> Result<Scheduler, ModelError> {
        let n_slots = config.slots.max(1);
        let slots = new_slots(&model, n_slots, config.n_ctx, config.cache_type)?;
        let n_ctx = slots[0].cache.capacity();
        let mut drafter = match config.draft {
            Some(d) => Some(Drafter::new(
                d,
                &model,
                n_slots,
                n_ctx,
                config.cache_type,
                config.prefill_chunk,
            )?),
            None => None,
        };
        let kv_cache_bytes = cache_bytes(&slots, drafter.as_ref());
        let status = Status {
            slots: slots
                .iter()
                .map(|s| SlotStatus {
                    state: SlotState::Idle,
                    cached_tokens: 0,
                    n_ctx: s.cache.capacity(),
                    request: None,
                })
                .collect(),
            kv_cache_bytes,
            ..Status::default()
        };
        let shared = Arc::new(Shared {
            status: Mutex::new(status),
            waiting: AtomicUsize::new(0),
            idle_slots: AtomicUsize::new(n_slots),
            shutting_down: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let n_vocab = model.config().n_vocab;
        let thread_shared = Arc::clone(&shared);
        let prefill_chunk = config.prefill_chunk.max(1);
        let speculative = config.speculative;
        let reloader = Reloader {
            n_slots,
            n_ctx,
            cache_type: config.cache_type,
            n_vocab,
            n_embd: model.config().n_embd,
        };
        let sleep = config.sleep;
        let thread = std::thread::Builder::new()
            .name("bitnet-scheduler".into())
            .spawn(move || {
                let mut loaded = Some(Woken {
                    model,
                    slots,
                    first: None,
                });
                let mut clock = 0;
                while let Some(Woken {
                    model,
                    slots,
                    first,
                }) = loaded.take()
                {
                    let mut engine = Engine {
                        model: &model,
                        tokenizer: &tokenizer,
                        slots,
                        queue: VecDeque::new(),
                        active: Vec::new(),
                        shared: &thread_shared,
                        prefill_chunk,
                        speculative,
                        clock,
                        deadline: None,
                        rate: 0.0,
                        sleep_after: sleep.as_ref().map(|s| s.after),
                        drafter: drafter.take(),
                    };
                    if let Some(msg) = first {
                        engine.receive(msg);
                    }
                    if !engine.run(&rx) {
                        break;
                    }
                    clock = engine.clock;
                    drafter = engine.drafter.take();
                    // Asleep: the caches and (with the last holder of the Arc) the weights
                    // are freed before anything else happens; a draft model keeps its
                    // weights but not its caches.
                    drop(engine);
                    drop(model);
                    if let Some(d) = &mut drafter {
                        d.slots = Vec::new();
                    }
                    reloader.fell_asleep(&thread_shared);
                    if let Some(sleep) = &sleep {
                        if let Some(on_sleep) = &sleep.on_sleep {
                            on_sleep();
                        }
                        loaded = reloader.wake(&rx, &thread_shared, sleep, &mut drafter);
                    }
                }
            })
            .map_err(|e| ModelError::Unsupported {
                file: "scheduler".into(),
                message: format!("cannot start the scheduler thread: {e}"),
            })?;
        Ok(Scheduler {
            tx: Mutex::new(tx),
            shared,
            thread: Mutex::new(Some(thread)),
            next_id: AtomicU64::new(1),
            max_queue: config.max_queue,
            n_ctx,
            n_vocab,
            n_slots,
        })
    }

    /// Positions each slot's context holds.
    pub fn context_size(&self) -> usize {
        self.n_ctx
    }

    /// Queues a request. Its events go to `sink` on the scheduler's thread; the returned
    /// ticket cancels it when dropped. Refused at once when the prompt cannot run, when the
    /// queue is full, or while shutting down.
    pub fn submit(&self, job: Job, sink: Sink) -> Result<Ticket, SubmitError> {
        if job.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if let Some(&token) = job.prompt.iter().find(|&&t| t as usize >= self.n_vocab) {
            return Err(SubmitError::TokenOutOfRange {
                token,
                n_vocab: self.n_vocab,
            });
        }
        if let Some(slot) = job.slot.filter(|&s| s >= self.n_slots) {
            return Err(SubmitError::NoSuchSlot {
                slot,
                slots: self.n_slots,
            });
        }
        if job.prompt.len() > self.n_ctx {
            return Err(SubmitError::PromptTooLong {
                prompt: job.prompt.len(),
                capacity: self.n_ctx,
            });
        }
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        // Requests may wait beyond the idle slots up to the queue's bound.
        let limit = self.max_queue + self.shared.idle_slots.load(Ordering::SeqCst);
        let waiting = self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= limit {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Busy { queued: waiting });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(false));
        let pending = Pending {
            id,
            job,
            sink,
            cancel: Arc::clone(&cancel),
            submitted: Instant::now(),
        };
        let sent = self
            .tx
            .lock()
            .map_err(|_| SubmitError::ShuttingDown)?
            .send(Msg::Submit(Box::new(pending)));
        if sent.is_err() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(Ticket {
            id,
            cancel,
            detached: false,
        })
    }

    /// The slots, the queue and the counters.
    pub fn status(&self) -> Status {
        let mut s = self
            .shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.queued = self.shared.waiting.load(Ordering::SeqCst);
        s.shutting_down = self.shared.shutting_down.load(Ordering::SeqCst);
        s
    }

    /// Stops taking requests; those running may finish for `grace`, then every request still
    /// running or waiting ends with [`StopReason::Shutdown`] (its callback gets a `Done`).
    /// Returns at once; [`Scheduler::join`] waits for the end.
    pub fn shutdown(&self, grace: Duration) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(Msg::Shutdown { grace });
        }
    }

    /// Forgets the tokens an idle slot keeps cached for prefix reuse (llama-server's slot
    /// `erase`); returns how many there were. Waits for the scheduler's current step.
    pub fn erase_slot(&self, slot: usize) -> Result<usize, SlotError> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .lock()
            .map_err(|_| SlotError::Stopped)?
            .send(Msg::Erase { slot, reply })
            .map_err(|_| SlotError::Stopped)?;
        answer.recv().map_err(|_| SlotError::Stopped)?
    }

    /// Writes an idle slot's cached tokens and their KV cache to `path` (llama-server's slot
    /// `save`), with `model` in the file's header; the file appears whole or not at all.
    /// Waits for the scheduler's current step, and blocks the next while it writes.
    pub fn save_slot(
        &self,
        slot: usize,
        model: &str,
        path: &std::path::Path,
    ) -> Result<SlotFile, SlotError> {
        self.slot_file(slot, model, path, false)
    }

    /// Reads a file [`Scheduler::save_slot`] wrote into an idle slot (llama-server's slot
    /// `restore`): a later request whose prompt starts with its tokens reuses them. A file of
    /// another model (`model` must be the name it was saved with), cache type or shape is
    /// refused with the reason, and the slot keeps what it had.
    pub fn restore_slot(
        &self,
        slot: usize,
        model: &str,
        path: &std::path::Path,
    ) -> Result<SlotFile, SlotError> {
        self.slot_file(slot, model, path, true)
    }

    fn slot_file(
        &self,
        slot: usize,
        model: &str,
        path: &std::path::Path,
        restore: bool,
    ) -> Result<SlotFile, SlotError> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .lock()
            .map_err(|_| SlotError::Stopped)?
            .send(Msg::File {
                slot,
                model: model.to_string(),
                path: path.to_path_buf(),
                restore,
                reply,
            })
            .map_err(|_| SlotError::Stopped)?;
        answer.recv().map_err(|_| SlotError::Stopped)?
    }

    /// Whether [`Scheduler::shutdown`] was called (cheaper than [`Scheduler::status`]).
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }

    /// Waits for the scheduler's thread to end (after [`Scheduler::shutdown`]).
    pub fn join(&self) {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
        self.join();
    }
}

/// A cache and the tokens it holds.
struct Slot {
    cache: KvCache,
    tokens: Vec<u32>,
    /// When it last took a request (the scheduler's step count), to keep the most recently
    /// used caches for prefix reuse.
    last_used: u64,
}

/// A request in a slot.
struct Active<'t> {
    p: Pending,
    slot: usize,
    sampler: Sampler,
    decoder: StreamDecoder<'t>,
    /// Text produced but not yet sent (it may be the start of a stop string).
    held: String,
    /// Prompt tokens in the cache.
    fed: usize,
    cached: usize,
    /// The last sampled token, to run at the next step.
    next: Option<u32>,
    /// Tokens drafted after `next` in this step (speculative decoding), to verify.
    draft: Vec<u32>,
    /// The next draft's length (adapts as in `Run`).
    draft_len: usize,
    generated: usize,
    prompt_logprobs: Vec<Option<TokenLogprob>>,
    started: Instant,
    first_token: Option<Duration>,
    /// Context shifts so far.
    context_shifts: usize,
}

struct Engine<'a> {
    model: &'a BitnetModel,
    tokenizer: &'a Tokenizer,
    slots: Vec<Slot>,
    queue: VecDeque<Pending>,
    active: Vec<Active<'a>>,
    shared: &'a Shared,
    prefill_chunk: usize,
    speculative: Option<SpecConfig>,
    /// Steps run.
    clock: u64,
    /// Once shutting down: when running requests are ended.
    deadline: Option<Instant>,
    /// Smoothed generated tokens per second.
    rate: f64,
    /// [`Sleep::after`].
    sleep_after: Option<Duration>,
    /// [`SchedulerConfig::draft`].
    drafter: Option<Drafter>,
}

/// What became of a request after a step.
enum Outcome {
    Continue,
    Stop(StopReason),
    Cancelled,
    Failed(String),
}

impl<'a> Engine<'a> {
    /// Runs until the scheduler stops (false) or, with [`Sleep`], has been idle long enough
    /// to sleep (true).
    fn run(&mut self, rx: &mpsc::Receiver<Msg>) -> bool {
        loop {
            if self.active.is_empty() && self.queue.is_empty() {
                if self.deadline.is_some() {
                    break;
                }
                self.publish();
                let msg = match self.sleep_after {
                    Some(after) => match rx.recv_timeout(after) {
                        Ok(msg) => msg,
                        // (A message that came as the time ran out is not worth a reload.)
                        Err(mpsc::RecvTimeoutError::Timeout) => match rx.try_recv() {
                            Ok(msg) => msg,
                            Err(_) => return true,
                        },
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    },
                    None => match rx.recv() {
                        Ok(msg) => msg,
                        Err(_) => break,
                    },
                };
                self.receive(msg);
            }
            while let Ok(msg) = rx.try_recv() {
                self.receive(msg);
            }
            self.drop_cancelled();
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                self.end_all(StopReason::Shutdown);
                continue;
            }
            self.admit();
            if !self.active.is_empty() {
                self.step();
            }
            self.publish();
        }
        self.publish();
        false
    }

    fn receive(&mut self, msg: Msg) {
        match msg {
            // One that raced with a shutdown never starts.
            Msg::Submit(p) if self.deadline.is_some() => {
                self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                finish_unstarted(*p, StopReason::Shutdown);
            }
            Msg::Submit(p) => self.queue.push_back(*p),
            Msg::Shutdown { grace } => {
                let now = Instant::now();
                self.deadline = Some(self.deadline.map_or(now + grace, |d| d.min(now + grace)));
                // Requests that have not started are ended now: nothing of theirs has run.
                while let Some(p) = self.queue.pop_front() {
                    self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                    finish_unstarted(p, StopReason::Shutdown);
                }
            }
            Msg::Erase { slot, reply } => {
                let answer = match self.slots.get_mut(slot) {
                    None => Err(SlotError::NoSuchSlot {
                        slot,
                        slots: self.slots.len(),
                    }),
                    Some(_) if self.active.iter().any(|a| a.slot == slot) => {
                        Err(SlotError::Busy(slot))
                    }
                    Some(s) => {
                        let n = s.tokens.len();
                        s.tokens.clear();
                        s.cache.clear();
                        if let Some(d) = &mut self.drafter {
                            d.forget(slot);
                        }
                        Ok(n)
                    }
                };
                // The status shows it before the caller hears back.
                self.publish();
                let _ = reply.send(answer);
            }
            Msg::File {
                slot,
                model,
                path,
                restore,
                reply,
            } => {
                let answer = if slot >= self.slots.len() {
                    Err(SlotError::NoSuchSlot {
                        slot,
                        slots: self.slots.len(),
                    })
                } else if self.active.iter().any(|a| a.slot == slot) {
                    Err(SlotError::Busy(slot))
                } else if restore {
                    restore_slot(&mut self.slots[slot], &model, &path)
                } else {
                    save_slot(&self.slots[slot], &model, &path)
                };
                self.publish();
                let _ = reply.send(answer);
            }
        }
    }

    fn drop_cancelled(&mut self) {
        let before = self.queue.len();
        self.queue.retain(|p| !p.cancel.load(Ordering::Relaxed));
        let gone = before - self.queue.len();
        if gone > 0 {
            self.shared.waiting.fetch_sub(gone, Ordering::SeqCst);
            self.count(|s| s.requests_cancelled += gone as u64);
        }
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].p.cancel.load(Ordering::Relaxed) {
                self.leave(i, Outcome::Cancelled);
            } else {
                i += 1;
            }
        }
    }

    fn end_all(&mut self, reason: StopReason) {
        while let Some(p) = self.queue.pop_front() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            finish_unstarted(p, reason.clone());
        }
        while !self.active.is_empty() {
            self.leave(0, Outcome::Stop(reason.clone()));
        }
    }

    /// Moves waiting requests into free slots. A request goes to the free slot sharing its
    /// longest prefix, among those where that prefix is at least half of what the slot holds
    /// (an empty slot always qualifies): a shared BOS or system prompt alone does not make
    /// it evict another conversation's cache. Without such a slot it takes the least
    /// recently used one, so recent caches stay for their owners to come back to.
    /// A request pinned to a busy slot ([`Job::slot`]) waits without holding up those
    /// behind it.
    fn admit(&mut self) {
        let mut next = 0;
        while next < self.queue.len() {
            let busy: Vec<usize> = self.active.iter().map(|a| a.slot).collect();
            if busy.len() == self.slots.len() {
                break;
            }
            let Some(p) = self.queue.get(next) else { break };
            let free = (0..self.slots.len())
                .filter(|i| !busy.contains(i) && p.job.slot.is_none_or(|s| s == *i));
            let prompt = &p.job.prompt;
            let candidates: Vec<(usize, usize)> = free
                .map(|i| {
                    let common = if p.job.prompt_logprobs || p.job.embedding.is_some() {
                        0
                    } else {
                        common_prefix(&self.slots[i].tokens, prompt)
                    };
                    (i, common)
                })
                .collect();
            let lru = |a: &(usize, usize), b: &(usize, usize)| {
                self.slots[b.0].last_used.cmp(&self.slots[a.0].last_used)
            };
            let best = candidates
                .iter()
                .filter(|(i, common)| 2 * common >= self.slots[*i].tokens.len())
                .max_by(|a, b| a.1.cmp(&b.1).then(lru(a, b)))
                .or_else(|| candidates.iter().max_by(|a, b| lru(a, b)))
                .copied();
            let Some((slot, common)) = best else {
                // Only a pinned request finds no free slot while one is free.
                next += 1;
                continue;
            };
            let Some(mut p) = self.queue.remove(next) else {
                break;
            };
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            // At least the last prompt token runs, for fresh logits.
            let common = common.min(p.job.prompt.len() - 1);
            let s = &mut self.slots[slot];
            s.cache.truncate(common);
            s.tokens.truncate(common);
            s.last_used = self.clock;
            let mut sampler = Sampler::new(p.job.sampler.clone());
            for &t in &p.job.prompt {
                sampler.accept(t);
            }
            self.count(|st| {
                st.prompt_tokens += p.job.prompt.len() as u64;
                st.cached_prompt_tokens += common as u64;
            });
            if p.job.progress {
                // A client gone already is seen at the next step (its ticket is dropped).
                let _ = (p.sink)(Event::Progress(PromptProgress {
                    total: p.job.prompt.len(),
                    cache: common,
                    processed: common,
                    time_ms: 0.0,
                }));
            }
            self.active.push(Active {
                slot,
                sampler,
                decoder: self.tokenizer.stream_decoder(),
                held: String::new(),
                fed: common,
                cached: common,
                next: None,
                draft: Vec::new(),
                draft_len: self.speculative.map_or(0, |s| s.max_draft),
                generated: 0,
                prompt_logprobs: if p.job.prompt_logprobs {
                    vec![None]
                } else {
                    Vec::new()
                },
                started: Instant::now(),
                first_token: None,
                context_shifts: 0,
                p,
            });
        }
        self.shared
            .idle_slots
            .store(self.slots.len() - self.active.len(), Ordering::SeqCst);
    }

    /// One forward pass over every active sequence, then a sampled token for each that has
    /// finished its prompt.
    fn step(&mut self) {
        // Context shifts (or stops) for sequences whose next token does not fit.
        let mut i = 0;
        while i < self.active.len() {
            let a = &self.active[i];
            let slot = &self.slots[a.slot];
            if a.next.is_some() && slot.tokens.len() >= slot.cache.capacity() {
                let shift = a.p.job.context_shift;
                match shift {
                    Some(keep) if self.shift(i, keep) => {}
                    _ => {
                        self.leave(i, Outcome::Stop(StopReason::ContextFull));
                        continue;
                    }
                }
            }
            i += 1;
        }
        if self.active.is_empty() {
            return;
        }
        // Each decoding sequence brings one token; prompts share the chunk budget in the
        // order they arrived (the first always gets at least one token).
        let mut budget = self.prefill_chunk;
        let mut inputs: Vec<(usize, Vec<u32>, Logits)> = Vec::new();
        // (Drafting with a draft model is part of the step's time.)
        let start = Instant::now();
        for (i, a) in self.active.iter_mut().enumerate() {
            match a.next {
                Some(t) => {
                    // Speculation: a draft from the sequence's own text, run after its token
                    // (not under a grammar, whose state each token changes).
                    let slot = &self.slots[a.slot];
                    a.draft.clear();
                    let room = slot.cache.capacity().saturating_sub(slot.tokens.len() + 1);
                    let wanted =
                        a.p.job
                            .max_tokens
                            .map_or(usize::MAX, |m| m.saturating_sub(a.generated + 1));
                    let unconstrained = a.p.job.constraint.is_none();
                    if let (Some(drafter), true) = (&mut self.drafter, unconstrained) {
                        a.draft = drafter.draft(a.slot, &slot.tokens, t, room.min(wanted));
                    } else if let (Some(config), true) = (self.speculative, unconstrained) {
                        let limit = room.min(wanted).min(a.draft_len.max(1));
                        a.draft = speculative::ngram_draft_after(&slot.tokens, t, &config, limit);
                    }
                    if a.draft.is_empty() {
                        inputs.push((i, vec![t], Logits::Last));
                    } else {
                        let mut tokens = vec![t];
                        tokens.extend_from_slice(&a.draft);
                        inputs.push((i, tokens, Logits::All));
                    }
                }
                None => {
                    let rest = a.p.job.prompt.len() - a.fed;
                    // An embedding runs whole in one pass (its pooling sees every position,
                    // and a bidirectional model needs them together) when the step has room
                    // for any prompt tokens.
                    let embedding = a.p.job.embedding.is_some();
                    let take = if embedding && budget > 0 {
                        rest
                    } else {
                        rest.min(budget)
                    };
                    if take == 0 {
                        continue;
                    }
                    budget = budget.saturating_sub(take);
                    let tokens = a.p.job.prompt[a.fed..a.fed + take].to_vec();
                    let which = if embedding {
                        Logits::Hidden
                    } else if a.p.job.prompt_logprobs {
                        Logits::All
                    } else {
                        Logits::Last
                    };
                    inputs.push((i, tokens, which));
                }
            }
        }
        let result = {
            let mut caches: Vec<Option<&mut KvCache>> =
                self.slots.iter_mut().map(|s| Some(&mut s.cache)).collect();
            let mut batch = Vec::with_capacity(inputs.len());
            for (i, tokens, which) in &inputs {
                let slot = self.active[*i].slot;
                if let Some(cache) = caches[slot].take() {
                    batch.push(BatchEntry {
                        tokens,
                        cache,
                        logits: *which,
                    });
                }
            }
            self.model.forward_batch(&mut batch)
        };
        let elapsed = start.elapsed();
        self.clock += 1;
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // Not expected (every input was checked); end the step's requests rather
                // than retry the same failure forever.
                let message = e.to_string();
                let mut idx: Vec<usize> = inputs.iter().map(|(i, _, _)| *i).collect();
                idx.sort_unstable_by_key(|&i| std::cmp::Reverse(i));
                for i in idx {
                    self.leave(i, Outcome::Failed(message.clone()));
                }
                return;
            }
        };
        let mut generated = 0usize;
        let (mut spec_drafted, mut spec_accepted) = (0u64, 0u64);
        let mut outcomes = Vec::with_capacity(inputs.len());
        for ((i, tokens, _), logits) in inputs.iter().zip(logits) {
            let a = &mut self.active[*i];
            self.slots[a.slot].tokens.extend_from_slice(tokens);
            let n_vocab = self.model.config().n_vocab;
            let outcome = if !a.draft.is_empty() {
                // Verification: each row's token is sampled as plain decoding samples it; a
                // drafted token chosen by the sampler is in the cache already, the first
                // other choice ends the draft, whose later tokens leave the cache.
                let n_vocab = self.model.config().n_vocab;
                let draft = std::mem::take(&mut a.draft);
                let start = self.slots[a.slot].tokens.len() - tokens.len();
                let mut kept = 0;
                let mut outcome = Outcome::Continue;
                for (j, row) in logits.chunks_exact(n_vocab).enumerate() {
                    generated += 1;
                    outcome = sample(a, row, self.tokenizer);
                    let accepted = matches!(outcome, Outcome::Continue)
                        && j < draft.len()
                        && a.next == Some(draft[j]);
                    if !accepted {
                        break;
                    }
                    kept += 1;
                    a.next = None;
                }
                // The cache keeps the step's first token and the kept drafts.
                let slot = &mut self.slots[a.slot];
                slot.cache.truncate(start + 1 + kept);
                slot.tokens.truncate(start + 1 + kept);
                let max = self.speculative.map_or(1, |c| c.max_draft);
                a.draft_len = speculative::next_draft_len(a.draft_len, kept, draft.len(), max);
                spec_drafted += draft.len() as u64;
                spec_accepted += kept as u64;
                outcome
            } else if let Some(options) = a.p.job.embedding {
                a.fed += tokens.len();
                let c = self.model.config();
                let pooling = options
                    .pooling
                    .unwrap_or_else(|| self.model.default_pooling());
                let width = options.dimensions.unwrap_or(c.n_embd).min(c.n_embd);
                let vector = pool(&logits, c.n_embd, pooling, width, options.normalize);
                // Its cache holds bidirectional states where the model has no causal mask:
                // never reused as a prefix.
                self.slots[a.slot].tokens.clear();
                if (a.p.sink)(Event::Embedding(vector)).is_break() {
                    Outcome::Cancelled
                } else {
                    Outcome::Stop(StopReason::Embedded)
                }
            } else if a.next.is_some() {
                generated += 1;
                sample(a, &logits, self.tokenizer)
            } else {
                if a.p.job.prompt_logprobs {
                    // Row j predicts prompt token fed + j + 1.
                    for (j, row) in logits.chunks_exact(n_vocab).enumerate() {
                        let at = a.fed + j + 1;
                        if let Some(&t) = a.p.job.prompt.get(at) {
                            let k = a.p.job.logprobs.unwrap_or(0);
                            let lp = logprob_of(row, t, &a.p.job.logit_bias, k);
                            a.prompt_logprobs.push(Some(lp));
                        }
                    }
                }
                a.fed += tokens.len();
                let progress = a.p.job.progress.then(|| PromptProgress {
                    total: a.p.job.prompt.len(),
                    cache: a.cached,
                    processed: a.fed,
                    time_ms: a.started.elapsed().as_secs_f64() * 1e3,
                });
                if progress.is_some_and(|p| (a.p.sink)(Event::Progress(p)).is_break()) {
                    Outcome::Cancelled
                } else if a.fed < a.p.job.prompt.len() {
                    Outcome::Continue
                } else {
                    let last = &logits[logits.len() - n_vocab..];
                    let event = Event::Prompt {
                        slot: a.slot,
                        cached_tokens: a.cached,
                        logprobs: a
                            .p
                            .job
                            .prompt_logprobs
                            .then(|| std::mem::take(&mut a.prompt_logprobs)),
                    };
                    if (a.p.sink)(event).is_break() {
                        Outcome::Cancelled
                    } else if a.p.job.max_tokens == Some(0) {
                        Outcome::Stop(StopReason::MaxTokens)
                    } else {
                        generated += 1;
                        sample(a, last, self.tokenizer)
                    }
                }
            };
            outcomes.push((*i, outcome));
        }
        let secs = elapsed.as_secs_f64();
        if secs > 0.0 && generated > 0 {
            let r = generated as f64 / secs;
            self.rate = if self.rate == 0.0 {
                r
            } else {
                0.8 * self.rate + 0.2 * r
            };
        }
        let rate = self.rate;
        let sequences = inputs.len() as u64;
        self.count(|s| {
            s.steps += 1;
            s.sequences_stepped += sequences;
            s.busy_seconds += secs;
            s.generated_tokens += generated as u64;
            s.generation_tokens_per_s = rate;
            s.spec_drafted_tokens += spec_drafted;
            s.spec_accepted_tokens += spec_accepted;
        });
        // Leave from the back so the indices stay valid.
        outcomes.sort_unstable_by_key(|o| std::cmp::Reverse(o.0));
        for (i, outcome) in outcomes {
            if !matches!(outcome, Outcome::Continue) {
                self.leave(i, outcome);
            }
        }
    }

    /// Shifts sequence `i`'s context as llama.cpp does; false when nothing can be dropped.
    fn shift(&mut self, i: usize, keep: usize) -> bool {
        let index = self.active[i].slot;
        let slot = &mut self.slots[index];
        let kept = keep.min(slot.tokens.len());
        let discarded = (slot.tokens.len() - kept) / 2;
        if discarded == 0 {
            return false;
        }
        if self
            .model
            .shift_cache(&mut slot.cache, kept, discarded)
            .is_err()
        {
            return false;
        }
        if let Some(drafter) = &mut self.drafter {
            drafter.shift(index, &slot.tokens, kept, discarded);
        }
        slot.tokens.drain(kept..kept + discarded);
        self.active[i].context_shifts += 1;
        true
    }

    /// Ends active request `i` and frees its slot (whose cache keeps its tokens for reuse).
    fn leave(&mut self, i: usize, outcome: Outcome) {
        let mut a = self.active.swap_remove(i);
        self.shared
            .idle_slots
            .store(self.slots.len() - self.active.len(), Ordering::SeqCst);
        // The status shows the slot free before the caller hears of the end.
        self.publish();
        match outcome {
            Outcome::Continue => {}
            Outcome::Cancelled => self.count(|s| s.requests_cancelled += 1),
            Outcome::Failed(message) => {
                self.count(|s| s.requests_finished += 1);
                let _ = (a.p.sink)(Event::Failed(message));
            }
            Outcome::Stop(stop) => {
                let mut tail = std::mem::take(&mut a.held);
                if !matches!(stop, StopReason::StopString(_)) {
                    tail.push_str(&a.decoder.finish());
                } else {
                    tail.clear();
                }
                let now = a.p.submitted.elapsed();
                let finished = Finished {
                    stop,
                    tail,
                    prompt_tokens: a.p.job.prompt.len(),
                    cached_tokens: a.cached,
                    generated_tokens: a.generated,
                    queued: a.started.duration_since(a.p.submitted),
                    time_to_first_token: a.first_token.unwrap_or(now),
                    total: now,
                    seed: a.p.job.sampler.seed,
                    slot: Some(a.slot),
                    context_shifts: a.context_shifts,
                };
                // Counted before the caller hears of the end, so a status read after it
                // includes this request.
                self.count(|s| s.requests_finished += 1);
                let _ = (a.p.sink)(Event::Done(finished));
            }
        }
    }

    fn count(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.shared.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Updates the slots' part of the shared status.
    fn publish(&self) {
        let mut st = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        for (i, (slot, s)) in self.slots.iter().zip(st.slots.iter_mut()).enumerate() {
            let a = self.active.iter().find(|a| a.slot == i);
            s.state = match a {
                None => SlotState::Idle,
                Some(a) if a.next.is_none() => SlotState::Prompt,
                Some(_) => SlotState::Generating,
            };
            s.cached_tokens = slot.tokens.len();
            s.request = a.map(|a| a.p.id);
        }
        if self.active.is_empty() && self.queue.is_empty() {
            st.generation_tokens_per_s = 0.0;
        }
    }
}

/// Ends a request that never reached a slot.
fn finish_unstarted(mut p: Pending, stop: StopReason) {
    let total = p.submitted.elapsed();
    let _ = (p.sink)(Event::Done(Finished {
        stop,
        tail: String::new(),
        prompt_tokens: p.job.prompt.len(),
        cached_tokens: 0,
        generated_tokens: 0,
        queued: total,
        time_to_first_token: total,
        total,
        seed: p.job.sampler.seed,
        slot: None,
        context_shifts: 0,
    }));
}

/// Every slot, with an empty cache of `n_ctx` positions.
fn new_slots(
    model: &BitnetModel,
    n_slots: usize,
    n_ctx: usize,
    cache_type: CacheType,
) -> Result<Vec<Slot>, ModelError> {
    (0..n_slots)
        .map(|_| {
            Ok(Slot {
                cache: model.new_cache(n_ctx, cache_type)?,
                tokens: Vec::new(),
                last_used: 0,
            })
        })
        .collect()
}

/// Bytes of every slot's KV cache and, with a draft model, of its caches.
fn cache_bytes(slots: &[Slot], drafter: Option<&Drafter>) -> usize {
    slots.iter().map(|s| s.cache.bytes()).sum::<usize>() + drafter.map_or(0, Drafter::cache_bytes)
}

/// A draft model and its cache per slot ([`DraftModel`]).
struct Drafter {
    config: DraftModel,
    /// One per slot; none while the scheduler sleeps.
    slots: Vec<DraftCache>,
    n_slots: usize,
    n_ctx: usize,
    cache_type: CacheType,
    /// Tokens a draft cache catches up per step ([`SchedulerConfig::prefill_chunk`]), so a
    /// new request's prompt does not hold up the step for every other sequence.
    chunk: usize,
}

impl Drafter {
    fn new(
        config: DraftModel,
        target: &BitnetModel,
        n_slots: usize,
        n_ctx: usize,
        cache_type: CacheType,
        chunk: usize,
    ) -> Result<Drafter, ModelError> {
        config.check(target)?;
        let mut drafter = Drafter {
            config,
            slots: Vec::new(),
            n_slots,
            n_ctx,
            cache_type,
            chunk: chunk.max(1),
        };
        drafter.allocate()?;
        Ok(drafter)
    }

    /// The draft caches (again, after sleeping).
    fn allocate(&mut self) -> Result<(), ModelError> {
        self.slots = (0..self.n_slots)
            .map(|_| DraftCache::new(&self.config, self.n_ctx, self.cache_type))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    fn cache_bytes(&self) -> usize {
        self.slots.iter().map(DraftCache::bytes).sum()
    }

    fn forget(&mut self, slot: usize) {
        if let Some(d) = self.slots.get_mut(slot) {
            d.forget();
        }
    }

    fn shift(&mut self, slot: usize, before: &[u32], kept: usize, discarded: usize) {
        if let Some(d) = self.slots.get_mut(slot) {
            d.shift(&self.config, before, kept, discarded);
        }
    }

    fn draft(&mut self, slot: usize, context: &[u32], last: u32, limit: usize) -> Vec<u32> {
        match self.slots.get_mut(slot) {
            Some(d) => d.draft(&self.config, context, last, limit, self.chunk),
            None => Vec::new(),
        }
    }
}

/// What the scheduler's thread needs to go to sleep and to wake up ([`Sleep`]).
struct Reloader {
    n_slots: usize,
    /// Positions each slot held (the reloaded model's slots must hold as many).
    n_ctx: usize,
    cache_type: CacheType,
    n_vocab: usize,
    n_embd: usize,
}

/// The model and its slots for the next engine, and the message that woke it (none at start).
struct Woken {
    model: Arc<BitnetModel>,
    slots: Vec<Slot>,
    first: Option<Msg>,
}

/// What becomes of a message while asleep.
enum Asleep {
    /// Answered without the model.
    Answered,
    /// Shutdown: the scheduler stops.
    Stop,
    /// It needs the model.
    Wake(Msg),
}

impl Reloader {
    fn fell_asleep(&self, shared: &Shared) {
        let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
        st.sleeping = true;
        st.sleeps += 1;
        st.kv_cache_bytes = 0;
        for s in &mut st.slots {
            s.cached_tokens = 0;
        }
    }

    /// Answers what needs no model: asleep, every slot is empty.
    fn triage(&self, msg: Msg, shared: &Shared) -> Asleep {
        let no_such_slot = |slot| SlotError::NoSuchSlot {
            slot,
            slots: self.n_slots,
        };
        match msg {
            Msg::Shutdown { .. } => Asleep::Stop,
            Msg::Submit(p) if shared.shutting_down.load(Ordering::SeqCst) => {
                shared.waiting.fetch_sub(1, Ordering::SeqCst);
                finish_unstarted(*p, StopReason::Shutdown);
                Asleep::Answered
            }
            Msg::Submit(p) if p.cancel.load(Ordering::Relaxed) => {
                shared.waiting.fetch_sub(1, Ordering::SeqCst);
                let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                st.requests_cancelled += 1;
                Asleep::Answered
            }
            Msg::Erase { slot, reply } => {
                let _ = reply.send(if slot < self.n_slots {
                    Ok(0)
                } else {
                    Err(no_such_slot(slot))
                });
                Asleep::Answered
            }
            Msg::File { slot, reply, .. } if slot >= self.n_slots => {
                let _ = reply.send(Err(no_such_slot(slot)));
                Asleep::Answered
            }
            msg => Asleep::Wake(msg),
        }
    }

    /// Waits, asleep, for a message that needs the model, and loads it (and the draft
    /// caches). `None`: the scheduler stops. When the load fails, that message and every
    /// other already waiting that needs the model fail with the reason, and it sleeps on.
    fn wake(
        &self,
        rx: &mpsc::Receiver<Msg>,
        shared: &Shared,
        sleep: &Sleep,
        drafter: &mut Option<Drafter>,
    ) -> Option<Woken> {
        loop {
            let first = match self.triage(rx.recv().ok()?, shared) {
                Asleep::Answered => continue,
                Asleep::Stop => return self.stop(rx, shared),
                Asleep::Wake(msg) => msg,
            };
            match self.load(sleep, drafter) {
                Ok((model, slots)) => {
                    let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                    st.sleeping = false;
                    st.kv_cache_bytes = cache_bytes(&slots, drafter.as_ref());
                    return Some(Woken {
                        model,
                        slots,
                        first: Some(first),
                    });
                }
                Err(why) => {
                    fail_asleep(first, &why, shared);
                    while let Ok(msg) = rx.try_recv() {
                        match self.triage(msg, shared) {
                            Asleep::Answered => {}
                            Asleep::Stop => return self.stop(rx, shared),
                            Asleep::Wake(msg) => fail_asleep(msg, &why, shared),
                        }
                    }
                }
            }
        }
    }

    /// Ends what is still waiting in the channel after a shutdown while asleep.
    fn stop(&self, rx: &mpsc::Receiver<Msg>, shared: &Shared) -> Option<Woken> {
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Submit(p) => {
                    shared.waiting.fetch_sub(1, Ordering::SeqCst);
                    finish_unstarted(*p, StopReason::Shutdown);
                }
                Msg::Erase { reply, .. } => {
                    let _ = reply.send(Err(SlotError::Stopped));
                }
                Msg::File { reply, .. } => {
                    let _ = reply.send(Err(SlotError::Stopped));
                }
                Msg::Shutdown { .. } => {}
            }
        }
        None
    }

    /// The model loaded again, checked against the one that slept, and its slots.
    fn load(
        &self,
        sleep: &Sleep,
        drafter: &mut Option<Drafter>,
    ) -> Result<(Arc<BitnetModel>, Vec<Slot>), String> {
        let model = (sleep.reload)().map_err(|e| e.to_string())?;
        let c = model.config();
        if (c.n_vocab, c.n_embd) != (self.n_vocab, self.n_embd) {
            return Err(format!(
                "it is not the model that slept (vocabulary {} and width {}, were {} and {})",
                c.n_vocab, c.n_embd, self.n_vocab, self.n_embd
            ));
        }
        let slots = new_slots(&model, self.n_slots, self.n_ctx, self.cache_type)
            .map_err(|e| e.to_string())?;
        let capacity = slots.first().map_or(0, |s| s.cache.capacity());
        if capacity != self.n_ctx {
            return Err(format!(
                "its slots hold {capacity} positions, {} before sleeping",
                self.n_ctx
            ));
        }
        if let Some(d) = drafter {
            d.allocate()
                .map_err(|e| format!("the draft model's caches: {e}"))?;
        }
        Ok((Arc::new(model), slots))
    }
}

/// Fails a message that needed the model, which did not load again.
fn fail_asleep(msg: Msg, why: &str, shared: &Shared) {
    match msg {
        Msg::Submit(p) => {
            shared.waiting.fetch_sub(1, Ordering::SeqCst);
            shared
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .requests_finished += 1;
            let mut p = *p;
            let _ = (p.sink)(Event::Failed(
                SlotError::Reload(why.to_string()).to_string(),
            ));
        }
        Msg::Erase { reply, .. } => {
            let _ = reply.send(Err(SlotError::Reload(why.to_string())));
        }
        Msg::File { reply, .. } => {
            let _ = reply.send(Err(SlotError::Reload(why.to_string())));
        }
        Msg::Shutdown { .. } => {}
    }
}

fn file_error(path: &std::path::Path, source: crate::model::KvFileError) -> SlotError {
    SlotError::File {
        file: path.file_name().map_or_else(
            || path.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        ),
        source,
    }
}

/// Writes to a temporary file beside `path`, renamed into place once complete.
fn save_slot(slot: &Slot, model: &str, path: &std::path::Path) -> Result<SlotFile, SlotError> {
    let n = slot.tokens.len().min(slot.cache.len());
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        let bytes = slot.cache.save(model, &slot.tokens[..n], &mut w)?;
        w.into_inner()
            .map_err(|e| crate::model::KvFileError::Io(e.into_error()))?
            .sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok::<u64, crate::model::KvFileError>(bytes)
    })();
    match written {
        Ok(bytes) => Ok(SlotFile { tokens: n, bytes }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(file_error(path, e))
        }
    }
}

fn restore_slot(
    slot: &mut Slot,
    model: &str,
    path: &std::path::Path,
) -> Result<SlotFile, SlotError> {
    let read = (|| {
        let file = std::fs::File::open(path)?;
        let bytes = file.metadata()?.len();
        let mut r = std::io::BufReader::new(file);
        let tokens = slot.cache.restore(model, &mut r)?;
        Ok::<_, crate::model::KvFileError>((tokens, bytes))
    })();
    let (tokens, bytes) = read.map_err(|e| file_error(path, e))?;
    slot.tokens = tokens;
    Ok(SlotFile {
        tokens: slot.tokens.len(),
        bytes,
    })
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The log-probability of `token` under `logits` and the `k` most likely tokens.
fn logprob_of(logits: &[f32], token: u32, bias: &[(u32, f32)], k: usize) -> TokenLogprob {
    let biased;
    let logits = if bias.is_empty() {
        logits
    } else {
        biased = with_bias(logits, bias);
        &biased[..]
    };
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let lp = |t: u32| {
        (logits.get(t as usize).copied().unwrap_or(f32::NEG_INFINITY) as f64 - log_z) as f32
    };
    let mut top = Vec::new();
    if k > 0 {
        let ids = most_likely(logits, (0..logits.len() as u32).collect(), k);
        top = ids.into_iter().map(|t| (t, lp(t))).collect();
    }
    TokenLogprob {
        token,
        logprob: lp(token),
        top,
    }
}

/// The `k` of `ids` with the highest logits, highest first (ties to the lowest id).
fn most_likely(logits: &[f32], mut ids: Vec<u32>, k: usize) -> Vec<u32> {
    let k = k.min(ids.len());
    if k == 0 {
        return Vec::new();
    }
    let order = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    ids.select_nth_unstable_by(k - 1, order);
    ids.truncate(k);
    ids.sort_by(order);
    ids
}

/// A token's log-probability after the sampler chain and the `k` most likely alternatives
/// (tokens the chain dropped follow, by logit, with probability 0, so that there are `k`).
fn post_sampling_logprob(sampler: &Sampler, logits: &[f32], token: u32, k: usize) -> TokenLogprob {
    let dist = sampler.distribution(logits);
    let p = dist.iter().find(|(t, _)| *t == token).map_or(0.0, |d| d.1);
    // Only candidates the chain kept: llama-server never lists a probability of 0, so fewer
    // than `k` come back when fewer survive (greedy: the pick alone).
    let top = dist
        .iter()
        .filter(|&&(_, p)| p > 0.0)
        .take(k)
        .map(|&(t, p)| (t, p.ln()))
        .collect();
    TokenLogprob {
        token,
        logprob: p.ln(),
        top,
    }
}

fn with_bias(logits: &[f32], bias: &[(u32, f32)]) -> Vec<f32> {
    let mut l = logits.to_vec();
    for &(t, b) in bias {
        if let Some(v) = l.get_mut(t as usize) {
            *v += b;
        }
    }
    l
}

/// Samples the next token of `a` from its logits, sends it, and says whether `a` goes on.
fn sample(a: &mut Active<'_>, logits: &[f32], tokenizer: &Tokenizer) -> Outcome {
    let job = &mut a.p.job;
    if job.max_tokens.is_some_and(|m| a.generated >= m) {
        return Outcome::Stop(StopReason::MaxTokens);
    }
    let mut l = with_bias(logits, &job.logit_bias);
    if let Some(c) = job.constraint.as_mut() {
        if let Err(e) = c.mask(&mut l) {
            return Outcome::Failed(e.to_string());
        }
    }
    let token = a.sampler.sample(&l);
    if a.first_token.is_none() {
        a.first_token = Some(a.p.submitted.elapsed());
    }
    if !job.ignore_eos && tokenizer.is_end_of_generation(token) {
        return Outcome::Stop(StopReason::EndOfGeneration(token));
    }
    let logprob = job.logprobs.map(|k| {
        if job.post_sampling_probs {
            post_sampling_logprob(&a.sampler, &l, token, k)
        } else {
            logprob_of(logits, token, &job.logit_bias, k)
        }
    });
    a.generated += 1;
    a.sampler.accept(token);
    if let Some(c) = job.constraint.as_mut() {
        if let Err(e) = c.accept(token) {
            return Outcome::Failed(e.to_string());
        }
    }
    let piece = match a.decoder.push(token) {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    a.held.push_str(&piece);
    let mut stop = None;
    let text = if let Some((at, s)) = find_stop(&a.held, &job.stop) {
        a.held.truncate(at);
        stop = Some(StopReason::StopString(s));
        std::mem::take(&mut a.held)
    } else {
        let safe = safe_prefix_len(&a.held, &job.stop);
        a.held.drain(..safe).collect()
    };
    let event = Event::Token {
        id: token,
        text,
        logprob,
    };
    if (a.p.sink)(event).is_break() {
        return Outcome::Cancelled;
    }
    if let Some(stop) = stop {
        return Outcome::Stop(stop);
    }
    if job.constraint.as_ref().is_some_and(Constraint::is_finished) {
        return Outcome::Stop(StopReason::Constraint);
    }
    if job.max_tokens.is_some_and(|m| a.generated >= m) {
        return Outcome::Stop(StopReason::MaxTokens);
    }
    a.next = Some(token);
    Outcome::Continue
}
