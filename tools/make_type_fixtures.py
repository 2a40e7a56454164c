#!/usr/bin/env python3
"""Writes testdata/types/: reference encodings of the tensor types by gguf-py (llama.cpp's Python
package, `pip install gguf numpy`), for crates/bitnet/tests/types_reference.rs.

For each type (q8_0, tq1_0, tq2_0, f16, bf16) it writes, all little-endian:

  {ty}.input.f32            deterministic inputs (f32), incl. rounding ties and edge values
  {ty}.gguf-py.bin          gguf.quants.quantize(inputs)
  {ty}.gguf-py.dequant.f32  gguf.quants.dequantize of those bytes
  {ty}.random.bin           random bytes of whole blocks (any bit pattern, NaN scales included)
  {ty}.random.dequant.f32   gguf.quants.dequantize of those bytes

Run from the repository root: python3 tools/make_type_fixtures.py
The output is deterministic for a given gguf-py and numpy; README.md there records the versions.
"""

from pathlib import Path
import importlib.metadata

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

OUT = Path(__file__).resolve().parent.parent / "testdata" / "types"
SEED = 20260401


def f32(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


def block_inputs(rng, block, n_blocks):
    """Blocks of `block` f32 values: random at many scales, plus the cases where rounding or the
    scale is on an edge."""
    blocks = []
    # An all-zero block (d = 0, so the inverse scale is 0 as well).
    blocks.append(np.zeros(block, np.float32))
    # Rounding ties: for Q8_0 max|x| = 127 gives d = 1, so k + 0.5 is a tie (rounded away from
    # zero); for the ternary types max|x| = 2 gives x/d = +-0.5 at x = +-1.
    if block == 32:
        t = np.arange(block, dtype=np.float32) - 15.5
        t[0] = 127.0
        t[1] = -126.5
        blocks.append(t)
    else:
        t = np.tile(np.array([2.0, 1.0, -1.0, 0.0, -2.0, 0.999, -1.001, 0.5], np.float32), block // 8)
        blocks.append(t)
    # The largest magnitude negative.
    t = rng.standard_normal(block).astype(np.float32)
    t[block // 3] = -8.0
    blocks.append(t)
    # Tiny values: a subnormal f16 scale (below 2^-14).
    tiny = 1e-4 if block == 32 else 1e-5
    blocks.append((rng.standard_normal(block) * tiny).astype(np.float32))
    # Huge values: the f16 scale overflows to infinity.
    blocks.append((rng.standard_normal(block) * 1e7).astype(np.float32))
    # Random at many scales.
    while len(blocks) < n_blocks:
        scale = np.float32(10.0 ** rng.uniform(-4, 4))
        blocks.append((rng.standard_normal(block) * scale).astype(np.float32))
    return np.concatenate(blocks)


def float_inputs(rng, kind, n):
    """f32 values for the f16/bf16 encoders: ties to even, subnormals, overflow, infinities,
    signed zeros, NaNs, and random bit patterns."""
    if kind == "f16":
        mant_shift = 13  # f32 mantissa bits below the f16 mantissa
        special = [
            1.0 + 2.0**-11,  # tie: rounds to even (1.0)
            1.0 + 3 * 2.0**-11,  # tie: rounds to even (up)
            2.0**-25,  # half the smallest subnormal: rounds to 0
            3 * 2.0**-25,  # tie between subnormals
            2.0**-24,
            2.0**-14 - 2.0**-25,
            65504.0,
            65519.99,
            65520.0,  # tie at the top: rounds to infinity
            1e6,
            -1e-9,
        ]
    else:
        mant_shift = 16
        special = [
            1.0 + 2.0**-8,  # tie: rounds to even (1.0)
            1.0 + 3 * 2.0**-8,  # tie: rounds to even (up)
            3.3895313892515355e38,  # max finite bf16
            3.4028234663852886e38,  # max f32: rounds to infinity
            1e-40,  # f32 subnormal
            -1e-45,
        ]
    special += [0.0, -0.0, np.inf, -np.inf]
    values = [np.array(special, np.float32)]
    values.append(f32([0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FA00000]))  # quiet and signalling NaNs
    # Exact ties and near-ties for random mantissas.
    hi = rng.integers(0x00800000, 0x7F000000, 256, dtype=np.uint32)
    half = np.uint32(1 << (mant_shift - 1))
    low_mask = np.uint32((1 << mant_shift) - 1)
    values.append(((hi & ~low_mask) | half).view(np.float32))
    values.append(((hi & ~low_mask) | (half - np.uint32(1))).view(np.float32))
    values.append(((hi & ~low_mask) | (half + np.uint32(1))).view(np.float32))
    # Random bit patterns (finite), and normal values at many scales.
    bits = rng.integers(0, 1 << 32, 512, dtype=np.uint64).astype(np.uint32)
    bits = np.where((bits & 0x7F800000) == 0x7F800000, bits & 0xBFFFFFFF, bits)
    values.append(bits.view(np.float32))
    count = n - sum(len(v) for v in values)
    values.append((rng.standard_normal(count) * 10.0 ** rng.uniform(-8, 6, count)).astype(np.float32))
    return np.concatenate(values).astype(np.float32)


def write(name, array):
    path = OUT / name
    path.write_bytes(np.ascontiguousarray(array).tobytes())
    return path.stat().st_size


def main():
    rng = np.random.default_rng(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    total = 0
    types = [
        ("q8_0", T.Q8_0, 32, 34, 64),
        ("tq1_0", T.TQ1_0, 256, 54, 12),
        ("tq2_0", T.TQ2_0, 256, 66, 12),
        ("f16", T.F16, 1, 2, 2048),
        ("bf16", T.BF16, 1, 2, 2048),
    ]
    for name, qtype, block, block_bytes, n_blocks in types:
        if block == 1:
            x = float_inputs(rng, name, n_blocks)
        else:
            x = block_inputs(rng, block, n_blocks)
        with np.errstate(all="ignore"):
            q = quants.quantize(x, qtype)
        q = np.ascontiguousarray(q).view(np.uint8).reshape(-1)
        assert q.size == x.size // block * block_bytes, name
        with np.errstate(all="ignore"):  # an infinite scale times 0 is NaN, in ggml too
            y = quants.dequantize(q, qtype).astype(np.float32, copy=False).reshape(-1)
        assert y.size == x.size, name

        r = rng.integers(0, 256, n_blocks * block_bytes, dtype=np.uint16).astype(np.uint8)
        with np.errstate(all="ignore"):
            ry = quants.dequantize(r, qtype).astype(np.float32, copy=False).reshape(-1)

        total += write(f"{name}.input.f32", x)
        total += write(f"{name}.gguf-py.bin", q)
        total += write(f"{name}.gguf-py.dequant.f32", y)
        total += write(f"{name}.random.bin", r)
        total += write(f"{name}.random.dequant.f32", ry)

    # Q6_K: gguf-py only dequantizes it. Random whole blocks with a finite f16 scale.
    n_blocks = 12
    r = rng.integers(0, 256, (n_blocks, 210), dtype=np.uint16).astype(np.uint8)
    r[:, 208:210] = np.frombuffer(
        rng.uniform(-0.05, 0.05, n_blocks).astype(np.float16).tobytes(), np.uint8
    ).reshape(n_blocks, 2)
    r = r.reshape(-1)
    ry = quants.dequantize(r, T.Q6_K).astype(np.float32, copy=False).reshape(-1)
    total += write("q6_k.random.bin", r)
    total += write("q6_k.random.dequant.f32", ry)

    versions = {p: importlib.metadata.version(p) for p in ("gguf", "numpy")}
    (OUT / "README.md").write_text(
        "# Tensor type fixtures from gguf-py\n\n"
        "Written by `tools/make_type_fixtures.py` (seed "
        f"{SEED}) with gguf {versions['gguf']} and numpy {versions['numpy']}; checked by\n"
        "`crates/bitnet/tests/types_reference.rs`. Per type (`q8_0`, `tq1_0`, `tq2_0`, `f16`, `bf16`),\n"
        "all little-endian:\n\n"
        "| file | contents |\n"
        "|---|---|\n"
        "| `{ty}.input.f32` | deterministic f32 inputs (rounding ties, zero / subnormal / overflowing scales, random) |\n"
        "| `{ty}.gguf-py.bin` | `gguf.quants.quantize(inputs)` |\n"
        "| `{ty}.gguf-py.dequant.f32` | `gguf.quants.dequantize` of those bytes |\n"
        "| `{ty}.random.bin` | random bytes, whole blocks (any bit pattern, NaN and infinite scales included) |\n"
        "| `{ty}.random.dequant.f32` | `gguf.quants.dequantize` of those bytes |\n\n"
        "`q6_k.random.bin` / `q6_k.random.dequant.f32`: random Q6_K blocks (finite scales) and\n"
        "gguf-py's dequantization (gguf-py has no Q6_K quantizer).\n\n"
        "I2_S is bitnet.cpp's own type and is not in gguf-py; it is checked against bitnet.cpp's\n"
        "files in `testdata/visible/`.\n"
    )
    print(f"wrote {OUT} ({total} bytes of fixtures)")


if __name__ == "__main__":
    main()
