"""Why the engine multiplies a few rows as W X^T (not a test): both forms side by side.

python bench/small_rows.py [--threads 2] [--rounds 7]

For the weights of bench/engine_bench.py's models (per layer q/k/v stacked, o, gate/up stacked,
down; 6 layers; the tied lm_head), f32, it times one pass over every weight for n rows in two
ways and prints the ratio:
  x W^T  at::linear, what transformers does;
  W X^T  what engine/src/forward.cc's Linear does for n <= 16 once a model's weights outgrow
         the cache, as these do (one row doubled to two).
On the wheel's MKL the first form of one row is a GEMV and of a few rows a slow GEMM shape; the
second streams W at memory speed. (Weights that stay in the cache favour the first.)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

D, FF, V, KV = 512, 1408, 8192, 128


def weights() -> list[torch.Tensor]:
    shapes = []
    for _ in range(6):
        shapes += [(D + 2 * KV, D), (D, D), (2 * FF, D), (D, FF)]
    shapes.append((V, D))
    return [torch.randn(*s) for s in shapes]


def w_xt(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if x.size(0) == 1:
        return torch.mm(w, x.repeat(2, 1).t()).narrow(1, 0, 1).t()
    return torch.mm(w, x.t()).t()


def timed(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ws = weights()
    for rows in (1, 3):  # the same product
        x = torch.randn(rows, D)
        assert torch.allclose(w_xt(x, ws[0]), F.linear(x, ws[0]), rtol=1e-4, atol=1e-4)
    print(f"threads {args.threads}, f32, one pass over {sum(w.numel() for w in ws) / 1e6:.1f}M weights, "
          f"medians of {args.rounds} rounds\n")
    print("| rows | x W^T ms | W X^T ms | speed-up |\n|---|---|---|---|")
    for rows in (1, 2, 4, 8, 16, 32, 64, 128, 512):
        xs = {D: torch.randn(rows, D), FF: torch.randn(rows, FF)}
        a, b = [], []
        for _ in range(args.rounds):  # interleaved, so drift hits both
            a.append(timed(lambda: [F.linear(xs[w.size(1)], w) for w in ws], 10))
            b.append(timed(lambda: [w_xt(xs[w.size(1)], w) for w in ws], 10))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| {rows} | {ma:.2f} | {mb:.2f} | {ma / mb:.2f} |")


if __name__ == "__main__":
    main()
