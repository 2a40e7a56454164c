//! The `bitnet` Python package's native module, `bitnet._bitnet`: a thin layer over the bitnet
//! crate's [`bitnet::Model`]. Every call that runs the model does so with the GIL released
//! and can be interrupted by Ctrl-C (see [`interruptible`]); the library's errors become
//! `bitnet.BitnetError` carrying its message (the one the `bitnet` command prints), a bad
//! argument a `TypeError` or `ValueError` naming the argument and what it must be.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bitnet::formats::types::TensorType;
use bitnet::generate::constraint::ConstraintCompiler;
use bitnet::generate::openai::{self as shape, Endpoint, Reply, Settings};
use bitnet::generate::{
    Event, Request, RequestError, SamplerConfig, Scheduler, SchedulerConfig, Ticket,
};
use bitnet::kernels::Isa;
use bitnet::model::CacheType;
use bitnet::tokenizer::{ChatMessage, ChatTemplate, EncodeOptions, Tokenizer};
use bitnet::{GenerateParams, Generation, ModelOptions, Residency};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyDict, PyInt, PyList, PyMapping, PyString};
use serde_json::Value;

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

/// A value the caller gave out of its range (a sampling setting, a model option the library
/// checks) is a `ValueError`, as the values the binding checks itself; anything else a
/// `BitnetError`.
fn to_py(e: bitnet::Error) -> PyErr {
    match e {
        bitnet::Error::Sampler(_)
        | bitnet::Error::InvalidOption { .. }
        | bitnet::Error::Model(bitnet::model::ModelError::InvalidOption { .. }) => {
            PyValueError::new_err(error_message(&e))
        }
        e => BitnetError::new_err(error_message(&e)),
    }
}

/// How often a call waiting for the library runs Python's signal handlers: Ctrl-C raises
/// `KeyboardInterrupt` at most this long after it is pressed.
const SIGNAL_CHECK: Duration = Duration::from_millis(20);

/// Runs `work` on a thread of its own while this thread waits with the GIL released, taking
/// the GIL back every [`SIGNAL_CHECK`] to run Python's signal handlers (which need it, and
/// which only the main thread runs). When a handler raises (Ctrl-C: `KeyboardInterrupt`),
/// the exception is raised here at once, even while the work is inside one long forward pass
/// (a prefill), and the flag `work` receives is set: the work checks it at each token and
/// stops there, so what keeps running after the raise is bounded by the forward pass it was
/// in. Its result is then dropped.
///
/// The work runs on another thread so that neither it (holding no GIL) nor a Python thread
/// (holding it) waits for the other: generating in the calling thread and taking the GIL back
/// from inside the library's callbacks would stall the generation whenever another Python
/// thread held the GIL, and could not raise during a prefill.
fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    work: impl FnOnce(&AtomicBool) -> T + Send + 'static,
) -> PyResult<T> {
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::sync_channel(1);
    let flag = Arc::clone(&cancel);
    std::thread::Builder::new()
        .name("bitnet-call".into())
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&flag)));
            // The caller may have gone (interrupted): the result is dropped with the channel.
            let _ = tx.send(result);
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start a thread: {e}")))?;
    // Only the main thread runs signal handlers: elsewhere there is nothing to poll for.
    let poll = is_main_thread(py)?;
    let received = py.detach(move || loop {
        if !poll {
            return rx.recv().map_err(|_| None);
        }
        match rx.recv_timeout(SIGNAL_CHECK) {
            Ok(result) => return Ok(result),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(None),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = Python::attach(|py| py.check_signals()) {
                    cancel.store(true, Ordering::Relaxed);
                    return Err(Some(e));
                }
            }
        }
    });
    match received {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the bitnet library panicked".into());
            Err(PanicException::new_err(message))
        }
        Err(Some(raised)) => Err(raised),
        Err(None) => Err(PyRuntimeError::new_err(
            "the bitnet worker thread ended without a result",
        )),
    }
}

fn is_main_thread(py: Python<'_>) -> PyResult<bool> {
    let threading = py.import("threading")?;
    Ok(threading
        .call_method0("main_thread")?
        .is(&threading.call_method0("current_thread")?))
}

