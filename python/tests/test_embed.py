"""`Model.embed` against the `bitnet embed` command and the transformers reference of the tiny
BitNet embedding models (testdata/embedding, made by tools/make_embedding_fixtures.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bitnet

from conftest import REPO

FIXTURES = REPO / "testdata" / "embedding"


@pytest.mark.parametrize("name", ["qwen3", "gemma3"])
def test_embed_matches_transformers_and_the_cli(name, cli):
    fx = json.loads((FIXTURES / name / "fixture.json").read_text())
    model = bitnet.Model(str(FIXTURES / name))
    texts = [c["text"] for c in fx["texts"]]
    got = model.embed(texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), 128)
    want = np.array([c["embedding"] for c in fx["texts"]], dtype=np.float32)
    assert np.abs(got - want).max() <= 3e-3
    one = model.embed(texts[0])
    assert one.shape == (128,)
    np.testing.assert_array_equal(one, got[0])
    out = cli.run("embed", "-m", str(FIXTURES / name), "-p", texts[1], "--json")
    from_cli = np.array(json.loads(out.stdout)["data"][0]["embedding"], dtype=np.float32)
    np.testing.assert_array_equal(from_cli, got[1])


def test_embed_options_and_errors():
    model = bitnet.Model(str(FIXTURES / "qwen3"))
    v = model.embed("Hello world", dimensions=8)
    assert v.shape == (8,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    raw = model.embed("Hello world", normalize=False)
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 1e-3
    rows = model.embed("Hello world", pooling="none")
    assert rows.shape[1] == 128 and rows.shape[0] == len(model.tokenize("Hello world")) + 1
    with pytest.raises(ValueError, match="pooling"):
        model.embed("x", pooling="max")
    with pytest.raises(ValueError, match="dimensions"):
        model.embed("x", dimensions=100000)
    with pytest.raises((TypeError, ValueError), match="input"):
        model.embed([1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        model.embed([])
