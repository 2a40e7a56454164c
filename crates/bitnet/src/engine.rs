//! The high-level entry point: a [`Model`] loaded from a GGUF file, a Hugging Face folder, the
//! Hub or the bundled demo, with its tokenizer and chat template, that generates text (whole,
//! through a callback, or as an iterator), chats, and returns logits. Built on the layers
//! below ([`crate::load`], [`crate::generate`], [`crate::model`], [`crate::tokenizer`]); the
//! `bitnet` command line and the Python package use it too.

use std::ops::ControlFlow;
use std::sync::{mpsc, Arc};

use crate::generate::{
    random_seed, Chat, Event, Finished, Generation, GenerationConfig, Job, Run, Sampler,
    SamplerConfig, Scheduler, SchedulerConfig, Session, StopReason,
};
use crate::load::{self, Loaded, ModelOptions, Source};
use crate::model::{BitnetModel, CacheType, Config, EmbedOptions, Logits, ModelError};
use crate::tokenizer::{ChatMessage, EncodeOptions, Tokenizer};
use crate::Error;

/// Positions per forward pass of [`Model::logits_with`]: enough rows for the batched
/// products to run at full speed, few enough that a pass ends soon.
pub const LOGITS_CHUNK: usize = 256;

/// A model ready to generate: the network, its tokenizer, and the context settings each
/// generation uses. Cheap to clone (the weights are shared), `Send` and `Sync`; calls from
/// several threads take turns on the forward pass.
///
/// ```
/// use bitnet::{GenerateParams, Model};
///
/// let model = Model::demo()?;
/// let out = model.generate("ROMEO:\n", &GenerateParams::greedy().max_tokens(8))?;
/// assert_eq!(out.generated.len(), 8);
/// # Ok::<(), bitnet::Error>(())
/// ```
#[derive(Clone)]
pub struct Model {
    name: String,
    model: Arc<BitnetModel>,
    tokenizer: Arc<Tokenizer>,
    context: usize,
    cache_type: CacheType,
    /// [`Model::set_draft_model`]: given to every session and scheduler this model starts.
    draft: Option<crate::generate::DraftModel>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("context", &self.context_size())
            .field("cache_type", &self.cache_type)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads a model with the default options: a GGUF file or Hugging Face folder path,
    /// `"hf:OWNER/REPO[:FILE]"`, a [`Source`], or `None::<&str>` for the bundled demo.
    pub fn load(source: impl Into<Source>) -> Result<Model, Error> {
        Model::load_with(source, &ModelOptions::default())
    }

    /// Loads a model with `options` (threads, kernels, output type, context, cache type).
    pub fn load_with(source: impl Into<Source>, options: &ModelOptions) -> Result<Model, Error> {
        let source = source.into();
        Ok(Model::from_loaded(load::load(&source, options)?, options))
    }

    /// [`Model::load_with`], reporting a Hub download's progress to `progress`.
    #[cfg(feature = "hub")]
    pub fn load_with_progress(
        source: impl Into<Source>,
        options: &ModelOptions,
        progress: &mut dyn crate::hf::hub::DownloadProgress,
    ) -> Result<Model, Error> {
        let source = source.into();
        options.validate()?;
        let file = source.open_with_progress(progress)?;
        Ok(Model::from_loaded(
            load::load_gguf(&source, file, options)?,
            options,
        ))
    }

    /// The demo model bundled into the library (7M parameters trained on Shakespeare; see
    /// `testdata/demo/README.md`).
    pub fn demo() -> Result<Model, Error> {
        Model::load(Source::Demo)
    }

    /// Wraps a model and tokenizer loaded by other means.
    pub fn from_parts(
        name: impl Into<String>,
        model: BitnetModel,
        tokenizer: Tokenizer,
        options: &ModelOptions,
    ) -> Model {
        Model {
            name: name.into(),
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            context: options.context,
            cache_type: options.cache_type,
            draft: None,
        }
    }

    fn from_loaded(loaded: Loaded, options: &ModelOptions) -> Model {
        Model::from_parts(loaded.name, loaded.model, loaded.tokenizer, options)
    }

    /// The model's name: the path or hub id it was loaded from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hyperparameters read from the file.
    pub fn config(&self) -> &Config {
        self.model.config()
    }

    /// The network itself, for the lower-level API ([`BitnetModel::forward`], ...).
    pub fn inner(&self) -> &BitnetModel {
        &self.model
    }