/// The library's callback for a generation that `cancel` stops.
fn until(cancel: &AtomicBool) -> ControlFlow<()> {
    if cancel.load(Ordering::Relaxed) {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

/// `value` as shown in a message (its repr, cut short).
fn shown(value: &Bound<'_, PyAny>) -> String {
    let repr = value
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into());
    let type_name = value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    let repr = if repr.chars().count() > 40 {
        format!("{}...", repr.chars().take(40).collect::<String>())
    } else {
        repr
    };
    format!("{repr} ({type_name})")
}

/// The error for argument `name`: `TypeError` when `value` is not of the kind `must` says,
/// `ValueError` when it is but is out of range.
fn bad_arg(name: &str, must: &str, value: &Bound<'_, PyAny>, wrong_type: bool) -> PyErr {
    let message = format!("{name} must be {must}, got {}", shown(value));
    if wrong_type {
        PyTypeError::new_err(message)
    } else {
        PyValueError::new_err(message)
    }
}

/// An int (not a bool) in `range`, or the error naming the argument.
fn int_arg(
    name: &str,
    must: &str,
    value: &Bound<'_, PyAny>,
    range: std::ops::RangeInclusive<i128>,
) -> PyResult<i128> {
    if !value.is_instance_of::<PyInt>() || value.is_instance_of::<PyBool>() {
        return Err(bad_arg(name, must, value, true));
    }
    match value.extract::<i128>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(bad_arg(name, must, value, false)),
    }
}

fn usize_arg(name: &str, must: &str, value: &Bound<'_, PyAny>, min: usize) -> PyResult<usize> {
    let n = int_arg(name, must, value, min as i128..=usize::MAX as i128)?;
    usize::try_from(n).map_err(|_| bad_arg(name, must, value, false))
}

/// A float (an int is taken too, as Python does), or the error naming the argument.
fn float_arg(name: &str, value: &Bound<'_, PyAny>) -> PyResult<f32> {
    if value.is_instance_of::<PyBool>() {
        return Err(bad_arg(name, "a number", value, true));
    }
    value
        .extract::<f64>()
        .map(|v| v as f32)
        .map_err(|_| bad_arg(name, "a number", value, true))
}

fn bool_arg(name: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    value
        .cast::<PyBool>()
        .map(|b| b.is_true())
        .map_err(|_| bad_arg(name, "True or False", value, true))
}

/// Token ids given as argument `name`.
fn ids_arg(name: &str, must: &str, value: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if value.is_instance_of::<PyString>() {
        return Err(bad_arg(name, must, value, true));
    }
    let items = value
        .try_iter()
        .map_err(|_| bad_arg(name, must, value, true))?;
    let mut ids = Vec::new();
    for item in items {
        let item = item?;
        let id = int_arg(name, must, &item, 0..=u32::MAX as i128)
            .map_err(|_| bad_arg(name, must, value, !item.is_instance_of::<PyInt>()))?;
        ids.push(id as u32);
    }
    Ok(ids)
}

const SAMPLING_KEYS: &str = "max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, \
                             repeat_last_n, presence_penalty, frequency_penalty, seed, stop, \
                             ignore_eos";

/// Generation settings from keyword arguments; unknown names are a TypeError, a value of
/// the wrong type a TypeError and one out of range a ValueError, each naming the argument.
/// `max_tokens` and `seed` take -1 as the command line does (no limit; a random seed).
fn params(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<GenerateParams> {
    let mut p = GenerateParams::default();
    let Some(kwargs) = kwargs else {
        return Ok(p);
    };
    for (key, value) in kwargs.iter() {
        let key: String = key.extract()?;
        let none = value.is_none();
        let value = &value;
        match key.as_str() {
            "max_tokens" => {
                const MUST: &str = "an int >= 0, or None or -1 for no limit";
                p.max_tokens = if none {
                    None
                } else {
                    match int_arg("max_tokens", MUST, value, -1..=usize::MAX as i128)? {
                        -1 => None,
                        n => Some(n as usize),
                    }
                }
            }
            "temperature" => p.temperature = float_arg("temperature", value)?,
            "top_k" => p.top_k = usize_arg("top_k", "an int >= 0 (0: off)", value, 0)?,
            "top_p" => p.top_p = float_arg("top_p", value)?,
            "min_p" => p.min_p = float_arg("min_p", value)?,
            "repeat_penalty" => p.repeat_penalty = float_arg("repeat_penalty", value)?,
            "repeat_last_n" => {
                p.repeat_last_n = usize_arg("repeat_last_n", "an int >= 0", value, 0)?
            }
            "presence_penalty" => p.presence_penalty = float_arg("presence_penalty", value)?,
            "frequency_penalty" => p.frequency_penalty = float_arg("frequency_penalty", value)?,
            "seed" => {
                const MUST: &str = "an int from 0 to 2**64-1, or None or -1 for a random seed";
                p.seed = if none {
                    None
                } else {
                    match int_arg("seed", MUST, value, -1..=u64::MAX as i128)? {
                        -1 => None,
                        n => Some(n as u64),
                    }
                }
            }
            "stop" => p.stop = stop_arg(value)?,
            "ignore_eos" => p.ignore_eos = bool_arg("ignore_eos", value)?,
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unexpected keyword argument `{other}` (generation takes: {SAMPLING_KEYS})"
                )))
            }
        }
    }
    Ok(p)
}

