"""Adaptation benchmark (not a test): do sessions get better as they go? Per-turn NLL of held-out
documents fed as conversations through adaptd over gRPC, side by side in one run.

python bench/adaptation_bench.py [--docs 24] [--turns 16] [--turn_tokens 64] [--window 256]
                                 [--out runs/bench/adaptation] [--plot bench/adaptation.png]

Documents: the corpus's held-out set (tools/corpus rule: sha256(path) % 25 == 0; built by
tools/corpus/build_corpus.py if missing), each with at least turns x turn_tokens tokens, cut into
`turns` pieces of `turn_tokens` tokens (at the model tokenizer's offsets). Every turn: Score (a
dry run: the session's fast weights and its window, after the window rule) of the piece, then
Ingest with keep_in_context of it (learned; the window keeps what fits). A turn's NLL is the mean
over its piece's predictions after the first (Score predicts token i+1 from tokens <= i).

Variants, all with the same pieces:
  (a) baseline: models/adaptd-tiny-base (no TTT, same training tokens), window W
  (b) adaptd:   models/adaptd-tiny-ttt, update rule inplace, window W: fast weights carry what
                left the window
  (c) TTT off:  models/adaptd-tiny-ttt, update rule off, window W (ablation)
  (b') adaptd with the session option decay (dW shrinks before each update): a variant of (b)
  (d) full context: models/adaptd-tiny-base with the whole document in its window
  (e) ntp_gradient on models/adaptd-tiny-ttt, window W: one gradient step of each chunk's
      next-token loss instead of the trained In-Place update
  (f) ntp_gradient on the baseline (a stock checkpoint: no TTT modules), window W
Then (b) again with the server stopped half-way (every session evicted) and restarted: the
continued sessions, restored from their snapshots, must score what the uninterrupted ones did.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "clients/python"), str(ROOT / "build/python")]
from adaptd_client import Client  # noqa: E402
from tools import adaptd_process  # noqa: E402

KEY = "bench-key"


class Server:
    def __init__(self, model: str, store: pathlib.Path, keys: pathlib.Path, extra: tuple[str, ...] = ()):
        self.model, self.store, self.keys, self.extra = model, store, keys, list(extra)
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc, ports = adaptd_process.start(
            ROOT / "build/bin/adaptd", [f"--model={ROOT / 'models' / self.model}", f"--store={self.store}",
                                        f"--api_keys={self.keys}", "--listen=127.0.0.1:0", "--metrics_listen=",
                                        "--max_context_tokens=4096", *self.extra], self.store.with_suffix(".log"))
        self.target = f"127.0.0.1:{ports['serving']}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0


def serve_with(model: pathlib.Path, out: pathlib.Path, keys: pathlib.Path, name: str, ttt: dict,
               flags: tuple[str, ...]) -> Server:
    """A server of `model` with the TTT settings `ttt` (written to out/<name>.json) and `flags`."""
    cfg = out / f"{name}.json"
    cfg.write_text(json.dumps(ttt))
    return Server(str(model), out / f"store-{name}", keys, (f"--ttt_config={cfg}", *flags))


def adapter_dirs(model: pathlib.Path, out: pathlib.Path, adapter: str = "") -> tuple[pathlib.Path, pathlib.Path | None]:
    """`model` (a GGUF directory) laid out under `out` twice: as stock-model/ without an In-Place
    adapter (the baselines'), and as adapter-model/ with one beside it: `adapter`, else the
    model's own ttt_adapter.safetensors, else runs/adapter's (tools/train/adapter.py); None when
    there is none."""
    found = next((pathlib.Path(p) for p in (adapter, model / "ttt_adapter.safetensors",
                                            ROOT / "runs/adapter/ttt_adapter.safetensors")
                  if p and pathlib.Path(p).exists()), None)
    dirs = {"stock-model": None, "adapter-model": found} if found else {"stock-model": None}
    for name, extra in dirs.items():
        d = out / name
        d.mkdir(exist_ok=True)
        for f in ("model.gguf", "ntp_stats.safetensors"):
            (d / f).symlink_to((model / f).resolve())
        if extra is not None:
            (d / "ttt_adapter.safetensors").symlink_to(extra.resolve())
    return out / "stock-model", (out / "adapter-model") if found else None


def adapter_flags(model_dir: pathlib.Path) -> tuple[str, ...]:
    """The server flags that serve the adapter of `model_dir` as it was trained: its sessions'
    dW decay (tools/train/adapter.py --decay, in the adapter's metadata)."""
    from safetensors import safe_open
    with safe_open(str(model_dir / "ttt_adapter.safetensors"), "pt") as f:
        decay = json.loads(f.metadata().get("training", "{}")).get("decay", 0)
    return (f"--session_defaults=decay: {decay}",) if decay else ()


def documents(n: int, tokens: int, tok=None):
    """The first `n` held-out documents of more than `tokens` tokens (by `tok`, default the tiny
    models' tokenizer), in a fixed content-free order: (path, text, token offsets)."""
    corpus = ROOT / "data/corpus/heldout.jsonl"
    if not corpus.exists():
        subprocess.run([sys.executable, str(ROOT / "tools/corpus/build_corpus.py")], check=True, cwd=ROOT)
    if tok is None:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(ROOT / "models/adaptd-tiny-ttt/tokenizer.json"))
    docs = []
    for line in corpus.read_text().splitlines():
        d = json.loads(line)
        enc = tok.encode(d["text"])
        if len(enc.ids) > tokens:
            docs.append((d["path"], d["text"], enc.offsets))
    docs.sort(key=lambda d: hashlib.sha256(d[0].encode()).hexdigest())  # a fixed, content-free order
    return docs[:n]


def pieces(text: str, offsets, turns: int, turn_tokens: int) -> list[str]:
    cuts = [offsets[k * turn_tokens][0] for k in range(turns + 1)]
    return [text[cuts[k]:cuts[k + 1]] for k in range(turns)]


def fresh_out(path: str) -> tuple[pathlib.Path, pathlib.Path]:
    """An empty output folder under the project, and a key file there for the bench tenant."""
    out = ROOT / path
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    keys = out / "keys.txt"
    keys.write_text(f"bench {hashlib.sha256(KEY.encode()).hexdigest()}\n")
    return out, keys


COST: dict[str, list[float]] = {}  # session -> [update seconds, chunk updates] of its ingests


def converse(target: str, session: str, turns: list[str], window: int, rule: str = "",
             stop_after: int | None = None, resume: bool = False, options: dict | None = None,
             scored: list[str] | None = None) -> list[float]:
    """Scores then ingests each piece; returns the per-turn NLLs. With `scored`, turn k scores
    scored[k] instead (a control: another document's piece, after this one's turns)."""
    with Client(target, KEY) as c:
        if not resume:
            c.create_session(session, update_rule=rule, max_context_tokens=window, **(options or {}))
        start = c.get_session(session).version if resume else 0
        nll = []
        for k, piece in enumerate(turns[start:stop_after], start=start):
            nll.append(c.score(session, (scored or turns)[k]).nll)
            usage = c.ingest(session, piece, keep_in_context=True, request_id=f"turn-{k}")
            cost = COST.setdefault(session, [0.0, 0])
            cost[0] += usage.update_seconds
            cost[1] += usage.updates_applied
        return nll


def run(target: str, name: str, docs, window: int, shift: int = 0, **kw) -> list[list[float]]:
    """Every document as a session; with `shift`, session i scores document i + shift's pieces."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(converse, target, f"{name}-{i}", p, window,
                               scored=docs[(i + shift) % len(docs)] if shift else None, **kw)
                   for i, p in enumerate(docs)]
        return [f.result() for f in futures]


def mean_per_turn(runs: list[list[float]]) -> list[float]:
    return [statistics.fmean(r[k] for r in runs) for k in range(len(runs[0]))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=24)
    ap.add_argument("--turns", type=int, default=16)
    ap.add_argument("--turn_tokens", type=int, default=64)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--decay", type=float, default=0.1, help="the decay of variant (b')")
    ap.add_argument("--ntp_lr_scale", type=float, default=0.3, help="lr_scale of variants (e) and (f)")
    ap.add_argument("--out", default="runs/bench/adaptation")
    ap.add_argument("--plot", default="bench/adaptation.png")
    args = ap.parse_args()
    out, keys = fresh_out(args.out)
    docs = [pieces(t, o, args.turns, args.turn_tokens)
            for _, t, o in documents(args.docs, args.turns * args.turn_tokens)]
    full = args.turns * args.turn_tokens * 2  # the whole document, with room to spare
    ttt, base = Server("adaptd-tiny-ttt", out / "ttt", keys), Server("adaptd-tiny-base", out / "base", keys)
    try:
        t0 = time.time()
        results = {
            "(a) baseline, window": run(base.target, "a", docs, args.window),
            "(b) adaptd (TTT), window": run(ttt.target, "b", docs, args.window),
            "(c) TTT off, window": run(ttt.target, "c", docs, args.window, rule="off"),
            f"(b') adaptd, decay {args.decay}": run(ttt.target, "e", docs, args.window, options={"decay": args.decay}),
            "(d) baseline, full context": run(base.target, "d", docs, full),
            "(e) ntp_gradient on the TTT model, window": run(ttt.target, "n", docs, args.window, rule="ntp_gradient",
                                                             options={"lr_scale": args.ntp_lr_scale}),
            "(f) ntp_gradient on the baseline, window": run(base.target, "f", docs, args.window, rule="ntp_gradient",
                                                            options={"lr_scale": args.ntp_lr_scale}),
        }
        # (b) with every session evicted half-way: stop the server, restart it, continue.
        half = args.turns // 2
        first = run(ttt.target, "r", docs, args.window, stop_after=half)
        ttt.stop()
        ttt.start()
        rest = run(ttt.target, "r", docs, args.window, resume=True)
        restored = [f + r for f, r in zip(first, rest)]
        seconds = time.time() - t0
    finally:
        ttt.stop()
        base.stop()

    beyond = args.window // args.turn_tokens  # turns from here on: their document's start left the window
    cfg = {name: json.loads((ROOT / "models" / name / "config.json").read_text())
           for name in ("adaptd-tiny-ttt", "adaptd-tiny-base")}
    ttt_cfg = cfg["adaptd-tiny-ttt"]
    print(f"{len(docs)} held-out documents x {args.turns} turns of {args.turn_tokens} tokens; window "
          f"{args.window} tokens; TTT chunk C = {ttt_cfg['ttt_chunk']} (layers {ttt_cfg['ttt_layers']}); "
          f"{seconds:.0f} s")
    print(f"mean NLL (nats/token) per turn, averaged over documents; turns >= {beyond} are beyond the window\n")
    means = {k: mean_per_turn(v) for k, v in results.items()}
    print("| variant | turns 0-%d | turns %d-%d | all |" % (beyond - 1, beyond, args.turns - 1))
    print("|---|---|---|---|")
    summary = {}
    for k, m in means.items():
        early, late = statistics.fmean(m[:beyond]), statistics.fmean(m[beyond:])
        summary[k] = {"early": early, "beyond_window": late, "all": statistics.fmean(m), "per_turn": m}
        print(f"| {k} | {early:.4f} | {late:.4f} | {statistics.fmean(m):.4f} |")
    a = summary["(a) baseline, window"]["beyond_window"]
    c = summary["(c) TTT off, window"]["beyond_window"]
    print()
    for name in ("(b) adaptd (TTT), window", f"(b') adaptd, decay {args.decay}",
                 "(e) ntp_gradient on the TTT model, window", "(f) ntp_gradient on the baseline, window"):
        b = summary[name]["beyond_window"]
        wins = sum(1 for ra, rb in zip(results["(a) baseline, window"], results[name])
                   if statistics.fmean(rb[beyond:]) < statistics.fmean(ra[beyond:]))
        print(f"beyond the window, {name}: {100 * (a - b) / a:+.2f}% lower NLL than the baseline (target 10%), "
              f"{100 * (c - b) / c:+.2f}% than TTT off; better on {wins}/{len(docs)} documents")
    for name, prefix, model in (("(b) inplace", "b-", "adaptd-tiny-ttt"), ("(e) ntp_gradient, TTT model", "n-", "adaptd-tiny-ttt"),
                                ("(f) ntp_gradient, baseline", "f-", "adaptd-tiny-base")):
        sec = sum(v[0] for k, v in COST.items() if k.startswith(prefix))
        layers = len(cfg[model]["ttt_layers"])  # a chunk counts one update per layer
        chunks = sum(v[1] for k, v in COST.items() if k.startswith(prefix)) / layers
        print(f"update cost, {name}: {1e3 * sec / max(chunks, 1):.2f} ms per chunk ({chunks:.0f} chunks)")
    diff = max(abs(x - y) for rr, rb in zip(restored, results["(b) adaptd (TTT), window"]) for x, y in zip(rr, rb))
    print(f"evicted half-way, restored and continued: max |NLL difference| per turn vs uninterrupted = {diff:.2e}")
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "summary": summary, "restore_max_diff": diff,
                                                  "update_cost": COST,
                                                  "per_document": results}, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for k, m in means.items():
        left.plot(range(args.turns), m, marker="o", ms=3, label=k)
    left.axvline(beyond - 0.5, color="grey", ls=":", lw=1)
    left.set(xlabel=f"turn ({args.turn_tokens} tokens each)", ylabel="NLL, nats/token",
             title=f"mean of {len(docs)} held-out documents, window {args.window}")
    left.legend(fontsize=8)
    base_w, ttt_w = results["(a) baseline, window"], results["(b) adaptd (TTT), window"]
    for ra, rb in zip(base_w, ttt_w):
        right.plot(range(args.turns), [x - y for x, y in zip(ra, rb)], color="tab:blue", alpha=0.3, lw=1)
    right.plot(range(args.turns), [x - y for x, y in zip(means["(a) baseline, window"],
                                                         means["(b) adaptd (TTT), window"])], color="black", lw=2,
               label="(b) mean")
    for name, color, label in ((f"(b') adaptd, decay {args.decay}", "tab:red", f"(b') decay {args.decay}, mean"),
                               ("(e) ntp_gradient on the TTT model, window", "tab:brown", "(e) ntp_gradient, mean"),
                               ("(f) ntp_gradient on the baseline, window", "tab:pink", "(f) ntp_gradient on the baseline, mean")):
        right.plot(range(args.turns), [x - y for x, y in zip(means["(a) baseline, window"], means[name])],
                   color=color, lw=2, label=label)
    right.legend(fontsize=8)
    right.axhline(0, color="grey", lw=1)
    right.axvline(beyond - 0.5, color="grey", ls=":", lw=1)
    right.set(xlabel="turn", ylabel="NLL(baseline) - NLL(adaptd)", title="gain over the baseline: (b) per document (thin)")
    fig.tight_layout()
    fig.savefig(ROOT / args.plot, dpi=90)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
