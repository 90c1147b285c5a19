"""The default model's learning settings, chosen by measurement (not a test): SmolLM2-135M-Instruct
served by adaptd, `ntp_gradient` with each candidate (TTT layers, chunk, lr_scale, window),
scored on held-out text beyond the window, side by side in one run.

python bench/smollm2_sweep.py [--docs 4] [--turns 16] [--turn_tokens 64] [--dtype bf16]
                              [--out runs/bench/smollm2_sweep]

Documents (a rule fixed before any result was seen): the corpus's held-out documents
(adaptation_bench.documents: sha256 order) of more than turns x turn_tokens SmolLM2 tokens, the
ones at EVEN positions of that order; the odd positions are kept for evaluation (issue 20's
benchmarks), so the sweep never sees them. Each turn: Score (dry run) of a 64-token piece, then
Ingest of it with keep_in_context; NLL beyond the window = the mean over turns whose document
start has left the window. Every variant is compared with the frozen model (update rule off)
at the same window.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import adaptation_bench as ab  # noqa: E402
from tools.gguf_tokenizer import hf_tokenizer  # noqa: E402

MODEL = ROOT / "models/smollm2-135m-instruct"
EVERY_6TH = [0, 6, 12, 18, 24]
EVERY_3RD = list(range(0, 30, 3))
RMS = {"ttt_ntp_step": "rms"}

# (name, ttt.json, session options, window)
VARIANTS = [
    ("frozen, window 256", {"ttt_layers": EVERY_6TH, "ttt_chunk": 64}, {"update_rule": "off"}, 256),
    ("every 6th layer, C 64, lr 0.1", {"ttt_layers": EVERY_6TH, "ttt_chunk": 64, "ttt_lr": 0.1}, {}, 256),
    ("every 6th layer, C 64, lr 0.3", {"ttt_layers": EVERY_6TH, "ttt_chunk": 64, "ttt_lr": 0.3}, {}, 256),
    ("every 6th layer, C 64, lr 1", {"ttt_layers": EVERY_6TH, "ttt_chunk": 64, "ttt_lr": 1.0}, {}, 256),
    ("every 3rd layer, C 64, lr 0.3", {"ttt_layers": EVERY_3RD, "ttt_chunk": 64, "ttt_lr": 0.3}, {}, 256),
    ("every 6th layer, C 32, lr 0.3", {"ttt_layers": EVERY_6TH, "ttt_chunk": 32, "ttt_lr": 0.3}, {}, 256),
    ("every 6th layer, C 128, lr 0.3", {"ttt_layers": EVERY_6TH, "ttt_chunk": 128, "ttt_lr": 0.3}, {}, 256),
    ("frozen, window 512", {"ttt_layers": EVERY_6TH, "ttt_chunk": 64}, {"update_rule": "off"}, 512),
    ("every 6th layer, C 64, lr 0.3, window 512", {"ttt_layers": EVERY_6TH, "ttt_chunk": 64, "ttt_lr": 0.3}, {}, 512),
    # Added after the first run, whose best was every 3rd layer: every layer.
    ("every layer, C 64, lr 0.3", {"ttt_layers": list(range(30)), "ttt_chunk": 64, "ttt_lr": 0.3}, {}, 256),
    # Issue 20: the RMS-normalised step (ttt_ntp_step rms, ntp_stats.safetensors from training text).
    ("rms, every 3rd layer, C 64, lr 0.3", {"ttt_layers": EVERY_3RD, "ttt_chunk": 64, "ttt_lr": 0.3, **RMS}, {}, 256),
    ("rms, every 3rd layer, C 64, lr 1", {"ttt_layers": EVERY_3RD, "ttt_chunk": 64, "ttt_lr": 1.0, **RMS}, {}, 256),
    ("rms, every layer, C 64, lr 0.1", {"ttt_layers": list(range(30)), "ttt_chunk": 64, "ttt_lr": 0.1, **RMS}, {}, 256),
    ("rms, every layer, C 64, lr 0.3", {"ttt_layers": list(range(30)), "ttt_chunk": 64, "ttt_lr": 0.3, **RMS}, {}, 256),
    # Added after that run, whose best was every layer at the highest rate tried.
    ("rms, every layer, C 64, lr 0.6", {"ttt_layers": list(range(30)), "ttt_chunk": 64, "ttt_lr": 0.6, **RMS}, {}, 256),
    ("rms, every layer, C 64, lr 1", {"ttt_layers": list(range(30)), "ttt_chunk": 64, "ttt_lr": 1.0, **RMS}, {}, 256),
    ("rms, every 3rd layer, C 64, lr 3", {"ttt_layers": EVERY_3RD, "ttt_chunk": 64, "ttt_lr": 3.0, **RMS}, {}, 256),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--turns", type=int, default=16)
    ap.add_argument("--turn_tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--only", default="", help="comma-separated variant indices (default: all)")
    ap.add_argument("--out", default="runs/bench/smollm2_sweep")
    args = ap.parse_args()
    out, keys = ab.fresh_out(args.out)
    tok = hf_tokenizer(str(MODEL / "model.gguf"))
    ordered = ab.documents(2 * args.docs, args.turns * args.turn_tokens, tok)
    sweep_docs = ordered[0::2]  # the odd positions are for evaluation, never swept
    docs = [ab.pieces(t, o, args.turns, args.turn_tokens) for _, t, o in sweep_docs]
    chosen = [VARIANTS[int(i)] for i in args.only.split(",")] if args.only else VARIANTS
    results, seconds = {}, {}
    for k, (name, ttt, options, window) in enumerate(chosen):
        cfg = out / f"ttt{k}.json"
        cfg.write_text(json.dumps(ttt))
        server = ab.Server(str(MODEL), out / f"store{k}", keys, (f"--ttt_config={cfg}", f"--dtype={args.dtype}",
                                                                  "--system_prompt="))
        try:
            t0 = time.time()
            opts = dict(options)
            rule = opts.pop("update_rule", "ntp_gradient")
            results[name] = ab.run(server.target, f"v{k}", docs, window, rule=rule, options=opts)
            seconds[name] = time.time() - t0
        finally:
            server.stop()
        print(f"{name}: {seconds[name]:.0f} s", flush=True)

    print(f"\n{len(docs)} held-out documents x {args.turns} turns of {args.turn_tokens} tokens, {args.dtype}")
    print("| variant | NLL beyond the window | vs frozen (same window) | docs better | update ms/chunk |")
    print("|---|---|---|---|---|")
    summary = {}
    for k, (name, ttt, options, window) in enumerate(chosen):
        beyond = window // args.turn_tokens
        late = statistics.fmean(x for r in results[name] for x in r[beyond:])
        frozen_name = f"frozen, window {window}"
        frozen = results.get(frozen_name)
        rel, wins = "", ""
        if frozen is not None and name != frozen_name:
            f = statistics.fmean(x for r in frozen for x in r[beyond:])
            rel = f"{100 * (f - late) / f:+.2f}%"
            wins = f"{sum(statistics.fmean(b[beyond:]) < statistics.fmean(a[beyond:]) for a, b in zip(frozen, results[name]))}/{len(docs)}"
        sec = sum(v[0] for s, v in ab.COST.items() if s.startswith(f"v{k}-"))
        chunks = sum(v[1] for s, v in ab.COST.items() if s.startswith(f"v{k}-")) / len(ttt["ttt_layers"])
        cost = f"{1e3 * sec / chunks:.0f}" if chunks else "-"
        summary[name] = {"beyond_window": late, "vs_frozen": rel, "per_document": results[name]}
        print(f"| {name} | {late:.4f} | {rel} | {wins} | {cost} |")
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "summary": summary, "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