/// `stop`: a string, a sequence of strings, or None.
fn stop_arg(value: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    const MUST: &str = "a string, a sequence of strings, or None";
    if value.is_none() {
        return Ok(Vec::new());
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(vec![s.to_cow()?.into_owned()]);
    }
    let items = value
        .try_iter()
        .map_err(|_| bad_arg("stop", MUST, value, true))?;
    let mut stop = Vec::new();
    for item in items {
        let item = item?;
        let s = item
            .cast::<PyString>()
            .map_err(|_| bad_arg("stop", MUST, value, true))?;
        stop.push(s.to_cow()?.into_owned());
    }
    Ok(stop)
}

/// `[{"role": ..., "content": ...}, ...]` to messages.
fn messages(list: &Bound<'_, PyAny>) -> PyResult<Vec<ChatMessage>> {
    let mut out = Vec::new();
    let items = list.try_iter().map_err(|_| {
        bad_arg(
            "messages",
            "a sequence of dicts with `role` and `content`",
            list,
            true,
        )
    })?;
    for (i, item) in items.enumerate() {
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
    /// The model's id in OpenAI-shaped responses (`bitnet serve`'s: the file name).
    id: String,
    cache_type: CacheType,
    /// The OpenAI-shaped API's scheduler, started by its first call.
    api: Mutex<Option<Arc<Api>>>,
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (model=None, *, threads=None, context=0, cache_type="f16", output_type=None, isa=None, mmap=None, draft=None, draft_max=8, draft_min=0, draft_p_min=0.75))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: Option<std::path::PathBuf>,
        threads: Option<i64>,
        context: i64,
        cache_type: &str,
        output_type: Option<&str>,
        isa: Option<&str>,
        mmap: Option<bool>,
        draft: Option<PyRef<'_, Model>>,
        draft_max: usize,
        draft_min: usize,
        draft_p_min: f32,
    ) -> PyResult<Model> {
        if draft.is_some() {
            if !(1..=64).contains(&draft_max) || draft_min > draft_max {
                return Err(PyValueError::new_err(format!(
                    "draft_max must be 1 to 64 and draft_min at most draft_max, got \
                     draft_max={draft_max} draft_min={draft_min}"
                )));
            }
            if !(0.0..=1.0).contains(&draft_p_min) {
                return Err(PyValueError::new_err(format!(
                    "draft_p_min must be a probability, 0 to 1, got {draft_p_min}"
                )));
            }
        }
        let threads = match threads {
            None => None,
            Some(t) => Some(usize::try_from(t).map_err(|_| {
                PyValueError::new_err(format!(
                    "threads must be an int >= 1, or None for the physical cores, got {t}"
                ))
            })?),
        };
        let context = usize::try_from(context).map_err(|_| {
            PyValueError::new_err(format!(
                "context must be an int >= 0 (0: the model's trained context, at most {}), \
                 got {context}",
                bitnet::model::DEFAULT_CONTEXT_CAP
            ))
        })?;
        let cache_type: CacheType = cache_type
            .parse()
            .map_err(|e| PyValueError::new_err(format!("cache_type: {e}")))?;
        let output_type = match output_type {
            None => None,
            Some(name) => Some(TensorType::from_name(name).ok_or_else(|| {
                PyValueError::new_err(format!("output_type `{name}`: use q8_0, q6_k, f16 or f32"))
            })?),
        };
        let isa = match isa {
            None => None,
            Some(name) => Some(
                name.parse::<Isa>()
                    .map_err(|e| PyValueError::new_err(format!("isa: {e}")))?,
            ),
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
            // The package is built without the GPU backend (for now).
            device: bitnet::gpu::Device::Cpu,
        };
        // A path goes through as a path; a string starting with hf: names a Hub model.
        let source = match model {
            None => bitnet::Source::Demo,
            Some(p) => match p.to_str() {
                Some(s) => bitnet::Source::parse(s),
                None => bitnet::Source::Path(p),
            },
        };
        // The id `bitnet serve` gives the model without --alias.
        let id = match &source {
            bitnet::Source::Demo => DEMO_FILE_NAME.to_string(),
            bitnet::Source::Path(p) => p.file_name().map_or_else(
                || p.display().to_string(),
                |f| f.to_string_lossy().into_owned(),
            ),
            bitnet::Source::Hub(spec) => spec.clone(),
        };
        let mut inner = py
            .detach(|| bitnet::Model::load_with(source, &options))
            .map_err(to_py)?;
        // Speculative decoding with a smaller model of the same vocabulary: the same text.
        let draft = draft
            .as_ref()
            .map(|d| (&d.inner, draft_max, draft_min, draft_p_min));
        inner.set_draft_model(draft).map_err(to_py)?;
        Ok(Model {
            inner,
            id,
            cache_type,
            api: Mutex::new(None),
        })
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
    fn detokenize(&self, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        let ids = ids_arg("ids", IDS, ids)?;
        self.inner.detokenize(&ids).map_err(to_py)
    }

    /// The logits after the last of `ids` (no BOS added) as a float32 array of n_vocab
    /// values, or with `all=True` every position's, shape (len(ids), n_vocab). Ctrl-C raises
    /// `KeyboardInterrupt` at once; the forward pass under way (at most
    /// `bitnet::LOGITS_CHUNK` positions) finishes in the background.
    #[pyo3(signature = (ids, *, all=false))]
    fn logits<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
        all: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ids = ids_arg("ids", IDS, ids)?;
        let n = ids.len();
        let model = self.inner.clone();
        // In passes of bitnet::LOGITS_CHUNK positions, so that Ctrl-C stops a long input
        // after the pass under way.
        let values = interruptible(py, move |cancel| {
            model.logits_with(&ids, all, || until(cancel))
        })?
        .map_err(to_py)?
        .ok_or_else(|| PyRuntimeError::new_err("interrupted"))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let buffer = PyByteArray::new(py, &bytes);
        let numpy = py.import("numpy")?;
        let array = numpy.call_method1("frombuffer", (buffer, "float32"))?;
        if all {
            array.call_method1("reshape", (n, self.inner.config().n_vocab))
        } else {
            Ok(array)
        }
    }

    /// Embeddings: `input` a string gives one float32 vector, a list of strings a 2-D array
    /// (one row per text), each pooled as the model's files say (or `pooling`: "mean",
    /// "last", "cls", "none" for every token's vector) and L2-normalised unless
    /// `normalize=False`; `dimensions` keeps the first n values (Matryoshka) before that.
    /// Texts are tokenized as the model asks (BOS, and the EOS Qwen3's embedding models
    /// append). Ctrl-C raises `KeyboardInterrupt` at once.
    #[pyo3(signature = (input, *, pooling=None, normalize=true, dimensions=None))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        input: &Bound<'py, PyAny>,
        pooling: Option<&str>,
        normalize: bool,
        dimensions: Option<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        const MUST: &str = "a string or a list of strings";
        let (texts, single): (Vec<String>, bool) = if let Ok(s) = input.extract::<String>() {
            (vec![s], true)
        } else {
            let items = input
                .try_iter()
                .map_err(|_| bad_arg("input", MUST, input, true))?;
            let mut texts = Vec::new();
            for item in items {
                texts.push(
                    item?
                        .extract::<String>()
                        .map_err(|_| bad_arg("input", MUST, input, true))?,
                );
            }
            if texts.is_empty() {
                return Err(PyValueError::new_err("input: the list of texts is empty"));
            }
            (texts, false)
        };
        let pooling = pooling
            .map(|p| p.parse::<bitnet::Pooling>())
            .transpose()
            .map_err(|e| PyValueError::new_err(format!("pooling: {e}")))?;
        let options = bitnet::EmbedOptions {
            pooling,
            normalize,
            dimensions,
        };
        let model = self.inner.clone();
        let vectors =
            interruptible(py, move |_| model.embed_batch(&texts, &options))?.map_err(to_py)?;
        let width = dimensions.unwrap_or(self.inner.config().n_embd);
        let numpy = py.import("numpy")?;
        let to_array = |v: &[f32]| -> PyResult<Bound<'py, PyAny>> {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
            let array =
                numpy.call_method1("frombuffer", (PyByteArray::new(py, &bytes), "float32"))?;
            if pooling == Some(bitnet::Pooling::None) {
                array.call_method1("reshape", (v.len() / width.max(1), width))
            } else {
                Ok(array)
            }
        };
        if single {
            return to_array(&vectors[0]);
        }
        if pooling == Some(bitnet::Pooling::None) {
            let arrays = vectors
                .iter()
                .map(|v| to_array(v))
                .collect::<PyResult<Vec<_>>>()?;
            return Ok(PyList::new(py, arrays)?.into_any());
        }
        let flat: Vec<f32> = vectors.concat();
        to_array(&flat)?.call_method1("reshape", (vectors.len(), width))
    }

    /// Completes a prompt (text, or token ids) and returns the text.
    #[pyo3(signature = (prompt, **sampling))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let ids = self.ids(prompt)?;
        Ok(self.run(py, ids, sampling)?.text)
    }

    /// Completes a prompt and returns the text with the token ids and figures.
    #[pyo3(signature = (prompt, **sampling))]
    fn complete(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Completion> {
        let ids = self.ids(prompt)?;
        Ok(Completion::from(self.run(py, ids, sampling)?))
    }

    /// Completes a prompt as an iterator of text pieces, computed while the GIL is released.
    #[pyo3(signature = (prompt, **sampling))]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Stream> {
        let ids = self.ids(prompt)?;
        self.stream_ids(py, ids, sampling)
    }

    /// Completes every prompt, `slots` at a time with continuous batching (one forward pass
    /// per step for all running prompts), and returns the texts in the order of `prompts`.
    /// Each text is the one `generate` gives alone (with a fixed or no seed: a random seed
    /// is drawn per prompt). A prompt that cannot run (too long for the context, ...) raises
    /// its `BitnetError` ("prompt I: ...") after every prompt has run; with
    /// `return_exceptions=True` its place in the list holds the `BitnetError` instead, as
    /// `asyncio.gather` does.
    #[pyo3(signature = (prompts, *, slots=4, return_exceptions=false, **sampling))]
    fn generate_batch(
        &self,
        py: Python<'_>,
        prompts: &Bound<'_, PyAny>,
        slots: i64,
        return_exceptions: bool,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyList>> {
        let prompts = prompts_arg(prompts)?;
        let slots = usize::try_from(slots)
            .ok()
            .filter(|&s| s >= 1)
            .ok_or_else(|| {
                PyValueError::new_err(format!("slots must be an int >= 1, got {slots}"))
            })?;
        let params = params(sampling)?;
        let model = self.inner.clone();
        let results = interruptible(py, move |cancel| {
            model.generate_batch_with(&prompts, &params, slots, |_, _| until(cancel))
        })?
        .map_err(to_py)?;
        let out = PyList::empty(py);
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(c) => out.append(c.text)?,
                Err(e) if return_exceptions => out.append(to_py(e).value(py))?,
                Err(e) => {
                    return Err(BitnetError::new_err(format!(
                        "prompt {i}: {}",
                        error_message(&e)
                    )))
                }
            }
        }
        Ok(out.unbind())
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
        Ok(self.run(py, ids, sampling)?.text)
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
        self.stream_ids(py, ids, sampling)
    }

    /// The token ids the chat template makes of `messages`, with the assistant's turn opened.
    fn chat_prompt(&self, messages: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        self.chat_ids(messages)
    }

    /// llama-cpp-python's `create_completion`: OpenAI's completions request as keyword
    /// arguments (`prompt`, `max_tokens`, `temperature`, `seed`, `stop`, `logprobs`, `echo`,
    /// `logit_bias`, `response_format`, `n`, `stream`, ... and llama-server's `top_k`, `min_p`,
    /// `repeat_penalty`, `grammar`, ...), read by the same parser as `bitnet serve` and
    /// answered with the `text_completion` dict the server sends, or with `stream=True` an
    /// iterator of its chunk dicts. Unknown arguments are a TypeError, bad values a
    /// ValueError naming the field.
    #[pyo3(signature = (prompt=None, **kwargs))]
    fn create_completion(
        &self,
        py: Python<'_>,
        prompt: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.openai(py, Endpoint::Completions, "prompt", prompt, kwargs)
    }

    /// llama-cpp-python's `create_chat_completion`: OpenAI's chat completions request as
    /// keyword arguments (`messages` with string or text-part contents, `tools`,
    /// `response_format`, `logprobs`, `top_logprobs`, `logit_bias`, `stream`, ...), answered
    /// as `bitnet serve` answers it: the `chat.completion` dict, or with `stream=True` an
    /// iterator of `chat.completion.chunk` dicts. The model keeps the last conversation in
    /// its KV cache: a call whose prompt starts with it runs only the new tokens
    /// (`usage["prompt_tokens_details"]["cached_tokens"]` counts the others).
    #[pyo3(signature = (messages=None, **kwargs))]
    fn create_chat_completion(
        &self,
        py: Python<'_>,
        messages: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.openai(py, Endpoint::Chat, "messages", messages, kwargs)
    }

    fn __repr__(&self) -> String {
        format!("Model({:?})", self.inner.name())
    }
}