    /// The network, shared (for [`Session::shared`] or a scheduler).
    pub fn shared_inner(&self) -> Arc<BitnetModel> {
        Arc::clone(&self.model)
    }

    /// The tokenizer (and through it the chat template).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The tokenizer, shared.
    pub fn shared_tokenizer(&self) -> Arc<Tokenizer> {
        Arc::clone(&self.tokenizer)
    }

    /// Positions a generation's context holds.
    pub fn context_size(&self) -> usize {
        match self.context {
            0 => self.model.config().default_context(),
            n => n,
        }
    }

    /// Text to token ids as `bitnet tokenize` does: BOS first when the model asks for it,
    /// special-token text (`<|eot_id|>`) left as plain text.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.tokenize_with(
            text,
            EncodeOptions {
                add_bos: self.tokenizer.add_bos_token(),
                parse_special: false,
            },
        )
    }

    /// Text to token ids with explicit options (`add_bos` adds BOS if the vocabulary has one).
    pub fn tokenize_with(&self, text: &str, options: EncodeOptions) -> Vec<u32> {
        self.tokenizer.encode(text, options)
    }

    /// Token ids to text (special tokens as their text; invalid UTF-8 as U+FFFD). An error
    /// names an id outside the vocabulary.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, Error> {
        Ok(self.tokenizer.decode(ids)?)
    }

    /// The conversation as the model's chat template renders it, with the assistant's turn
    /// opened, in token ids.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, Error> {
        let template = self.tokenizer.chat_template()?;
        let text = template.render(messages, true)?;
        Ok(self.tokenizer.encode_chat(&text))
    }

    /// The logits after the last of `ids` (no BOS added), `n_vocab` values, as `bitnet logits`
    /// prints them.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>, Error> {
        self.forward(ids, Logits::Last)
    }

    /// The logits at every position of `ids`, `ids.len() × n_vocab` values, row by row.
    pub fn logits_all(&self, ids: &[u32]) -> Result<Vec<f32>, Error> {
        self.forward(ids, Logits::All)
    }

    /// [`Model::logits`] (with `all`, [`Model::logits_all`]) computed [`LOGITS_CHUNK`]
    /// positions per forward pass, asking `go_on` before each: `ControlFlow::Break(())`
    /// stops there and returns `Ok(None)`. For a caller that must be able to stop a long
    /// input (attention makes a pass over n tokens cost n²) after a bounded time. The logits
    /// are the same, bit for bit, as one pass gives: every position is computed over the
    /// cache of those before it, whichever pass it is in.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use bitnet::Model;
    ///
    /// let model = Model::demo()?;
    /// let ids: Vec<u32> = (1..=600).collect();
    /// let whole = model.logits_all(&ids)?;
    /// let mut passes = 0;
    /// let chunked = model.logits_with(&ids, true, || {
    ///     passes += 1;
    ///     ControlFlow::Continue(())
    /// })?;
    /// assert_eq!(chunked, Some(whole));
    /// assert_eq!(passes, 3);
    /// assert_eq!(model.logits_with(&ids, false, || ControlFlow::Break(()))?, None);
    /// # Ok::<(), bitnet::Error>(())
    /// ```
    pub fn logits_with(
        &self,
        ids: &[u32],
        all: bool,
        mut go_on: impl FnMut() -> ControlFlow<()>,
    ) -> Result<Option<Vec<f32>>, Error> {
        let n_vocab = self.config().n_vocab;
        // Checked here for the whole input, so that the error gives the index in `ids`, not
        // in a chunk.
        if let Some((index, &token)) = ids.iter().enumerate().find(|(_, &t)| t as usize >= n_vocab)
        {
            return Err(ModelError::TokenOutOfRange {
                token,
                index,
                n_vocab,
            }
            .into());
        }
        let mut cache = self.model.new_cache(ids.len().max(1), self.cache_type)?;
        if ids.is_empty() {
            // The model's own error for no tokens.
            self.model.forward(ids, &mut cache, Logits::Last)?;
        }
        let mut out = Vec::new();
        for chunk in ids.chunks(LOGITS_CHUNK) {
            if go_on().is_break() {
                return Ok(None);
            }
            let which = if all { Logits::All } else { Logits::Last };
            let logits = self.model.forward(chunk, &mut cache, which)?;
            if all {
                out.extend_from_slice(&logits);
            } else {
                out = logits;
            }
        }
        Ok(Some(out))
    }

    /// The token ids a text is embedded from: BOS where the file asks for it, the text, and
    /// EOS where the model ends every text with it (`tokenizer.ggml.add_eos_token`, as the
    /// Qwen3 embedding models do).
    pub fn embedding_tokens(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode_for_embedding(text)
    }

    /// The embedding of `text` with the model's own pooling, L2-normalised.
    ///
    /// ```
    /// let model = bitnet::Model::demo()?;
    /// let v = model.embed("ROMEO:")?;
    /// assert_eq!(v.len(), model.config().n_embd);
    /// let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    /// assert!((norm - 1.0).abs() < 1e-5);
    /// # Ok::<(), bitnet::Error>(())
    /// ```
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, Error> {
        let mut out = self.embed_batch(&[text], &EmbedOptions::default())?;
        Ok(out.pop().unwrap_or_default())
    }

    /// One embedding per text (see [`Model::embed_tokens`]).
    pub fn embed_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        options: &EmbedOptions,
    ) -> Result<Vec<Vec<f32>>, Error> {
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.embedding_tokens(t.as_ref()))
            .collect();
        self.embed_tokens(&ids, options)
    }

    /// One embedding per sequence of token ids, in batched forward passes. A sequence may
    /// be as long as the context ([`Model::context_size`]); an empty one is an error.
    pub fn embed_tokens(
        &self,
        sequences: &[Vec<u32>],
        options: &EmbedOptions,
    ) -> Result<Vec<Vec<f32>>, Error> {
        let capacity = self.context_size();
        if let Some(s) = sequences.iter().find(|s| s.len() > capacity) {
            return Err(ModelError::ContextFull {
                needed: s.len(),
                capacity,
            }
            .into());
        }
        let refs: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        Ok(self.model.embed(&refs, options)?)
    }

    fn forward(&self, ids: &[u32], which: Logits) -> Result<Vec<f32>, Error> {
        let mut cache = self.model.new_cache(ids.len().max(1), self.cache_type)?;
        Ok(self.model.forward(ids, &mut cache, which)?)
    }

    /// A session of its own (a KV cache of [`Model::context_size`] positions), for the
    /// lower-level generation API (with the draft model, if one is set).
    pub fn session(&self) -> Result<Session<'static>, Error> {
        let mut session = Session::shared(
            self.shared_inner(),
            self.shared_tokenizer(),
            self.context,
            self.cache_type,
        )?;
        session.set_draft_model(self.draft.clone())?;
        Ok(session)
    }

    /// Speculative decoding with `draft` (a smaller model of the same vocabulary, its most
    /// tokens drafted per step `max`, drafts shorter than `min` dropped, a draft stopping at
    /// a token it gives less than `p_min`) in every generation, chat and scheduler this model
    /// starts from now on; lossless (the same tokens as without it). `None` stops it. Refused
    /// when the vocabularies differ (in size or in any token).
    pub fn set_draft_model(
        &mut self,
        draft: Option<(&Model, usize, usize, f32)>,
    ) -> Result<(), Error> {
        self.draft = match draft {
            None => None,
            Some((d, max, min, p_min)) => {
                if let Some(id) = self.tokenizer.vocabulary_difference(&d.tokenizer) {
                    return Err(Error::InvalidOption {
                        option: "draft model",
                        message: format!(
                            "{}: its vocabulary is not {}'s (they differ at token {id}): a \
                             draft model must share it",
                            d.name, self.name
                        ),
                    });
                }
                let draft = crate::generate::DraftModel {
                    model: d.shared_inner(),
                    max,
                    min,
                    p_min,
                };
                draft.check(&self.model)?;
                Some(draft)
            }
        };
        Ok(())
    }

    /// Completes `prompt` (BOS added when the model asks for it) and returns the text with
    /// its figures.
    pub fn generate(&self, prompt: &str, params: &GenerateParams) -> Result<Generation, Error> {
        self.generate_tokens_with(
            &self.tokenize(prompt),
            params,
            |_| ControlFlow::Continue(()),
        )
    }

    /// [`Model::generate`], handing each piece of text to `on_text` as it is produced (never
    /// half a character, nor the start of a stop string that may still complete); `on_text`
    /// returns `ControlFlow::Break(())` to stop.
    pub fn generate_with(
        &self,
        prompt: &str,
        params: &GenerateParams,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, Error> {
        self.generate_tokens_with(&self.tokenize(prompt), params, on_text)
    }

    /// Continues a sequence of token ids (taken as they are: no BOS added).
    pub fn generate_tokens(
        &self,
        ids: &[u32],
        params: &GenerateParams,
    ) -> Result<Generation, Error> {
        self.generate_tokens_with(ids, params, |_| ControlFlow::Continue(()))
    }

    /// [`Model::generate_tokens`] with a callback, as [`Model::generate_with`].
    pub fn generate_tokens_with(
        &self,
        ids: &[u32],
        params: &GenerateParams,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, Error> {
        let (sampler, config) = params.configs()?;
        let mut session = self.session()?;
        let mut sampler = Sampler::new(sampler);
        Ok(session.generate(ids, &config, &mut sampler, on_text)?)
    }

    /// Completes `prompt` as an iterator of text pieces (see [`TextStream`]).
    pub fn stream(&self, prompt: &str, params: &GenerateParams) -> Result<TextStream, Error> {
        self.stream_tokens(&self.tokenize(prompt), params)
    }

    /// Continues token ids as an iterator of text pieces.
    pub fn stream_tokens(&self, ids: &[u32], params: &GenerateParams) -> Result<TextStream, Error> {
        let (sampler, config) = params.configs()?;
        let mut session = self.session()?;
        let mut sampler = Sampler::new(sampler);
        let run = Run::start(&mut session, ids, config, &mut sampler)?;
        Ok(TextStream {
            session,
            sampler,
            run: Some(run),
        })
    }

    /// The assistant's reply to a conversation, through the model's chat template.
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        params: &GenerateParams,
    ) -> Result<Generation, Error> {
        self.generate_tokens(&self.chat_prompt(messages)?, params)
    }

    /// [`Model::chat`] with a callback for the reply's text as it comes.
    pub fn chat_with(
        &self,
        messages: &[ChatMessage],
        params: &GenerateParams,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, Error> {
        self.generate_tokens_with(&self.chat_prompt(messages)?, params, on_text)
    }

    /// A conversation kept across turns: each [`Chat::send`] adds a user message and
    /// generates the reply, prefilling only what is new (the earlier turns stay in the KV
    /// cache); the oldest turns are dropped when the context fills up. `params` apply to
    /// every reply (its seed is drawn once for the whole conversation).
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use bitnet::{GenerateParams, Model};
    ///
    /// let model = Model::demo()?;
    /// let mut chat = model.chat_session(Some("You are Romeo."), &GenerateParams::greedy().max_tokens(16))?;
    /// let reply = chat.send("Good morrow!", |_| ControlFlow::Continue(()))?;
    /// let next = chat.send("What news?", |_| ControlFlow::Continue(()))?;
    /// assert!(next.cached_tokens > reply.generated.len(), "the first turn is reused");
    /// # Ok::<(), bitnet::Error>(())
    /// ```
    pub fn chat_session(
        &self,
        system: Option<&str>,
        params: &GenerateParams,
    ) -> Result<Chat<'static>, Error> {
        let (sampling, config) = params.configs()?;
        Chat::new(
            self.session()?,
            system.map(str::to_string),
            sampling,
            config,
        )
    }

    /// [`Model::chat`] as an iterator of text pieces.
    pub fn chat_stream(
        &self,
        messages: &[ChatMessage],
        params: &GenerateParams,
    ) -> Result<TextStream, Error> {
        self.stream_tokens(&self.chat_prompt(messages)?, params)
    }
}

