"""Writes reference logits and every TTT layer's W after a token sequence (format: README.md).

python -m tools.ttt_reference.dump --model DIR --ids 1,2,3,... --out ref.safetensors \
    [--pieces 5,3,...] [--numeric split|parity] [--dtype float32|bfloat16] [--clip-tau X]
"""
from __future__ import annotations

import argparse
import json

import torch
from safetensors.torch import save_file

from . import model as ttt_model

FORMAT = "adaptd-ttt-reference-v1"


def run(model: ttt_model.TTTModel, ids: list[int], pieces: list[int], numeric: str,
        clip_tau: float | None) -> dict[str, torch.Tensor]:
    """Feeds ids to a new session in pieces; returns the tensors of the dump file."""
    session = model.new_session(numeric, clip_tau)
    logits, pos = [], 0
    with torch.no_grad():
        for m in pieces:
            logits.append(model(torch.tensor([ids[pos:pos + m]]), session)[0])
            pos += m
    out = {"logits": torch.cat(logits).float().contiguous()}
    for layer, st in session.layers.items():
        out[f"layers.{layer}.weight"] = st.weight().contiguous()
        if st.tail_x is not None:
            out[f"layers.{layer}.tail_x"] = st.tail_x.float().contiguous()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--pieces", help="comma-separated piece lengths (default: all at once)")
    ap.add_argument("--numeric", default="split", choices=("split", "parity"))
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--clip-tau", type=float)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ids = [int(i) for i in args.ids.split(",")]
    pieces = [int(p) for p in args.pieces.split(",")] if args.pieces else [len(ids)]
    if sum(pieces) != len(ids) or min(pieces) < 1:
        raise SystemExit("--pieces must be positive and sum to the number of ids")
    model = ttt_model.load(args.model, getattr(torch, args.dtype) if args.dtype else None)
    tensors = run(model, ids, pieces, args.numeric, args.clip_tau)
    meta = {"format": FORMAT, "ids": json.dumps(ids), "pieces": json.dumps(pieces),
            "numeric": args.numeric, "n_learned": str(len(ids)),
            "chunk": str(model.ttt_cfg.chunk), "ttt_layers": json.dumps(model.ttt_layers)}
    save_file(tensors, args.out, metadata=meta)


if __name__ == "__main__":
    main()