const IDS: &str = "a sequence of token ids (ints from 0 to 2**32-1)";

/// `prompts` of `generate_batch`: a sequence of strings.
fn prompts_arg(value: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    const MUST: &str = "a sequence of strings";
    if value.is_instance_of::<PyString>() {
        return Err(bad_arg("prompts", MUST, value, true));
    }
    let items = value
        .try_iter()
        .map_err(|_| bad_arg("prompts", MUST, value, true))?;
    let mut prompts = Vec::new();
    for (i, item) in items.enumerate() {
        let item = item?;
        let s = item
            .cast::<PyString>()
            .map_err(|_| bad_arg(&format!("prompts[{i}]"), "a string", &item, true))?;
        prompts.push(s.to_cow()?.into_owned());
    }
    Ok(prompts)
}

impl Model {
    /// The OpenAI-shaped API's engine, started on first use.
    fn api(&self) -> PyResult<Arc<Api>> {
        let mut api = self.api.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = api.as_ref() {
            return Ok(Arc::clone(a));
        }
        let tokenizer = self.inner.shared_tokenizer();
        let scheduler = self
            .inner
            .scheduler(SchedulerConfig {
                // One slot: its cache keeps the last conversation, as a server slot does.
                slots: 1,
                n_ctx: 0,
                cache_type: self.cache_type,
                ..SchedulerConfig::default()
            })
            .map_err(to_py)?;
        let constraints = ConstraintCompiler::new(Arc::clone(&tokenizer))
            .map_err(|e| BitnetError::new_err(error_message(&e)))?;
        let started = Arc::new(Api {
            template: tokenizer.chat_template().map_err(|e| e.to_string()),
            tokenizer,
            scheduler,
            constraints,
            defaults: SamplerConfig::default(),
            id: self.id.clone(),
        });
        *api = Some(Arc::clone(&started));
        Ok(started)
    }

