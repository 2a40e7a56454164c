"""Clients that misbehave, against a real `bitnet serve`: they disconnect before, during and
after the headers, mid-body, mid-stream and while queued; they send a byte a second; they
half-close; they never read; they hold a thousand idle connections; they send oversized
headers, garbage and pipelined requests. After each case the server must be alive, answer,
show no busy slot and no queue on /health after a short settle, still generate, and keep its
RSS under a bound."""

import json
import socket
import threading
import time

import pytest
from conftest import TIMEOUT, Reader, Server, call, metric, request_bytes, reset

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def body(path, **fields):
    if path == CHAT:
        fields.setdefault("messages", [{"role": "user", "content": "Speak, Romeo."}])
    else:
        fields.setdefault("prompt", "ROMEO:\n")
    return fields


def check(server, settle=20):
    """Alive, answering, idle after a short settle, under the RSS bound, still generating."""
    assert server.alive(), f"the server died (exit {server.proc.returncode}):\n" + "".join(server.log[-20:])
    deadline = time.time() + settle
    while True:
        status, _, h = call(server, "GET", "/health")
        assert status == 200, h
        assert h["slots_busy"] + h["slots_idle"] == len(h["slots"])
        if h["slots_busy"] == 0 and h["queued"] == 0:
            break
        assert time.time() < deadline, f"still busy after {settle} s: {h}"
        time.sleep(0.05)
    rss, bound = server.rss_bytes(), max(128 << 20, 4 * server.rss_warm)
    assert rss < bound, f"RSS {rss >> 20} MiB (warm {server.rss_warm >> 20} MiB, bound {bound >> 20} MiB)"
    status, _, r = call(server, "POST", COMPLETIONS, {"prompt": "ROMEO:\n", "max_tokens": 4, "temperature": 0})
    assert status == 200, r
    assert r["usage"]["completion_tokens"] >= 1


def closed_by_server(s, within):
    """Reads until the server closes the connection (or resets it); what it sent, or None if
    it was still open after `within` seconds."""
    s.settimeout(within)
    got = b""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return got
            got += data
    except ConnectionResetError:
        return got
    except socket.timeout:
        return None


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_streams_closed_at_once(server, path):
    """The case that killed the server with SIGPIPE: a streaming request, then the socket
    closed at once (half with FIN, half with RST), forty times."""
    cancelled = metric(server, "bitnet_generations_cancelled_total")
    req = request_bytes("POST", path, body(path, stream=True, max_tokens=200))
    for i in range(40):
        s = server.connect()
        s.sendall(req)
        if i % 2:
            reset(s)
        else:
            s.close()
        time.sleep(0.02)
        assert server.alive(), f"died after {i + 1} clients (exit {server.proc.returncode})"
    check(server)
    # The generations were ended for the clients that left, not run to their end.
    assert metric(server, "bitnet_generations_cancelled_total") > cancelled


