"""Gradient statistics for `ntp_gradient`'s RMS-normalised step (Krause et al. 2018, "Dynamic
evaluation of neural sequence models"), computed once from training text and shipped beside
the model, never per session.

python -m tools.train.ntp_stats --model models/smollm2-135m-instruct [--docs 96] [--context 256]
                                [--chunk 64] [--out models/smollm2-135m-instruct/ntp_stats.safetensors]

Data (a rule fixed here before any result was seen): the corpus's TRAINING documents
(tools/corpus: never the held-out ones that the benchmarks read), in sha256(path) order, the
first `docs` of them with at least context + chunk tokens of the model's tokenizer. Each gives
one chunk as the engine learns it: tokens [context, context + chunk) after `context` tokens of
window, the mean next-token loss over the chunk's own predictions (logits at chunk positions
0..C-2 for ids 1..C-1), differentiated with respect to every layer's MLP down-projection
W [d, f] (HF transformers, f32, the GGUF dequantized by the `gguf` package).

Stored factored, as Adafactor does (Shazeer & Stern 2018): per layer l the mean squared gradient
of each row, `layers.<l>.rows` [d], and of each column, `layers.<l>.cols` [f], f32; the engine
reads MS_ij ~ rows_i cols_j / mean(rows). 2 x 30 x (576 + 1536) floats for SmolLM2 (~250 KB)
instead of 26.5 M. The file's metadata names the model file's sha256, the rule's parameters and
how well the factoring fits (the correlation of log MS with its factored estimate, per layer).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tools.gguf_tokenizer import hf_tokenizer  # noqa: E402
from tools.train.adapter import corpus  # noqa: E402


def training_chunks(tok, docs: int, need: int) -> list[list[int]]:
    out = []
    for d in corpus("train"):  # sha256(path) order
        ids = tok.encode(d["text"]).ids
        if len(ids) >= need:
            out.append(ids[:need])
            if len(out) == docs:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models/smollm2-135m-instruct"))
    ap.add_argument("--docs", type=int, default=96)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    gguf = pathlib.Path(args.model) / "model.gguf"
    gguf = gguf.resolve()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    downs = [layer.mlp.down_proj.weight for layer in model.model.layers]
    for w in downs:
        w.requires_grad_(True)
    tok = hf_tokenizer(str(gguf))
    chunks = training_chunks(tok, args.docs, args.context + args.chunk)
    if len(chunks) < args.docs:
        raise SystemExit(f"only {len(chunks)} training documents have {args.context + args.chunk} tokens")
    sq = [torch.zeros_like(w) for w in downs]
    t0 = time.time()
    for n, ids in enumerate(chunks):
        x = torch.tensor([ids])
        logits = model(x).logits[0, args.context:args.context + args.chunk - 1]
        loss = F.cross_entropy(logits, x[0, args.context + 1:args.context + args.chunk])
        grads = torch.autograd.grad(loss, downs)
        for s, g in zip(sq, grads):
            s.add_(g.square())
        if n % 16 == 15:
            print(f"{n + 1}/{len(chunks)} chunks, {time.time() - t0:.0f} s", flush=True)
    tensors, fit = {}, []
    for l, s in enumerate(sq):
        ms = s / len(chunks)
        rows, cols = ms.mean(1), ms.mean(0)
        tensors[f"layers.{l}.rows"] = rows.contiguous()
        tensors[f"layers.{l}.cols"] = cols.contiguous()
        est = rows[:, None] * cols[None, :] / rows.mean()
        a, b = ms.clamp_min(1e-30).log().flatten(), est.clamp_min(1e-30).log().flatten()
        fit.append(round(float(torch.corrcoef(torch.stack([a, b]))[0, 1]), 4))
    meta = {"model_sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(), "docs": str(len(chunks)),
            "context": str(args.context), "chunk": str(args.chunk), "log_ms_correlation": json.dumps(fit),
            "rule": "corpus training documents, sha256(path) order, first chunk after the context"}
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.model) / "ntp_stats.safetensors"
    save_file(tensors, str(out), metadata=meta)
    rms = [float(s.div(len(chunks)).sqrt().mean()) for s in sq]
    print(json.dumps({"out": str(out), "seconds": round(time.time() - t0), "log_ms_correlation": fit,
                      "mean_rms_per_layer": [f"{r:.3g}" for r in rms]}, indent=1))


if __name__ == "__main__":
    main()
