"""LibTorch's weight-only kernels at batch 1 against this machine's read bandwidth (not a test):
the ceiling of a quantized decode step, measured side by side in one run.

python bench/quant_kernels.py [--threads 2]

Each kernel multiplies one bf16 row by 24 distinct [11264, 2048] weights in turn (TinyLlama's
fused gate/up: 24 x 14-46 MB, so every product streams its weight from memory, as a decode step
does), three passes, bytes of codes and scales over time; next to the best of three 2-thread
reads of a 1 GiB f32 tensor (torch.sum) and a dense f32 product of the same shape (W X^T with two
columns, the engine's form for a few rows).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from real_model_bench import read_bandwidth  # noqa: E402

N, K, LAYERS = 11264, 2048, 24


def stream(weights, product) -> float:
    product(*weights[0])
    t = time.perf_counter()
    for _ in range(3):
        for w in weights:
            product(*w)
    seconds = (time.perf_counter() - t) / 3 / len(weights)
    return sum(t.nbytes for t in weights[0]) / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(1, K).bfloat16()
    rows = []
    for g in (32, 64):
        ws = [(torch._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (N, K), dtype=torch.int32), 2),
               torch.rand(K // g, N, 2).bfloat16()) for _ in range(LAYERS)]
        rate = stream(ws, lambda p, s, g=g: torch._weight_int4pack_mm_for_cpu(x, p, g, s))
        rows.append((f"int4-g{g} (_weight_int4pack_mm_for_cpu)", rate, read_bandwidth(args.threads)))
        del ws
    ws = [(torch.randint(-127, 127, (N, K), dtype=torch.int8), torch.rand(N).bfloat16()) for _ in range(LAYERS // 2)]
    rate = stream(ws, lambda q, s: torch._weight_int8pack_mm(x, q, s))
    rows.append(("int8 (_weight_int8pack_mm)", rate, read_bandwidth(args.threads)))
    del ws
    xf = torch.randn(2, K)
    ws = [(torch.randn(N // 2, K),) for _ in range(LAYERS // 4)]
    rate = stream(ws, lambda w: torch.mm(w, xf.t()))
    rows.append(("f32 dense (mm, W X^T)", rate, read_bandwidth(args.threads)))
    print(f"batch-1 products streaming distinct [{N}, {K}] weights, {args.threads} threads")
    print("| kernel | GB/s | read bandwidth GB/s (just after) | share |")
    print("|---|---|---|---|")
    for name, rate, bw in rows:
        print(f"| {name} | {rate / 1e9:.1f} | {bw / 1e9:.1f} | {100 * rate / bw:.0f}% |")


if __name__ == "__main__":
    main()
