//! The `bitnet` Python package's native module, `bitnet._bitnet`: a thin layer over the bitnet
//! crate's [`bitnet::Model`]. Every call that runs the model releases the GIL; errors become
//! `bitnet.BitnetError` carrying the library's message (the one the `bitnet` command prints).

use std::ops::ControlFlow;
use std::sync::Mutex;

use bitnet::formats::types::TensorType;
use bitnet::kernels::Isa;
use bitnet::model::CacheType;
use bitnet::tokenizer::{ChatMessage, EncodeOptions};
use bitnet::{GenerateParams, Generation, ModelOptions, Residency};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict, PyMapping};

create_exception!(
    bitnet,
    BitnetError,
    PyException,
    "An error from the bitnet library (loading, tokenizing, generating); its message is the library's."
);

/// The error and its causes on one line, each said once (as the `bitnet` command prints it).
fn error_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let message = c.to_string();
        if !out.contains(&message) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&message);
        }
        cause = c.source();
    }
    out
}

fn to_py(e: bitnet::Error) -> PyErr {
    BitnetError::new_err(error_message(&e))
}

/// A prompt: text (BOS added when the model asks for it) or token ids (taken as they are).
#[derive(FromPyObject)]
enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

const SAMPLING_KEYS: &str = "max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, \
                             repeat_last_n, presence_penalty, frequency_penalty, seed, stop, \
                             ignore_eos";

/// Generation settings from keyword arguments; unknown names are a TypeError.
fn params(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<GenerateParams> {
    let mut p = GenerateParams::default();
    let Some(kwargs) = kwargs else {
        return Ok(p);
    };
    for (key, value) in kwargs.iter() {
        let key: String = key.extract()?;
        let none = value.is_none();
        match key.as_str() {
            "max_tokens" => p.max_tokens = if none { None } else { Some(value.extract()?) },
            "temperature" => p.temperature = value.extract()?,
            "top_k" => p.top_k = value.extract()?,
            "top_p" => p.top_p = value.extract()?,
            "min_p" => p.min_p = value.extract()?,
            "repeat_penalty" => p.repeat_penalty = value.extract()?,
            "repeat_last_n" => p.repeat_last_n = value.extract()?,
            "presence_penalty" => p.presence_penalty = value.extract()?,
            "frequency_penalty" => p.frequency_penalty = value.extract()?,
            "seed" => p.seed = if none { None } else { Some(value.extract()?) },
            "stop" => {
                p.stop = if none {
                    Vec::new()
                } else if let Ok(s) = value.extract::<String>() {
                    vec![s]
                } else {
                    value.extract()?
                }
            }
            "ignore_eos" => p.ignore_eos = value.extract()?,
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unexpected keyword argument `{other}` (generation takes: {SAMPLING_KEYS})"
                )))
            }
        }
    }
    Ok(p)
}

/// `[{"role": ..., "content": ...}, ...]` to messages.
fn messages(list: &Bound<'_, PyAny>) -> PyResult<Vec<ChatMessage>> {
    let mut out = Vec::new();
    for (i, item) in list.try_iter()?.enumerate() {
        let item = item?;
        let map = item.cast::<PyMapping>().map_err(|_| {
            PyTypeError::new_err(format!(
                "messages[{i}] must be a dict with `role` and `content`"
            ))
        })?;
        let field = |name: &str| -> PyResult<String> {
            match map.get_item(name) {
                Ok(v) => v.extract().map_err(|_| {
                    PyTypeError::new_err(format!("messages[{i}][\"{name}\"] must be a string"))
                }),
                Err(_) => Err(PyValueError::new_err(format!(
                    "messages[{i}] has no `{name}`"
                ))),
            }
        };
        out.push(ChatMessage::new(field("role")?, field("content")?));
    }
    Ok(out)
}

