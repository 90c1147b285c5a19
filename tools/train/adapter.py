"""Trains an In-Place TTT adapter over a frozen stock checkpoint (issue 20, variant a).

python -m tools.train.adapter --model models/smollm2-135m-instruct --minutes 40 --out runs/adapter
                              [--seq 1024] [--window 256] [--lr 1e-3] [--eval-docs 8] [--resume]

The base (the model directory's GGUF, dequantized to f32 by the `gguf` package through HF
transformers) stays frozen; only `ttt_conv` (zero at the start, as the official code does) and
`ttt_proj` (a random diagonal, std = initializer_range, as the official training code does: with
both zero no gradient would flow) of the TTT layers are trained. The TTT layers, chunk and ttt_lr
are those of the directory's ttt.json (which must name them), the ones `ntp_gradient` uses;
ttt_lr is fixed and the projection learns the step's scale.

The objective is the served one: attention sees a sliding window of `--window` tokens (256, the
window issue 20's benchmarks serve; the server drops whole turns, this drops tokens), so what a sequence's early chunks say reaches later tokens only through
the fast weights; the loss is the next-token loss of every position, with the update active
(the reference's parallel form: tokens of chunk k see W0 + eta * sum_{j<k} V_j^T Z_j).

Data (rules fixed before any result was seen): training documents of the corpus (tools/corpus;
never the held-out ones the benchmarks read) with at least `--seq` tokens, cut into consecutive
windows of `--seq` tokens, shuffled with seed 0. Evaluation: the first `--eval-docs` held-out
documents (sha256(path) order) with at least `--seq` tokens, their first `--seq` tokens: the NLL
of the tokens predicted from a window that has lost the start (tokens window+1 ..), TTT on and off
(the same weights: TTT off is the base exactly), before training and after.

--init starts from another run's kept adapter (its step 0 is then that adapter, not the
identity): a run fine-tuned under another --decay. The last --val training windows are kept out: every --eval-every steps the adapter's NLL beyond
the window on them is measured, and the best step is the one kept (step 0, the zero conv, changes
nothing: an adapter that never helps on validation is the identity).

Outputs under --out: train_state.pt (--resume), log.jsonl, and ttt_adapter.safetensors: per TTT
layer `model.layers.{l}.mlp.ttt_conv.weight` F32 [d, 1, 5] and `.ttt_proj.weight` F32 [d, d],
metadata naming the base's sha256 and the TTT config it was trained with (engine/README.md
"Adapters": the engine refuses it over another base or config).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import pathlib
import random
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tools.gguf_tokenizer import hf_tokenizer  # noqa: E402
from tools.ttt_reference import model as ttt_model  # noqa: E402
from tools.ttt_reference import ttt  # noqa: E402

ADAPTER_FORMAT = "adaptd-ttt-adapter-1"


def corpus(split: str) -> list[dict]:
    path = ROOT / f"data/corpus/{split}.jsonl"
    if not path.exists():
        import subprocess
        subprocess.run([sys.executable, str(ROOT / "tools/corpus/build_corpus.py")], check=True, cwd=ROOT)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows.sort(key=lambda d: hashlib.sha256(d["path"].encode()).hexdigest())
    return rows


def training_windows(tok, seq: int) -> list[list[int]]:
    out = []
    for d in corpus("train"):
        ids = tok.encode(d["text"]).ids
        out += [ids[i:i + seq] for i in range(0, len(ids) - seq + 1, seq)]
    random.Random(0).shuffle(out)
    return out


def eval_windows(tok, seq: int, docs: int) -> list[list[int]]:
    out = []
    for d in corpus("heldout"):
        ids = tok.encode(d["text"]).ids
        if len(ids) >= seq:
            out.append(ids[:seq])
            if len(out) == docs:
                break
    return out


def sliding_mask(n: int, window: int) -> torch.Tensor:
    """[1, 1, n, n] additive mask: position p attends to [p - window + 1, p]."""
    i = torch.arange(n)
    ok = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
    return torch.zeros(n, n).masked_fill(~ok, float("-inf"))[None, None]


def load(model_dir: pathlib.Path) -> tuple[ttt_model.TTTModel, pathlib.Path, dict]:
    from transformers import AutoModelForCausalLM
    gguf = (model_dir / "model.gguf").resolve()
    tttj = json.loads((model_dir / "ttt.json").read_text())
    missing = [k for k in ("ttt_layers", "ttt_chunk", "ttt_lr") if k not in tttj]
    if missing:
        raise SystemExit(f"{model_dir / 'ttt.json'} must name {missing}: the adapter learns the update it serves")
    cfg = ttt.TTTConfig(True, tuple(tttj["ttt_layers"]), bool(tttj.get("ttt_proj", True)), float(tttj["ttt_lr"]),
                        int(tttj["ttt_chunk"]), tttj.get("ttt_target", "hidden_states"))
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                              attn_implementation="eager")
    for p in hf.parameters():
        p.requires_grad_(False)
    model = ttt_model.TTTModel(hf, cfg)
    std = getattr(hf.config, "initializer_range", 0.02)
    torch.manual_seed(0)
    for i in model.ttt_layers:
        mlp = hf.model.layers[i].mlp
        with torch.no_grad():
            mlp.ttt_proj.weight.copy_(torch.diag(torch.randn(mlp.ttt_proj.weight.shape[0]) * std))
    return model, gguf, cfg.to_dict()


def adapter_params(model) -> dict[str, torch.nn.Parameter]:
    return {f"model.layers.{i}.mlp.{name}.weight": getattr(model.hf.model.layers[i].mlp, name).weight
            for i in model.ttt_layers for name in ("ttt_conv", "ttt_proj")}


def logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    model.ctx.session, model.ctx.learn = None, True
    model.ctx.embeds = model.hf.get_input_embeddings()(ids) if model.ttt_cfg.target == "input_embed" else None
    try:
        return model.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        model.ctx.embeds = None


@torch.no_grad()
def nll_beyond(model, windows: list[list[int]], window: int, ttt_on: bool = True) -> float:
    """Mean NLL of the tokens predicted from a window that has lost the start (tokens window+1..)."""
    model.eval()
    model.set_ttt_enabled(ttt_on)
    total = 0.0
    for w in windows:
        x = torch.tensor([w])
        lg = logits(model, x, sliding_mask(len(w), window))[0, window:-1]
        total += float(F.cross_entropy(lg, x[0, window + 1:]))
    model.set_ttt_enabled(True)
    return total / len(windows)


def evaluate(model, windows: list[list[int]], window: int) -> dict:
    """NLL beyond the window, TTT on and off, and the relative gain."""
    on, off = nll_beyond(model, windows, window), nll_beyond(model, windows, window, ttt_on=False)
    return {"nll_ttt_on": round(on, 5), "nll_ttt_off": round(off, 5), "gain": round(1 - on / off, 5)}


def save_adapter(model, path: pathlib.Path, gguf: pathlib.Path, ttt_cfg: dict, info: dict) -> None:
    from safetensors.torch import save_file
    tensors = {k: v.detach().float().contiguous() for k, v in adapter_params(model).items()}
    meta = {"format": ADAPTER_FORMAT, "base_sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(),
            "ttt": json.dumps(ttt_cfg, sort_keys=True), "training": json.dumps(info, sort_keys=True)}
    save_file(tensors, str(path), metadata=meta)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models/smollm2-135m-instruct"))
    ap.add_argument("--out", default=str(ROOT / "runs/adapter"))
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-5, help="AdamW's for ttt_conv")
    ap.add_argument("--proj-lr", type=float, default=0, help="AdamW's for ttt_proj (0: --lr)")
    ap.add_argument("--decay", type=float, default=0.0,
                    help="dW <- (1 - decay) dW before each chunk's update, as SessionOptions::decay serves it")
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--minutes", type=float, default=40)
    ap.add_argument("--val", type=int, default=4, help="training windows kept out for validation")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-docs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", default="", help="start from the kept adapter of another run's train_state.pt")
    ap.add_argument("--skip", type=int, default=0, help="training windows to pass over (those --init's run read)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, gguf, ttt_cfg = load(pathlib.Path(args.model))
    model.ctx.decay = args.decay
    tok = hf_tokenizer(str(gguf))
    train, held = training_windows(tok, args.seq), eval_windows(tok, args.seq, args.eval_docs)
    train, val = train[:-args.val], train[-args.val:]  # validation picks the kept step, never the held-out set
    train = train[args.skip:]
    params = adapter_params(model)
    for p in params.values():
        p.requires_grad_(True)
    groups = [{"params": [v for k, v in params.items() if "ttt_conv" in k], "base_lr": args.lr},
              {"params": [v for k, v in params.items() if "ttt_proj" in k], "base_lr": args.proj_lr or args.lr}]
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.0)
    step, log = 0, open(out / "log.jsonl", "a")

    def record(row: dict) -> None:
        print(json.dumps(row), flush=True)
        log.write(json.dumps(row) + "\n")
        log.flush()
    if args.init:
        for k, v in torch.load(args.init)["best"]["params"].items():
            params[k].data.copy_(v)
    val_off = nll_beyond(model, val, args.window, ttt_on=False)
    val_start = nll_beyond(model, val, args.window) if args.init else val_off
    best = {"step": 0, "val_nll": val_start, "params": {k: v.detach().clone() for k, v in params.items()}}
    if args.resume and (out / "train_state.pt").exists():
        state = torch.load(out / "train_state.pt")
        for k, v in state["params"].items():
            params[k].data.copy_(v)
        opt.load_state_dict(state["opt"])
        step, best = state["step"], state["best"]
    else:
        record({"eval": "before", **evaluate(model, held, args.window)})
    mask = sliding_mask(args.seq, args.window)
    n_params = sum(p.numel() for p in params.values())
    print(f"{len(train)} training windows of {args.seq}, {len(val)} validation, {len(held)} held-out, "
          f"{n_params} adapter parameters; validation NLL beyond the window, TTT off: {val_off:.4f}", flush=True)

    def save_state() -> None:
        torch.save({"params": {k: v.detach() for k, v in params.items()}, "opt": opt.state_dict(), "step": step,
                    "best": best}, out / "train_state.pt")
    t0, deadline = time.time(), time.time() + args.minutes * 60
    warm = 20
    while step < min(args.steps, len(train)) and time.time() < deadline:
        model.train()
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * min(1.0, (step + 1) / warm)
        x = torch.tensor([train[step]])
        lg = logits(model, x, mask)[0, :-1]
        loss = F.cross_entropy(lg, x[0, 1:])
        beyond = float(F.cross_entropy(lg[args.window:].detach(), x[0, args.window + 1:]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0))
        opt.step()
        step += 1
        row = {"step": step, "loss": round(float(loss), 4), "loss_beyond_window": round(beyond, 4),
               "grad_norm": round(gn, 4), "seconds": round(time.time() - t0, 1)}
        if step % args.eval_every == 0:
            v = nll_beyond(model, val, args.window)
            row["val_gain"] = round(1 - v / val_off, 5)
            if v < best["val_nll"]:
                best = {"step": step, "val_nll": v, "params": {k: p.detach().clone() for k, p in params.items()}}
            save_state()
        record(row)
    save_state()
    for k, v in best["params"].items():  # the validated best (step 0 is the adapter that changes nothing)
        params[k].data.copy_(v)
    after = evaluate(model, held, args.window)
    record({"eval": "after", "step": step, "kept_step": best["step"], **after})
    info = {"steps": step, "kept_step": best["step"], "tokens": best["step"] * args.seq, "seq": args.seq,
            "window": args.window, "decay": args.decay, "init": args.init, "skip": args.skip, "lr": args.lr, "proj_lr": args.proj_lr or args.lr, "eval_docs": len(held),
            "eval_after": after, "val_gain": round(1 - best["val_nll"] / val_off, 5), "device": "cpu",
            "seconds": round(time.time() - t0)}
    save_adapter(model, out / "ttt_adapter.safetensors", gguf, ttt_cfg, info)
    print(json.dumps({"out": str(out / "ttt_adapter.safetensors"), **info}), flush=True)


if __name__ == "__main__":
    main()
