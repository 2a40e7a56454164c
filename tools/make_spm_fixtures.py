#!/usr/bin/env python3
"""SentencePiece reference cases for the `llama` (SentencePiece BPE) tokenizer.

Writes, under testdata/tokenizer/:
- llama-spm/sentencepiece-cases.jsonl: texts and the ids Google's `sentencepiece` gives for
  them with the vocabulary of llama.cpp's models/ggml-vocab-llama-spm.gguf (Llama 2's, the one
  1bitLLM's bitnet_b1_58 models use). The ModelProto is built from the GGUF's pieces, scores
  and types; before writing, the script checks that it reproduces llama.cpp's own .inp/.out
  cases, so the proto is the GGUF's tokenizer.
- spm-small/: a small SentencePiece BPE model trained here (byte fallback, Llama 2's
  settings), as a Hugging Face folder: tokenizer.model, and tokenizer.json /
  tokenizer_config.json written by transformers' own converter (LlamaTokenizerFast, legacy),
  as 1bitLLM's folders ship them; plus cases.jsonl with sentencepiece's ids for it and
  pieces.json (piece, score, type as sentencepiece reads them). Its training text includes the
  repository's README.md as it is when the script runs, so a rerun may train other pieces.

Usage: python tools/make_spm_fixtures.py   (needs sentencepiece, protobuf, gguf, transformers)
"""

import json
import os
import random
import sys
import tempfile

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from gguf import GGUFReader

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testdata", "tokenizer")
SPM_DIR = os.path.join(ROOT, "llama-spm")
GGUF = os.path.join(SPM_DIR, "ggml-vocab-llama-spm.gguf")

FIXED = [
    "",
    " ",
    "  ",
    "Hello world",
    " Hello world",
    "Hello  world",
    "Hello world ",
    "\tHello\n\nworld\r\n",
    "line one\nline two\n\n\nline five",
    "The year 2024 had 366 days; 3.14159 is pi, 1,000,000 is a million.",
    "0123456789 00 000 12345678901234567890",
    "café naïve résumé Zürich Ångström",
    "Привет, мир! Это тест.",
    "日本語のテキストと漢字、カタカナ。",
    "中文测试：你好，世界！",
    "한국어 텍스트입니다",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "ภาษาไทย",
    "Emoji: 🤖🦙🎉 👍🏽 👨‍👩‍👧‍👦 🇫🇷",
    "math: ∑ ∫ √ ∞ ≠ ≤ ≥ ∂ ∇",
    "tabs\tand\tmore\t\ttabs",
    "mixed   spaces    here",
    "trailing spaces   ",
    "   leading spaces",
    "symbols !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "def f(x):\n    return x * 2  # double\n",
    "<s> and </s> and <unk> typed as text",
    "<0x0A> typed as text",
    "▁ already a metaspace ▁▁",
    "control \x01\x02\x1f chars \x7f",
    "combining e\u0301 a\u0308 and zero\u200bwidth\u200d",
    "private use \ue000\uf8ff and astral \U0001d400\U00020000\U0010fffd",
    "noncharacter \ufffe\uffff and replacement \ufffd",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ab" * 100,
    "\n" * 10,
    " " * 17,
    "Ⅻ ⅷ ½ ¾ ² ³ ٣ ৪",
    "I'm can't we'll they've you'd it's",
    "https://example.com/path?q=1&r=two#frag",
]

POOL = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + list(" " * 12 + "\n\n\t\r")
    + list(".,;:!?'\"()[]{}<>-_/\\@#$%^&*+=|~`")
    + list("éüßøñçàâêîôûÅÆŒ")
    + list("абвгдежзийклмнопрстуфхцчшщыэюя")
    + list("你好世界中文日本語한국어")
    + list("αβγδεζηθ∑∫√∞")
    + ["🤖", "🦙", "🎉", "👍", "🏽", "\u200d", "\u0301", "\ufffd", "\U0001d400", "▁"]
)