def test_disconnect_before_during_and_after_headers_and_mid_body(server):
    full = request_bytes("POST", COMPLETIONS, body(COMPLETIONS, max_tokens=8))
    head, payload = full.split(b"\r\n\r\n", 1)
    cuts = [
        b"",  # connect, then close
        b"POST /v1/comp",  # mid request line
        head[: len(head) // 2],  # mid headers
        head + b"\r\n\r\n",  # after the headers, no body
        head + b"\r\n\r\n" + payload[: len(payload) // 2],  # mid-body: Content-Length promised more
    ]
    for i in range(10):
        for cut in cuts:
            s = server.connect()
            if cut:
                s.sendall(cut)
            reset(s) if i % 2 else s.close()
    check(server)


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_disconnect_mid_stream(server, path):
    cancelled = metric(server, "bitnet_generations_cancelled_total")
    for i in range(10):
        s = server.connect()
        s.sendall(request_bytes("POST", path, body(path, stream=True, max_tokens=200, n=2)))
        r = Reader(s)
        status, headers = r.head()
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        while r.buf.count(b"data:") < 1 + i % 3:
            assert r._fill()
        reset(s) if i % 2 else s.close()
    check(server)
    assert metric(server, "bitnet_generations_cancelled_total") > cancelled


def test_disconnect_while_queued(server):
    """Two slots: one request's sixteen long choices fill them and the queue (seconds of
    work, first in first out), six more requests queue behind, then leave; then the first
    leaves too. Every job still queued or running must be dropped."""
    cancelled = metric(server, "bitnet_generations_cancelled_total")
    holder = server.connect()
    holder.sendall(request_bytes("POST", COMPLETIONS, body(COMPLETIONS, max_tokens=220, n=16)))
    deadline = time.time() + 10
    while call(server, "GET", "/health")[2]["queued"] < 8:
        assert time.time() < deadline, "the first request's choices never queued"
        time.sleep(0.01)
    waiting = []
    for i in range(6):
        s = server.connect()
        path = CHAT if i % 2 else COMPLETIONS
        s.sendall(request_bytes("POST", path, body(path, max_tokens=200, stream=i % 3 == 0)))
        waiting.append(s)
    time.sleep(0.2)
    _, _, h = call(server, "GET", "/health")
    assert h["queued"] >= 6 and h["slots_busy"] == 2, h
    for i, s in enumerate(waiting):
        reset(s) if i % 2 else s.close()
    holder.close()
    check(server)
    # The six and the first request's unfinished choices ended early.
    assert metric(server, "bitnet_generations_cancelled_total") >= cancelled + 6


def trickle(s, data, interval, until):
    """Sends `data` a byte at a time; stops when the server closes or `until` passes."""
    for b in data:
        if time.time() > until:
            return
        try:
            s.sendall(bytes([b]))
        except OSError:
            return
        time.sleep(interval)


def test_slow_headers_are_cut_off(server):
    """One byte every half second of a request line and headers that never end: the server
    must close the connection after its timeout, not hold it (and a descriptor) for good."""
    before = server.sockets()
    s = server.connect()
    data = b"POST /v1/completions HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 1000
    start = time.time()
    t = threading.Thread(target=trickle, args=(s, data, 0.5, start + 30), daemon=True)
    t.start()
    got = closed_by_server(s, within=30)
    assert got is not None, "still open after 30 s of a byte every 0.5 s"
    assert time.time() - start < 30
    s.close()
    check(server)
    # The connections `check` just used close as its requests end; on a loaded machine the
    # server may see their FIN a moment later. A socket still held after 5 s is a leak.
    deadline = time.time() + 5
    while server.sockets() > before:
        assert time.time() < deadline, f"{server.sockets()} sockets held, {before} before"
        time.sleep(0.05)


def test_slow_body_is_cut_off_with_408(server):
    s = server.connect()
    payload = json.dumps(body(COMPLETIONS, max_tokens=4)).encode()
    s.sendall(request_bytes("POST", COMPLETIONS, payload).split(b"\r\n\r\n")[0] + b"\r\n\r\n")
    start = time.time()
    t = threading.Thread(target=trickle, args=(s, payload, 0.5, start + 30), daemon=True)
    t.start()
    got = closed_by_server(s, within=30)
    assert got is not None, "still open after 30 s of a body sent a byte every 0.5 s"
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b'"message"' in got
    s.close()
    check(server)


def test_idle_keep_alive_connection_is_closed(server):
    s = server.connect()
    s.sendall(request_bytes("GET", "/health"))
    status, _, _ = Reader(s).response()
    assert status == 200
    # Then nothing: the server closes it after its timeout.
    assert closed_by_server(s, within=TIMEOUT + 20) is not None
    s.close()


@pytest.mark.parametrize("stream", [True, False])
def test_half_closed_clients(server, stream):
    """shutdown(SHUT_WR) after the request: the server takes the client as gone (as hyper and
    nginx do), ends the request and closes; it must not hang or keep the slot."""
    for path in (CHAT, COMPLETIONS):
        s = server.connect()
        s.sendall(request_bytes("POST", path, body(path, stream=stream, max_tokens=200)))
        s.shutdown(socket.SHUT_WR)
        assert closed_by_server(s, within=30) is not None, "the server kept a half-closed connection"
        s.close()
    check(server)


def test_client_that_never_reads(server):
    """A client that sends a request with a large answer and never reads it: its generation
    runs to its end (or is ended) and the server drops the connection after its write has
    made no progress for the timeout, instead of holding it and the buffered answer."""
    before = server.sockets()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(server.addr)
    # About 7 MB of events: more than the kernel buffers hold (4 MiB at most for sending).
    big = body(CHAT, stream=True, max_tokens=250, n=16, logprobs=True, top_logprobs=20)
    s.sendall(request_bytes("POST", CHAT, big))
    deadline = time.time() + 30
    while server.sockets() > before:
        assert time.time() < deadline, "the server still holds the connection of a client that never reads"
        time.sleep(0.2)
    check(server)
    # What the client finds when it finally reads: a cut-off stream, without [DONE].
    got = closed_by_server(s, within=10)
    assert got is not None and b"[DONE]" not in got
    s.close()


def test_oversized_headers(server):
    for headers in (
        {"X-Big": "a" * (64 << 10)},
        {"X-Huge": "a" * (1 << 20)},
        {f"X-Many-{i}": "b" for i in range(500)},
    ):
        s = server.connect()
        try:
            s.sendall(request_bytes("GET", "/health", headers=headers))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while still sending: fine, as long as the server lives
        got = closed_by_server(s, within=30)
        assert got is not None
        assert got == b"" or got.split(b" ")[1] in (b"431", b"400"), got[:200]
        s.close()
    check(server)


def test_garbage(server):
    for raw in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS hello
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"\r\n\r\n\r\n",
    ):
        s = server.connect()
        s.sendall(raw)
        got = closed_by_server(s, within=30)
        assert got is not None
        assert got == b"" or got.split(b" ")[1] in (b"400", b"505"), (raw[:40], got[:200])
        s.close()
    check(server)


def test_pipelined_requests_are_all_answered(server):
    """Three requests in one write on a keep-alive connection: three answers, in order."""
    a = body(COMPLETIONS, max_tokens=4, temperature=0)
    b = body(CHAT, max_tokens=4, temperature=0)
    s = server.connect()
    s.sendall(request_bytes("POST", COMPLETIONS, a) + request_bytes("GET", "/health") + request_bytes("POST", CHAT, b))
    r = Reader(s)
    status, _, one = r.response()
    assert status == 200 and json.loads(one)["object"] == "text_completion"
    status, _, two = r.response()
    assert status == 200 and "slots_busy" in json.loads(two)
    status, _, three = r.response()
    assert status == 200 and json.loads(three)["object"] == "chat.completion"
    s.close()
    check(server)


def test_a_thousand_idle_connections():
    """A server started with a soft limit of 512 open files (it raises it to the hard limit)
    holds a thousand idle connections and still answers another client."""
    s = Server("--parallel", "1", "-c", "128", "--timeout", "60", soft_file_limit=512)
    idle = []
    try:
        s.rss_warm = s.rss_bytes()
        for _ in range(1000):
            idle.append(s.connect())
        status, _, r = call(s, "POST", COMPLETIONS, {"prompt": "ROMEO:\n", "max_tokens": 4}, timeout=30)
        assert status == 200, r
        # It answered while holding them all.
        assert s.sockets() > 1000
        for c in idle:
            c.close()
        idle.clear()
        check(s)
    finally:
        for c in idle:
            c.close()
        s.stop()
    assert s.proc.returncode == 0, "".join(s.log[-20:])


def test_connections_beyond_the_limit_get_503():
    s = Server("--parallel", "1", "-c", "128", "--max-connections", "8", "--timeout", "60")
    held = []
    try:
        s.rss_warm = s.rss_bytes()
        held = [s.connect() for _ in range(8)]
        time.sleep(0.2)  # all eight accepted
        status, headers, r = call(s, "GET", "/health")
        assert status == 503 and r["error"]["type"] == "server_busy", r
        assert headers["retry-after"] == "1"
        for c in held:
            c.close()
        held.clear()
        deadline = time.time() + 10
        while call(s, "GET", "/health")[0] != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        check(s)
    finally:
        for c in held:
            c.close()
        s.stop()
    assert s.proc.returncode == 0, "".join(s.log[-20:])
