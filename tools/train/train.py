"""Pretrains a small Qwen3-architecture model, with In-Place TTT or without, on the corpus.

python -m tools.train.train --out runs/ttt --minutes 20 [--no-ttt] [--chunk 64] ...

Uses the reference modules (tools/ttt_reference), so training runs the exact TTT forward the
engine serves (the parallel form: every row of the batch starts at N = 0). AdamW, linear warm-up
then cosine decay, gradient clipping 1.0, bf16 autocast on CUDA. The run stops at --steps or
after --minutes, whichever comes first (the schedule follows the one spent first), and always
writes its checkpoint.
Outputs under --out: train_state.pt (resume with --resume), loss.jsonl, loss.png, model/ (HF
format with tokenizer).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Qwen3Config

from tools.ttt_reference import model as ttt_model


def model_config(args, vocab: int) -> Qwen3Config:
    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=args.d, intermediate_size=args.ffn,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, head_dim=args.d // args.heads,
        max_position_embeddings=args.max_positions, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=0, pad_token_id=0,
        ttt_mode=not args.no_ttt, ttt_layers=args.ttt_layers, ttt_chunk=args.chunk,
        ttt_lr=args.ttt_lr, ttt_proj=True, ttt_target=args.target)
    cfg.architectures = ["Qwen3ForCausalLM"]
    return cfg


def lr_at(step: int, seconds: float, args) -> float:
    """Linear warm-up, then cosine to 10 % along whichever budget, --steps or --minutes, is
    spent first (so a run stopped by the clock still ends its schedule)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, max((step - args.warmup) / max(1, args.steps - args.warmup), seconds / (args.minutes * 60)))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batches(tokens: np.ndarray, args, rng: np.random.Generator):
    """Random windows of seq + 1 tokens (inputs and shifted labels)."""
    while True:
        starts = rng.integers(0, tokens.size - args.seq - 1, size=args.batch)
        x = np.stack([tokens[s:s + args.seq + 1] for s in starts]).astype(np.int64)
        yield torch.from_numpy(x)


def save_loss_png(log: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["tokens"] / 1e6 for r in log], [r["loss"] for r in log], lw=0.8)
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-ttt", action="store_true")
    ap.add_argument("--d", type=int, default=192)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--max-positions", type=int, default=4096)
    ap.add_argument("--ttt-layers", type=lambda s: [int(i) for i in s.split(",")], default=[1, 3])
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--ttt-lr", type=float, default=1.0)
    ap.add_argument("--target", default="hidden_states", choices=("hidden_states", "input_embed"))
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=1e9)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-dtype", default="bfloat16", choices=("float32", "bfloat16"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", help="start from this checkpoint (continual training; a no-TTT "
                    "checkpoint becomes a TTT model whose conv starts at zero: same outputs at step 0)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = pathlib.Path(args.corpus)
    tokens = np.fromfile(corpus / "train.bin", dtype=np.uint16)
    vocab = json.loads((corpus / "manifest.json").read_text())["vocab_size"]
    device = "cuda" if torch.cuda.is_available() else "cpu"

    model = ttt_model.from_config(model_config(args, vocab), seed=args.seed)
    if args.init:
        init_weights(model, args.init)
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    step, log, rng = 0, [], np.random.default_rng(args.seed)
    if args.resume and (out / "train_state.pt").exists():
        state = torch.load(out / "train_state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, log, rng = state["step"], state["log"], state["rng"]
    params = sum(p.numel() for p in model.parameters())
    print(f"params {params / 1e6:.2f}M, device {device}, ttt layers {model.ttt_layers}", flush=True)

    t0, data = time.time(), batches(tokens, args, rng)
    while step < args.steps and (time.time() - t0) < args.minutes * 60:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, time.time() - t0, args)
        x = next(data).to(device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        log.append({"step": step, "tokens": step * args.batch * args.seq, "loss": loss.item(),
                    "seconds": time.time() - t0})
        if step % 50 == 0:
            print(json.dumps(log[-1]), flush=True)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "log": log,
                "rng": rng, "args": vars(args)}, out / "train_state.pt")
    (out / "loss.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    save_loss_png(log, out / "loss.png", f"{'no-TTT' if args.no_ttt else 'In-Place TTT'} training loss")
    export(model, out / "model", corpus, getattr(torch, args.save_dtype))
    print(f"done: step {step}, last loss {log[-1]['loss']:.4f}, {time.time() - t0:.0f}s", flush=True)


def init_weights(model: ttt_model.TTTModel, path: str) -> None:
    """Copies a checkpoint's weights; only the TTT modules may be missing from it."""
    src = ttt_model.load(path, torch.float32).hf.state_dict()
    missing, unexpected = model.hf.load_state_dict(src, strict=False)
    missing = [k for k in missing if ".ttt_" not in k and k != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(f"--init {path}: architecture differs: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.hf.tie_weights()


def export(model: ttt_model.TTTModel, path: pathlib.Path, corpus: pathlib.Path, dtype) -> None:
    """HF checkpoint (shards <= 15 MB) plus the corpus tokenizer."""
    model.to("cpu", dtype).save(str(path))
    shutil.copy(corpus / "tokenizer.json", path / "tokenizer.json")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "model_max_length": model.config.max_position_embeddings,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}, indent=1))
    model.to(torch.float32)


if __name__ == "__main__":
    main()
