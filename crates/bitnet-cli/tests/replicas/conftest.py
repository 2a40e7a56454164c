"""Three `bitnet serve` replicas (the bundled demo model) on loopback ports behind a real LiteLLM
proxy, for `test_replicas.py`.

The binary is $BITNET_BIN, else target/debug/bitnet; the proxy is `litellm` from $LITELLM_BIN,
else from PATH (`.ci/run` installs `litellm[proxy]` into its own venv). The proxy's
configuration is deploy/litellm.yaml with the replicas' addresses put in: the file the docs
tell a platform engineer to use is the one tested.
"""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[4]
MASTER_KEY = "sk-bitnet-replicas-test"


def binary() -> str:
    path = os.environ.get("BITNET_BIN") or str(ROOT / "target" / "debug" / "bitnet")
    if not os.path.exists(path):
        pytest.exit(f"no bitnet binary at {path}: build it first (cargo build, or set BITNET_BIN)", 2)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Replica:
    """One `bitnet serve` on a fixed loopback port (so that a restart comes back where the
    proxy expects it)."""

    ARGS = ("-t", "1", "--parallel", "2", "--shutdown-timeout", "2")

    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []

    def start(self, hold: pathlib.Path | None = None):
        """Starts the server; returns once its port is bound (the model may still load)."""
        env = dict(os.environ)
        if hold is not None:
            env["BITNET_SERVE_HOLD_LOAD"] = str(hold)
        self.log = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [binary(), "serve", "--port", str(self.port), *self.ARGS],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        bound = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                if line.startswith("bound "):
                    bound.set()
                if "http://" in line:
                    self.ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not bound.wait(60):
            raise RuntimeError(f"replica {self.port} did not bind:\n" + "".join(self.log))

    def wait_ready(self):
        if not self.ready.wait(60):
            raise RuntimeError(f"replica {self.port} did not load:\n" + "".join(self.log))

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def metrics(self) -> dict[str, float]:
        """The metrics page as {name: value}, samples of one name with different labels
        summed."""
        status, text = get(self.url + "/metrics")
        assert status == 200, text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, value = line.rsplit(" ", 1)
            name = key.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
        return out

    def answered(self, paths=("/v1/completions", "/v1/chat/completions"), status: int = 200) -> int:
        """Requests to `paths` this process answered with `status`, by its own counter."""
        code, text = get(self.url + "/metrics")
        assert code == 200, text
        keys = [f'bitnet_requests_total{{path="{path}",status="{status}"}} ' for path in paths]
        return sum(
            int(float(line[len(key):])) for line in text.splitlines() for key in keys if line.startswith(key)
        )


class Proxy:
    def __init__(self, replicas: list[Replica], tmp: pathlib.Path):
        litellm = os.environ.get("LITELLM_BIN") or shutil.which("litellm")
        if litellm is None:
            pytest.exit("no litellm: install litellm[proxy] (see .ci/run) or set LITELLM_BIN", 2)
        template = (ROOT / "deploy" / "litellm.yaml").read_text()
        bases = [r.url + "/v1" for r in replicas]
        config = template
        for i, base in enumerate(bases):
            config = config.replace(f"http://127.0.0.1:808{i}/v1", base)
        assert all(b in config for b in bases), "deploy/litellm.yaml names other addresses"
        path = tmp / "litellm.yaml"
        path.write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        # The model price list ships inside the package: nothing is fetched from the network.
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        env["LITELLM_MASTER_KEY"] = MASTER_KEY
        env.pop("DATABASE_URL", None)
        self.log_path = tmp / "litellm.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [litellm, "--config", str(path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.time() + 120
        while True:
            try:
                if get(self.url + "/health/liveliness", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("litellm did not start:\n" + self.log_path.read_text()[-4000:])
            time.sleep(0.25)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def replicas():
    rs = [Replica(free_port()) for _ in range(3)]
    try:
        for r in rs:
            r.start()
        for r in rs:
            r.wait_ready()
        yield rs
    finally:
        for r in rs:
            r.stop()


@pytest.fixture(scope="module")
def proxy(replicas, tmp_path_factory):
    p = Proxy(replicas, tmp_path_factory.mktemp("litellm"))
    yield p
    p.stop()
