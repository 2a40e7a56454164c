"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) through the
official `anthropic` client against the real `bitnet serve`: the client parses every reply
and stream into its own types, and raises on the errors, so a shape it does not accept fails
here. Tool use runs with Llama 3.1's template (as test_tools.py does), forced by
`tool_choice`, since the 7M demo model never calls a tool by itself.
"""

import json
import pathlib
import urllib.error
import urllib.request

import anthropic
import pytest

from conftest import Server

ROOT = pathlib.Path(__file__).resolve().parents[4]
TEMPLATE = ROOT / "testdata" / "templates" / "llama-3.1-instruct.jinja"
USER = [{"role": "user", "content": "Speak of the king."}]
CITIES = ["Verona", "Mantua", "Padua"]
TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city over the next days",
        "input_schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": CITIES},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    }
]


@pytest.fixture(scope="module")
def ac(server):
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


# Greedy, so that two requests agree (recent clients no longer take `temperature` as an
# argument: it goes in the body).
GREEDY = {"temperature": 0}


def create(ac, **kw):
    kw.setdefault("messages", USER)
    kw.setdefault("max_tokens", 24)
    kw["extra_body"] = {**GREEDY, **kw.get("extra_body", {})}
    return ac.messages.create(model="m", **kw)


def text_of(message):
    return "".join(b.text for b in message.content if b.type == "text")


def test_whole_message(ac):
    m = create(ac)
    assert m.type == "message" and m.role == "assistant"
    assert m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.stop_sequence is None
    assert 0 < m.usage.output_tokens <= 24
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens > 0


def test_stream_accumulates_to_the_whole_message(ac):
    whole = create(ac, max_tokens=30)
    kinds = []
    with ac.messages.stream(model="m", max_tokens=30, messages=USER, extra_body=GREEDY) as s:
        for event in s:
            kinds.append(event.type)
        final = s.get_final_message()
    assert text_of(final) == text_of(whole)
    assert [b.type for b in final.content] == ["text"]
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    raw = [k for k in kinds if k not in ("text",)]
    assert raw[0] == "message_start"
    assert raw[1] == "content_block_start"
    assert raw[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(raw[2:-3]) == {"content_block_delta"}


def count(ac, **kw):
    kw.setdefault("messages", USER)
    return ac.messages.count_tokens(model="m", **kw).input_tokens


def test_system_prompt_reaches_the_prompt(ac):
    plain = count(ac)
    with_system = count(ac, system="Answer in verse.")
    assert with_system > plain
    # A list of text blocks is the same system prompt.
    assert count(ac, system=[{"type": "text", "text": "Answer in verse."}]) == with_system
    m = create(ac, system="Answer in verse.")
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == with_system


def test_multi_turn(ac):
    history = USER + [
        {"role": "assistant", "content": "The king is dead."},
        {"role": "user", "content": [{"type": "text", "text": "Long live"}, {"type": "text", "text": "the king."}]},
    ]
    assert count(ac, messages=history) > count(ac)
    m = create(ac, messages=history)
    assert m.content[0].text


def test_stop_sequences(ac):
    text = text_of(create(ac, max_tokens=24))
    # A piece of what the model will write, from its third character on: it stops there.
    stop = text[2:5]
    cut = text.find(stop)
    m = create(ac, max_tokens=24, stop_sequences=[stop, "never in this text"])
    assert m.stop_reason == "stop_sequence"
    assert m.stop_sequence == stop
    assert text_of(m) == text[:cut]


def test_max_tokens(ac):
    m = create(ac, max_tokens=3)
    assert m.stop_reason == "max_tokens"
    assert m.usage.output_tokens == 3


def test_count_tokens_is_the_prompt_that_runs(ac):
    kw = {"system": "Be brief.", "messages": USER + [{"role": "assistant", "content": "Sir?"},
                                                    {"role": "user", "content": "The king!"}]}
    n = count(ac, **kw)
    m = create(ac, **kw)
    # Anthropic counts cached prompt tokens apart; together they are the prompt.
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == n
    # Sent again, the prompt is mostly read from a slot's cache, and the split says so.
    again = create(ac, **kw)
    assert again.usage.cache_read_input_tokens > 0
    assert again.usage.input_tokens + again.usage.cache_read_input_tokens == n
    # max_tokens is not needed to count.
    assert n > 0


def raw(server, path, body):
    req = urllib.request.Request(
        server.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_errors(ac, server):
    # Anthropic requires max_tokens (its client does too, so this is sent by hand).
    status, body = raw(server, "/v1/messages", {"model": "m", "messages": USER})
    assert status == 400
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as e:
        create(ac, messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}])
    assert "image input is not supported" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        create(ac, extra_body={"stop": ["x"]})
    assert "stop_sequences" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        create(ac, messages=[{"role": "system", "content": "x"}])
    # The demo model's own template cannot show tools: refused, as chat refuses them.
    with pytest.raises(anthropic.BadRequestError) as e:
        create(ac, tools=TOOLS)
    assert "tools" in e.value.body["error"]["message"]
    status, body = raw(server, "/v1/messages", {"model": "m", "max_tokens": 5, "messages": []})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"


@pytest.fixture(scope="module")
def tool_server():
    s = Server("--parallel", "2", "-n", "80", "--chat-template-file", str(TEMPLATE))
    yield s
    s.stop()
    assert s.proc.returncode == 0, "".join(s.log[-20:])


@pytest.fixture(scope="module")
def tac(tool_server):
    return anthropic.Anthropic(base_url=tool_server.url, api_key="unused", max_retries=0, timeout=120)


FORCED = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}


def test_tool_use_round_trip(tac):
    first = create(tac, tools=TOOLS, tool_choice=FORCED, max_tokens=80)
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1
    use = uses[0]
    assert use.name == "get_weather" and use.id.startswith("toolu_")
    assert set(use.input) == {"city", "days"} and use.input["city"] in CITIES
    assert isinstance(use.input["days"], int) and 1 <= use.input["days"] <= 7
    # The call goes back as the assistant's turn, its result as the user's.
    history = USER + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Fair skies"}]},
    ]
    second = create(tac, tools=TOOLS, messages=history, max_tokens=12)
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in second.content] == ["text"]
    assert second.content[0].text
    n = count(tac, tools=TOOLS, messages=history)
    assert n > count(tac, tools=TOOLS)
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens == n
    # An error result is a different prompt (the template sees it said).
    failed = history[:-1] + [
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Fair skies", "is_error": True}],
        }
    ]
    assert count(tac, tools=TOOLS, messages=failed) > n


def test_streamed_tool_use_accumulates_to_the_whole_call(tac):
    whole = create(tac, tools=TOOLS, tool_choice=FORCED, max_tokens=80)
    with tac.messages.stream(
        model="m", max_tokens=80, messages=USER, tools=TOOLS, tool_choice=FORCED, extra_body=GREEDY
    ) as s:
        events = list(s)
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in final.content] == [(b.type, b.name, b.input) for b in whole.content]
    starts = [e for e in events if e.type == "content_block_start"]
    assert [e.index for e in starts] == [0]
    assert starts[0].content_block.type == "tool_use"
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert deltas and all(d.type == "input_json_delta" for d in deltas)
    assert json.loads("".join(d.partial_json for d in deltas)) == whole.content[0].input
    # The client's "text" events never fired: no text block.
    assert not any(e.type == "text" for e in events)
