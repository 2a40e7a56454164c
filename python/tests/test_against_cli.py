"""The Python package against the `bitnet` command line on the bundled demo model: the same
text, token ids and logits, and the same error messages."""

import json
import threading
import time

import numpy as np
import pytest

import bitnet
from conftest import REPO

PROMPTS = ["ROMEO:\n", "JULIET:\nO Romeo, Romeo!", "First Citizen:\nBefore we proceed"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_text_and_ids_equal_bitnet_generate(cli, model, prompt):
    ref = cli.json("generate", "-p", prompt, "--temp", "0", "-n", "64", "--json")
    assert model.generate(prompt, temperature=0, max_tokens=64) == ref["text"]
    done = model.complete(prompt, temperature=0, max_tokens=64)
    assert done.text == ref["text"]
    assert done.token_ids == ref["generated_ids"]
    assert done.stop_reason == ref["stop_reason"]
    assert done.prompt_tokens == ref["prompt_tokens"]


def test_batched_texts_equal_bitnet_generate_one_by_one(cli, model):
    prompts = PROMPTS + ["HAMLET:\n", "KING RICHARD III:\nNow is the winter"]
    texts = model.generate_batch(prompts, slots=3, temperature=0, max_tokens=40)
    for prompt, text in zip(prompts, texts):
        ref = cli.json("generate", "-p", prompt, "--temp", "0", "-n", "40", "--json")
        assert text == ref["text"], prompt
    with pytest.raises(bitnet.BitnetError, match="prompt 1: .*context"):
        model.generate_batch(["ROMEO:", "ROMEO: " * 2000], max_tokens=4)


def test_a_batch_with_a_bad_prompt_keeps_the_others_with_return_exceptions(cli, model):
    prompts = ["ROMEO:\n", "ROMEO: " * 2000, "JULIET:\n"]
    results = model.generate_batch(prompts, temperature=0, max_tokens=24, return_exceptions=True)
    assert len(results) == 3
    assert isinstance(results[1], bitnet.BitnetError)
    assert "context" in str(results[1])
    for i in (0, 2):
        ref = cli.json("generate", "-p", prompts[i], "--temp", "0", "-n", "24", "--json")
        assert results[i] == ref["text"]


def test_sampled_text_equals_bitnet_generate_with_the_same_seed(cli, model):
    args = ["--temp", "0.9", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.02"]
    args += ["--repeat-penalty", "1.1", "--seed", "1234", "-n", "48"]
    ref = cli.json("generate", "-p", "ROMEO:\n", *args, "--json")
    text = model.generate(
        "ROMEO:\n",
        temperature=0.9,
        top_k=20,
        top_p=0.9,
        min_p=0.02,
        repeat_penalty=1.1,
        seed=1234,
        max_tokens=48,
    )
    assert text == ref["text"]


def test_stop_strings_and_token_prompts_equal_the_cli(cli, model):
    ref = cli.json("generate", "-p", "ROMEO:\n", "--temp", "0", "--stop", "thee", "--json")
    assert ref["stop_reason"] == "stop"
    assert model.generate("ROMEO:\n", temperature=0, stop="thee") == ref["text"]
    assert model.generate("ROMEO:\n", temperature=0, stop=["thee", "zzz"]) == ref["text"]
    ids = ref["prompt_ids"][1:]  # --tokens takes ids as they are: no BOS
    by_ids = cli.json("generate", "--tokens", ",".join(map(str, ids)), "--temp", "0", "-n", "16", "--json")
    assert model.generate(ids, temperature=0, max_tokens=16) == by_ids["text"]


@pytest.mark.parametrize(
    "text",
    ["ROMEO:\n", "Wherefore art thou Romeo? 🌹 — naïve café", "  spaces\tand\nlines  ", ""],
)
def test_token_ids_equal_bitnet_tokenize(cli, model, text):
    # Without -p the CLI reads stdin as is (no escapes interpreted).
    ref = cli.json("tokenize", "--json", stdin=text)
    assert model.tokenize(text) == ref["ids"]
    no_bos = cli.json("tokenize", "--json", "--no-bos", stdin=text)
    assert model.tokenize(text, add_bos=False) == no_bos["ids"]


def test_detokenize_equals_bitnet_detokenize(cli, model):
    ids = model.tokenize("Wherefore art thou Romeo? 🌹")
    ref = cli.run("detokenize", ",".join(map(str, ids))).stdout
    assert model.detokenize(ids) == ref


def test_logits_equal_bitnet_logits(cli, model):
    ids = model.tokenize("ROMEO:\nWhat light", add_bos=True)
    ref = cli.json("logits", "--tokens", ",".join(map(str, ids)), "--json")
    last = model.logits(ids)
    assert last.dtype == np.float32 and last.shape == (model.n_vocab,)
    expected = np.array(ref["logits"][0], dtype=np.float32)
    np.testing.assert_array_equal(last, expected)

    ref_all = cli.json("logits", "--tokens", ",".join(map(str, ids)), "--all", "--json")
    every = model.logits(ids, all=True)
    assert every.shape == (len(ids), model.n_vocab)
    np.testing.assert_array_equal(every, np.array(ref_all["logits"], dtype=np.float32))


def test_chat_equals_bitnet_batch(cli, model, tmp_path):
    messages = [
        {"role": "system", "content": "You are Romeo."},
        {"role": "user", "content": "Good morrow! What news?"},
    ]
    (tmp_path / "in.jsonl").write_text(json.dumps({"messages": messages, "max_tokens": 40}) + "\n")
    cli.run("batch", "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--temp", "0")
    ref = json.loads((tmp_path / "out.jsonl").read_text())
    assert model.chat(messages, temperature=0, max_tokens=40) == ref["text"]
    assert "".join(model.chat_stream(messages, temperature=0, max_tokens=40)) == ref["text"]


def test_stream_chunks_concatenate_to_the_full_text(cli, model):
    ref = cli.json("generate", "-p", "ROMEO:\n", "--temp", "0", "-n", "100", "--json")
    chunks = list(model.stream("ROMEO:\n", temperature=0, max_tokens=100))
    assert len(chunks) > 10
    assert all(isinstance(c, str) and c for c in chunks)
    assert "".join(chunks) == ref["text"]


def test_a_stream_dropped_early_stops_and_the_model_goes_on(model):
    stream = model.stream("ROMEO:\n", temperature=0, max_tokens=64)
    first = [next(stream) for _ in range(3)]
    del stream
    assert model.generate("ROMEO:\n", temperature=0, max_tokens=64).startswith("".join(first))


def test_a_bad_path_raises_the_libraries_message(cli, tmp_path):
    missing = str(tmp_path / "missing.gguf")
    expected = cli.error("generate", "-m", missing, "-p", "hi")
    with pytest.raises(bitnet.BitnetError) as e:
        bitnet.Model(missing)
    assert str(e.value) == expected
    assert "missing.gguf" in str(e.value)

    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    expected = cli.error("generate", "-m", str(garbage), "-p", "hi")
    with pytest.raises(bitnet.BitnetError) as e:
        bitnet.Model(garbage)  # a pathlib.Path works too
    assert str(e.value) == expected


def test_bad_values_raise_before_any_work(model):
    with pytest.raises(ValueError, match="min_p"):
        model.generate("hi", min_p=5)
    with pytest.raises(TypeError, match="max_token"):
        model.generate("hi", max_token=5)
    with pytest.raises(bitnet.BitnetError, match="outside the vocabulary"):
        model.logits([model.n_vocab])
    with pytest.raises(bitnet.BitnetError, match="longer|context"):
        model.generate([1] * (model.context_size + 1))
    with pytest.raises(ValueError, match="cache_type: unknown cache type"):
        bitnet.Model(cache_type="f8")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"top_k": -1}, ValueError, r"^top_k must be an int >= 0 \(0: off\), got -1 \(int\)$"),
        ({"top_k": 1.5}, TypeError, r"^top_k must be an int >= 0 .*, got 1.5 \(float\)$"),
        ({"max_tokens": "x"}, TypeError, r"^max_tokens must be an int >= 0, or None or -1 for no limit, got 'x' \(str\)$"),
        ({"max_tokens": -2}, ValueError, r"^max_tokens must be .*, got -2"),
        ({"stop": 5}, TypeError, r"^stop must be a string, a sequence of strings, or None, got 5 \(int\)$"),
        ({"stop": ["a", 5]}, TypeError, r"^stop must be "),
        ({"seed": -2}, ValueError, r"^seed must be an int from 0 to 2\*\*64-1, or None or -1 for a random seed"),
        ({"seed": 2**64}, ValueError, r"^seed must be "),
        ({"seed": "1"}, TypeError, r"^seed must be "),
        ({"temperature": "hot"}, TypeError, r"^temperature must be a number, got 'hot' \(str\)$"),
        ({"ignore_eos": 1}, TypeError, r"^ignore_eos must be True or False"),
        ({"repeat_last_n": -1}, ValueError, r"^repeat_last_n must be an int >= 0"),
        ({"top_p": 2}, ValueError, r"top_p.*between 0 and 1"),
    ],
)
def test_every_bad_argument_is_named_with_what_it_must_be(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        model.generate("hi", **kwargs)


def test_bad_prompts_and_ids_are_named(model):
    with pytest.raises(TypeError, match=r"^prompt must be a string or a sequence of token ids"):
        model.generate(5)
    with pytest.raises(ValueError, match=r"^prompt must be .*got \[1, -1\]"):
        model.generate([1, -1])
    with pytest.raises(TypeError, match=r"^ids must be a sequence of token ids"):
        model.logits("ROMEO")
    with pytest.raises(TypeError, match=r"^prompts must be a sequence of strings"):
        model.generate_batch("ROMEO")
    with pytest.raises(TypeError, match=r"^prompts\[1\] must be a string"):
        model.generate_batch(["ROMEO", 5])
    with pytest.raises(ValueError, match=r"^slots must be an int >= 1, got 0$"):
        model.generate_batch(["ROMEO"], slots=0)
    with pytest.raises(TypeError, match=r"^messages must be a sequence of dicts"):
        model.chat(5)


def test_seed_and_max_tokens_minus_one_mean_random_and_no_limit_as_on_the_cli(model):
    greedy = dict(temperature=0, ignore_eos=True)
    assert model.complete("ROMEO:\n", max_tokens=-1, **greedy).stop_reason == "context_full"
    sampled = dict(temperature=1.5, top_k=0, min_p=0, max_tokens=12)
    assert model.generate("ROMEO:\n", seed=-1, **sampled) != model.generate("ROMEO:\n", seed=-1, **sampled)


def test_a_context_that_cannot_fit_is_refused_at_load_naming_context():
    with pytest.raises(ValueError) as e:
        bitnet.Model(context=10**9)
    assert str(e.value).startswith("context 1000000000 is too large: ")
    assert "-c" not in str(e.value)
    with pytest.raises(ValueError, match=r"^context must be an int >= 0"):
        bitnet.Model(context=-1)
    # Within memory, a context beyond the trained one loads.
    assert bitnet.Model(context=4096).context_size == 4096


def test_generation_releases_the_gil(model):
    """A Python thread keeps running while the model generates (whole or streamed)."""
    ticks = 0
    running = True

    def count():
        nonlocal ticks
        while running:
            ticks += 1
            time.sleep(0)

    t = threading.Thread(target=count)
    t.start()
    try:
        while ticks == 0:
            time.sleep(0.001)
        before = ticks
        model.generate("ROMEO:\n", max_tokens=400, ignore_eos=True, seed=1)
        during_generate = ticks - before
        before = ticks
        for _ in model.stream("ROMEO:\n", max_tokens=400, ignore_eos=True, seed=1):
            pass
        during_stream = ticks - before
    finally:
        running = False
        t.join()
    assert during_generate > 100, during_generate
    assert during_stream > 100, during_stream


def test_a_draft_model_gives_the_text_of_bitnet_generate_without_one(cli, model):
    # The demo model drafting for itself: the same seeded text as the command line's without
    # a draft model.
    ref = cli.json("generate", "-p", "JULIET:\n", "--temp", "0.9", "--seed", "77", "-n", "48", "--json")
    drafted = bitnet.Model(draft=model, draft_p_min=0.0)
    assert drafted.generate("JULIET:\n", temperature=0.9, seed=77, max_tokens=48) == ref["text"]
    with pytest.raises(ValueError, match="draft_p_min"):
        bitnet.Model(draft=model, draft_p_min=2.0)
    qwen = bitnet.Model(str(REPO / "testdata" / "embedding" / "qwen3-wide" / "model.gguf"))
    with pytest.raises(ValueError, match="vocabulary"):
        bitnet.Model(draft=qwen)
