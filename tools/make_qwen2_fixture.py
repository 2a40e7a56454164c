#!/usr/bin/env python3
"""A small byte-level BPE vocabulary with Qwen2's split rules, trained with Hugging Face
`tokenizers`: testdata/tokenizer/qwen2-small/tokenizer.json.

The pre-tokenizer is Qwen2's tokenizer.json one (Split on its regex, Isolated, then ByteLevel
without its own regex), with no normalizer (Qwen2's files add NFC, which llama.cpp does not
apply, and neither do we). tests/tokenizer.rs compares our `qwen2` split + BPE with the
`tokenizers` crate on this file.

Usage: python tools/make_qwen2_fixture.py   (needs tokenizers)
"""

import os
import random

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "testdata", "tokenizer", "qwen2-small")


def main():
    rng = random.Random(7)
    lines = open(os.path.join(HERE, "..", "README.md"), encoding="utf-8").read().split("\n")
    lines += ["".join(rng.choice("0123456789 ,.") for _ in range(30)) for _ in range(300)]
    lines += ["Ünïcödé 你好世界 привет мир 12,345.67 🤖🦙 I'm you'll we'd"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    os.makedirs(OUT, exist_ok=True)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    print("wrote", os.path.join(OUT, "tokenizer.json"), tok.get_vocab_size(), "tokens")


if __name__ == "__main__":
    main()
