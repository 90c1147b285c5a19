"""Writes the oracle fixtures of the engine's parity tests (run by ctest before them).

python tests/engine/make_fixtures.py OUT_DIR

Every model is random, made here from a fixed seed, and saved as a Hugging Face checkpoint:
- OUT_DIR/hf/<case>/: stock Qwen3 / Llama models (no TTT) and expected.safetensors with the
  logits of HF transformers (eager attention) for `ids`, in f32 and in bf16.
- OUT_DIR/ttt/<case>/: In-Place TTT models and dumps of tools/ttt_reference (logits and every
  TTT layer's W) for the same ids fed at once, in straddling pieces and token by token, in both
  numeric modes and in f32 and bf16; prefix dumps at N = C-1, C, C+1, 2C; one clipped run.
- OUT_DIR/checkpoints/<case>/: good variants (sharded, bf16, f16) and broken checkpoints, each
  with the status code and the text its load error must carry.
- OUT_DIR/tokenizer/cases.json: token ids with their HF `tokenizers` decode (with and without
  special tokens) for the default model's tokenizer.json: encoded texts of many scripts and
  random id sequences (often invalid UTF-8).
- OUT_DIR/tokenizer/oracle/: tokenizers trained with HF `tokenizers` and HF's ids and decodes
  of over a megabyte of varied text (tokenizer_oracle.py).
- OUT_DIR/chat/cases.json: conversations rendered by transformers.apply_chat_template with
  append-only Qwen3 and Llama-3 templates (tokenizer_oracle.py).
OUT_DIR/manifest.json lists the cases and dump files. The case names are fixed: the C++ tests
name them too.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tools.ttt_reference import dump as ref_dump  # noqa: E402
from tools.ttt_reference import model as ref_model  # noqa: E402
from tokenizer_oracle import write_chat_cases, write_oracle  # noqa: E402  (beside this file)

VOCAB, SEQ, CHUNK = 256, 80, 8


def hf_config(arch: str, **kw):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0,
                  tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None, attn_implementation="eager")
    common.update(kw)
    if arch == "qwen3":
        cfg = Qwen3Config(**common)
        cfg.architectures = ["Qwen3ForCausalLM"]
    else:
        cfg = LlamaConfig(attention_bias=False, mlp_bias=False, **common)
        cfg.architectures = ["LlamaForCausalLM"]
    return cfg


HF_CASES = {
    "qwen3_gqa_tied": hf_config("qwen3", tie_word_embeddings=True),
    "qwen3_mha_untied": hf_config("qwen3", num_key_value_heads=4, head_dim=32, rope_theta=1e6),
    "llama_gqa_llama3": hf_config("llama", num_key_value_heads=1, rope_theta=50000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}),
    "llama_tied": hf_config("llama", tie_word_embeddings=True),
}

TTT_FIELDS = dict(ttt_mode=True, ttt_chunk=CHUNK, ttt_lr=0.3)
TTT_CASES = {
    "ttt_qwen3_hidden_proj": hf_config("qwen3", ttt_layers=[0, 2], ttt_proj=True,
                                       ttt_target="hidden_states", **TTT_FIELDS),
    "ttt_qwen3_embed_proj": hf_config("qwen3", ttt_layers=[0, 2], ttt_proj=True,
                                      ttt_target="input_embed", **TTT_FIELDS),
    "ttt_llama_hidden_noproj": hf_config("llama", ttt_layers=[1], ttt_proj=False,
                                         ttt_target="hidden_states", **TTT_FIELDS),
}
TTT_SEQ = 4 * CHUNK + 3
PIECES = {
    "whole": [TTT_SEQ],
    "pieces": [5, 3, 9, 1, 1, 8, 8],  # straddles every chunk boundary differently
    "tokens": [1] * TTT_SEQ,
}


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that every component moves the logits (HF's init is near-silent)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        elif "ttt_conv" in name:
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
        elif "ttt_proj" in name:
            p.copy_(torch.eye(p.shape[0]) + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def write_hf_case(out: pathlib.Path, name: str, cfg, seed: int) -> dict:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    randomize(model, seed)
    model.tie_weights()
    model.save_pretrained(out / "model", safe_serialization=True)
    ids = torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        f32 = model(ids[None]).logits[0].float()
        bf16 = model.to(torch.bfloat16)(ids[None]).logits[0].float()
    save_file({"ids": ids, "logits_f32": f32.contiguous(), "logits_bf16": bf16.contiguous()},
              str(out / "expected.safetensors"))
    return {"name": name, "model": f"hf/{name}/model", "expected": f"hf/{name}/expected.safetensors"}


@torch.no_grad()
def write_ttt_case(out: pathlib.Path, name: str, cfg, seed: int) -> dict:
    model = ref_model.from_config(cfg, seed=seed).eval()
    randomize(model.hf, seed)
    model.hf.tie_weights()
    model.save(str(out / "model"))
    ids = torch.randint(0, VOCAB, (TTT_SEQ,), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    runs = []  # (file stem, ids, pieces, numeric, dtype, clip_tau)
    for numeric in ("split", "parity"):
        for dtype in ("f32", "bf16"):
            for pname, pieces in PIECES.items():
                runs.append((f"{numeric}_{dtype}_{pname}", ids, pieces, numeric, dtype, None))
    for n in (CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK):
        runs.append((f"split_f32_n{n}", ids[:n], [n], "split", "f32", None))
    # Clipped: tau below the first chunk's update norm, so every update is clipped.
    first = ref_dump.run(model, ids[:CHUNK], [CHUNK], "split", None)
    w0 = model.hf.model.layers[model.ttt_layers[0]].mlp.down_proj.weight.float()
    tau = 0.5 * float(torch.linalg.vector_norm(first[f"layers.{model.ttt_layers[0]}.weight"] - w0))
    runs.append(("split_f32_clipped", ids, PIECES["pieces"], "split", "f32", tau))

    dumps = []
    models = {"f32": model, "bf16": ref_model.load(str(out / "model"), torch.bfloat16).eval()}
    for stem, run_ids, pieces, numeric, dtype, clip_tau in runs:
        tensors = ref_dump.run(models[dtype], run_ids, pieces, numeric, clip_tau)
        save_file(tensors, str(out / f"{stem}.safetensors"))
        dumps.append({"file": f"ttt/{name}/{stem}.safetensors", "ids": run_ids, "pieces": pieces,
                      "numeric": numeric, "dtype": dtype, "clip_tau": clip_tau})
    return {"name": name, "model": f"ttt/{name}/model", "ttt_layers": model.ttt_layers, "chunk": CHUNK,
            "dumps": dumps}


def write_ntp_oracle(out: pathlib.Path, case: dict) -> None:
    """The ntp_gradient rule by autograd in transformers: two chunks of the case's ids; after each,
    every TTT layer's dW -= lr * d(mean next-token NLL of the chunk)/dW. The second chunk is read
    after the first one's keys and values as they were served (before the first update, no
    gradient through them); `alone.chunk1` is the second update with the chunk read on its own."""
    hf = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32).eval()  # the stock MLP
    ids = torch.randint(0, VOCAB, (2 * CHUNK,), generator=torch.Generator().manual_seed(99))
    chunks = ids[:CHUNK], ids[CHUNK:]
    lr = TTT_FIELDS["ttt_lr"]
    layers = case["ttt_layers"]
    w0 = {l: hf.model.layers[l].mlp.down_proj.weight.detach().clone() for l in layers}

    def step(delta, chunk, past=None):
        for l in layers:
            hf.model.layers[l].mlp.down_proj.weight.data = w0[l] + delta[l]
        hf.zero_grad()
        logits = hf(chunk[None], past_key_values=past).logits[0].float()
        torch.nn.functional.cross_entropy(logits[:-1], chunk[1:]).backward()
        return {l: delta[l] - lr * hf.model.layers[l].mlp.down_proj.weight.grad for l in layers}

    zero = {l: torch.zeros_like(w0[l]) for l in layers}
    with torch.no_grad():
        for l in layers:
            hf.model.layers[l].mlp.down_proj.weight.data = w0[l]
        served = hf(chunks[0][None], use_cache=True).past_key_values  # the first chunk as served: dW = 0
    first = step(zero, chunks[0])
    updates = {"chunk0": first, "chunk1": step(first, chunks[1], served), "alone.chunk1": step(first, chunks[1])}
    tensors = {f"{name}.layers.{l}.delta": d[l].detach().clone().contiguous() for name, d in updates.items() for l in layers}
    save_file(tensors, str(out / "ntp.safetensors"))
    case["ntp"] = {"file": f"ttt/{case['name']}/ntp.safetensors", "ids": ids.tolist()}


def write_checkpoint_cases(root: pathlib.Path, stock: pathlib.Path, ttt: pathlib.Path) -> list[dict]:
    """Variants of two fixture models; code OK means the load must succeed."""
    cases = []

    def variant(name, src, code, mentions="", tensors=None, config=None, raw=None, files=None):
        out = root / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        cfg = json.loads((src / "config.json").read_text())
        sd = load_file(str(src / "model.safetensors"))
        if config:
            config(cfg)
        (out / "config.json").write_text(raw if raw is not None else json.dumps(cfg, indent=1))
        for fname, part in (files(sd) if files else {"model.safetensors": tensors(sd) if tensors else sd}).items():
            if isinstance(part, bytes):
                (out / fname).write_bytes(part)
            else:
                save_file(part, str(out / fname))
        cases.append({"name": name, "dir": f"checkpoints/{name}", "code": code, "mentions": mentions})

    def sharded(sd):
        names = sorted(sd)
        half = {n: ("model-00001-of-00002.safetensors" if i % 2 == 0 else "model-00002-of-00002.safetensors")
                for i, n in enumerate(names)}
        out = {f: {n: sd[n] for n in names if half[n] == f} for f in set(half.values())}
        out["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": half}).encode()
        return out

    def truncated(sd):
        path = root / "_tmp.safetensors"
        save_file(sd, str(path))
        data = path.read_bytes()
        path.unlink()
        return {"model.safetensors": data[: len(data) - 100]}

    up = "model.layers.1.mlp.up_proj.weight"
    variant("sharded", stock, "OK", files=sharded)
    variant("bf16", stock, "OK", tensors=lambda sd: {k: v.bfloat16() for k, v in sd.items()},
            config=lambda c: c.update(dtype="bfloat16"))
    variant("f16", stock, "OK", tensors=lambda sd: {k: v.half() for k, v in sd.items()},
            config=lambda c: c.update(dtype="float16"))
    # Loads fine, but every chunk update overflows to inf: the engine must refuse each one.
    variant("ttt_overflow", ttt, "OK", tensors=lambda sd: {
        k: v * (1e30 if "ttt_conv" in k else 1e10 if "ttt_proj" in k else 1) for k, v in sd.items()})
    variant("missing_tensor", stock, "NOT_FOUND", up, tensors=lambda sd: {k: v for k, v in sd.items() if k != up})
    variant("extra_tensor", stock, "INVALID_ARGUMENT", "model.layers.1.mlp.extra.weight",
            tensors=lambda sd: {**sd, "model.layers.1.mlp.extra.weight": torch.zeros(3)})
    variant("misshaped_tensor", stock, "INVALID_ARGUMENT", up,
            tensors=lambda sd: {**sd, up: sd[up].t().contiguous()})
    variant("int_tensor", stock, "INVALID_ARGUMENT", up, tensors=lambda sd: {**sd, up: sd[up].to(torch.int32)})
    variant("truncated", stock, "DATA_LOSS", "model.safetensors", files=truncated)
    variant("bad_json", stock, "INVALID_ARGUMENT", "config.json", raw='{"architectures": ["Qwen3ForCausalLM"],')
    variant("unsupported_architecture", stock, "UNIMPLEMENTED", "MistralForCausalLM",
            config=lambda c: c.update(architectures=["MistralForCausalLM"], model_type="mistral"))
    variant("ttt_mode_without_tensors", stock, "INVALID_ARGUMENT", "model.layers.1.mlp.ttt_conv.weight",
            config=lambda c: c.update(ttt_mode=True, ttt_layers=[1]))
    variant("ttt_tensors_without_mode", ttt, "INVALID_ARGUMENT", "ttt_conv",
            config=lambda c: c.update(ttt_mode=False))
    variant("missing_shard", stock, "NOT_FOUND", "model-00002-of-00002.safetensors",
            files=lambda sd: {k: v for k, v in sharded(sd).items() if not k.startswith("model-00002")})
    return cases


TOKENIZER_TEXTS = [
    "The kernel's memory allocator hands out pages.",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\n\n",
    "   leading and    inner   whitespace\t\ttabs\r\n",
    "日本語のテキストと中文文本，还有한국어 텍스트.",
    "emoji 😀👍🏽 and a family 👩\u200d👩\u200d👧\u200d👦 flag 🇩🇪",
    "combining: e\u0301 a\u0308 n\u0303 — Zalgo z\u0336\u0335a\u0334",
    "digits 1234567890 3.14159 -42 1e-9",
    "look-alikes <|im_start|> <|endoftext|> <|im_end |>",
    "Ελληνικά, русский, עברית, العربية, हिन्दी",
]


def write_tokenizer_cases(out: pathlib.Path, tokenizer_json: pathlib.Path) -> None:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_json))
    g = torch.Generator().manual_seed(5)
    seqs = [tok.encode(t).ids for t in TOKENIZER_TEXTS]
    seqs.append([1] + tok.encode("user text").ids + [2, 0])  # with real special tokens
    for n in range(1, 40):
        seqs.append(torch.randint(0, tok.get_vocab_size(), (n,), generator=g).tolist())
    cases = [{"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
              "text_skip": tok.decode(ids, skip_special_tokens=True)} for ids in seqs]
    out.mkdir(parents=True, exist_ok=True)
    (out / "cases.json").write_text(json.dumps({"tokenizer": str(tokenizer_json), "cases": cases}))


def main() -> None:
    root = pathlib.Path(sys.argv[1])
    manifest = {"hf": [], "ttt": []}
    for seed, (name, cfg) in enumerate(HF_CASES.items(), start=10):
        manifest["hf"].append(write_hf_case(root / "hf" / name, name, cfg, seed))
    for seed, (name, cfg) in enumerate(TTT_CASES.items(), start=20):
        manifest["ttt"].append(write_ttt_case(root / "ttt" / name, name, cfg, seed))
    write_ntp_oracle(root / "ttt" / "ttt_qwen3_hidden_proj", manifest["ttt"][0])
    manifest["checkpoints"] = write_checkpoint_cases(
        root / "checkpoints", root / "hf/qwen3_gqa_tied/model", root / "ttt/ttt_qwen3_hidden_proj/model")
    write_tokenizer_cases(root / "tokenizer", ROOT / "models/adaptd-tiny-ttt/tokenizer.json")
    write_oracle(root / "tokenizer" / "oracle")
    write_chat_cases(root / "chat", {"qwen3": ROOT / "models/adaptd-tiny-ttt/tokenizer.json",
                                     "llama3": root / "tokenizer/oracle/llama3/tokenizer.json"})
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