/// Continuous batching: several generations at once over one model.
impl Model {
    /// Starts a scheduler over this model ([`Scheduler`]: `config.slots` sequences generating
    /// at once, each with its own KV cache, one batched forward pass per step so that every
    /// weight is read once for all of them). `config.n_ctx` 0 takes this model's context
    /// size. Submit [`Model::job`]s to it; its thread stops when it is dropped.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use std::sync::mpsc;
    /// use bitnet::generate::{Event, SchedulerConfig};
    /// use bitnet::{GenerateParams, Model};
    ///
    /// let model = Model::demo()?;
    /// let scheduler = model.scheduler(SchedulerConfig { slots: 2, ..SchedulerConfig::default() })?;
    /// let job = model.job("ROMEO:", &GenerateParams::greedy().max_tokens(8))?;
    /// // Events arrive on the scheduler's thread; a channel brings them here.
    /// let (tx, rx) = mpsc::channel();
    /// let ticket = scheduler.submit(job, Box::new(move |event| {
    ///     let _ = tx.send(event);
    ///     ControlFlow::Continue(())
    /// }))?;
    /// let mut text = String::new();
    /// for event in rx {
    ///     match event {
    ///         Event::Token { text: piece, .. } => text.push_str(&piece),
    ///         Event::Done(finished) => {
    ///             text.push_str(&finished.tail);
    ///             break;
    ///         }
    ///         Event::Failed(message) => panic!("{message}"),
    ///         Event::Prompt { .. } | Event::Embedding(_) | Event::Progress(_) => {}
    ///     }
    /// }
    /// drop(ticket); // dropping a ticket before the end cancels its request
    /// assert_eq!(text, model.generate("ROMEO:", &GenerateParams::greedy().max_tokens(8))?.text);
    /// # Ok::<(), bitnet::Error>(())
    /// ```
    pub fn scheduler(&self, config: SchedulerConfig) -> Result<Scheduler, Error> {
        let config = SchedulerConfig {
            n_ctx: if config.n_ctx == 0 {
                self.context
            } else {
                config.n_ctx
            },
            draft: config.draft.or_else(|| self.draft.clone()),
            ..config
        };
        Ok(Scheduler::start(
            self.shared_inner(),
            self.shared_tokenizer(),
            config,
        )?)
    }

