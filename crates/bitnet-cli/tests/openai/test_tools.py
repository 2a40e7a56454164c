"""Tool calling through the official `openai` client, with Llama 3.1's own chat template
(testdata/templates/llama-3.1-instruct.jinja, Meta's template for Llama-3.1-8B-Instruct)
given to the demo model with --chat-template-file.

The 7M Shakespeare model never chooses to call a tool by itself, so these tests force calls:
`tool_choice: "required"` or a named function constrain the reply from its first token, and
for `auto` a logit bias on `{` makes the reply open like a call (the rest is the model's,
under the calls' grammar). Arguments are checked against the tools' schemas here, by hand.
"""

import json
import pathlib
import urllib.request

import openai
import pytest

from conftest import Server

ROOT = pathlib.Path(__file__).resolve().parents[4]
TEMPLATE = ROOT / "testdata" / "templates" / "llama-3.1-instruct.jinja"
CITIES = ["Verona", "Mantua", "Padua"]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city over the next days",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "enum": CITIES},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                },
                "required": ["city", "days"],
            },
        },
    },
    {"type": "function", "function": {"name": "clock", "description": "The hour"}},
]
USER = [{"role": "user", "content": "What weather shall we have in Verona?"}]
# The demo tokenizer's `{` (a reply that begins with it is a call).
BRACE = "90"


@pytest.fixture(scope="module")
def tool_server():
    s = Server("--parallel", "4", "-n", "80", "--chat-template-file", str(TEMPLATE))
    yield s
    s.stop()
    assert s.proc.returncode == 0, "".join(s.log[-20:])


@pytest.fixture(scope="module")
def tc(tool_server):
    return openai.OpenAI(base_url=tool_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def check_call(call):
    """A call as OpenAI shapes it, its arguments valid for its function's schema."""
    assert call.type == "function"
    assert call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(args) == {"city", "days"}, args
        assert args["city"] in CITIES
        assert isinstance(args["days"], int) and 1 <= args["days"] <= 7
    else:
        assert call.function.name == "clock"
        assert args == {}
    return call.function.name, args


def create(tc, **kw):
    return tc.chat.completions.create(model="m", messages=kw.pop("messages", USER), tools=TOOLS, temperature=0, **kw)


def test_required_and_named_calls_follow_the_schema(tc):
    r = create(tc, tool_choice="required", parallel_tool_calls=False)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content is None
    assert len(c.message.tool_calls) == 1
    check_call(c.message.tool_calls[0])
    for name in ["clock", "get_weather"]:
        r = create(tc, tool_choice={"type": "function", "function": {"name": name}}, parallel_tool_calls=False)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls"
        assert [check_call(t)[0] for t in c.message.tool_calls] == [name]


def test_parallel_calls(tc):
    # Allowed several calls, the model goes on calling until its budget ends; every call
    # before the cut is whole and valid, each with its own id.
    r = create(tc, tool_choice="required", max_tokens=80)
    calls = r.choices[0].message.tool_calls
    assert len(calls) >= 2, r
    for t in calls[:-1] if r.choices[0].finish_reason == "length" else calls:
        check_call(t)
    assert len({t.id for t in calls}) == len(calls)
    assert r.choices[0].message.content is None


def test_streamed_calls_reassemble_to_the_whole_reply(tc):
    whole = create(tc, tool_choice="required", max_tokens=80, seed=5)
    stream = create(tc, tool_choice="required", max_tokens=80, seed=5, stream=True)
    calls, finish, firsts = {}, None, []
    for chunk in stream:
        for c in chunk.choices:
            assert not c.delta.content
            for d in c.delta.tool_calls or []:
                if d.index not in calls:
                    # OpenAI's order: the first delta of a call has its id, type and name.
                    assert d.id and d.type == "function" and d.function.name
                    firsts.append(d.index)
                    calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": ""}
                else:
                    assert d.id is None and d.function.name is None
                calls[d.index]["arguments"] += d.function.arguments or ""
            finish = c.finish_reason or finish
    assert firsts == list(range(len(calls)))
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (t.function.name, t.function.arguments) for t in whole.choices[0].message.tool_calls
    ]
    assert finish == whole.choices[0].finish_reason
    # The client's own accumulation of the stream agrees.
    with tc.chat.completions.stream(
        model="m", messages=USER, tools=TOOLS, temperature=0, tool_choice="required", parallel_tool_calls=False
    ) as s:
        final = s.get_final_completion()
    one = create(tc, tool_choice="required", parallel_tool_calls=False)
    assert final.choices[0].finish_reason == "tool_calls"
    got = [(t.function.name, t.function.arguments) for t in final.choices[0].message.tool_calls]
    assert got == [(t.function.name, t.function.arguments) for t in one.choices[0].message.tool_calls]


