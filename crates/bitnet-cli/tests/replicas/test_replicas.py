"""Three `bitnet serve` replicas behind a real LiteLLM proxy (deploy/litellm.yaml), driven with
the official `openai` client: 60 concurrent requests, half of them streaming, with one replica
SIGKILLed half way; then that replica restarted, refused by its own readiness while it loads
and taking traffic again once it is ready.

The streams go to /v1/chat/completions, the other requests to /v1/completions: LiteLLM retries
a stream that fails before its first chunk (a replica refusing the connection, or answering
503 while it loads) only on its chat route, which reads that chunk inside its retry loop; its
text-completion route hands the stream back unread, so such an error reaches the client
(docs/deploy.md, "LiteLLM proxy").
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from conftest import MASTER_KEY, get

MAX_TOKENS = 48
# The first wave's non-streaming requests: long enough that they pile up on the victim (two
# running, more waiting) even where the proxy hands requests on slower than a replica answers
# 48 tokens (the demo model's context is 1024).
HELD_TOKENS = 160
PROMPTS = ["ROMEO:\n", "JULIET:\n", "HAMLET:\n", "KING LEAR:\n", "MACBETH:\n", "PORTIA:\n"]


class Outcome:
    def __init__(self, i: int, stream: bool):
        self.i, self.stream = i, stream
        self.started = self.ended = 0.0
        self.ok = False
        self.error = ""
        self.api_base = ""
        self.retries = 0
        self.text = ""


def one(client: openai.OpenAI, i: int, stream: bool, max_tokens: int = MAX_TOKENS) -> Outcome:
    o = Outcome(i, stream)
    o.started = time.monotonic()
    try:
        if stream:
            raw = client.chat.completions.with_raw_response.create(
                model="bitnet",
                messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                max_tokens=max_tokens,
                stream=True,
            )
        else:
            raw = client.completions.with_raw_response.create(
                model="bitnet",
                prompt=PROMPTS[i % len(PROMPTS)],
                max_tokens=max_tokens,
            )
        o.api_base = raw.headers.get("x-litellm-model-api-base", "")
        o.retries = int(raw.headers.get("x-litellm-attempted-retries", "0"))
        body = raw.parse()
        if stream:
            finish = None
            for chunk in body:
                for c in chunk.choices:
                    o.text += c.delta.content or ""
                    finish = c.finish_reason or finish
            assert finish is not None, "the stream ended without a finish_reason"
        else:
            o.text = body.choices[0].text
            assert body.choices[0].finish_reason is not None
        o.ok = True
    except Exception as e:  # noqa: BLE001 - every failure is recorded and judged below
        o.error = f"{type(e).__name__}: {e}"
    o.ended = time.monotonic()
    return o


def wait_for(cond, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sixty_requests_survive_a_killed_replica_and_it_comes_back(replicas, proxy, tmp_path):
    t0 = time.monotonic()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=300)
    victim, survivors = replicas[0], replicas[1:]
    pool = ThreadPoolExecutor(max_workers=60)
    futures = []
    # First half: the non-streaming requests alone, until the victim holds some of them (both
    # slots running and a queue: at least three, every one of them non-streaming, since no
    # stream was sent yet); those are the ones the proxy must retry when it dies. Then the
    # streams, and the kill at once. (Sending the streams before the wait let the victim
    # finish its non-streaming share first on a loaded machine: in one run it held only
    # streams when it died, and nothing was there to retry; with 48 tokens each, 20 requests
    # did not pile up there at all.)
    for i in range(20):
        futures.append(pool.submit(one, client, i, False, HELD_TOKENS))
    held = {}

    def victim_holds_requests() -> bool:
        held.update(victim.metrics())
        return held["vllm:num_requests_running"] >= 2 and held["vllm:num_requests_waiting"] >= 1

    wait_for(victim_holds_requests, "the victim to hold requests")
    for i in range(20, 30):
        futures.append(pool.submit(one, client, i, True))
    victim.kill()
    killed_at = time.monotonic()
    load_before_kill = held
    # Second half, all started after the kill.
    second = [(i, False) for i in range(30, 40)] + [(i, True) for i in range(40, 60)]
    for i, stream in second:
        futures.append(pool.submit(one, client, i, stream))
    outcomes = [f.result() for f in futures]
    pool.shutdown()
    waves = time.monotonic() - t0

    failed = [o for o in outcomes if not o.ok]
    # The second half, and any stream of the first whose thread began after the kill.
    after = [o for o in outcomes if o.started >= killed_at]
    assert len(after) >= 30
    assert all(o.ok for o in after), [o.error for o in after if not o.ok]
    # Non-streaming requests never fail: those the victim held were sent again.
    assert all(o.ok for o in outcomes if not o.stream), [o.error for o in failed]
    retried = [o for o in outcomes if not o.stream and o.retries > 0]
    assert retried, "no non-streaming request was retried, though the victim held some"
    # Only streams under way (on the victim) when it died may fail.
    assert all(o.stream and o.started < killed_at for o in failed), [o.error for o in failed]
    # The load was spread: the victim ran requests before it died, and each survivor served
    # a fair share (counted by the replicas themselves).
    assert load_before_kill["vllm:prompt_tokens_total"] > 0
    served = [r.answered() for r in survivors]
    for n in served:
        assert n >= 10, served
    # The victim comes back on its port, held in its model load: its readiness says 503 and
    # the proxy's answers still all succeed (the 503 is retried on the others).
    t1 = time.monotonic()
    hold = tmp_path / "release"
    victim.start(hold=hold)
    status, body = get(victim.url + "/health")
    assert status == 503 and '"loading"' in body, body
    with ThreadPoolExecutor(max_workers=6) as p:
        loading = list(p.map(lambda i: one(client, i, i % 2 == 0), range(6)))
    assert all(o.ok for o in loading), [o.error for o in loading]
    assert all(o.api_base != victim.url + "/v1" for o in loading)
    hold.write_text("")
    victim.wait_ready()
    assert get(victim.url + "/health")[0] == 200
    # Once ready (and out of the proxy's cooldown), it takes traffic again.
    deadline = time.monotonic() + 60
    sent = 0
    while victim.answered() == 0:
        assert time.monotonic() < deadline, f"the restarted replica got none of {sent} requests"
        with ThreadPoolExecutor(max_workers=3) as p:
            again = list(p.map(lambda i: one(client, i, i % 2 == 1), range(3)))
        sent += 3
        assert all(o.ok for o in again), [o.error for o in again]
    assert victim.metrics()["vllm:prompt_tokens_total"] > 0
    print(
        f"\n60 requests through LiteLLM with a replica killed: {waves:.1f} s; "
        f"{len(retried)} non-streaming retried, {len(failed)} streams cut on the victim; "
        f"survivors served {served}; the restarted replica served after {sent} requests, "
        f"{time.monotonic() - t1:.1f} s after its restart"
    )