    /// A scheduler job completing `prompt` (BOS added when the model asks for it) as
    /// `params` say (`None` seeds are drawn here, one per job).
    pub fn job(&self, prompt: &str, params: &GenerateParams) -> Result<Job, Error> {
        let (sampler, config) = params.configs()?;
        Ok(Job {
            max_tokens: config.max_tokens,
            stop: config.stop,
            ignore_eos: config.ignore_eos,
            context_shift: config.context_shift,
            ..Job::new(self.tokenize(prompt), sampler)
        })
    }

    /// Completes every prompt, `slots` at a time through a [`Scheduler`] (continuous
    /// batching; a prompt's result does not depend on its neighbours), and returns the
    /// results in the order of `prompts`: one per prompt, an error for a prompt that could not
    /// run (too long for the context, ...). An error for the whole call only when `params`
    /// are invalid or the slots' caches do not fit in memory.
    ///
    /// ```
    /// use bitnet::{GenerateParams, Model};
    ///
    /// let model = Model::demo()?;
    /// let params = GenerateParams::greedy().max_tokens(8);
    /// let results = model.generate_batch(&["ROMEO:", "JULIET:", "HAMLET:"], &params, 2)?;
    /// let alone = model.generate("JULIET:", &params)?;
    /// assert_eq!(results[1].as_ref().unwrap().text, alone.text);
    /// # Ok::<(), bitnet::Error>(())
    /// ```
    pub fn generate_batch<S: AsRef<str>>(
        &self,
        prompts: &[S],
        params: &GenerateParams,
        slots: usize,
    ) -> Result<Vec<Result<Completion, Error>>, Error> {
        self.generate_batch_with(prompts, params, slots, |_, _| ControlFlow::Continue(()))
    }

