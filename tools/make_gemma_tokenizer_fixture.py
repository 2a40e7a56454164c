#!/usr/bin/env python3
"""A Gemma-style tokenizer (SentencePiece BPE written as tokenizer.json: byte fallback, spaces
as `▁` by a Replace normalizer, no dummy prefix, <bos> added by the post-processor), with
reference ids from Hugging Face `tokenizers`.

Gemma 3's real vocabulary (262,144 pieces) cannot be downloaded here, so the pieces and merges
are testdata/tokenizer/spm-small's (a SentencePiece BPE model trained in this repository), the
normalizer, pre-tokenizer, post-processor and decoder are set as Gemma's tokenizer.json has
them. Writes testdata/tokenizer/gemma-small/{tokenizer.json, tokenizer_config.json,
cases.jsonl}. Needs tokenizers (PyPI); CI does not run it.
"""

import json
import os
import random

from tokenizers import Tokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testdata", "tokenizer")


def main():
    src = json.load(open(os.path.join(ROOT, "spm-small", "tokenizer.json")))
    tok = dict(src)
    tok["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    tok["pre_tokenizer"] = {"type": "Split", "pattern": {"String": " "},
                            "behavior": "MergedWithPrevious", "invert": False}
    tok["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    tok["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    out = os.path.join(ROOT, "gemma-small")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                   "eos_token": "</s>", "unk_token": "<unk>",
                   "tokenizer_class": "GemmaTokenizer"}, f, indent=1)
    t = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    rng = random.Random(5)
    texts = ["", " ", "  ", "Hello world", " Hello world", "Hello  world", "\n\nHello\tworld ",
             "ünïcödé 😀 中文 ", "12345 6.7", "  leading and trailing  "]
    words = open(os.path.join(ROOT, "..", "..", "README.md"), encoding="utf-8").read().split()
    for _ in range(200):
        n = rng.randint(1, 12)
        seps = [" ", "  ", "\n", "\t", ""]
        texts.append("".join(rng.choice(words) + rng.choice(seps) for _ in range(n)))
    with open(os.path.join(out, "cases.jsonl"), "w") as f:
        for text in texts:
            ids = t.encode(text).ids
            f.write(json.dumps({"text": text, "ids": ids}, ensure_ascii=False) + "\n")
    print("wrote", out, len(texts), "cases")


if __name__ == "__main__":
    main()
