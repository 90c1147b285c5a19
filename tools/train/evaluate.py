"""Held-out NLL per position bucket, TTT on and off, for one or more checkpoints.

python -m tools.train.evaluate --model runs/ttt/model --model runs/base/model [--seq 512] [--device cuda]

Each held-out document (tools/corpus rule) with at least seq + 1 tokens contributes its first
seq + 1 tokens, fed from N = 0. For a TTT checkpoint the same weights are also scored with TTT
off (TTT layers keep W0). Prints a markdown table; --json writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

from tools.ttt_reference import model as ttt_model


def heldout_windows(corpus: pathlib.Path, seq: int, max_docs: int) -> torch.Tensor:
    ids = np.fromfile(corpus / "heldout.bin", dtype=np.uint16)
    index = json.loads((corpus / "heldout.idx.json").read_text())
    rows = [ids[s:s + seq + 1] for s, n in index if n >= seq + 1][:max_docs]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


@torch.no_grad()
def position_nll(model: ttt_model.TTTModel, windows: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """NLL [docs, seq] of every next-token prediction."""
    out = []
    device = next(model.parameters()).device
    for x in windows.split(batch):
        x = x.to(device)
        logits = model(x[:, :-1]).float()
        out.append(F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none"))
    return torch.cat(out).cpu()


def bucket_edges(seq: int) -> list[int]:
    edges, e = [0], 64
    while e < seq:
        edges.append(e)
        e *= 2
    return edges + [seq]


def summarize(nll: torch.Tensor, edges: list[int]) -> dict:
    per = {f"{a}-{b}": float(nll[:, a:b].mean()) for a, b in zip(edges, edges[1:])}
    return {"all": float(nll.mean()), "buckets": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--max-docs", type=int, default=1000)
    ap.add_argument("--json")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    windows = heldout_windows(pathlib.Path(args.corpus), args.seq, args.max_docs)
    edges = bucket_edges(args.seq)
    results = {}
    for path in args.model:
        model = ttt_model.load(path, torch.float32).to(args.device)
        results[f"{path} (TTT on)" if model.ttt_layers else path] = summarize(position_nll(model, windows), edges)
        if model.ttt_layers:
            model.set_ttt_enabled(False)
            results[f"{path} (TTT off)"] = summarize(position_nll(model, windows), edges)
    names = list(next(iter(results.values()))["buckets"])
    print(f"held-out NLL (nats/token), {windows.shape[0]} documents, first {args.seq} predictions each\n")
    print("| model | all | " + " | ".join(f"pos {b}" for b in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for name, r in results.items():
        print(f"| {name} | {r['all']:.4f} | " + " | ".join(f"{r['buckets'][b]:.4f}" for b in names) + " |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"docs": int(windows.shape[0]), "seq": args.seq,
                                                       "results": results}, indent=1))


if __name__ == "__main__":
    main()
