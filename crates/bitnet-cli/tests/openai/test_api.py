"""`bitnet serve` through the official `openai` Python client: every request field the server
supports, streamed and not, and its errors."""

import json
import subprocess
import urllib.error
import urllib.request

import openai
import pytest

USER = [{"role": "user", "content": "Speak, Romeo."}]


def raw(server, method, path, body=None, headers=None):
    """A request outside the client: (status, headers, parsed JSON body)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def stream_text(stream):
    text, finish, chunks = "", None, []
    for chunk in stream:
        chunks.append(chunk)
        for c in chunk.choices:
            if c.delta.content:
                text += c.delta.content
            if c.finish_reason:
                finish = c.finish_reason
    return text, finish, chunks


def test_models_list_and_retrieve(client, model_id):
    assert model_id == "bitnet-shakespeare-7m-i2_s.gguf"
    assert client.models.retrieve(model_id).id == model_id
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert "does not exist" in e.value.body["message"]


def test_chat_streamed_equals_whole(client, model_id):
    whole = client.chat.completions.create(model=model_id, messages=USER, max_tokens=20, temperature=0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].logprobs is None
    stream = client.chat.completions.create(
        model=model_id, messages=USER, max_tokens=20, temperature=0, stream=True
    )
    text, finish, chunks = stream_text(stream)
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_content_parts_tool_history_and_refusals(client, model_id):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Speak,"}, {"type": "text", "text": "Romeo."}]}]
    r = client.chat.completions.create(model=model_id, messages=parts, max_tokens=5, temperature=0)
    assert r.choices[0].message.content is not None
    history = [
        {"role": "user", "content": "What is the hour?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
        {"role": "user", "content": "Thank you."},
    ]
    r = client.chat.completions.create(model=model_id, messages=history, max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_id, messages=image, max_tokens=5)
    assert "text only" in e.value.body["message"]
    tools = [{"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_id, messages=USER, tools=tools, max_tokens=5)
    assert "cannot express tools" in e.value.body["message"]
    assert e.value.body["param"] == "tools"


def test_prompt_forms(client, model_id):
    one = client.completions.create(model=model_id, prompt="ROMEO:\n", max_tokens=6, temperature=0)
    assert one.object == "text_completion" and len(one.choices) == 1
    two = client.completions.create(model=model_id, prompt=["ROMEO:\n", "JULIET:\n"], max_tokens=6, temperature=0)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].text == one.choices[0].text
    # Token ids: the same prompt as ids gives the same text.
    echo = client.completions.create(model=model_id, prompt="ROMEO:\n", max_tokens=0, echo=True, logprobs=0)
    assert echo.choices[0].text == "ROMEO:\n"
    tokens = echo.choices[0].logprobs.tokens
    ids = raw_ids("ROMEO:\n")
    assert len(ids) == len(tokens)
    by_ids = client.completions.create(model=model_id, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == one.choices[0].text
    lists = client.completions.create(model=model_id, prompt=[ids, ids[:2]], max_tokens=3, temperature=0)
    assert len(lists.choices) == 2
    assert lists.usage.prompt_tokens == len(ids) + 2


def raw_ids(text, bos=True):
    """Token ids of a text, from `bitnet tokenize` (the server's own tokenizer)."""
    from conftest import binary

    args = [binary(), "tokenize", "-p", text, "--json"] + ([] if bos else ["--no-bos"])
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["ids"]


def test_n_choices_and_seeds(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=USER, max_tokens=12, temperature=1.0, n=3, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.seed == 7
    assert [c.seed for c in r.choices] == [7, 8, 9]
    again = client.chat.completions.create(model=model_id, messages=USER, max_tokens=12, temperature=1.0, n=3, seed=7)
    assert [c.message.content for c in r.choices] == [c.message.content for c in again.choices]
    # Without a seed each request gets a fresh one, reported back; using it repeats the text.
    a = client.completions.create(model=model_id, prompt="ROMEO:\n", max_tokens=12, temperature=1.0)
    b = client.completions.create(model=model_id, prompt="ROMEO:\n", max_tokens=12, temperature=1.0)
    assert a.seed != b.seed
    c = client.completions.create(model=model_id, prompt="ROMEO:\n", max_tokens=12, temperature=1.0, seed=a.seed)
    assert c.choices[0].text == a.choices[0].text
    assert a.id != b.id != c.id


def test_chat_logprobs_streamed_and_not(client, model_id):
    r = client.chat.completions.create(
        model=model_id, messages=USER, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.token == entry.top_logprobs[0].token
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    assert "".join(e.token for e in content) == r.choices[0].message.content
    stream = client.chat.completions.create(
        model=model_id, messages=USER, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, stream=True
    )
    streamed = [e for chunk in stream for c in chunk.choices if c.logprobs for e in c.logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == [e.logprob for e in content]


def test_completion_logprobs_and_echo(client, model_id):
    r = client.completions.create(model=model_id, prompt="ROMEO:\n", max_tokens=5, temperature=0, logprobs=2, echo=True)
    c = r.choices[0]
    assert c.text.startswith("ROMEO:\n")
    lp = c.logprobs
    n_prompt = r.usage.prompt_tokens
    assert len(lp.tokens) == n_prompt + r.usage.completion_tokens
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:])
    assert all(len(t) <= 2 for t in lp.top_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset)
    stream = client.completions.create(
        model=model_id, prompt="ROMEO:\n", max_tokens=5, temperature=0, logprobs=2, echo=True, stream=True
    )
    text = "".join(ch.choices[0].text for ch in stream if ch.choices)
    assert text == c.text


def test_stream_options_include_usage(client, model_id):
    stream = client.chat.completions.create(
        model=model_id, messages=USER, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])
    stream = client.completions.create(
        model=model_id, prompt="ROMEO:\n", max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 6


def test_logit_bias(client, model_id):
    plain = client.completions.create(model=model_id, prompt="ROMEO:\n", max_tokens=4, temperature=0, logprobs=1)
    first = plain.choices[0].logprobs.tokens[0]
    ids = raw_ids(first, bos=False)
    assert len(ids) == 1, ids
    first_id = ids[0]
    banned = client.completions.create(
        model=model_id, prompt="ROMEO:\n", max_tokens=4, temperature=0, logprobs=1, logit_bias={str(first_id): -100}
    )
    assert banned.choices[0].logprobs.tokens[0] != first
    forced = client.completions.create(
        model=model_id, prompt="ROMEO:\n", max_tokens=4, temperature=0, logit_bias={str(first_id): 100}
    )
    assert forced.choices[0].text == first * 4


def test_response_format_json(client, model_id):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": ["Romeo", "Juliet", "Tybalt"]},
            "age": {"type": "integer", "minimum": 10, "maximum": 60},
            "in_love": {"type": "boolean"},
        },
        "required": ["name", "age", "in_love"],
        "additionalProperties": False,
    }
    for seed in range(3):
        r = client.chat.completions.create(
            model=model_id,
            messages=USER,
            max_tokens=60,
            temperature=0.8,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
        )
        v = json.loads(r.choices[0].message.content)
        assert v["name"] in ("Romeo", "Juliet", "Tybalt")
        assert 10 <= v["age"] <= 60
        assert isinstance(v["in_love"], bool)
        assert r.choices[0].finish_reason == "stop"
    # Streamed, the same.
    stream = client.chat.completions.create(
        model=model_id,
        messages=USER,
        max_tokens=60,
        seed=1,
        stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    text, finish, _ = stream_text(stream)
    assert json.loads(text)["name"] in ("Romeo", "Juliet", "Tybalt")
    # Any object: whatever came is the start of one.
    r = client.chat.completions.create(
        model=model_id, messages=USER, max_tokens=40, temperature=0, response_format={"type": "json_object"}
    )
    out = r.choices[0].message.content
    assert out.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out), dict)


