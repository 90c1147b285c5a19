"""Long documents on the default model (issue 20's first benchmark; not a test): SmolLM2-135M-
Instruct served by adaptd, held-out documents of at least 4k tokens fed as 64-token turns, NLL
beyond the window for each learning rule against the frozen model, side by side in one run.

python bench/long_doc_bench.py [--docs 4] [--turns 64] [--turn_tokens 64] [--dtype f32]
                               [--weights dense] [--adapter PATH] [--only 256] [--out runs/bench/long_doc]

Documents (a rule fixed here before any result was seen, disjoint from the sweep and from the
RMS statistics): adaptation_bench.documents' sha256 order of the corpus's held-out documents with
more than 16 x 64 SmolLM2 tokens (bench/smollm2_sweep.py's list, whose EVEN positions it sweeps);
of its ODD positions, the first `docs` with more than turns x turn_tokens tokens. The RMS
statistics (tools/train/ntp_stats.py) come from training documents only.

Each turn: Score (a dry run) of the next piece, then Ingest of it with keep_in_context. NLL
beyond the window: the mean over turns whose document start has left the window. Variants:
  frozen, window W          update rule off
  frozen, whole document    update rule off, the window holds every turn
  ntp sgd, window W         ntp_gradient as shipped before issue 20 (every 3rd layer, lr 0.3)
  ntp rms, window W         ntp_gradient with the RMS-normalised step (ttt.json as shipped)
  control                   ntp rms, session i learns document i and scores document i+1's
                            pieces; against "frozen control", the frozen model in the same seat
  the same at window 1024   frozen and ntp rms
Then ntp rms again with the server stopped half-way (every session evicted) and restarted: the
restored sessions must score what the uninterrupted ones did.
  in-place, window W        update rule inplace over the In-Place adapter (--adapter, default
                            the model directory's ttt_adapter.safetensors, else runs/adapter's),
                            served with the dW decay it was trained with;
                            its TTT-off twin is the frozen model exactly (the base is frozen:
                            GgufAdapterTest), so it is not run again
--only 256 runs the window-256 core alone (frozen, ntp rms, in-place): the quick version.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import adaptation_bench as ab  # noqa: E402
from tools.gguf_tokenizer import hf_tokenizer  # noqa: E402

MODEL = ROOT / "models/smollm2-135m-instruct"
SGD = {"ttt_layers": list(range(0, 30, 3)), "ttt_chunk": 64, "ttt_lr": 0.3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--turns", type=int, default=64)
    ap.add_argument("--turn_tokens", type=int, default=64)
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--weights", default="dense")
    ap.add_argument("--windows", default="256,1024", help="256 is the target; 1024 adds frozen and ntp rms there")
    ap.add_argument("--restart", type=int, default=1, help="0 skips the eviction and restore run")
    ap.add_argument("--adapter", default="", help="an In-Place adapter (ttt_adapter.safetensors); none: skipped")
    ap.add_argument("--only", default="", help="256: only frozen, ntp rms and in-place at window 256")
    ap.add_argument("--out", default="runs/bench/long_doc")
    args = ap.parse_args()
    out, keys = ab.fresh_out(args.out)
    tok = hf_tokenizer(str(MODEL / "model.gguf"))
    need = args.turns * args.turn_tokens
    ordered = ab.documents(10 ** 6, 16 * 64, tok)
    chosen = [d for d in ordered[1::2] if len(d[2]) > need][:args.docs]
    if len(chosen) < args.docs:
        raise SystemExit(f"only {len(chosen)} held-out documents qualify")
    docs = [ab.pieces(t, o, args.turns, args.turn_tokens) for _, t, o in chosen]
    shipped = json.loads((MODEL / "ttt.json").read_text())
    if shipped.get("ttt_ntp_step") != "rms":
        raise SystemExit("models/smollm2-135m-instruct/ttt.json does not use the rms step")
    full = need + 512
    flags = (f"--dtype={args.dtype}", f"--weights={args.weights}", "--system_prompt=", f"--max_context_tokens={full}")

    def serve(name: str, ttt: dict, model: pathlib.Path = MODEL, extra: tuple = ()) -> ab.Server:
        return ab.serve_with(model, out, keys, name, ttt, (*flags, *extra))

    stock, with_adapter = ab.adapter_dirs(MODEL, out, args.adapter)

    class Results(dict):
        def __setitem__(self, name, runs):  # printed as it goes: a long run keeps what it measured
            super().__setitem__(name, runs)
            skip = (256 if "256" in name or "whole" in name else 1024) // args.turn_tokens
            late = statistics.fmean(x for r in runs for x in r[skip:])
            print(f"{name}: NLL beyond the window {late:.4f} ({time.time() - t0:.0f} s)", flush=True)

    t0 = time.time()
    results = Results()
    sgd = None if args.only else serve("sgd", SGD, stock)
    rms = serve("rms", shipped, stock)
    inplace = serve("inplace", shipped, with_adapter, ab.adapter_flags(with_adapter)) if with_adapter else None
    restored = None
    try:
        windows = [256] if args.only else [int(w) for w in args.windows.split(",")]
        for window in windows:
            results[f"frozen, window {window}"] = ab.run(rms.target, f"f{window}", docs, window, rule="off")
            results[f"ntp rms, window {window}"] = ab.run(rms.target, f"r{window}", docs, window, rule="ntp_gradient")
            if inplace and window == 256:
                results["in-place, window 256"] = ab.run(inplace.target, "i256", docs, 256, rule="inplace")
            print(f"window {window}: {time.time() - t0:.0f} s", flush=True)
        if not args.only:
            results["frozen, whole document"] = ab.run(rms.target, "whole", docs, full, rule="off")
            results["ntp sgd, window 256"] = ab.run(sgd.target, "s256", docs, 256, rule="ntp_gradient")
            results["frozen control, window 256"] = ab.run(rms.target, "fc", docs, 256, rule="off", shift=1)
            results["ntp rms control, window 256"] = ab.run(rms.target, "rc", docs, 256, rule="ntp_gradient", shift=1)
            print(f"controls: {time.time() - t0:.0f} s", flush=True)
        if args.restart and not args.only:
            half = args.turns // 2
            first = ab.run(rms.target, "restart", docs, 256, rule="ntp_gradient", stop_after=half)
            rms.stop()
            rms.start()
            rest = ab.run(rms.target, "restart", docs, 256, rule="ntp_gradient", resume=True)
            restored = [f + r for f, r in zip(first, rest)]
    finally:
        seconds = time.time() - t0
        for server in (sgd, rms, inplace):
            if server:
                server.stop()

    def beyond(name: str, window: int) -> float:
        skip = window // args.turn_tokens
        return statistics.fmean(x for r in results[name] for x in r[skip:])

    def wins(a: str, b: str, window: int) -> str:
        skip = window // args.turn_tokens
        n = sum(statistics.fmean(rb[skip:]) < statistics.fmean(ra[skip:]) for ra, rb in zip(results[a], results[b]))
        return f"{n}/{len(docs)}"

    print(f"\n{len(docs)} held-out documents x {args.turns} turns of {args.turn_tokens} tokens, {args.dtype}, "
          f"weights {args.weights}; {seconds:.0f} s; shipped ttt.json {json.dumps(shipped)}")
    print("| variant | NLL beyond the window | ppl | vs frozen (same window) | docs better | update ms/chunk |")
    print("|---|---|---|---|---|---|")
    rows = [("frozen, window 256", None, 256), ("frozen, whole document", "frozen, window 256", 256),
            ("ntp sgd, window 256", "frozen, window 256", 256), ("ntp rms, window 256", "frozen, window 256", 256),
            ("in-place, window 256", "frozen, window 256", 256),
            ("frozen control, window 256", None, 256), ("ntp rms control, window 256", "frozen control, window 256", 256),
            ("frozen, window 1024", None, 1024), ("ntp rms, window 1024", "frozen, window 1024", 1024)]
    prefixes = {"ntp sgd, window 256": ("s256-", SGD), "ntp rms, window 256": ("r256-", shipped),
                "ntp rms control, window 256": ("rc-", shipped), "ntp rms, window 1024": ("r1024-", shipped),
                "in-place, window 256": ("i256-", shipped)}
    summary = {}
    for name, ref, window in rows:
        if name not in results:
            continue
        late = beyond(name, window)
        rel = f"{100 * (1 - math.exp(late - beyond(ref, window))):+.2f}% ppl" if ref else ""
        cost = "-"
        if name in prefixes:
            prefix, ttt = prefixes[name]
            sec = sum(v[0] for s, v in ab.COST.items() if s.startswith(prefix))
            chunks = sum(v[1] for s, v in ab.COST.items() if s.startswith(prefix)) / len(ttt["ttt_layers"])
            cost = f"{1e3 * sec / max(chunks, 1):.0f}"
        summary[name] = {"beyond_window": late, "per_document": results[name]}
        print(f"| {name} | {late:.4f} | {math.exp(late):.2f} | {rel} | "
              f"{wins(ref, name, window) if ref else ''} | {cost} |")
    diff = None
    if restored is not None:
        diff = max(abs(x - y) for rr, rb in zip(restored, results["ntp rms, window 256"]) for x, y in zip(rr, rb))
        print(f"\nevicted half-way, restored and continued: max |NLL difference| per turn vs uninterrupted = {diff:.2e}")
    adapter = (with_adapter / "ttt_adapter.safetensors").resolve() if with_adapter else None
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "adapter": str(adapter) if adapter else None,
                                                  "documents": [d[0] for d in chosen],
                                                  "summary": summary, "restore_max_diff": diff,
                                                  "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
