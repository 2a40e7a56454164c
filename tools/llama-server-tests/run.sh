#!/usr/bin/env bash
# Runs llama.cpp's own server tests (tools/server/tests of ggml-org/llama.cpp) in their
# external mode (DEBUG_EXTERNAL=1) against `bitnet serve` with the bundled demo model, and
# prints the pass/fail/skip counts. It reads llama.cpp's files from the directory given; none
# of them are part of this repository. See README.md here. Not part of CI.
#
#   tools/llama-server-tests/run.sh LLAMA_TESTS_DIR [pytest args...]
#   tools/llama-server-tests/run.sh --shim LLAMA_TESTS_DIR [pytest args...]
#
# --shim: the tests start their own servers, each with its own flags, through the
# `llama-server` script here (LLAMA_SERVER_BIN_PATH), which translates llama-server's command
# line to `bitnet serve` (the bundled demo model; flags it cannot honour make it exit with an
# error, so the test fails). Without it: external mode, against servers started here.
#
# LLAMA_TESTS_DIR holds utils.py, conftest.py, requirements.txt and unit/*.py.
# Environment: BITNET (the binary; default target/debug/bitnet, else `bitnet` on PATH),
# VENV (a virtualenv to use or create; default LLAMA_TESTS_DIR/venv), PORT (default 8080),
# KEY_PORT (the API-key server's; default PORT+100). Test files that set their own
# `server.server_port = N` (test_tool_call: 8081, test_compat_anthropic: 8082-8084) ignore
# PORT in external mode, so a plain server is started on each such port too.
set -euo pipefail

shim=0
if [ "${1:-}" = "--shim" ]; then
    shim=1
    shift
fi
if [ $# -lt 1 ] || [ ! -d "$1/unit" ]; then
    echo "usage: $0 [--shim] LLAMA_TESTS_DIR [pytest args...]  (a directory with unit/*.py, utils.py, conftest.py)" >&2
    exit 2
fi
tests=$(cd "$1" && pwd)
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
bitnet=${BITNET:-$root/target/debug/bitnet}
[ -x "$bitnet" ] || bitnet=$(command -v bitnet) || { echo "no bitnet binary: build it (cargo build -p bitnet-cli) or set BITNET" >&2; exit 2; }
venv=${VENV:-$tests/venv}
port=${PORT:-8080}
key_port=${KEY_PORT:-$((port + 100))}
out=$(mktemp -d)

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    # requirements.txt pins versions that may not build on a newer Python; the tests need
    # only these, so fall back to them unpinned.
    "$venv/bin/pip" install -q -r "$tests/requirements.txt" ||
        "$venv/bin/pip" install -q pytest openai requests wget filelock prometheus-client numpy
fi
"$venv/bin/python" -c 'import filelock' 2>/dev/null || "$venv/bin/pip" install -q filelock

summary() {
"$venv/bin/python" - "$out" <<'PY'
import glob, sys, xml.etree.ElementTree as ET
t = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for f in glob.glob(sys.argv[1] + "/*.xml"):
    for s in ET.parse(f).getroot().iter("testsuite"):
        for k in t:
            t[k] += int(s.get(k, 0))
passed = t["tests"] - t["failures"] - t["errors"] - t["skipped"]
print(f"llama.cpp server tests against bitnet serve: {passed} passed, {t['failures']} failed, "
      f"{t['errors']} errors, {t['skipped']} skipped, of {t['tests']}")
PY
echo "pytest output and server logs: $out"
}

if [ "$shim" = 1 ]; then
    # Every test starts (and stops) its own server through the shim, on PORT (the tests'
    # default 8080), one at a time. bitnet_shim_plugin.py turns off the conftest's
    # once-per-module start of every preset, which only downloads models.
    here=$(cd "$(dirname "$0")" && pwd)
    cd "$tests"
    env -u DEBUG_EXTERNAL PYTHONDONTWRITEBYTECODE=1 LLAMA_SERVER_BIN_PATH="$here/llama-server" BITNET="$bitnet" \
        PYTHONPATH="$tests:$here${PYTHONPATH:+:$PYTHONPATH}" PORT="$port" \
        "$venv/bin/python" -m pytest -p bitnet_shim_plugin -p no:cacheprovider -q -rfEs \
        --junitxml="$out/shim.xml" "$@" >"$out/shim.txt" 2>&1 || true
    grep -E '^(FAILED|ERROR) ' "$out/shim.txt" | cut -c1-200 || true
    summary
    exit 0
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# The flags mirror the tests' default preset (ServerPreset.tinyllama2: 2 slots of 256
# tokens, n_predict 64, seed 42, temperature 0.8, alias tinyllama-2). In external mode a
# test's own settings (other slot counts, templates, flags) never reach the server.
common=(-c 256 --parallel 2 -n 64 --seed 42 --temp 0.8 --alias tinyllama-2)
start() { # port log args...
    local p=$1 log=$2
    shift 2
    "$bitnet" serve --port "$p" "${common[@]}" "$@" >"$log" 2>&1 &
    pids+=($!)
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$p/health" >/dev/null && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    echo "bitnet serve on port $p did not start" >&2
    exit 1
}
start "$port" "$out/server.log"
for p in $(grep -ho 'server_port = [0-9]*' "$tests"/unit/*.py | awk '{print $3}' | sort -u); do
    if [ "$p" != "$port" ] && [ "$p" != "$key_port" ]; then
        start "$p" "$out/server-$p.log"
    fi
done
# test_security.py expects a server started with its key (and llama-server's open CORS).
start "$key_port" "$out/server-key.log" --api-key sk-this-is-the-secret-key --cors-origin '*'

cd "$tests"
run() { # name port files...
    local name=$1 p=$2
    shift 2
    DEBUG_EXTERNAL=1 PORT=$p "$venv/bin/python" -m pytest -p no:cacheprovider -q -rfEs \
        --junitxml="$out/$name.xml" "$@" >"$out/$name.txt" 2>&1 || true
    grep -E '^(FAILED|ERROR) ' "$out/$name.txt" | cut -c1-200 || true
}
others=$(ls unit/test_*.py | grep -v '/test_security\.py$')
run main "$port" $others "$@"
if [ -f unit/test_security.py ]; then
    run security "$key_port" unit/test_security.py -k 'not test_local_media_file' "$@"
    # test_local_media_file starts its own server (a multimodal preset) without the key.
    run media "$port" unit/test_security.py -k test_local_media_file "$@"
fi

summary