def test_errors_are_openai_json(server):
    for method, path, body, status in [
        ("GET", "/nowhere", None, 404),
        ("GET", "/v1/models/nope", None, 404),
        ("GET", "/v1/chat/completions", None, 405),
        ("PUT", "/v1/completions", b"{}", 405),
        ("POST", "/v1/completions", b"{" + b" " * (9 << 20) + b"}", 413),
        ("POST", "/v1/completions", b"{not json", 400),
        ("POST", "/v1/completions", {"prompt": "x", "temperature": "hot"}, 400),
    ]:
        got, _, v = raw(server, method, path, body)
        assert got == status, (method, path, v)
        assert set(v["error"]) >= {"message", "type", "param", "code"}, v


def test_bad_fields_name_their_param(client, model_id):
    for kwargs, param in [
        ({"n": 50}, "n"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"temperature": float("nan")}, None),
    ]:
        try:
            client.chat.completions.create(model=model_id, messages=USER, max_tokens=2, **kwargs)
        except openai.BadRequestError as e:
            if param:
                assert e.body["param"] == param, (kwargs, e.body)
        except (ValueError, TypeError):
            pass  # the client itself refuses some values (NaN is not JSON)
        else:
            pytest.fail(f"{kwargs} was accepted")


def test_health_and_metrics(server, client, model_id):
    status, _, health = raw(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert len(health["slots"]) == 8
    assert health["kv_cache_bytes"] > 0
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    for name in [
        "bitnet_requests_total",
        "bitnet_generated_tokens_total",
        "bitnet_queue_depth",
        "bitnet_slots_busy",
        "bitnet_generation_tokens_per_second",
        "bitnet_time_to_first_token_seconds_count",
    ]:
        assert f"# TYPE {name.removesuffix('_count')}" in text or name in text, name


def test_fields_not_served_are_refused_by_name(client, model_id):
    """Each field works as documented or is refused with a 400 naming it: never answered as if
    it had been honoured."""
    chat = [
        ({"temperature": -1}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"functions": [{"name": "f", "parameters": {"type": "object", "properties": {}}}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"store": True}, "store"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"extra_body": {"grammar": 'root ::= "yes'}}, "grammar"),
        ({"extra_body": {"mirostat": 2}}, "mirostat"),
        ({"extra_body": {"temprature": 0.5}}, "temprature"),
    ]
    for kwargs, param in chat:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=model_id, messages=USER, max_tokens=2, **kwargs)
        assert e.value.body["param"] == param, (kwargs, e.value.body)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=model_id, messages=[{"role": "wizard", "content": "Abracadabra."}], max_tokens=2
        )
    assert e.value.body["param"] == "messages" and "wizard" in e.value.body["message"]
    for kwargs, param in [({"suffix": "THE END"}, "suffix"), ({"best_of": 3}, "best_of")]:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=model_id, prompt="ROMEO:\n", max_tokens=2, **kwargs)
        assert e.value.body["param"] == param, (kwargs, e.value.body)


