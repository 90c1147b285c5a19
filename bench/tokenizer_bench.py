"""Tokenizer benchmark (not a test): single-thread encode throughput of adaptd's C++ tokenizer vs
HF `tokenizers`, the same tokenizer.json files and text, ratios in one run.

python bench/tokenizer_bench.py [--rounds 3] [--out runs/bench/tokenizer]

Trains the five tokenizer.json layouts of the tokenizer oracle (tests/engine/tokenizer_oracle.py)
on its ~2 MB corpus (prose and code, synthetic multilingual text, every assigned code point),
then for each layout alternates timed passes of adaptd-bench-tokenizer and of HF's fastest path
(encode_batch_fast, which skips offsets, with TOKENIZERS_PARALLELISM=false: one thread, no
per-call Python overhead), and prints MB/s and the ratio adaptd / HF (target >= 1.0). Both sides are warm: their word caches filled by a first
untimed pass.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests/engine"))
import tokenizer_oracle  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "runs/bench/tokenizer"))
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    docs, _ = tokenizer_oracle.corpus()
    out.mkdir(parents=True, exist_ok=True)
    (out / "docs.json").write_text(json.dumps(docs))
    mb = sum(len(d.encode()) for d in docs) / 1e6
    print(f"corpus: {len(docs)} docs, {mb:.2f} MB")
    print(f"{'layout':8} {'adaptd MB/s':>12} {'HF MB/s':>9} {'adaptd/HF':>10}")
    bench = ROOT / "build/bin/adaptd-bench-tokenizer"
    for name, tok in tokenizer_oracle.layouts(docs[::2]).items():
        path = out / name / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(path))
        tok.encode_special_tokens = True
        tok.encode_batch_fast(docs, add_special_tokens=False)  # warm
        ours, hf = [], []
        for _ in range(args.rounds):
            r = subprocess.run([str(bench), f"--tokenizer={path}", f"--docs={out / 'docs.json'}", "--rounds=2"],
                               check=True, capture_output=True, text=True)
            ours.append(json.loads(r.stdout)["seconds"][-1])  # the warm pass
            start = time.perf_counter()
            tok.encode_batch_fast(docs, add_special_tokens=False)
            hf.append(time.perf_counter() - start)
        a, h = mb / statistics.median(ours), mb / statistics.median(hf)
        print(f"{name:8} {a:12.2f} {h:9.2f} {a / h:10.2f}")


if __name__ == "__main__":
    main()
