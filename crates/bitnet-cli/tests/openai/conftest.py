"""Starts a real `bitnet serve` (the bundled demo model) on 127.0.0.1 for the OpenAI-client tests.

The binary is $BITNET_BIN, else target/debug/bitnet (what `cargo test` builds). With
$BITNET_DEVICE set (`gpu`), every server runs on that device (`--device`): CI runs the suite
once more on the GPU backend (Mesa's lavapipe).
"""

import os
import pathlib
import subprocess
import threading
import time

import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[4]
DEVICE = os.environ.get("BITNET_DEVICE")


def binary() -> str:
    path = os.environ.get("BITNET_BIN") or str(ROOT / "target" / "debug" / "bitnet")
    if not os.path.exists(path):
        pytest.exit(f"no bitnet binary at {path}: build it first (cargo test, or set BITNET_BIN)", 2)
    return path


class Server:
    def __init__(self, *args: str):
        device = ["--device", DEVICE] if DEVICE else []
        self.proc = subprocess.Popen(
            [binary(), "serve", "--port", "0", *device, *args],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self.url = None
        deadline = time.time() + 60
        while self.url is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("bitnet serve ended before listening:\n" + "".join(self.log))
            self.log.append(line)
            if "http://" in line:
                self.url = "http://" + line.split("http://", 1)[1].split()[0]
            if time.time() > deadline:
                raise RuntimeError("bitnet serve did not start")
        # Drain stderr (the request log) so the server never blocks on the pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def server():
    s = Server("--parallel", "8", "-n", "32")
    yield s
    s.stop()
    assert s.proc.returncode == 0, "".join(s.log[-20:])


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model_id(client):
    return client.models.list().data[0].id