/// A BitNet b1.58 model with its tokenizer.
///
/// `Model()` loads the demo model bundled into the package; `Model(path)` a GGUF file or a
/// Hugging Face folder; `Model("hf:OWNER/REPO[:FILE]")` a model from the Hugging Face Hub
/// (downloaded into its cache).
#[pyclass(module = "bitnet", frozen)]
struct Model {
    inner: bitnet::Model,
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (model=None, *, threads=None, context=0, cache_type="f16", output_type=None, isa=None, mmap=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: Option<std::path::PathBuf>,
        threads: Option<usize>,
        context: usize,
        cache_type: &str,
        output_type: Option<&str>,
        isa: Option<&str>,
        mmap: Option<bool>,
    ) -> PyResult<Model> {
        let cache_type: CacheType = cache_type.parse().map_err(PyValueError::new_err)?;
        let output_type = match output_type {
            None => None,
            Some(name) => Some(TensorType::from_name(name).ok_or_else(|| {
                PyValueError::new_err(format!("output_type `{name}`: use q8_0, q6_k, f16 or f32"))
            })?),
        };
        let isa = match isa {
            None => None,
            Some(name) => Some(name.parse::<Isa>().map_err(PyValueError::new_err)?),
        };
        let options = ModelOptions {
            threads,
            isa,
            output_type,
            residency: match mmap {
                None => Residency::Auto,
                Some(true) => Residency::Mapped,
                Some(false) => Residency::Resident,
            },
            context,
            cache_type,
        };
        // A path goes through as a path; a string starting with hf: names a Hub model.
        let source = match model {
            None => bitnet::Source::Demo,
            Some(p) => match p.to_str() {
                Some(s) => bitnet::Source::parse(s),
                None => bitnet::Source::Path(p),
            },
        };
        let inner = py
            .detach(|| bitnet::Model::load_with(source, &options))
            .map_err(to_py)?;
        Ok(Model { inner })
    }

    /// The path or hub id the model was loaded from.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// Vocabulary size (the length of a logits row).
    #[getter]
    fn n_vocab(&self) -> usize {
        self.inner.config().n_vocab
    }

    /// Positions a generation's context holds.
    #[getter]
    fn context_size(&self) -> usize {
        self.inner.context_size()
    }

    /// Worker threads of the forward pass.
    #[getter]
    fn threads(&self) -> usize {
        self.inner.inner().threads()
    }

    /// Text to token ids; `add_bos=None` adds BOS when the model asks for it (as
    /// `bitnet tokenize` does).
    #[pyo3(signature = (text, *, add_bos=None, parse_special=false))]
    fn tokenize(&self, text: &str, add_bos: Option<bool>, parse_special: bool) -> Vec<u32> {
        let add_bos = add_bos.unwrap_or_else(|| self.inner.tokenizer().add_bos_token());
        self.inner.tokenize_with(
            text,
            EncodeOptions {
                add_bos,
                parse_special,
            },
        )
    }

    /// Token ids to text.
    fn detokenize(&self, ids: Vec<u32>) -> PyResult<String> {
        self.inner.detokenize(&ids).map_err(to_py)
    }

    /// The logits after the last of `ids` (no BOS added) as a float32 array of n_vocab
    /// values, or with `all=True` every position's, shape (len(ids), n_vocab).
    #[pyo3(signature = (ids, *, all=false))]
    fn logits<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<u32>,
        all: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let values = py
            .detach(|| {
                if all {
                    self.inner.logits_all(&ids)
                } else {
                    self.inner.logits(&ids)
                }
            })
            .map_err(to_py)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let buffer = PyByteArray::new(py, &bytes);
        let numpy = py.import("numpy")?;
        let array = numpy.call_method1("frombuffer", (buffer, "float32"))?;
        if all {
            array.call_method1("reshape", (ids.len(), self.inner.config().n_vocab))
        } else {
            Ok(array)
        }
    }

    /// Completes a prompt (text, or token ids) and returns the text.
    #[pyo3(signature = (prompt, **sampling))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: Prompt,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        Ok(self.run(py, prompt, sampling)?.text)
    }

    /// Completes a prompt and returns the text with the token ids and figures.
    #[pyo3(signature = (prompt, **sampling))]
    fn complete(
        &self,
        py: Python<'_>,
        prompt: Prompt,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Completion> {
        Ok(Completion::from(self.run(py, prompt, sampling)?))
    }

    /// Completes a prompt as an iterator of text pieces, computed while the GIL is released.
    #[pyo3(signature = (prompt, **sampling))]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: Prompt,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Stream> {
        let params = params(sampling)?;
        let ids = self.ids(prompt);
        let inner = py
            .detach(|| self.inner.stream_tokens(&ids, &params))
            .map_err(to_py)?;
        Ok(Stream {
            inner: Mutex::new(inner),
        })
    }

    /// Completes every prompt, `slots` at a time with continuous batching (one forward pass
    /// per step for all running prompts), and returns the texts in the order of `prompts`.
    /// Each text is the one `generate` gives alone (with a fixed or no seed: a random seed
    /// is drawn per prompt).
    #[pyo3(signature = (prompts, *, slots=4, **sampling))]
    fn generate_batch(
        &self,
        py: Python<'_>,
        prompts: Vec<String>,
        slots: usize,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Vec<String>> {
        let params = params(sampling)?;
        let results = py
            .detach(|| self.inner.generate_batch(&prompts, &params, slots))
            .map_err(to_py)?;
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Ok(c) => Ok(c.text),
                Err(e) => Err(BitnetError::new_err(format!(
                    "prompt {i}: {}",
                    error_message(&e)
                ))),
            })
            .collect()
    }

    /// The assistant's reply to `messages` ([{"role": ..., "content": ...}, ...]) through
    /// the model's chat template.
    #[pyo3(signature = (messages, **sampling))]
    fn chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let ids = self.chat_ids(messages)?;
        Ok(self.run(py, Prompt::Ids(ids), sampling)?.text)
    }

    /// [`chat`] as an iterator of text pieces.
    #[pyo3(signature = (messages, **sampling))]
    fn chat_stream(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Stream> {
        let ids = self.chat_ids(messages)?;
        self.stream(py, Prompt::Ids(ids), sampling)
    }

    /// The token ids the chat template makes of `messages`, with the assistant's turn opened.
    fn chat_prompt(&self, messages: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        self.chat_ids(messages)
    }

    fn __repr__(&self) -> String {
        format!("Model({:?})", self.inner.name())
    }
}