    /// [`Model::generate_batch`], handing each event of every prompt (its index in
    /// `prompts`, and the [`Event`]) to `on_event` on this thread as it arrives; `on_event`
    /// returns `ControlFlow::Break(())` to stop the whole batch. Prompts still running or
    /// waiting then end at once with [`crate::StopReason::Interrupted`] and what they have
    /// generated so far (their figures as the scheduler measured them); the call returns
    /// when every prompt has ended, so nothing keeps running after it.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use bitnet::generate::Event;
    /// use bitnet::{GenerateParams, Model, StopReason};
    ///
    /// let model = Model::demo()?;
    /// let params = GenerateParams { ignore_eos: true, ..GenerateParams::greedy().max_tokens(64) };
    /// let mut tokens = 0;
    /// let results = model.generate_batch_with(&["ROMEO:", "JULIET:"], &params, 2, |_, event| {
    ///     tokens += usize::from(matches!(event, Event::Token { .. }));
    ///     if tokens < 10 { ControlFlow::Continue(()) } else { ControlFlow::Break(()) }
    /// })?;
    /// for result in &results {
    ///     assert_eq!(result.as_ref().unwrap().finished.stop, StopReason::Interrupted);
    /// }
    /// # Ok::<(), bitnet::Error>(())
    /// ```
    pub fn generate_batch_with<S: AsRef<str>>(
        &self,
        prompts: &[S],
        params: &GenerateParams,
        slots: usize,
        mut on_event: impl FnMut(usize, &Event) -> ControlFlow<()>,
    ) -> Result<Vec<Result<Completion, Error>>, Error> {
        params.configs()?;
        let scheduler = self.scheduler(SchedulerConfig {
            slots: slots.max(1),
            cache_type: self.cache_type,
            max_queue: prompts.len(),
            ..SchedulerConfig::default()
        })?;
        let (tx, rx) = mpsc::channel::<(usize, Event)>();
        let mut results: Vec<Option<Result<Completion, Error>>> = Vec::new();
        // Each request's text and token ids so far.
        let mut partial: Vec<(String, Vec<u32>)> = Vec::new();
        // Tickets cancel their request when dropped: keep them until the end.
        let mut tickets = Vec::new();
        let mut running = 0;
        for (i, prompt) in prompts.iter().enumerate() {
            partial.push(Default::default());
            let tx = tx.clone();
            let sink = Box::new(move |event: Event| match tx.send((i, event)) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            });
            let submitted = self
                .job(prompt.as_ref(), params)
                .and_then(|job| Ok(scheduler.submit(job, sink)?));
            match submitted {
                Ok(ticket) => {
                    tickets.push(ticket);
                    running += 1;
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        drop(tx);
        let mut stopped = false;
        while running > 0 {
            let Ok((i, event)) = rx.recv() else { break };
            if !stopped && on_event(i, &event).is_break() {
                // This scheduler runs this batch alone: shutting it down ends exactly the
                // batch's prompts, each with a `Done` (and its figures) that the loop still
                // collects. A shutdown's reason is reported as the interruption it is.
                stopped = true;
                scheduler.shutdown(std::time::Duration::ZERO);
            }
            match event {
                Event::Prompt { .. } | Event::Embedding(_) | Event::Progress(_) => {}
                Event::Token { id, text, .. } => {
                    partial[i].0.push_str(&text);
                    partial[i].1.push(id);
                }
                Event::Done(mut finished) => {
                    if stopped && finished.stop == StopReason::Shutdown {
                        finished.stop = StopReason::Interrupted;
                    }
                    let (mut text, generated) = std::mem::take(&mut partial[i]);
                    text.push_str(&finished.tail);
                    results[i] = Some(Ok(Completion {
                        text,
                        generated,
                        finished,
                    }));
                    running -= 1;
                }
                Event::Failed(message) => {
                    results[i] = Some(Err(Error::Failed(message)));
                    running -= 1;
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Failed("the scheduler stopped".into()))))
            .collect())
    }
}

/// A generation run by a [`Scheduler`] (see [`Model::generate_batch`]).
#[derive(Clone, Debug)]
pub struct Completion {
    /// The generated text.
    pub text: String,
    /// The generated token ids.
    pub generated: Vec<u32>,
    /// Why it stopped, and its figures.
    pub finished: Finished,
}

/// What to generate and how to sample, with the command line's defaults (llama.cpp's):
/// 128 tokens, temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalties, a random
/// seed. Every value is checked when a generation starts.
///
/// ```
/// use bitnet::GenerateParams;
///
/// let params = GenerateParams::greedy().max_tokens(32).stop(["\n\n"]);
/// let sampled = GenerateParams { temperature: 0.7, seed: Some(42), ..GenerateParams::default() };
/// # let _ = (params, sampled);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateParams {
    /// Most tokens to generate (`None`: until end of generation or a full context).
    pub max_tokens: Option<usize>,
    /// 0 or below: greedy (argmax).
    pub temperature: f32,
    /// 0: off.
    pub top_k: usize,
    /// 1: off.
    pub top_p: f32,
    /// 0: off.
    pub min_p: f32,
    /// 1: off.
    pub repeat_penalty: f32,
    /// Tokens the penalties look back over.
    pub repeat_last_n: usize,
    /// 0: off (between -2 and 2).
    pub presence_penalty: f32,
    /// 0: off (between -2 and 2).
    pub frequency_penalty: f32,
    /// The same seed gives the same text; `None`: a new random seed each generation.
    pub seed: Option<u64>,
    /// Stop before any of these strings (they are not part of the text).
    pub stop: Vec<String>,
    /// Go on past end-of-generation tokens.
    pub ignore_eos: bool,
    /// When the context fills up: `Some(keep)` drops half of the tokens after the first
    /// `keep` and goes on (llama.cpp's context shift); `None` stops.
    pub context_shift: Option<usize>,
    /// Prompt-lookup speculative decoding: the same tokens, faster where the text repeats
    /// what came before (see [`crate::generate::speculative`]).
    pub speculative: Option<crate::generate::SpecConfig>,
}

