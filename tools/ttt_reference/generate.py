"""Text in, text out with the reference: one TTT session, greedy or sampled decoding.

python -m tools.ttt_reference.generate --model models/adaptd-tiny-ttt --prompt "The kernel" \
    [--max-new 80] [--temperature 0.8] [--seed 0] [--numeric split|parity]

The prompt and every generated token are learned by the session (as the official decode does).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from tokenizers import Tokenizer

from . import model as ttt_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new", type=int, default=80)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--numeric", default="split", choices=("split", "parity"))
    args = ap.parse_args()
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    model = ttt_model.load(args.model, torch.float32)
    session = model.new_session(args.numeric)
    gen = torch.Generator().manual_seed(args.seed)
    ids = tok.encode(args.prompt).ids
    if not ids:
        raise SystemExit("empty prompt")
    sys.stdout.write(args.prompt)
    out: list[int] = []
    printed = ""
    with torch.no_grad():
        nxt = torch.tensor([ids])
        for _ in range(args.max_new):
            logits = model(nxt, session)[0, -1]
            if args.temperature > 0:
                probs = torch.softmax(logits / args.temperature, -1)
                token = int(torch.multinomial(probs, 1, generator=gen))
            else:
                token = int(logits.argmax())
            if token == eot:
                break
            out.append(token)
            text = tok.decode(out)
            if not text.endswith("\ufffd"):  # print whole UTF-8 characters only
                sys.stdout.write(text[len(printed):])
                sys.stdout.flush()
                printed = text
            nxt = torch.tensor([[token]])
    print(f"\n[{len(ids)} prompt + {len(out)} generated tokens, N = {session.n_learned}, "
          f"chunks completed = {session.n_learned // model.ttt_cfg.chunk if model.ttt_layers else 0}]")


if __name__ == "__main__":
    main()
