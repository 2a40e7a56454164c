"""Type stubs of the native module (src/lib.rs).

Errors: a keyword argument of the wrong type raises ``TypeError``, one out of range
``ValueError``, each naming the argument and what it must be (the sampling ranges and the
model options the library checks included: ``Model(context=10**9)`` is refused at load when
its KV cache cannot fit in memory). What the library cannot do (a missing or malformed
model file, a prompt longer than the context, ...) raises ``BitnetError`` with the message
the ``bitnet`` command prints. ``max_tokens=-1`` means no limit and ``seed=-1`` a random
seed, as ``-n -1`` and ``--seed -1`` do on the command line (``None`` means the same).

Ctrl-C: every call that runs the model (``generate``, ``complete``, ``chat``,
``generate_batch``, ``logits``, ``stream``/``chat_stream`` and each step of their
iterators) raises ``KeyboardInterrupt`` within a few tens of milliseconds and stops the
generation at its next token (a forward pass under way, such as a long prompt's, finishes
first, in the background).

``create_completion`` and ``create_chat_completion`` take llama-cpp-python's (OpenAI's)
keyword arguments, read by the same parser as ``bitnet serve``'s endpoints, and return the
dicts the server sends (``text_completion``, ``chat.completion``), or with ``stream=True``
an iterator of its chunk dicts. Their errors are the server's: an argument neither API
documents is a ``TypeError``, a bad value a ``ValueError``, each with the server's message.
Defaults are the server's (``max_tokens`` 256, temperature 0.8, a fresh seed per call).
"""

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Optional, Union, final, overload

import numpy as np
import numpy.typing as npt
from typing_extensions import TypeAlias

__all__ = [
    "BitnetError",
    "ChunkStream",
    "Completion",
    "DEMO_MODEL_NAME",
    "Model",
    "Stream",
    "__version__",
]
__version__: str
DEMO_MODEL_NAME: str

_Prompt: TypeAlias = Union[str, Sequence[int]]
_Messages: TypeAlias = Sequence[Mapping[str, str]]
# OpenAI's: a string, strings, token ids, or lists of token ids.
_CompletionPrompt: TypeAlias = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]]]
# OpenAI's messages: `content` a string, a list of text parts, or None beside `tool_calls`.
_ChatMessages: TypeAlias = Sequence[Mapping[str, Any]]

class BitnetError(Exception):
    """An error from the bitnet library; its message is the library's."""

@final
class Completion:
    """A finished generation."""

    text: str
    token_ids: list[int]
    stop_reason: Literal["eos", "stop", "length", "context_full", "interrupted"]
    prompt_tokens: int
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    time_to_first_token_s: float
    total_s: float

@final
class ChunkStream(Iterator[dict[str, Any]]):
    """The chunk dicts of a ``stream=True`` completion, as ``bitnet serve`` streams them
    (without the final ``[DONE]``). Waits run with the GIL released; dropping the iterator
    stops the generation."""

    def __iter__(self) -> "ChunkStream": ...
    def __next__(self) -> dict[str, Any]: ...

@final
class Stream(Iterator[str]):
    """Text pieces of a generation in progress, computed with the GIL released."""

    def __iter__(self) -> "Stream": ...
    def __next__(self) -> str: ...

@final
class Model:
    """A BitNet b1.58 model with its tokenizer.

    ``Model()`` is the bundled demo model; ``Model(path)`` a GGUF file or a Hugging Face
    folder; ``Model("hf:OWNER/REPO[:FILE]")`` a model from the Hugging Face Hub.
    """

    def __new__(
        cls,
        model: Union[str, "os.PathLike[str]", None] = None,
        *,
        threads: Optional[int] = None,
        context: int = 0,
        cache_type: Literal["f16", "f32"] = "f16",
        output_type: Optional[Literal["q8_0", "q6_k", "f16", "f32"]] = None,
        isa: Optional[str] = None,
        mmap: Optional[bool] = None,
        draft: Optional["Model"] = None,
        draft_max: int = 8,
        draft_min: int = 0,
        draft_p_min: float = 0.75,
    ) -> "Model": ...
    @property
    def name(self) -> str: ...
    @property
    def n_vocab(self) -> int: ...
    @property
    def context_size(self) -> int: ...
    @property
    def threads(self) -> int: ...
    def tokenize(
        self, text: str, *, add_bos: Optional[bool] = None, parse_special: bool = False
    ) -> list[int]: ...
    def detokenize(self, ids: Sequence[int]) -> str: ...
    @overload
    def logits(
        self, ids: Sequence[int], *, all: Literal[False] = False
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def logits(self, ids: Sequence[int], *, all: Literal[True]) -> npt.NDArray[np.float32]: ...
    @overload
    def embed(
        self,
        input: str,
        *,
        pooling: Optional[Literal["mean", "last", "cls", "none"]] = None,
        normalize: bool = True,
        dimensions: Optional[int] = None,
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def embed(
        self,
        input: Sequence[str],
        *,
        pooling: Optional[Literal["mean", "last", "cls", "none"]] = None,
        normalize: bool = True,
        dimensions: Optional[int] = None,
    ) -> Any: ...
    def generate(
        self,
        prompt: _Prompt,
        *,
        max_tokens: Optional[int] = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
    ) -> str: ...
    def complete(
        self,
        prompt: _Prompt,
        *,
        max_tokens: Optional[int] = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
    ) -> Completion: ...
    def stream(
        self,
        prompt: _Prompt,
        *,
        max_tokens: Optional[int] = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
    ) -> Stream: ...
    @overload
    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        slots: int = 4,
        return_exceptions: Literal[False] = False,
        max_tokens: Optional[int] = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
    ) -> list[str]: ...
    @overload
    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        slots: int = 4,
        return_exceptions: Literal[True],
        max_tokens: Optional[int] = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
    ) -> list[Union[str, BitnetError]]:
        """The texts in the order of ``prompts``. A prompt that cannot run raises its
        ``BitnetError`` (``"prompt I: ..."``) once all have run; with
        ``return_exceptions=True`` its place holds that ``BitnetError`` instead (as
        ``asyncio.gather`` does) and the other prompts' texts are returned."""
        ...
    def chat(
        self,
        messages: _Messages,
        *,
        max_tokens: Optional[int] = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
    ) -> str: ...
    def chat_stream(
        self,
        messages: _Messages,
        *,
        max_tokens: Optional[int] = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
    ) -> Stream: ...
    def chat_prompt(self, messages: _Messages) -> list[int]: ...
    @overload
    def create_completion(
        self,
        prompt: Optional[_CompletionPrompt] = None,
        *,
        stream: Literal[False] = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """llama-cpp-python's ``create_completion``: the ``text_completion`` dict
        ``bitnet serve``'s ``/v1/completions`` answers the same request with."""
        ...
    @overload
    def create_completion(
        self,
        prompt: Optional[_CompletionPrompt] = None,
        *,
        stream: Literal[True],
        **kwargs: Any,
    ) -> ChunkStream: ...
    @overload
    def create_chat_completion(
        self,
        messages: Optional[_ChatMessages] = None,
        *,
        stream: Literal[False] = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """llama-cpp-python's ``create_chat_completion``: the ``chat.completion`` dict
        ``bitnet serve``'s ``/v1/chat/completions`` answers the same request with. The last
        conversation stays in the KV cache: a call that continues it runs only its new
        tokens."""
        ...
    @overload
    def create_chat_completion(
        self,
        messages: Optional[_ChatMessages] = None,
        *,
        stream: Literal[True],
        **kwargs: Any,
    ) -> ChunkStream: ...