    /// `create_completion` and `create_chat_completion`: the arguments as a request object,
    /// parsed and planned by the library as the server does, then run in the API's slot.
    fn openai(
        &self,
        py: Python<'_>,
        endpoint: Endpoint,
        first: &'static str,
        value: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let mut body = serde_json::Map::new();
        if let Some(v) = value {
            body.insert(first.to_string(), to_json(first, v)?);
        }
        if let Some(kwargs) = kwargs {
            for (key, value) in kwargs.iter() {
                let key: String = key.extract()?;
                if let Some(v) = llama_cpp_python_arg(&key, &value)? {
                    body.insert(v.0, v.1);
                }
            }
        }
        let req = Request::from_value(&Value::Object(body)).map_err(request_error)?;
        let api = self.api()?;
        let settings = api.settings();
        let plan = shape::plan(&settings, &req, endpoint).map_err(request_error)?;
        let jobs = shape::jobs(&settings, &req, &plan).map_err(request_error)?;
        let reply = Reply::new(
            Arc::clone(&api.tokenizer),
            endpoint,
            &api.id,
            api.scheduler.context_size(),
            plan,
        );
        let (tx, rx) = mpsc::channel();
        let mut tickets = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.into_iter().enumerate() {
            let tx = tx.clone();
            let sink: bitnet::generate::scheduler::Sink =
                Box::new(move |e| match tx.send((i, e)) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                });
            let ticket = api
                .scheduler
                .submit(job, sink)
                .map_err(|e| BitnetError::new_err(error_message(&e)))?;
            tickets.push(ticket);
        }
        let mut run = Running {
            reply,
            tickets,
            rx,
            pending: std::collections::VecDeque::new(),
            ended: false,
        };
        if req.stream {
            run.pending.extend(run.reply.role_chunk());
            return Ok(Py::new(
                py,
                ChunkStream {
                    inner: Mutex::new(run),
                },
            )?
            .into_any());
        }
        let response =
            interruptible(py, move |cancel| run.collect(cancel))?.map_err(BitnetError::new_err)?;
        from_json(py, &response)
    }
    /// A prompt's token ids: text is tokenized (BOS added when the model asks for it), ids
    /// are taken as they are.
    fn ids(&self, prompt: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        if let Ok(text) = prompt.cast::<PyString>() {
            return Ok(self.inner.tokenize(&text.to_cow()?));
        }
        ids_arg(
            "prompt",
            "a string or a sequence of token ids (ints from 0 to 2**32-1)",
            prompt,
        )
    }

    fn chat_ids(&self, messages: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let messages = self::messages(messages)?;
        self.inner.chat_prompt(&messages).map_err(to_py)
    }

    fn run(
        &self,
        py: Python<'_>,
        ids: Vec<u32>,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Generation> {
        let params = params(sampling)?;
        let model = self.inner.clone();
        interruptible(py, move |cancel| {
            model.generate_tokens_with(&ids, &params, |_| until(cancel))
        })?
        .map_err(to_py)
    }

    fn stream_ids(
        &self,
        py: Python<'_>,
        ids: Vec<u32>,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Stream> {
        let params = params(sampling)?;
        let model = self.inner.clone();
        // The prompt runs here (the prefill), interruptible as a whole generation is.
        let inner =
            interruptible(py, move |_| model.stream_tokens(&ids, &params))?.map_err(to_py)?;
        Ok(Stream {
            inner: Mutex::new(inner),
        })
    }
}

/// The bundled demo model's file name: its id in OpenAI-shaped responses, as `bitnet serve`
/// gives it.
const DEMO_FILE_NAME: &str = "bitnet-shakespeare-7m-i2_s.gguf";

/// `max_tokens` when a request gives none: `bitnet serve`'s default (`-n 256`).
const N_PREDICT: usize = 256;

/// What `create_completion` and `create_chat_completion` run on: one scheduler slot, whose
/// KV cache keeps the last prompt and reply, and what the library plans requests against.
struct Api {
    tokenizer: Arc<Tokenizer>,
    template: Result<ChatTemplate, String>,
    scheduler: Scheduler,
    constraints: ConstraintCompiler,
    defaults: SamplerConfig,
    id: String,
}

impl Api {
    /// `bitnet serve`'s defaults: its sampling defaults, a fresh seed per request without one,
    /// 256 tokens at most, no context shift.
    fn settings(&self) -> Settings<'_> {
        Settings {
            tokenizer: &self.tokenizer,
            template: self.template.as_ref().map_err(String::as_str),
            constraints: &self.constraints,
            defaults: &self.defaults,
            fixed_seed: false,
            n_predict: Some(N_PREDICT),
            context_shift: None,
            n_ctx: self.scheduler.context_size(),
        }
    }
}

