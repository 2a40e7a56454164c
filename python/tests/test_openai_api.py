"""`Model.create_completion` / `Model.create_chat_completion` (llama-cpp-python's names)
against a real `bitnet serve` on the demo model: the same request with the same seed gives
the same OpenAI object, whole and streamed, but for `id`, `created` and the timings.

The server runs one slot (`--parallel 1`), as the Python model does, and both get the same
requests in the same order: their KV caches then hold the same tokens, so even
`usage.prompt_tokens_details.cached_tokens` must agree, and a conversation continued in a
later call reuses the cache of the earlier one in both."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest

import bitnet

SKIP = {"id", "created", "timings"}


def normal(obj: Any) -> Any:
    """`obj` without the fields that differ between any two responses."""
    if isinstance(obj, dict):
        return {k: normal(v) for k, v in obj.items() if k not in SKIP}
    if isinstance(obj, list):
        return [normal(v) for v in obj]
    return obj


class Server:
    def __init__(self, cli_path: str):
        self.proc = subprocess.Popen(
            [cli_path, "serve", "--port", "0", "--parallel", "1"],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.log: list[str] = []
        self.url = ""
        deadline = time.time() + 120
        while not self.url:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("bitnet serve ended before listening:\n" + "".join(self.log))
            self.log.append(line)
            if "http://" in line:
                self.url = "http://" + line.split("http://", 1)[1].split()[0]
            if time.time() > deadline:
                raise RuntimeError("bitnet serve did not start")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """Raw HTTP: the status and the JSON body, or for a stream the list of its events'
        JSON (without the final [DONE])."""
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:
                text = resp.read().decode()
                status = resp.status
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read().decode())
        if not body.get("stream"):
            return status, json.loads(text)
        events = [l[len("data: ") :] for l in text.splitlines() if l.startswith("data: ")]
        assert events[-1] == "[DONE]", events[-3:]
        return status, [json.loads(e) for e in events[:-1]]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(cli) -> Iterator[Server]:
    s = Server(str(cli.path))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def api_model() -> bitnet.Model:
    # Its own model: its one slot's cache must see exactly the requests the server's sees.
    return bitnet.Model()


SYSTEM = {"role": "system", "content": "You are a player in a play by Shakespeare."}


def both(server: Server, model: bitnet.Model, endpoint: str, body: dict[str, Any]) -> Any:
    """The server's answer to `body`, after checking that the Python model's is the same."""
    status, theirs = server.post(endpoint, body)
    assert status == 200, theirs
    call = model.create_chat_completion if endpoint.endswith("chat/completions") else model.create_completion
    ours: Any = call(**body)
    if body.get("stream"):
        assert not isinstance(ours, dict)
        ours = list(ours)
    assert normal(ours) == normal(theirs), body
    return theirs


def test_chat_completions_equal_the_servers_and_keep_the_conversation_cached(server, api_model):
    first = {
        "messages": [SYSTEM, {"role": "user", "content": "Good morrow, what news?"}],
        "max_tokens": 24,
        "temperature": 0.9,
        "seed": 7,
    }
    reply = both(server, api_model, "/v1/chat/completions", first)
    assert reply["object"] == "chat.completion" and reply["seed"] == 7
    assert reply["choices"][0]["message"]["content"]
    # The conversation goes on, the new turn's content as a list of text parts: the prompt
    # starts with the last one, whose cache both reuse.
    second = {
        "messages": first["messages"]
        + [
            reply["choices"][0]["message"],
            {"role": "user", "content": [{"type": "text", "text": "Speak again."}]},
        ],
        "max_tokens": 24,
        "temperature": 0.7,
        "top_k": 20,
        "seed": 8,
    }
    reply = both(server, api_model, "/v1/chat/completions", second)
    assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] > 20, reply["usage"]
    # logprobs with alternatives and a token banned by logit_bias; then a JSON object.
    banned = api_model.tokenize("e", add_bos=False)[0]
    third = {
        "messages": [{"role": "user", "content": "Who goes there?"}],
        "max_tokens": 12,
        "seed": 3,
        "logprobs": True,
        "top_logprobs": 3,
        "logit_bias": {str(banned): -100},
    }
    reply = both(server, api_model, "/v1/chat/completions", third)
    content = reply["choices"][0]["logprobs"]["content"]
    assert content and all(len(c["top_logprobs"]) == 3 for c in content)
    assert all(c["token"] != "e" for c in content)
    fourth = {
        "messages": [{"role": "user", "content": "Answer in JSON."}],
        "max_tokens": 40,
        "seed": 5,
        "n": 2,
        "response_format": {"type": "json_object"},
    }
    reply = both(server, api_model, "/v1/chat/completions", fourth)
    assert len(reply["choices"]) == 2


def test_streamed_chat_chunks_equal_the_servers(server, api_model):
    body = {
        "messages": [SYSTEM, {"role": "user", "content": "Tell me of Verona."}],
        "max_tokens": 20,
        "seed": 11,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
    }
    chunks = both(server, api_model, "/v1/chat/completions", body)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    # The same request whole gives the text the chunks add up to.
    whole = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    reply = both(server, api_model, "/v1/chat/completions", whole)
    assert reply["choices"][0]["message"]["content"] == text


def test_completions_equal_the_servers_whole_and_streamed(server, api_model):
    body = {"prompt": "ROMEO:\n", "max_tokens": 16, "seed": 42, "logprobs": 2, "echo": True}
    reply = both(server, api_model, "/v1/completions", body)
    assert reply["object"] == "text_completion"
    assert reply["choices"][0]["text"].startswith("ROMEO:\n")
    body = {"prompt": ["JULIET:\n", "HAMLET:\n"], "n": 2, "max_tokens": 12, "stop": ["\n\n"], "seed": 1}
    reply = both(server, api_model, "/v1/completions", body)
    assert len(reply["choices"]) == 4
    body = {"prompt": "First Citizen:\n", "max_tokens": 16, "seed": 9, "stream": True, "logprobs": 1}
    chunks = both(server, api_model, "/v1/completions", body)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    # Positional prompt, as llama-cpp-python's callers write it (after the server's answer:
    # the same prompt and output leave the two caches alike).
    body = {"prompt": "ROMEO:\n", "max_tokens": 16, "seed": 42}
    theirs = both(server, api_model, "/v1/completions", body)
    reply = api_model.create_completion("ROMEO:\n", max_tokens=16, seed=42)
    assert reply["choices"][0]["text"] == theirs["choices"][0]["text"]


def test_a_request_the_server_refuses_is_a_python_error_with_its_message(server, api_model):
    for body in [
        {"messages": [{"role": "user", "content": "x"}], "temperature": 3},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
        {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
        {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
        {"messages": [{"role": "user", "content": "ROMEO " * 5000}]},
    ]:
        status, theirs = server.post("/v1/chat/completions", body)
        assert status == 400, theirs
        with pytest.raises(ValueError) as raised:
            api_model.create_chat_completion(**body)
        # The hint on a long prompt names the option that sets the context: the server's -c,
        # the model's context argument.
        message = theirs["error"]["message"].replace("(bitnet serve -c)", "(bitnet.Model(context=...))")
        assert str(raised.value) == message, body


def test_bad_keyword_arguments_are_clear_python_errors(api_model):
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(TypeError, match="unexpected keyword argument `temprature`"):
        api_model.create_chat_completion(messages=messages, temprature=0.5)
    with pytest.raises(ValueError, match="`max_tokens` must be"):
        api_model.create_chat_completion(messages=messages, max_tokens="many")
    with pytest.raises(TypeError, match=r'messages\[0\]\["content"\].*not a JSON value'):
        api_model.create_chat_completion(messages=[{"role": "user", "content": object()}])
    with pytest.raises(TypeError, match="logits_processor: Python callbacks are not supported"):
        api_model.create_chat_completion(messages=messages, logits_processor=lambda ids, l: l)
    with pytest.raises(ValueError, match="tfs_z"):
        api_model.create_completion("ROMEO:", tfs_z=0.5)
    with pytest.raises(ValueError, match="`prompt`"):
        api_model.create_completion()
    with pytest.raises(TypeError, match="multiple values for argument 'prompt'"):
        api_model.create_completion("a", **{"prompt": "b"})
    # llama-cpp-python's defaults for its own arguments are accepted.
    out = api_model.create_completion(
        "ROMEO:", max_tokens=2, tfs_z=1.0, mirostat_mode=0, logits_processor=None, seed=1
    )
    assert out["usage"]["completion_tokens"] <= 2


def test_dropping_a_stream_stops_it_and_the_model_answers_the_next_call(api_model):
    chunks = api_model.create_completion("ROMEO:\n", max_tokens=200, seed=1, stream=True)
    assert next(iter(chunks))["object"] == "text_completion"
    del chunks
    out = api_model.create_completion("ROMEO:\n", max_tokens=4, seed=1)
    assert out["usage"]["completion_tokens"] <= 4
