#!/usr/bin/env python3
"""Reference fixtures for the BitNet embedding models (microsoft/BitNet's BitNet-embedding-0.6B,
a Qwen3 backbone, and -270M, a Gemma 3 backbone), made by transformers' own Qwen3Model and
Gemma3TextModel with every projection replaced by a BitLinear as bitnet.cpp's
docs/bitnet-embeddings-gguf-conversion.md describes it:

    x -> RMSNorm(x; proj.norm.weight) -> int8 absmax per token -> (absmean-ternary W) x

(the RMSNorm is a plain one, x / rms(x) * g, eps = rms_norm_eps; the weight scale is one per
tensor, as the converter's quantize_to_i2_s computes it).

Each model is tiny and random but of the real layout: head_dim != hidden / heads, Q/K head
norms, GQA, a `.norm.weight` per projection; Gemma 3 also with its sqrt(H) embedding scale,
(1 + g) norms, post-attention / post-FFN norms, tanh GELU, query_pre_attn_scalar, and a
sliding window shorter than the longer sequences, alternating with global layers of another
RoPE base. The folder is what sentence-transformers saves (a bare model, tensors without the
`model.` prefix, modules.json + 1_Pooling/config.json: last-token pooling for Qwen3 as
BitNet-embedding-0.6B, mean for Gemma 3).

Writes testdata/embedding/<name>/: config.json, model.safetensors, modules.json,
1_Pooling/config.json, and fixture.json (the sequences' token ids, their L2-normalised
pooled embeddings, and every position's final hidden state of the longest sequence). Needs
torch, transformers (>= 4.53), safetensors (PyPI); CI does not run it.

With --bitnet PATH it also writes <name>-wide/: the same architectures 512 wide (head widths
128 / 256, as the real models; FFN 1536), kept in the repository as the GGUF that
`bitnet convert` writes from transformers' folder (2 bits a weight instead of 32; the token
embedding is drawn f16-exact, so the converter's F16 copy of it is transformers' table) and
its fixture.json. Why wider: the models' int8 activation rounding makes a float32 engine
differ from another by a few rounding flips per sequence whatever it does (transformers in
float64 vs float32 differ by 3.8e-3 on the 128-wide models); the change one flip makes to a
normalised component shrinks as 1/sqrt(width), so the issue's 2e-3 bar, meant for the real
1024 / 640-wide models, is checked on these. The tool prints, for each wide case,
transformers' own float64-vs-float32 difference beside it.

  python tools/make_embedding_fixtures.py --out testdata/embedding [--bitnet target/release/bitnet [--wide-only]]
"""

import argparse
import copy
import json
import os
import shutil
import subprocess
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file


class BitLinear(nn.Module):
    """The BitNet embedding models' projection: its own RMSNorm, then W1.58A8."""

    def __init__(self, lin: nn.Linear, eps: float, g: torch.Generator):
        super().__init__()
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.norm_weight = nn.Parameter(0.5 + torch.rand(lin.in_features, generator=g))
        self.eps = eps

    def forward(self, x):
        xf = x.to(self.weight.dtype)
        x = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm_weight
        s = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
        xq = (x * s).round().clamp(-128, 127) / s
        m = self.weight.abs().mean().clamp(min=1e-5)
        wq = (self.weight / m).round().clamp(-1, 1) * m
        return F.linear(xq, wq)


PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def build(kind: str, seed: int, vocab_size: int, wide: bool = False):
    g = torch.Generator().manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                  max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  attention_bias=False)
    if wide:
        common.update(hidden_size=512, intermediate_size=1536, num_attention_heads=8,
                      head_dim=128 if kind == "qwen3" else 256)
        if kind == "gemma3":
            common["num_attention_heads"] = 4
    if kind == "qwen3":
        from transformers import Qwen3Config, Qwen3Model
        cfg = Qwen3Config(**common, rope_theta=1000000.0, hidden_act="silu")
        cfg._attn_implementation = "eager"
        model = Qwen3Model(cfg)
        pooling = "lasttoken"
    else:
        from transformers import Gemma3TextConfig, Gemma3TextModel
        common["num_key_value_heads"] = 1
        cfg = Gemma3TextConfig(**common, hidden_activation="gelu_pytorch_tanh",
                               query_pre_attn_scalar=48, sliding_window=4,
                               layer_types=["sliding_attention", "full_attention",
                                            "sliding_attention"],
                               rope_theta=1000000.0, rope_local_base_freq=10000.0,
                               final_logit_softcapping=None, attn_logit_softcapping=None)
        cfg._attn_implementation = "eager"
        model = Gemma3TextModel(cfg)
        pooling = "mean"
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                std = 1.0 if "embed" in name else 1.0 / p.shape[1] ** 0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
                if wide and "embed" in name:
                    # f16-exact: the GGUF's F16 token embedding is then transformers' own.
                    p.copy_(p.half().float())
            elif kind == "gemma3":
                # Gemma's norms compute (1 + g): gains around 0.
                p.copy_(torch.rand(p.shape, generator=g) - 0.5)
            else:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
        for layer in model.layers:
            for path in PROJ:
                parent_name, attr = path.split(".")
                parent = getattr(layer, parent_name)
                setattr(parent, attr, BitLinear(getattr(parent, attr), cfg.rms_norm_eps, g))
    return model, cfg, pooling


