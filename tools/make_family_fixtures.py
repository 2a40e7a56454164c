#!/usr/bin/env python3
"""Reference fixtures for the BitNet family members that are not BitNet b1.58 2B-4T, made by
Hugging Face transformers' own code (LlamaForCausalLM / BitNetForCausalLM with its BitNet
quantization integration: BitLinear, AutoBitLinear), in float32.

For each family a tiny random model is written in that family's real Hugging Face format
(config keys as in the real config.json; packed uint8 + weight_scale and/or master weights),
loaded back through `from_pretrained` (so the quantizer swaps nn.Linear for BitLinear /
AutoBitLinear) and run:

  falcon3     LlamaForCausalLM, quantization_config {quant_method: bitnet,
              modules_to_not_convert: [lm_head]} (legacy BitLinear: weight_scale = 1/mean|W|,
              divided), packed uint8, bf16 storage, untied lm_head, head_dim 2x the usual
              ratio as in Falcon3, rope_theta 1000042, rms eps 1e-6.
  llama3      LlamaForCausalLM, quantization_config {quant_method: bitnet} (as
              HF1BitLLM/Llama3-8B-1.58-100B-tokens), packed, bf16, untied, rope_theta 500000,
              plus Llama 3.1-style rope_scaling (rope_type llama3) to exercise it.
  rmsnorm     LlamaForCausalLM, quantization_config {quant_method: bitnet, linear_class:
              autobitlinear, use_rms_norm: true}: the pre-quantization RMSNorm transformers
              offers (Falcon-E's option); bf16 master weights (online) and packed (offline).
  bitnet1-oddff  the same with an FFN width of 320 (2.5 I2_S blocks, like 3B's 8640).
  bitnet1     1bitLLM/bitnet_b1_58 format: config.json as 1bitLLM ships it (architectures
              BitnetForCausalLM, model_type llama, hidden_act silu, weight_bits/input_bits, no
              quantization_config), float16 master weights, tensor names inner_attn_ln /
              ffn_layernorm, tied. Its modeling code is not part of transformers; the reference
              is transformers' BitNetForCausalLM with hidden_act silu and online quantization,
              the same graph (sub-norm before o_proj and down_proj, absmean weights, absmax
              int8 activations), run on the same tensors under BitNet names.

Writes testdata/family/<name>/: the HF folder(s), fixture.json (config, sequences with
argmax and per-position stability, greedy tokens) and logits.f32 (little-endian float32
logits of every position of every sequence, in order). Needs torch, transformers,
safetensors, numpy (PyPI); CI does not run it.

  python tools/make_family_fixtures.py --out testdata/family [--only falcon3,...]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import BitNetForCausalLM, DynamicCache, LlamaForCausalLM
from transformers.integrations.bitnet import pack_weights

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

# Tiny shapes: every linear's input width a multiple of 128 (I2_S blocks), GQA, and the
# family's own head-dimension ratio where it has one.
FAMILIES = {
    "falcon3": dict(kind="llama", vocab=1024, hidden=128, layers=2, heads=2, kv_heads=1,
                    intermediate=256, rope_theta=1000042.0, rms_eps=1e-6, max_pos=8192,
                    tied=False, quant={"modules_to_not_convert": ["lm_head"], "quant_method": "bitnet"},
                    formats=["packed"], bos=None, eos=1023, seed=31),
    "llama3": dict(kind="llama", vocab=1024, hidden=128, layers=2, heads=4, kv_heads=2,
                   intermediate=256, rope_theta=500000.0, rms_eps=1e-5, max_pos=8192, tied=False,
                   quant={"quant_method": "bitnet"}, formats=["packed"], bos=1021, eos=1023,
                   rope_scaling={"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                   seed=32),
    "rmsnorm": dict(kind="llama", vocab=1024, hidden=128, layers=2, heads=4, kv_heads=2,
                    intermediate=256, rope_theta=100000.0, rms_eps=1e-5, max_pos=4096, tied=True,
                    quant={"quant_method": "bitnet", "linear_class": "autobitlinear",
                           "use_rms_norm": True, "rms_norm_eps": 1e-6},
                    formats=["online", "packed"], bos=1021, eos=1023, seed=33,
                    # float32 scales, so that the packed checkpoint is the online one exactly
                    # (a bf16 weight_scale alone moves logits by ~1).
                    scale_store=torch.float32),
    "bitnet1": dict(kind="bitnet1", vocab=1024, hidden=128, layers=2, heads=4, kv_heads=4,
                    intermediate=256, rope_theta=10000.0, rms_eps=1e-5, max_pos=2048, tied=True,
                    formats=["online"], bos=1021, eos=1023, seed=34),
    # 1bitLLM 3B's ffn_down has 8640 inputs, not a whole number of 128-value I2_S blocks:
    # the same odd ratio (320 = 2.5 x 128) at tiny size.
    "bitnet1-oddff": dict(kind="bitnet1", vocab=1024, hidden=128, layers=2, heads=4, kv_heads=4,
                          intermediate=320, rope_theta=10000.0, rms_eps=1e-5, max_pos=2048,
                          tied=True, formats=["online"], bos=1021, eos=1023, seed=35),
}

SEQ_LENS = [1, 9, 40]
GREEDY_PROMPT = [1021, 568, 559, 845, 275]
GREEDY_N = 24


def master_weights(f, sub_norms):
    g = torch.Generator().manual_seed(f["seed"])
    H, I, V = f["hidden"], f["intermediate"], f["vocab"]
    hd = H // f["heads"]

    def normal(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32)

    def linear(n_out, n_in, gain=1.0):
        return normal(n_out, n_in) * (n_in ** -0.5) * gain

    def norm(n):
        return 0.5 + torch.rand(n, generator=g, dtype=torch.float32)

    sd = {"model.embed_tokens.weight": normal(V, H)}
    for l in range(f["layers"]):
        p = f"model.layers.{l}."
        sd[p + "input_layernorm.weight"] = norm(H)
        sd[p + "self_attn.q_proj.weight"] = linear(f["heads"] * hd, H)
        sd[p + "self_attn.k_proj.weight"] = linear(f["kv_heads"] * hd, H)
        sd[p + "self_attn.v_proj.weight"] = linear(f["kv_heads"] * hd, H)
        # A residual-branch gain of 8, as in the other fixtures, keeps greedy decoding from
        # repeating the input token.
        sd[p + "self_attn.o_proj.weight"] = linear(H, f["heads"] * hd, 8.0)
        sd[p + "post_attention_layernorm.weight"] = norm(H)
        sd[p + "mlp.gate_proj.weight"] = linear(I, H)
        sd[p + "mlp.up_proj.weight"] = linear(I, H)
        sd[p + "mlp.down_proj.weight"] = linear(H, I, 8.0)
        if sub_norms:
            sd[p + "self_attn.attn_sub_norm.weight"] = norm(H)
            sd[p + "mlp.ffn_sub_norm.weight"] = norm(I)
    sd["model.norm.weight"] = norm(H)
    if not f["tied"]:
        sd["lm_head.weight"] = normal(V, H)
    return sd


def round_to(sd, dtype):
    """The values the stored checkpoint holds, kept as float32 for the reference."""
    return {k: v.to(dtype).to(torch.float32) for k, v in sd.items()}


def absmean(w):
    m = w.abs().mean().clamp(min=1e-5)
    return (w / m).round().clamp(-1, 1), m


def packed_tensors(sd, linear_class, store, scale_store):
    """transformers' pack_weights layout: uint8 [out/4, in] + weight_scale [1]
    (mean|W| for autobitlinear, 1/mean|W| for the legacy bitlinear class)."""
    out = {}
    for k, v in sd.items():
        mod = k[: -len(".weight")]
        if any(mod.endswith(n) for n in LINEARS):
            t, m = absmean(v)
            out[k] = pack_weights(t.clone())
            ws = m if linear_class == "autobitlinear" else 1.0 / m
            out[mod + ".weight_scale"] = ws.reshape(1).to(scale_store)
        else:
            out[k] = v.to(store)
    return out


def llama_config(f, quant):
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "hidden_act": "silu", "hidden_size": f["hidden"], "intermediate_size": f["intermediate"],
        "num_hidden_layers": f["layers"], "num_attention_heads": f["heads"],
        "num_key_value_heads": f["kv_heads"], "head_dim": f["hidden"] // f["heads"],
        "max_position_embeddings": f["max_pos"], "rms_norm_eps": f["rms_eps"],
        "rope_theta": f["rope_theta"], "rope_scaling": f.get("rope_scaling"),
        "tie_word_embeddings": f["tied"], "vocab_size": f["vocab"],
        "bos_token_id": f["bos"], "eos_token_id": f["eos"], "pretraining_tp": 1,
        "initializer_range": 0.02, "use_cache": True, "torch_dtype": "bfloat16",
        "quantization_config": quant,
    }
    return cfg


def write(dirname, cfg, tensors):
    os.makedirs(dirname, exist_ok=True)
    with open(os.path.join(dirname, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
        fh.write("\n")
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())},
              os.path.join(dirname, "model.safetensors"), metadata={"format": "pt"})


def load(cls, dirname, attn):
    model = cls.from_pretrained(dirname, dtype=torch.float32, attn_implementation=attn)
    # transformers 5 leaves bf16 buffers of a pre-quantized checkpoint in bf16.
    model = model.to(torch.float32).eval()
    return model


@torch.no_grad()
def full(model, ids):
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()


@torch.no_grad()
def stepwise(model, ids):
    cache = DynamicCache(config=model.config)
    outs = [model(input_ids=torch.tensor([[t]]), past_key_values=cache, use_cache=True).logits[0]
            for t in ids]
    return torch.cat(outs, 0).float()


@torch.no_grad()
def greedy(model, prompt, n):
    cache = DynamicCache(config=model.config)
    feed, out, margins = list(prompt), [], []
    for _ in range(n):
        logits = model(input_ids=torch.tensor([feed]), past_key_values=cache, use_cache=True).logits[0, -1]
        top2 = torch.topk(logits, 2).values
        tok = int(torch.argmax(logits))
        out.append(tok)
        margins.append(round(float(top2[0] - top2[1]), 5))
        feed = [tok]
    return out, margins


def to_bitnet1(sd_bitnet_names):
    """1bitLLM's tensor names for the sub-norms."""
    out = {}
    for k, v in sd_bitnet_names.items():
        k = k.replace("self_attn.attn_sub_norm", "self_attn.inner_attn_ln")
        k = k.replace("mlp.ffn_sub_norm", "mlp.ffn_layernorm")
        out[k] = v
    return out