impl Default for GenerateParams {
    fn default() -> GenerateParams {
        let s = SamplerConfig::default();
        GenerateParams {
            max_tokens: GenerationConfig::default().max_tokens,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            repeat_last_n: s.penalty_last_n,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            seed: None,
            stop: Vec::new(),
            ignore_eos: false,
            context_shift: None,
            speculative: None,
        }
    }
}

impl GenerateParams {
    /// Greedy decoding (the most likely token every step), otherwise the defaults.
    pub fn greedy() -> GenerateParams {
        GenerateParams {
            temperature: 0.0,
            ..GenerateParams::default()
        }
    }

    /// Sets [`GenerateParams::max_tokens`].
    pub fn max_tokens(mut self, n: usize) -> GenerateParams {
        self.max_tokens = Some(n);
        self
    }

    /// Sets [`GenerateParams::stop`].
    pub fn stop<S: Into<String>>(mut self, stop: impl IntoIterator<Item = S>) -> GenerateParams {
        self.stop = stop.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`GenerateParams::seed`].
    pub fn seed(mut self, seed: u64) -> GenerateParams {
        self.seed = Some(seed);
        self
    }

    /// The sampler's and the generation loop's settings, checked.
    pub fn configs(&self) -> Result<(SamplerConfig, GenerationConfig), Error> {
        let sampler = SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_last_n: self.repeat_last_n,
            seed: self.seed.unwrap_or_else(random_seed),
        };
        sampler.validate()?;
        let generation = GenerationConfig {
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            context_shift: self.context_shift,
            speculative: self.speculative,
        };
        Ok((sampler, generation))
    }
}

