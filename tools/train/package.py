"""Copies a trained checkpoint into models/ in bf16 (HF format with tokenizer) and draws the
loss curve of the models it came from (pretraining, then the sweep's continuation).

python -m tools.train.package --model runs/sweep/c64_embed/model --out models/adaptd-tiny-ttt
python -m tools.train.package --plot models/loss.png --curve "TTT=runs/base,runs/sweep/c64_embed" ...
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil

import torch

from tools.ttt_reference import model as ttt_model


def package(src: pathlib.Path, out: pathlib.Path) -> None:
    model = ttt_model.load(str(src), torch.bfloat16)
    shutil.rmtree(out, ignore_errors=True)
    model.save(str(out))
    (out / "generation_config.json").unlink(missing_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, out / name)


def plot(path: pathlib.Path, curves: list[str]) -> None:
    """Each curve "label=run1,run2": loss.jsonl of consecutive runs, tokens accumulated."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for spec in curves:
        label, runs = spec.split("=", 1)
        xs, ys, offset = [], [], 0
        for run in runs.split(","):
            rows = [json.loads(line) for line in (pathlib.Path(run) / "loss.jsonl").read_text().splitlines()]
            window = 20  # running mean: single batches are noisy
            for i, r in enumerate(rows):
                xs.append((offset + r["tokens"]) / 1e6)
                ys.append(sum(x["loss"] for x in rows[max(0, i - window + 1):i + 1]) / min(i + 1, window))
            offset += rows[-1]["tokens"]
        ax.plot(xs, ys, lw=0.9, label=label)
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("loss (nats/token), mean of 20 steps")
    ax.set_ylim(top=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--out")
    ap.add_argument("--plot")
    ap.add_argument("--curve", action="append", default=[])
    args = ap.parse_args()
    if args.model:
        package(pathlib.Path(args.model), pathlib.Path(args.out))
    if args.plot:
        plot(pathlib.Path(args.plot), args.curve)


if __name__ == "__main__":
    main()
