"""Concurrency through the OpenAI client: batch invariance (8 concurrent greedy requests each
give exactly what they give alone) and a bounded load test (64 streaming clients, a quarter
cancelled mid-stream at random: every other stream complete and well-formed, no 5xx, the
server's RSS back near its idle figure, and a normal request afterwards)."""

import random
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PROMPTS = [
    "ROMEO:\n",
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n",
    "HAMLET:\nTo be, or not to be, that is the question:\n",
    "KING LEAR:\n",
    "MACBETH:\nIs this a dagger which I see before me,\n",
    "OTHELLO:\nIt is the cause, it is the cause, my soul.\n",
    "PORTIA:\nThe quality of mercy is not strained;\n",
    "PUCK:\nIf we shadows have offended,\n",
]


def greedy(client, model_id, prompt):
    r = client.completions.create(model=model_id, prompt=prompt, max_tokens=40, temperature=0, logprobs=0)
    return r.choices[0].logprobs.tokens, r.choices[0].text


def test_eight_concurrent_greedy_requests_equal_each_alone(client, model_id):
    alone = [greedy(client, model_id, p) for p in PROMPTS]
    barrier = threading.Barrier(len(PROMPTS))

    def together(p):
        barrier.wait()
        return greedy(client, model_id, p)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(together, PROMPTS))
    for i, (a, t) in enumerate(zip(alone, results)):
        assert a == t, f"prompt {i}: {a[1]!r} alone vs {t[1]!r} together"
    # Seeded sampling too.
    def sampled(p):
        r = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": p}], max_tokens=24, temperature=0.9, seed=11
        )
        return r.choices[0].message.content

    alone = [sampled(p) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        assert list(pool.map(sampled, PROMPTS)) == alone


def five_xx(server):
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    return sum(int(n) for n in re.findall(r'bitnet_requests_total\{[^}]*status="5\d\d"\} (\d+)', text))


def idle(server, client, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with urllib.request.urlopen(server.url + "/health") as r:
            import json

            h = json.loads(r.read())
        if h["slots_busy"] == 0 and h["queued"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the server did not go idle")


def test_sixty_four_streaming_clients_a_quarter_cancelled(server, client, model_id):
    rng = random.Random(12)
    # Warm up every slot once, so the idle figure includes what steady use keeps resident.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: greedy(client, model_id, p), PROMPTS))
    idle(server, client)
    rss_idle = server.rss_bytes()
    errors_before = five_xx(server)

    n = 64
    cancel = set(rng.sample(range(n), n // 4))
    results = {}

    def one(i):
        kind = rng.random()
        messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        stream = client.chat.completions.create(
            model=model_id,
            messages=messages,
            max_tokens=48,
            temperature=0.8,
            seed=i,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks, text, finish, usage = 0, "", None, None
        stop_after = rng.randint(1, 10)
        for chunk in stream:
            chunks += 1
            assert chunk.object == "chat.completion.chunk"
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
            if i in cancel and chunks >= stop_after:
                stream.close()  # the client goes away mid-stream
                results[i] = ("cancelled", chunks)
                return
        results[i] = ("done", text, finish, usage, kind)

    start = time.time()
    with ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(one, i) for i in range(n)]:
            f.result(timeout=300)
    elapsed = time.time() - start
    assert elapsed < 300

    done = {i: r for i, r in results.items() if r[0] == "done"}
    assert len(done) == n - len(cancel)
    for i, (_, text, finish, usage, _) in done.items():
        assert finish in ("stop", "length"), (i, finish)
        assert usage is not None and usage.completion_tokens >= 1, i
        if finish == "length":
            assert usage.completion_tokens == 48
    assert five_xx(server) == errors_before == 0

    idle(server, client)
    time.sleep(0.5)
    rss_after = server.rss_bytes()
    assert rss_after <= rss_idle * 1.10, f"RSS {rss_idle / 1e6:.1f} MB idle, {rss_after / 1e6:.1f} MB after"

    # And the server still serves normally.
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Farewell."}], max_tokens=8, temperature=0
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1
    print(f"64 streams in {elapsed:.1f} s; RSS idle {rss_idle / 1e6:.1f} MB, after {rss_after / 1e6:.1f} MB")