/// A generation as an iterator of text pieces (made by [`Model::stream`]): each `next` runs
/// the model until some text is ready. The pieces concatenate to the whole text; dropping
/// the iterator stops the generation. [`TextStream::finish`] gives the result with its
/// figures.
///
/// ```
/// use bitnet::{GenerateParams, Model};
///
/// let model = Model::demo()?;
/// let mut text = String::new();
/// for piece in model.stream("ROMEO:\n", &GenerateParams::greedy().max_tokens(16))? {
///     text.push_str(&piece?);
/// }
/// # Ok::<(), bitnet::Error>(())
/// ```
pub struct TextStream {
    session: Session<'static>,
    sampler: Sampler,
    /// `None` after an error.
    run: Option<Run>,
}

impl std::fmt::Debug for TextStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextStream")
            .field("context_used", &self.session.context_used())
            .finish_non_exhaustive()
    }
}

impl Iterator for TextStream {
    type Item = Result<String, Error>;

    fn next(&mut self) -> Option<Result<String, Error>> {
        let run = self.run.as_mut()?;
        loop {
            match run.next_text(&mut self.session, &mut self.sampler) {
                Ok(Some(piece)) if piece.is_empty() => continue,
                Ok(Some(piece)) => return Some(Ok(piece)),
                Ok(None) => return None,
                Err(e) => {
                    self.run = None;
                    return Some(Err(e.into()));
                }
            }
        }
    }
}

impl TextStream {
    /// Whether the generation has ended.
    pub fn is_done(&self) -> bool {
        self.run.as_ref().is_none_or(Run::is_done)
    }

    /// Stops the generation here; returns text still held back (a partial character, the
    /// start of a stop string), which the result includes.
    pub fn stop(&mut self) -> String {
        match self.run.as_mut() {
            Some(run) => run.interrupt(&mut self.session),
            None => String::new(),
        }
    }

    /// The result so far: the whole text, the token ids, why it stopped
    /// ([`crate::generate::StopReason::Interrupted`] if it had not ended) and the figures.
    /// `None` after an error.
    pub fn finish(mut self) -> Option<Generation> {
        let run = self.run.take()?;
        Some(run.finish(&mut self.session))
    }
}
