"""Generation speed from Python against the `bitnet` command line, on the same model.

    python python/bench.py [--cli target/release/bitnet] [--model PATH] [-n 256] [-r 9] [-t 1]

Each repetition runs `bitnet generate --json` (the CLI's own figure: generated tokens after
the first, per second after the first), then in this process loads the model afresh as the
CLI does and runs `Model.complete` (the same figure, measured by the library), and on a model
kept loaded (warm caches) `Model.generate` timed from Python around the call and
`Model.stream` timed from Python from its first piece to its last. The runs alternate so
that a busy machine slows both sides alike; medians are reported. Not a test: CI does not
run it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Run as `python python/bench.py`, this folder comes first on sys.path and its bitnet/ (the
# sources, without the built module) would shadow the installed package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import bitnet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", default=str(REPO / "target" / "release" / "bitnet"))
    ap.add_argument("--model", default=None, help="default: the bundled demo model")
    ap.add_argument("-n", type=int, default=256, help="tokens to generate")
    ap.add_argument("-r", type=int, default=9, help="repetitions")
    ap.add_argument("-t", type=int, default=None, help="threads (default: physical cores)")
    ap.add_argument("-p", default="ROMEO:\n", help="prompt")
    args = ap.parse_args()

    common = ["generate", "-p", args.p, "-n", str(args.n), "--ignore-eos", "--temp", "0", "--json"]
    if args.model:
        common += ["-m", args.model]
    if args.t:
        common += ["-t", str(args.t)]
    model = bitnet.Model(args.model, threads=args.t)
    params = dict(max_tokens=args.n, ignore_eos=True, temperature=0)
    model.generate(args.p, **params)  # warm-up

    env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"}
    cli, fresh, lib, wall, stream = [], [], [], [], []
    for _ in range(args.r):
        out = subprocess.run([args.cli, *common], capture_output=True, text=True, env=env, check=True)
        cli.append(json.loads(out.stdout)["generation_tokens_per_s"])

        done = bitnet.Model(args.model, threads=args.t).complete(args.p, **params)
        assert len(done.token_ids) == args.n
        fresh.append(done.generation_tokens_per_s)

        lib.append(model.complete(args.p, **params).generation_tokens_per_s)

        start = time.perf_counter()
        model.generate(args.p, **params)
        wall.append(args.n / (time.perf_counter() - start))

        first = None
        pieces = 0
        for _piece in model.stream(args.p, **params):
            pieces += 1
            if first is None:
                first = time.perf_counter()
        assert first is not None and pieces > 1
        stream.append((args.n - 1) / (time.perf_counter() - first))

    med = statistics.median
    ref = med(cli)
    print(f"model {model.name}, {args.n} tokens, threads {model.threads}, {args.r} runs (median t/s)")
    print(f"  CLI    bitnet generate (its figure)                            {ref:9.1f}")
    for name, xs in [
        ("Python Model.complete (library's figure), model loaded afresh", fresh),
        ("Python Model.complete (library's figure), model kept loaded ", lib),
        ("Python Model.generate (timed in Python),    model kept loaded ", wall),
        ("Python Model.stream   (timed in Python),    model kept loaded ", stream),
    ]:
        print(f"  {name} {med(xs):9.1f}  ({(med(xs) / ref - 1) * 100:+.1f} % against the CLI)")


if __name__ == "__main__":
    main()
