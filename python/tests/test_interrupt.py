"""Ctrl-C (SIGINT) during a long call: KeyboardInterrupt is raised promptly, and the work in
the library stops instead of running on with nobody waiting for it."""

import signal
import subprocess
import sys
import time

import pytest

# A child process that starts one call far longer than the test waits (the demo model with a
# context of 100k tokens and no end of generation: minutes), and reports what happens after
# Ctrl-C: the time it was interrupted, and the CPU time it uses while it sleeps afterwards
# (after half a second for a forward pass already under way to end).
CHILD = r"""
import sys, time, bitnet
model = bitnet.Model(context=100_000)
long = dict(max_tokens=None, ignore_eos=True, seed=1)
chat = [{"role": "user", "content": "Good morrow!"}]
calls = {
    "generate": lambda: model.generate("ROMEO:\n", **long),
    "complete": lambda: model.complete("ROMEO:\n", **long),
    "chat": lambda: model.chat(chat, **long),
    "stream": lambda: list(model.stream("ROMEO:\n", **long)),
    "chat_stream": lambda: "".join(model.chat_stream(chat, **long)),
    "generate_batch": lambda: model.generate_batch(["ROMEO:\n", "JULIET:\n"], slots=2, **long),
    # 20k positions in one call: minutes of attention.
    "logits": lambda: model.logits((list(range(1, 4000)) * 5)[:20_000]),
}
call = calls[sys.argv[1]]
print("ready", flush=True)
try:
    call()
    print("finished", flush=True)
except KeyboardInterrupt:
    interrupted = time.monotonic()
    time.sleep(0.5)
    cpu = time.process_time()
    time.sleep(0.5)
    print(f"interrupted {interrupted} {time.process_time() - cpu}", flush=True)
"""


@pytest.mark.parametrize(
    "call", ["generate", "complete", "chat", "stream", "chat_stream", "generate_batch", "logits"]
)
def test_ctrl_c_raises_keyboard_interrupt_and_stops_the_work(call):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, call], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # well inside the call
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, out
    word, interrupted, cpu_after = out.split()
    assert word == "interrupted", out
    # Generous bounds (the demo model's steps take milliseconds): without interruption the
    # call runs for minutes, and a generation left running uses a whole core.
    assert float(interrupted) - sent < 5, out
    assert float(cpu_after) < 0.2, out