/// A request's error as Python's: a field neither API knows is a TypeError (as an unexpected
/// keyword argument is), anything else a ValueError; the message is the server's.
fn request_error(e: RequestError) -> PyErr {
    match e {
        RequestError::UnknownField(f) => PyTypeError::new_err(format!(
            "unexpected keyword argument `{f}`: neither OpenAI's API nor llama-server \
             documents it (a misspelling?)"
        )),
        // The server's hint names its -c; here the model's own option.
        e @ RequestError::ExceedsContext { .. } => {
            PyValueError::new_err(format!("{e} (bitnet.Model(context=...))"))
        }
        e => PyValueError::new_err(e.to_string()),
    }
}

/// llama-cpp-python's own argument names: `mirostat_mode` is llama-server's `mirostat`;
/// `tfs_z`, `logits_processor`, `stopping_criteria` and `logprobs` objects have no field in
/// the request and are accepted only at the value that asks for nothing. Everything else goes
/// into the request as it is.
fn llama_cpp_python_arg(key: &str, value: &Bound<'_, PyAny>) -> PyResult<Option<(String, Value)>> {
    match key {
        "mirostat_mode" => Ok(Some(("mirostat".into(), to_json(key, value)?))),
        "tfs_z" => {
            if value.is_none() || value.extract::<f64>().is_ok_and(|v| v == 1.0) {
                Ok(None)
            } else {
                Err(PyValueError::new_err(format!(
                    "tfs_z: tail-free sampling is not implemented here (llama.cpp removed \
                     it): only 1.0 (off), got {}",
                    shown(value)
                )))
            }
        }
        "logits_processor" | "stopping_criteria" => {
            if value.is_none() {
                Ok(None)
            } else {
                Err(PyTypeError::new_err(format!(
                    "{key}: Python callbacks are not supported (the model runs without the \
                     GIL); use `stop`, `logit_bias`, `grammar` or `response_format`"
                )))
            }
        }
        _ => Ok(Some((key.to_string(), to_json(key, value)?))),
    }
}

