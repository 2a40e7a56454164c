"""Fault injection against a real `bitnet serve` (the bundled demo model) over raw sockets.

The binary is $BITNET_BIN, else target/debug/bitnet. Only the standard library: every byte the
tests send is written by hand, so nothing between them and the server tidies up a broken
request.
"""

import json
import os
import pathlib
import resource
import socket
import struct
import subprocess
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[4]

# The timeout the servers here run with (bitnet serve --timeout): short, so that the slow
# clients are cut off in seconds.
TIMEOUT = 2


def binary() -> str:
    path = os.environ.get("BITNET_BIN") or str(ROOT / "target" / "debug" / "bitnet")
    if not os.path.exists(path):
        pytest.exit(f"no bitnet binary at {path}: build it first (cargo build, or set BITNET_BIN)", 2)
    return path


def raise_own_file_limit():
    """The tests open a thousand sockets of their own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    def __init__(self, *args: str, soft_file_limit: int | None = None):
        def limit():
            if soft_file_limit is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft_file_limit, hard))

        self.proc = subprocess.Popen(
            [binary(), "serve", "--port", "0", *args],
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limit,
        )
        self.log: list[str] = []
        addr = None
        deadline = time.time() + 60
        while addr is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("bitnet serve ended before listening:\n" + "".join(self.log))
            self.log.append(line)
            if "http://" in line:
                addr = line.split("http://", 1)[1].split()[0].rstrip("/")
            if time.time() > deadline:
                raise RuntimeError("bitnet serve did not start")
        host, port = addr.rsplit(":", 1)
        self.addr = (host, int(port))
        # Drain stderr (the request log) so the server never blocks on the pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def sockets(self) -> int:
        """Sockets the server process holds open (its listener and its connections)."""
        n = 0
        fd_dir = f"/proc/{self.proc.pid}/fd"
        for fd in os.listdir(fd_dir):
            try:
                if os.readlink(f"{fd_dir}/{fd}").startswith("socket:"):
                    n += 1
            except OSError:
                pass  # closed while listed
        return n

    def connect(self, timeout: float = 30) -> socket.socket:
        s = socket.create_connection(self.addr, timeout=timeout)
        return s

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def request_bytes(method: str, path: str, body=None, headers: dict | None = None, close=False) -> bytes:
    """One HTTP/1.1 request, written out by hand."""
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


class Reader:
    """Reads HTTP/1.1 responses off a socket, one after another (keep-alive, pipelining)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed before {sep!r}; got {self.buf[:200]!r}")
        line, self.buf = self.buf.split(sep, 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed {n - len(self.buf)} bytes short")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self) -> tuple[int, dict]:
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {}
        for line in head[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        return status, headers

    def response(self) -> tuple[int, dict, bytes]:
        status, headers = self.head()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    break
                body += self._exactly(size)
                self._exactly(2)
        elif "content-length" in headers:
            body = self._exactly(int(headers["content-length"]))
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return status, headers, body


def call(server: Server, method: str, path: str, body=None, headers=None, timeout=60):
    """One request on a fresh connection: (status, headers, JSON body or text)."""
    with server.connect(timeout) as s:
        s.sendall(request_bytes(method, path, body, headers, close=True))
        status, h, raw = Reader(s).response()
    try:
        return status, h, json.loads(raw)
    except ValueError:
        return status, h, raw.decode("utf-8", "replace")


def metric(server: Server, name: str) -> float:
    status, _, text = call(server, "GET", "/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def reset(s: socket.socket):
    """Closes with a reset (RST) instead of an orderly FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


@pytest.fixture(scope="session", autouse=True)
def own_file_limit():
    raise_own_file_limit()


@pytest.fixture(scope="module")
def server():
    s = Server("--parallel", "2", "--queue", "64", "-c", "256", "-n", "32", "--timeout", str(TIMEOUT))
    # Warm every slot once, so that the RSS bound is measured from a server that has worked.
    status, _, _ = call(s, "POST", "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 64, "n": 2})
    assert status == 200
    s.rss_warm = s.rss_bytes()
    yield s
    s.stop()
    assert s.proc.returncode == 0, "".join(s.log[-30:])
