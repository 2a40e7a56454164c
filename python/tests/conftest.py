"""Fixtures: the `bitnet` command-line binary (the reference every test compares with) and
the demo model loaded through the Python package."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import bitnet

REPO = Path(__file__).resolve().parents[2]


def find_cli() -> Path:
    """$BITNET_CLI, else the newest of target/{release,debug}/bitnet in the repository."""
    if os.environ.get("BITNET_CLI"):
        return Path(os.environ["BITNET_CLI"])
    built = [REPO / "target" / p / "bitnet" for p in ("release", "debug")]
    built = [p for p in built if p.is_file()]
    if not built:
        pytest.exit(
            "no bitnet binary: run `cargo build -p bitnet-cli` first or set BITNET_CLI",
            returncode=2,
        )
    return max(built, key=lambda p: p.stat().st_mtime)


class Cli:
    def __init__(self, path: Path):
        self.path = path

    def run(self, *args: str, check: bool = True, stdin: str | None = None):
        env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"}
        proc = subprocess.run(
            [str(self.path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"bitnet {' '.join(args)} failed: {proc.stderr}")
        return proc

    def json(self, *args: str, stdin: str | None = None):
        return json.loads(self.run(*args, stdin=stdin).stdout)

    def error(self, *args: str) -> str:
        """The one-line message of a command that must fail (without `error: `)."""
        proc = self.run(*args, check=False)
        assert proc.returncode != 0, f"bitnet {' '.join(args)} succeeded"
        lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
        assert lines, proc.stderr
        return lines[-1][len("error: ") :]


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli(find_cli())


@pytest.fixture(scope="session")
def model() -> bitnet.Model:
    return bitnet.Model()