def test_harmless_and_llama_server_fields(client, model_id):
    """Fields that change nothing observable are accepted; `developer` is `system`;
    llama-server's `ignore_eos` and `json_schema` work."""
    plain = client.chat.completions.create(model=model_id, messages=USER, max_tokens=8, temperature=0)
    same = client.chat.completions.create(
        model=model_id,
        messages=USER,
        max_tokens=8,
        temperature=0,
        user="u1",
        store=False,
        metadata={"run": "test"},
        extra_body={"cache_prompt": False, "mirostat": 0, "typical_p": 1.0},
    )
    assert same.choices[0].message.content == plain.choices[0].message.content
    system = client.chat.completions.create(
        model=model_id, messages=[{"role": "system", "content": "Be brief."}, *USER], max_tokens=8, temperature=0
    )
    developer = client.chat.completions.create(
        model=model_id, messages=[{"role": "developer", "content": "Be brief."}, *USER], max_tokens=8, temperature=0
    )
    assert developer.choices[0].message.content == system.choices[0].message.content
    # ignore_eos: the full max_tokens even where the model would have ended.
    r = client.completions.create(model=model_id, prompt="ROMEO:\n", max_tokens=60, temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 60 and r.choices[0].finish_reason == "length"
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "enum": ["Romeo"]}},
        "required": ["name"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=model_id, messages=USER, max_tokens=30, temperature=0, extra_body={"json_schema": schema}
    )
    assert json.loads(r.choices[0].message.content) == {"name": "Romeo"}
