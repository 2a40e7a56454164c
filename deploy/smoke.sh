#!/usr/bin/env bash
# The image's runtime stage without a container: runs BINARY as the Dockerfile's ENTRYPOINT
# does (serve --host 0.0.0.0 --port PORT, HF_HOME on its own folder) as an unprivileged user,
# waits for /health to answer 200, asks for a completion of the demo model, then sends SIGTERM
# and expects exit 0. CI runs it on what deploy/build.sh built (no container tool runs there).
set -euo pipefail
bin=${1:?usage: deploy/smoke.sh BINARY}
dir=$(mktemp -d)
trap 'kill -9 "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
install -m 0755 "$bin" "$dir/bitnet"
mkdir "$dir/models"
chown 65534:65534 "$dir/models"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HF_HOME="$dir/models" setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$dir/bitnet" serve --host 0.0.0.0 --port "$port" 2>"$dir/log" &
pid=$!
for _ in $(seq 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" || true)
    [[ $code == 200 ]] && break
    kill -0 "$pid" || { cat "$dir/log"; exit 1; }
    sleep 0.1
done
[[ $code == 200 ]] || { echo "no 200 from /health: $code"; cat "$dir/log"; exit 1; }
grep -q "listening on http://0.0.0.0:$port" "$dir/log"
[[ $(ps -o uid= -p "$pid" | tr -d ' ') == 65534 ]]
curl -sf "http://127.0.0.1:$port/v1/completions" -H 'content-type: application/json' \
    -d '{"prompt": "ROMEO:\n", "max_tokens": 4}' | grep -q '"text_completion"'
kill -TERM "$pid"
wait "$pid"
echo "deploy/smoke.sh: the image's entrypoint served the demo model as uid 65534 on 0.0.0.0:$port"