def make(name, f, out_root, work):
    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    torch.manual_seed(f["seed"])
    variants = {}  # folder name -> (class, reference folder)
    if f["kind"] == "llama":
        sd = master_weights(f, sub_norms=False)
        store = torch.bfloat16
        sd = round_to(sd, store)
        linear_class = f["quant"].get("linear_class", "bitlinear")
        if "online" in f["formats"]:
            q = dict(f["quant"], quantization_mode="online")
            write(os.path.join(out, "hf-online"), llama_config(f, q), {k: v.to(store) for k, v in sd.items()})
            variants["hf-online"] = (LlamaForCausalLM, os.path.join(out, "hf-online"))
        if "packed" in f["formats"]:
            q = dict(f["quant"])
            if linear_class == "autobitlinear":
                q["quantization_mode"] = "offline"
            write(os.path.join(out, "hf-packed"), llama_config(f, q), packed_tensors(sd, linear_class, store, f.get("scale_store", store)))
            variants["hf-packed"] = (LlamaForCausalLM, os.path.join(out, "hf-packed"))
    else:
        sd = master_weights(f, sub_norms=True)
        sd = round_to(sd, torch.float16)
        cfg = {
            "architectures": ["BitnetForCausalLM"], "model_type": "llama",
            "attention_bias": False, "attention_dropout": 0.0, "hidden_act": "silu",
            "hidden_size": f["hidden"], "intermediate_size": f["intermediate"],
            "num_hidden_layers": f["layers"], "num_attention_heads": f["heads"],
            "num_key_value_heads": f["kv_heads"], "max_position_embeddings": f["max_pos"],
            "rms_norm_eps": f["rms_eps"], "rope_theta": f["rope_theta"], "rope_scaling": None,
            "tie_word_embeddings": True, "vocab_size": f["vocab"], "bos_token_id": f["bos"],
            "eos_token_id": f["eos"], "pad_token_id": None, "pretraining_tp": 1,
            "initializer_range": 0.02, "use_cache": True, "torch_dtype": "float16",
            "input_bits": 8, "weight_bits": 1,
        }
        write(os.path.join(out, "hf"), cfg, {k: v.to(torch.float16) for k, v in to_bitnet1(sd).items()})
        # The reference: the same tensors under transformers' BitNet names and config.
        ref = os.path.join(work, name + "-bitnet-ref")
        ref_cfg = {
            "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "silu",
            "hidden_size": f["hidden"], "intermediate_size": f["intermediate"],
            "num_hidden_layers": f["layers"], "num_attention_heads": f["heads"],
            "num_key_value_heads": f["kv_heads"], "max_position_embeddings": f["max_pos"],
            "rms_norm_eps": f["rms_eps"], "rope_theta": f["rope_theta"],
            "tie_word_embeddings": True, "vocab_size": f["vocab"], "bos_token_id": f["bos"],
            "eos_token_id": f["eos"], "attention_bias": False,
            "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                    "quantization_mode": "online"},
        }
        write(ref, ref_cfg, sd)
        variants["hf"] = (BitNetForCausalLM, ref)

    first = next(iter(variants))
    cls, path = variants[first]
    model = load(cls, path, "eager")
    # Loaded exactly as stored (no silently re-initialized tensor), and the pre-quant norms
    # that use_rms_norm adds are weightless (all ones).
    msd = model.state_dict()
    for k, v in msd.items():
        if k.endswith("rms_norm.weight"):
            assert torch.all(v == 1), k
    kinds = sorted({type(m).__name__ for m in model.modules()
                    if type(m).__name__ in ("BitLinear", "AutoBitLinear", "Linear")})
    others = {"stepwise_kv_cache": lambda ids: stepwise(model, ids)}
    sdpa = load(cls, path, "sdpa")
    others["sdpa"] = lambda ids: full(sdpa, ids)
    for v in list(variants)[1:]:
        m2 = load(*variants[v], "eager")
        others[v] = (lambda m: (lambda ids: full(m, ids)))(m2)

    g = torch.Generator().manual_seed(f["seed"] + 100)
    seqs = [torch.randint(0, f["vocab"], (n,), generator=g).tolist() for n in SEQ_LENS]
    blob = []
    fixture = {
        "format": "bitnet-family-reference-v1",
        "family": name,
        "reference": f"transformers {transformers.__version__} {cls.__name__} on {first}, float32, "
                     f"eager attention, torch {torch.__version__}, 1 thread",
        "modules": kinds,
        "folders": list(variants),
        "config": json.load(open(os.path.join(out, first, "config.json"))),
        "logits_file": "logits.f32: float32 little-endian, every position of every sequence in "
                       "order, n_vocab values each",
        "stability_doc": "per position, the largest max|Δlogit| of the other valid float32 "
                         "computations (one token at a time with a KV cache, sdpa attention, the "
                         "other checkpoint format where there is one); stable_positions: where "
                         "all are within 1e-4",
        "sequences": [],
    }
    for ids in seqs:
        lg = full(model, ids)
        blob.append(lg.numpy().astype("<f4").tobytes())
        per = {k: (fn(ids) - lg).abs().amax(-1) for k, fn in others.items()}
        worst = torch.stack(list(per.values())).amax(0)
        fixture["sequences"].append({
            "input_ids": ids,
            "argmax": lg.argmax(-1).tolist(),
            "stability": {k: [round(float(x), 7) for x in v] for k, v in per.items()},
            "stable_positions": [int(t) for t in torch.nonzero(worst <= 1e-4).flatten()],
        })
    toks, margins = greedy(model, GREEDY_PROMPT, GREEDY_N)
    fixture["greedy"] = {"prompt_ids": GREEDY_PROMPT, "new_tokens": toks, "top2_margin": margins}
    for v in list(variants)[1:]:
        m2 = load(*variants[v], "eager")
        fixture["greedy"][v + "_new_tokens"] = greedy(m2, GREEDY_PROMPT, GREEDY_N)[0]
    with open(os.path.join(out, "logits.f32"), "wb") as fh:
        fh.write(b"".join(blob))
    with open(os.path.join(out, "fixture.json"), "w") as fh:
        json.dump(fixture, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(name, "stable", [len(s["stable_positions"]) for s in fixture["sequences"]],
          "greedy", toks[:8], "min margin", min(margins), kinds)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--only", default=",".join(FAMILIES))
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        for name in a.only.split(","):
            make(name, FAMILIES[name], a.out, work)


if __name__ == "__main__":
    main()