impl Model {
    fn ids(&self, prompt: Prompt) -> Vec<u32> {
        match prompt {
            Prompt::Text(text) => self.inner.tokenize(&text),
            Prompt::Ids(ids) => ids,
        }
    }

    fn chat_ids(&self, messages: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let messages = self::messages(messages)?;
        self.inner.chat_prompt(&messages).map_err(to_py)
    }

    fn run(
        &self,
        py: Python<'_>,
        prompt: Prompt,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Generation> {
        let params = params(sampling)?;
        let ids = self.ids(prompt);
        py.detach(|| {
            self.inner
                .generate_tokens_with(&ids, &params, |_| ControlFlow::Continue(()))
        })
        .map_err(to_py)
    }
}

/// A generation in progress: iterate for its text pieces (they concatenate to the whole
/// text). Each step runs with the GIL released; dropping it stops the generation.
#[pyclass(module = "bitnet")]
struct Stream {
    inner: Mutex<bitnet::TextStream>,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let next = py.detach(|| {
            let mut stream = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            stream.next()
        });
        next.transpose().map_err(to_py)
    }
}

/// A finished generation: the text, the generated token ids, why it stopped, and timings.
#[pyclass(module = "bitnet", frozen, get_all)]
struct Completion {
    /// The generated text.
    text: String,
    /// The generated token ids (an end-of-generation token is not among them).
    token_ids: Vec<u32>,
    /// "eos", "stop", "length", "context_full" or "interrupted".
    stop_reason: String,
    /// Prompt tokens run through the model.
    prompt_tokens: usize,
    prompt_tokens_per_s: f64,
    /// Generated tokens per second after the first.
    generation_tokens_per_s: f64,
    time_to_first_token_s: f64,
    total_s: f64,
}

impl From<Generation> for Completion {
    fn from(g: Generation) -> Completion {
        Completion {
            prompt_tokens_per_s: g.prompt_tokens_per_s(),
            generation_tokens_per_s: g.generation_tokens_per_s(),
            time_to_first_token_s: g.time_to_first_token.as_secs_f64(),
            total_s: g.total_time.as_secs_f64(),
            stop_reason: g.stop.as_str().to_string(),
            prompt_tokens: g.prompt_tokens,
            token_ids: g.generated,
            text: g.text,
        }
    }
}

#[pymethods]
impl Completion {
    fn __repr__(&self) -> String {
        format!(
            "Completion(text={:?}, tokens={}, stop_reason={:?})",
            self.text,
            self.token_ids.len(),
            self.stop_reason
        )
    }
}

/// BitNet b1.58 inference on the CPU (the bitnet Rust crate).
#[pymodule]
fn _bitnet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Stream>()?;
    m.add_class::<Completion>()?;
    m.add("BitnetError", m.py().get_type::<BitnetError>())?;
    m.add("DEMO_MODEL_NAME", bitnet::load::DEMO_MODEL_NAME)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