def state_dict(model):
    sd = {}
    for k, v in model.state_dict().items():
        # The BitLinear's gains as the BitNet checkpoints name them: `q_proj.norm.weight`.
        k = k.replace(".norm_weight", ".norm.weight")
        sd[k] = v.detach().contiguous().float()
    return sd


def pool(hidden, mode):
    if mode == "lasttoken":
        v = hidden[-1]
    elif mode == "mean":
        v = hidden.mean(0)
    else:
        v = hidden[0]
    return F.normalize(v, dim=-1)


def run(model, ids, pooling):
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return hidden, pool(hidden, pooling)


def write_case(name, seed, tokdir, d, texts, wide=False, bitnet=None):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(tokdir, "tokenizer.json"))
    model, cfg, pooling = build(name, seed, tok.get_vocab_size(with_added_tokens=True), wide)
    # The wide models' folder is only the converter's input; the repository keeps the GGUF.
    folder = tempfile.mkdtemp() if wide else d
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    os.makedirs(d, exist_ok=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        src = os.path.join(tokdir, f)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(folder, f))
    save_file(state_dict(model), os.path.join(folder, "model.safetensors"))
    cfg_dict = cfg.to_dict()
    cfg_dict["architectures"] = [type(model).__name__]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=1, sort_keys=True)
    with open(os.path.join(folder, "modules.json"), "w") as f:
        json.dump([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ], f, indent=1)
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": cfg.hidden_size,
                   "pooling_mode_cls_token": False,
                   "pooling_mode_mean_tokens": pooling == "mean",
                   "pooling_mode_max_tokens": False,
                   "pooling_mode_lasttoken": pooling == "lasttoken"}, f, indent=1)
    # transformers' own float64 run, to print the rounding-noise floor beside each case.
    model64 = copy.deepcopy(model).double() if wide else None
    g = torch.Generator().manual_seed(seed + 100)
    seqs = []
    cases = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in [1, 3, 9, 17]]
    if wide:
        cases.append(torch.randint(0, cfg.vocab_size, (64,), generator=g).tolist())
    for ids in cases:
        hidden, emb = run(model, ids, pooling)
        seq = {"ids": ids, "embedding": emb.tolist(),
               "hidden": hidden.tolist() if len(ids) == 17 and not wide else None}
        if model64 is not None:
            _, emb64 = run(model64, ids, pooling)
            print(f"{name}-wide {len(ids)} tokens: float64 vs float32 max |d| "
                  f"{(emb64.float() - emb).abs().max().item():.2e}")
            seq["embedding_f64"] = emb64.tolist()
        seqs.append(seq)
    text_cases = []
    for text in texts:
        # The tokenizer's own specials (BOS for the SentencePiece one); the Qwen3
        # embedding models end every text with <|endoftext|>.
        ids = tok.encode(text).ids
        if name == "qwen3":
            ids.append(tok.token_to_id("<|endoftext|>"))
        _, emb = run(model, ids, pooling)
        case = {"text": text, "ids": ids, "embedding": emb.tolist()}
        if model64 is not None:
            _, emb64 = run(model64, ids, pooling)
            print(f"{name}-wide {text!r}: float64 vs float32 max |d| "
                  f"{(emb64.float() - emb).abs().max().item():.2e}")
            case["embedding_f64"] = emb64.tolist()
        text_cases.append(case)
    with open(os.path.join(d, "fixture.json"), "w") as f:
        json.dump({"pooling": {"lasttoken": "last"}.get(pooling, pooling),
                   "sequences": seqs, "texts": text_cases}, f)
    if wide:
        subprocess.run([bitnet, "convert", folder, "-o", os.path.join(d, "model.gguf"),
                        "--name", f"{name}-wide"], check=True)
        shutil.rmtree(folder)
    print(name, "wide" if wide else "", "written to", d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="testdata/embedding")
    ap.add_argument("--bitnet", help="the bitnet binary, to write the wide models' GGUF")
    ap.add_argument("--wide-only", action="store_true", help="leave the 128-wide folders as they are")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    tokdirs = {"qwen3": os.path.join(here, "../testdata/tokenizer/qwen2-small"),
               "gemma3": os.path.join(here, "../testdata/tokenizer/spm-small")}
    texts = ["Hello world", "The quick brown fox jumps over the lazy dog.",
             "  spaces, digits 12345 and ünïcödé"]
    for name, seed in [("qwen3", 11), ("gemma3", 12)]:
        if not args.wide_only:
            write_case(name, seed, tokdirs[name], os.path.join(args.out, name), texts)
        if args.bitnet:
            write_case(name, seed + 20, tokdirs[name], os.path.join(args.out, name + "-wide"),
                       texts, wide=True, bitnet=args.bitnet)


if __name__ == "__main__":
    main()