def random_texts(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        out.append("".join(rng.choice(POOL) for _ in range(k)))
    return out


def read_gguf(path):
    r = GGUFReader(path)

    def arr(key):
        f = r.fields[key]
        return [f.parts[i] for i in f.data]

    tokens = [bytes(p).decode("utf-8") for p in arr("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in arr("tokenizer.ggml.scores")]
    types = [int(p[0]) for p in arr("tokenizer.ggml.token_type")]
    return tokens, scores, types


def proto_from_gguf(tokens, scores, types):
    m = pb.ModelProto()
    for t, s, ty in zip(tokens, scores, types):
        p = m.pieces.add()
        p.piece = t
        p.score = s
        p.type = ty  # GGUF token types use SentencePiece's numbering (1 normal ... 6 byte)
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id = 0
    m.trainer_spec.bos_id = 1
    m.trainer_spec.eos_id = 2
    m.trainer_spec.pad_id = -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    return m


def llama_cpp_cases():
    inp = open(GGUF + ".inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")[:-1]
    out = open(GGUF + ".out", encoding="utf-8").read().split("\n")[: len(inp)]
    return [(t, [int(x) for x in o.split()]) for t, o in zip(inp, out)]


def write_jsonl(path, sp, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            ids = sp.encode(t)
            f.write(json.dumps({"text": t, "ids": ids, "decoded": sp.decode(ids)}, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(texts)} cases")


def main():
    tokens, scores, types = read_gguf(GGUF)
    sp = spm.SentencePieceProcessor(model_proto=proto_from_gguf(tokens, scores, types).SerializeToString())
    cases = llama_cpp_cases()
    bad = [(t, want, sp.encode(t)) for t, want in cases if sp.encode(t) != want]
    print(f"llama.cpp cases: {len(cases) - len(bad)} of {len(cases)} equal with sentencepiece")
    for t, want, got in bad:
        print(f"  {t!r}\n    llama.cpp {want}\n    spm       {got}")
    if bad:
        sys.exit("the proto does not reproduce llama.cpp's cases")
    texts = FIXED + [t for t, _ in cases] + random_texts(300, 1)
    write_jsonl(os.path.join(SPM_DIR, "sentencepiece-cases.jsonl"), sp, texts)

    # A small trained model, as a Hugging Face folder.
    small = os.path.join(ROOT, "spm-small")
    os.makedirs(small, exist_ok=True)
    readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
    corpus = FIXED + random_texts(500, 2) + [t for t, _ in cases]
    corpus += open(readme, encoding="utf-8").read().split("\n")
    corpus += [
        "the quick brown fox jumps over the lazy dog " * 3,
        "BitNet b1.58 models use ternary weights and int8 activations.",
        "SentencePiece treats the input as a raw stream and uses the metaspace for spaces.",
    ] * 20
    with tempfile.TemporaryDirectory() as tmp:
        text_path = os.path.join(tmp, "corpus.txt")
        with open(text_path, "w", encoding="utf-8") as f:
            for line in corpus:
                for part in line.split("\n"):
                    if part.strip():
                        f.write(part + "\n")
        prefix = os.path.join(tmp, "small")
        spm.SentencePieceTrainer.train(
            input=text_path,
            model_prefix=prefix,
            model_type="bpe",
            vocab_size=1000,
            byte_fallback=True,
            character_coverage=0.98,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            minloglevel=2,
        )
        model_path = prefix + ".model"
        with open(model_path, "rb") as src, open(os.path.join(small, "tokenizer.model"), "wb") as dst:
            dst.write(src.read())
    sp_small = spm.SentencePieceProcessor(model_file=os.path.join(small, "tokenizer.model"))
    # tokenizer.json by transformers' own converter, legacy Llama 2 style (Prepend + Replace
    # normalizer, no pre-tokenizer), with LlamaTokenizerFast's BOS post-processor.
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import LlamaConverter

    class Slow:
        vocab_file = os.path.join(small, "tokenizer.model")
        legacy = True
        add_prefix_space = True

        def convert_ids_to_tokens(self, i):
            return sp_small.id_to_piece(i)

    class Converter(LlamaConverter):
        # transformers 5.25's SpmConverter.tokenizer passes the scores where its extractor now
        # wants a model class; this is its BPE branch with the merges made as before (all
        # splits of each piece into two pieces, ordered by the piece's score).
        def tokenizer(self, proto):
            from tokenizers import AddedToken, Tokenizer
            from tokenizers.models import BPE
            from transformers.convert_slow_tokenizer import generate_merges

            vocab_scores = self.vocab(proto)
            bpe_vocab = {w: i for i, (w, _) in enumerate(vocab_scores)}
            merges = generate_merges(bpe_vocab, vocab_scores)
            tok = Tokenizer(
                BPE(bpe_vocab, merges, unk_token=proto.trainer_spec.unk_piece, fuse_unk=True, byte_fallback=True)
            )
            tok.add_tokens(
                [AddedToken(p.piece, normalized=False, special=p.type == 3) for p in proto.pieces if p.type in (3, 4)]
            )
            return tok

    converted = Converter(Slow()).converted()
    converted.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    converted.save(os.path.join(small, "tokenizer.json"))
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "legacy": True,
        "tokenizer_class": "LlamaTokenizer",
        "chat_template": "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}",
    }
    with open(os.path.join(small, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    sp_small = spm.SentencePieceProcessor(model_file=os.path.join(small, "tokenizer.model"))
    texts = FIXED + random_texts(300, 3)
    # transformers' converted tokenizer.json should agree with sentencepiece here.
    from tokenizers import Tokenizer as HfTokenizer

    hf = HfTokenizer.from_file(os.path.join(small, "tokenizer.json"))
    differ = [t for t in texts if hf.encode(t, add_special_tokens=False).ids != sp_small.encode(t)]
    print(f"spm-small: tokenizer.json (HF tokenizers) equals sentencepiece on {len(texts) - len(differ)} of {len(texts)}")
    for t in differ[:10]:
        print(f"  {t!r}: hf {hf.encode(t, add_special_tokens=False).ids} spm {sp_small.encode(t)}")
    write_jsonl(os.path.join(small, "cases.jsonl"), sp_small, texts)
    # The pieces as sentencepiece reads tokenizer.model: what a GGUF converter must write
    # (llama.cpp's _set_vocab_sentencepiece: piece, score, type by these predicates).
    with open(os.path.join(small, "pieces.json"), "w", encoding="utf-8") as f:
        rows = []
        for i in range(sp_small.get_piece_size()):
            ty = 1
            if sp_small.is_unknown(i):
                ty = 2
            elif sp_small.is_control(i):
                ty = 3
            elif sp_small.is_unused(i):
                ty = 5
            elif sp_small.is_byte(i):
                ty = 6
            rows.append([sp_small.id_to_piece(i), sp_small.get_score(i), ty])
        json.dump(rows, f, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
