"""`bitnet serve` beyond chat/completions, through the official `openai` client: the Responses
API (`responses.create`, streamed and not), a client whose base URL has no `/v1`,
llama-server's `/tokenize` ↔ `/detokenize` called through the client's own `post`, and its
GBNF `grammar` field."""

import json

import openai
import pytest

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": ["Romeo", "Juliet", "Tybalt"]},
        "age": {"type": "integer", "minimum": 10, "maximum": 60},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def bare(server):
    """A client whose base URL is the server's root, as llama-server users often set it."""
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def test_responses_create_equals_chat(client, model_id):
    r = client.responses.create(
        model=model_id, instructions="Be brief.", input="Speak, Romeo.", max_output_tokens=12, temperature=0
    )
    assert r.object == "response"
    assert r.id.startswith("resp_")
    chat = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Speak, Romeo."}],
        max_tokens=12,
        temperature=0,
    )
    # The same conversation, translated: the same reply and token counts.
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.usage.output_tokens == chat.usage.completion_tokens
    if chat.choices[0].finish_reason == "length":
        assert r.status == "incomplete"
        assert r.incomplete_details.reason == "max_output_tokens"
    else:
        assert r.status == "completed" and r.incomplete_details is None
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.instructions == "Be brief."


def test_responses_input_items(client, model_id):
    items = [
        {"role": "user", "content": "Speak, Romeo."},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "I will."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Now."}]},
    ]
    r = client.responses.create(model=model_id, input=items, max_output_tokens=8, temperature=0)
    chat = client.chat.completions.create(
        model=model_id,
        messages=[
            {"role": "user", "content": "Speak, Romeo."},
            {"role": "assistant", "content": "I will."},
            {"role": "user", "content": "Now."},
        ],
        max_tokens=8,
        temperature=0,
    )
    assert r.output_text == chat.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(
            model=model_id,
            input=[{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}],
        )
    assert "text only" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model_id, input="x", previous_response_id="resp_1")
    assert e.value.body["param"] == "previous_response_id"


def test_responses_streamed_equals_whole(client, model_id):
    whole = client.responses.create(model=model_id, input="Speak, Romeo.", max_output_tokens=16, temperature=0)
    stream = client.responses.create(
        model=model_id, input="Speak, Romeo.", max_output_tokens=16, temperature=0, stream=True
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete" if whole.status == "incomplete" else "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text
    assert events[-4].text == text
    assert events[-1].response.output_text == text
    assert events[-1].response.usage.output_tokens == whole.usage.output_tokens


def test_responses_json_schema(client, model_id):
    for seed in range(2):
        r = client.responses.create(
            model=model_id,
            input="Speak, Romeo.",
            max_output_tokens=60,
            temperature=0.8,
            extra_body={"seed": seed},
            text={"format": {"type": "json_schema", "name": "person", "schema": SCHEMA, "strict": True}},
        )
        v = json.loads(r.output_text)
        assert v["name"] in ("Romeo", "Juliet", "Tybalt")
        assert 10 <= v["age"] <= 60
        assert r.status == "completed"


def test_base_url_without_v1(bare, client, model_id):
    assert bare.models.list().data[0].id == model_id
    a = bare.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Speak"}], max_tokens=6, temperature=0
    )
    b = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Speak"}], max_tokens=6, temperature=0
    )
    assert a.choices[0].message.content == b.choices[0].message.content
    r = bare.responses.create(model=model_id, input="Speak", max_output_tokens=4, temperature=0)
    assert r.usage.output_tokens == 4


def test_tokenize_detokenize_round_trip(bare):
    for text in ["ROMEO:\nSpeak, Juliet.", "é ü — “quoted”", "  spaced   out  "]:
        t = bare.post("/tokenize", body={"content": text, "with_pieces": True}, cast_to=object)
        ids = [p["id"] for p in t["tokens"]]
        d = bare.post("/detokenize", body={"tokens": ids}, cast_to=object)
        assert d["content"] == text
    with pytest.raises(openai.BadRequestError) as e:
        bare.post("/tokenize", body={"text": "x"}, cast_to=object)
    assert e.value.body["param"] == "text"


def test_gbnf_grammar_through_extra_body(client, model_id):
    grammar = 'root ::= ("Ay" | "No") ", " [a-z]+ "."'
    for seed in range(3):
        r = client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": "Speak, Romeo."}],
            max_tokens=40,
            seed=seed,
            temperature=1.0,
            extra_body={"grammar": grammar},
        )
        text = r.choices[0].message.content
        head, _, rest = text.partition(", ")
        assert head in ("Ay", "No"), text
        word = rest.removesuffix(".")
        assert word.isalpha() and word.islower(), text
        if r.choices[0].finish_reason == "stop":
            assert text.endswith(".")


def test_tool_choice_none_and_malformed_tool_calls(client, model_id):
    user = [{"role": "user", "content": "Speak, Romeo."}]
    tools = [{"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}}]
    # No tool may be called: none is shown, so a template without tools serves it as plain chat.
    none = client.chat.completions.create(
        model=model_id, messages=user, tools=tools, tool_choice="none", max_tokens=6, temperature=0
    )
    plain = client.chat.completions.create(model=model_id, messages=user, max_tokens=6, temperature=0)
    assert none.choices[0].message.content == plain.choices[0].message.content
    broken = [
        {"role": "user", "content": "What is the hour?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{not json"}}],
        },
    ]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_id, messages=broken, max_tokens=2)
    assert e.value.body["param"] == "messages" and "tool_calls" in e.value.body["message"]