/// A Python value as JSON: dicts with string keys, lists and tuples, strings, ints, floats,
/// bools and None; anything else is a TypeError naming where it is.
fn to_json(path: &str, value: &Bound<'_, PyAny>) -> PyResult<Value> {
    if value.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if value.is_instance_of::<PyInt>() {
        if let Ok(n) = value.extract::<i64>() {
            return Ok(Value::from(n));
        }
        if let Ok(n) = value.extract::<u64>() {
            return Ok(Value::from(n));
        }
        return Err(PyValueError::new_err(format!(
            "{path}: the int {} is out of range",
            shown(value)
        )));
    }
    if let Ok(x) = value.cast::<pyo3::types::PyFloat>() {
        return serde_json::Number::from_f64(x.value())
            .map(Value::Number)
            .ok_or_else(|| {
                PyValueError::new_err(format!("{path}: {} is not a finite number", shown(value)))
            });
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(Value::String(s.to_cow()?.into_owned()));
    }
    if let Ok(d) = value.cast::<PyDict>() {
        let mut map = serde_json::Map::new();
        for (k, v) in d.iter() {
            let k: String = k.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "{path}: dict keys must be strings, got {}",
                    shown(&k)
                ))
            })?;
            let v = to_json(&format!("{path}[{k:?}]"), &v)?;
            map.insert(k, v);
        }
        return Ok(Value::Object(map));
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<pyo3::types::PyTuple>() {
        let mut items = Vec::new();
        for (i, v) in value.try_iter()?.enumerate() {
            items.push(to_json(&format!("{path}[{i}]"), &v?)?);
        }
        return Ok(Value::Array(items));
    }
    Err(PyTypeError::new_err(format!(
        "{path}: {} is not a JSON value (dict, list, str, int, float, bool or None)",
        shown(value)
    )))
}

