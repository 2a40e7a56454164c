"""`/v1/embeddings` through the official `openai` client, against the transformers reference
of the tiny BitNet embedding models in testdata/embedding (tools/make_embedding_fixtures.py).
"""

import json
import math

import numpy as np
import openai
import pytest

from conftest import ROOT, Server

FIXTURES = ROOT / "testdata" / "embedding"


@pytest.fixture(scope="module", params=["qwen3", "gemma3"])
def embedder(request):
    s = Server("-m", str(FIXTURES / request.param))
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    fixture = json.loads((FIXTURES / request.param / "fixture.json").read_text())
    yield client, fixture
    s.stop()


def close(a, b, bound=3e-3):
    return max(abs(x - y) for x, y in zip(a, b)) <= bound


def test_texts_match_transformers(embedder):
    client, fx = embedder
    texts = [c["text"] for c in fx["texts"]]
    out = client.embeddings.create(model="m", input=texts)
    assert [d.index for d in out.data] == list(range(len(texts)))
    for d, case in zip(out.data, fx["texts"]):
        assert close(d.embedding, case["embedding"]), case["text"]
    assert out.usage.prompt_tokens == sum(len(c["ids"]) for c in fx["texts"])


def test_token_ids_and_base64(embedder):
    client, fx = embedder
    seqs = fx["sequences"]
    out = client.embeddings.create(model="m", input=[s["ids"] for s in seqs])
    for d, s in zip(out.data, seqs):
        assert close(d.embedding, s["embedding"])
    # The client asks for base64 by default when numpy is installed and decodes it; ask for
    # it explicitly through the raw response too.
    raw = client.embeddings.with_raw_response.create(
        model="m", input=seqs[2]["ids"], encoding_format="base64"
    )
    body = json.loads(raw.text)
    import base64

    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert close(vec.tolist(), seqs[2]["embedding"])


def test_dimensions_and_errors(embedder):
    client, fx = embedder
    out = client.embeddings.create(model="m", input="Hello world", dimensions=16)
    v = out.data[0].embedding
    assert len(v) == 16
    assert math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5)
    for bad in [dict(input=[]), dict(input="x", dimensions=0), dict(input=[[1, -2]]),
                dict(input="x", encoding_format="int8")]:
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model="m", **bad)