def test_auto_reads_a_reply_that_is_a_call_and_leaves_text_alone(tc):
    text = create(tc, max_tokens=12)
    assert text.choices[0].message.tool_calls is None
    assert text.choices[0].message.content
    assert text.choices[0].finish_reason == "length"
    r = create(tc, logit_bias={BRACE: 100}, parallel_tool_calls=False)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content is None
    assert len(c.message.tool_calls) == 1
    check_call(c.message.tool_calls[0])
    # Streamed, the same call.
    chunks = list(create(tc, logit_bias={BRACE: 100}, parallel_tool_calls=False, stream=True))
    args = "".join(
        d.function.arguments or "" for ch in chunks for c in ch.choices for d in c.delta.tool_calls or []
    )
    assert args == c.message.tool_calls[0].function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_second_turn_sends_the_result_back(tc, tool_server):
    first = create(tc, tool_choice={"type": "function", "function": {"name": "get_weather"}}, parallel_tool_calls=False)
    call = first.choices[0].message.tool_calls[0]
    args = json.loads(call.function.arguments)
    history = USER + [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Fair, and the wind in the west"},
    ]
    r = create(tc, messages=history, max_tokens=12)
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > first.usage.prompt_tokens
    # The template wrote the call back in Llama's format, and the result as ipython's turn.
    req = urllib.request.Request(
        tool_server.url + "/apply-template",
        data=json.dumps({"messages": history, "tools": TOOLS}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        prompt = json.loads(resp.read())["prompt"]
    # (minijinja's `tojson` is compact where Python's puts spaces.)
    compact = json.dumps(args, separators=(",", ":"), sort_keys=True)
    assert '{"name": "get_weather", "parameters": ' + compact + "}<|eot_id|>" in prompt
    # (Meta's template writes a string result through `tojson` too: strings are iterable in
    # Jinja, as transformers renders it.)
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n"Fair, and the wind in the west"<|eot_id|>' in prompt


def test_tool_refusals(tc):
    with pytest.raises(openai.BadRequestError) as e:
        create(tc, tool_choice={"type": "function", "function": {"name": "sundial"}})
    assert e.value.body["param"] == "tool_choice" and "sundial" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        tc.chat.completions.create(model="m", messages=USER, tool_choice="required")
    assert e.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as e:
        create(tc, tool_choice="required", response_format={"type": "json_object"})
    assert e.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as e:
        tc.chat.completions.create(
            model="m", messages=USER, tools=[{"type": "function", "function": {"description": "no name"}}]
        )
    assert e.value.body["param"] == "tools"


def test_responses_api_function_calls(tc):
    flat = [{"type": "function", **t["function"]} for t in TOOLS]
    named = {"type": "function", "name": "get_weather"}
    r = tc.responses.create(model="m", input=USER[0]["content"], tools=flat, tool_choice=named, parallel_tool_calls=False, temperature=0)
    assert r.status == "completed"
    assert [o.type for o in r.output] == ["function_call"]
    call = r.output[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    args = json.loads(call.arguments)
    assert args["city"] in CITIES and 1 <= args["days"] <= 7
    # Streamed: the same call, its arguments in the delta events.
    events = list(
        tc.responses.create(
            model="m", input=USER[0]["content"], tools=flat, tool_choice=named, parallel_tool_calls=False, temperature=0, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(pieces) == call.arguments
    assert len(pieces) > 3  # as generated, not in one piece at the end
    assert kinds.index("response.output_item.added") < kinds.index("response.function_call_arguments.delta")
    assert kinds[-4:-1] == [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    done = events[-1].response.output
    assert [(o.type, o.name, o.arguments) for o in done] == [("function_call", call.name, call.arguments)]
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert [(i.id, i.call_id) for i in added] == [(o.id, o.call_id) for o in done]
    # The second turn: the call and its output go back as items; the model answers in text.
    again = tc.responses.create(
        model="m",
        input=[
            {"role": "user", "content": USER[0]["content"]},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "Fair"},
        ],
        tools=flat,
        max_output_tokens=8,
        temperature=0,
    )
    assert [o.type for o in again.output] == ["message"]
    assert again.output_text
    # Text streamed with tools offered: one message item, its text in deltas.
    events = list(tc.responses.create(model="m", input="Speak.", tools=flat, max_output_tokens=8, temperature=0, stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert [o.type for o in done.output] == ["message"] and done.output_text == text and text


# Qwen's and Hermes' way: the template knows tools but asks for calls in <tool_call> tags.
TAGGED = (
    "{% if tools %}<tools>{{ tools | tojson }}</tools>\nCall with <tool_call>{\"name\": ..., "
    "\"arguments\": ...}</tool_call>\n{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n"
    "{% endfor %}assistant: "
)


def test_templates_with_another_call_format_are_not_forced():
    s = Server("--parallel", "1", "-n", "8", "--chat-template", TAGGED)
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        with pytest.raises(openai.BadRequestError) as e:
            create(c, tool_choice="required")
        assert e.value.body["param"] == "tool_choice" and "Llama 3.x" in e.value.body["message"]
        # `auto`: the tools are shown, the reply is left as text (not read as Llama's calls).
        r = create(c, logit_bias={BRACE: 100})
        assert r.choices[0].message.tool_calls is None
        assert r.choices[0].message.content.startswith("{")
    finally:
        s.stop()