/// JSON as Python objects (through the `json` module, which reads every number as the server's
/// clients do).
fn from_json(py: Python<'_>, value: &Value) -> PyResult<Py<PyAny>> {
    Ok(py
        .import("json")?
        .call_method1("loads", (value.to_string(),))?
        .unbind())
}

/// A request in the API's slot: its events become the reply.
struct Running {
    reply: Reply,
    /// Dropping them cancels the choices.
    tickets: Vec<Ticket>,
    rx: mpsc::Receiver<(usize, Event)>,
    /// Chunks made but not yet handed out.
    pending: std::collections::VecDeque<Value>,
    ended: bool,
}

impl Running {
    /// Waits for every choice's end; stops early when `cancel` is set.
    fn collect(mut self, cancel: &AtomicBool) -> Result<Value, String> {
        while !self.reply.is_done() {
            if cancel.load(Ordering::Relaxed) {
                return Err("interrupted".into());
            }
            match self.rx.recv_timeout(SIGNAL_CHECK) {
                Ok((i, event)) => {
                    self.reply.event(i, event)?;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("generation ended unexpectedly".into())
                }
            }
        }
        self.tickets.clear();
        Ok(self.reply.response())
    }

    /// The next chunk, waiting at most [`SIGNAL_CHECK`]: `Ok(None)` when none came yet.
    fn next_chunk(&mut self) -> Result<Option<Value>, String> {
        if let Some(chunk) = self.pending.pop_front() {
            return Ok(Some(chunk));
        }
        if self.ended {
            return Ok(None);
        }
        match self.rx.recv_timeout(SIGNAL_CHECK) {
            Ok((i, event)) => {
                if let Some(chunk) = self.reply.event(i, event)? {
                    self.pending.push_back(chunk);
                }
                if self.reply.is_done() {
                    self.ended = true;
                    self.tickets.clear();
                    self.pending.extend(self.reply.usage_chunk());
                }
                Ok(self.pending.pop_front())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("generation ended unexpectedly".into())
            }
        }
    }
}

/// `stream=True`: the response's chunks as dicts, as `bitnet serve` streams them. Each wait
/// runs with the GIL released; Ctrl-C raises while waiting, and dropping the iterator stops
/// the generation.
#[pyclass(module = "bitnet")]
struct ChunkStream {
    inner: Mutex<Running>,
}

#[pymethods]
impl ChunkStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        loop {
            py.check_signals()?;
            let step = py.detach(|| {
                let mut run = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                let next = run.next_chunk();
                (next, run.ended && run.pending.is_empty())
            });
            match step {
                (Err(e), _) => return Err(BitnetError::new_err(e)),
                (Ok(Some(chunk)), _) => return from_json(py, &chunk).map(Some),
                (Ok(None), true) => return Ok(None),
                (Ok(None), false) => {}
            }
        }
    }
}

/// A generation in progress: iterate for its text pieces (they concatenate to the whole
/// text). Each step (one token, or a few while text is held back) runs with the GIL
/// released; Ctrl-C raises before the next step, and dropping the stream stops the
/// generation.
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
        // Consumed from C (`list(stream)`, `"".join(stream)`), an iterator never returns to
        // the interpreter's loop, which is where Python runs signal handlers: run them here,
        // before each step (a flag read when no signal came).
        py.check_signals()?;
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
    m.add_class::<ChunkStream>()?;
    m.add_class::<Completion>()?;
    m.add("BitnetError", m.py().get_type::<BitnetError>())?;
    m.add("DEMO_MODEL_NAME", bitnet::load::DEMO_MODEL_NAME)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
