"""The default model on this CPU (not a test): SmolLM2-135M-Instruct (GGUF) in the engine, f32
against bf16 side by side in one run, against the machine's read bandwidth measured in the same
run, and its held-out NLL against HF transformers loading the same file.

python bench/real_model_bench.py [--rounds 3] [--threads 2] [--prompt 256] [--decode 64]

Each round, for each dtype: the read bandwidth (torch.sum over a 1 GiB f32 tensor on the same
threads, best of three), then adaptd-bench-engine: prefill of a `prompt`-token prompt and
batch-1 decode with TTT on (ntp_gradient, the served rule: an update per completed chunk) and
off, and 16 sessions with distinct dW decoding in one batched step vs one at a time. Medians
over rounds. Decode's share of the bandwidth: tokens/s x the bytes of weights a step reads
(every projection and the output matrix once, in the compute dtype) / bytes/s read.
NLL: the first `nll_tokens` tokens of a held-out corpus document (an odd position of
adaptation_bench.documents' order, never swept) in the engine (adaptd-generate --score_ids, f32
and bf16) and in HF transformers (from_pretrained(gguf_file=...), f32 eager).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import adaptation_bench as ab  # noqa: E402
from tools.gguf_tokenizer import hf_tokenizer  # noqa: E402

MODEL = ROOT / "models/smollm2-135m-instruct"


def read_bandwidth(threads: int) -> float:
    torch.set_num_threads(threads)
    x = torch.ones(1 << 28)  # 1 GiB of f32
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - t))
    return best


def engine(dtype: str, args) -> dict:
    out = subprocess.run([str(ROOT / "build/bin/adaptd-bench-engine"), f"--model={MODEL}", f"--dtype={dtype}",
                          "--ttt_rule=ntp_gradient", f"--threads={args.threads}", f"--prompt={args.prompt}",
                          f"--decode={args.decode}", "--repeats=1", "--sessions=16"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def engine_nll(ids: list[int], dtype: str) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(" ".join(map(str, ids)))
        f.flush()
        out = subprocess.run([str(ROOT / "build/bin/adaptd-generate"), f"--model={MODEL}", f"--dtype={dtype}",
                              f"--ids_file={f.name}", "--score_ids", "--threads=2"],
                             check=True, capture_output=True, text=True).stdout
    return float(re.search(r"^all\s+\d+\s+\S+\s+(\S+)", out, re.M).group(1))  # nll_off: the frozen model


@torch.no_grad()
def hf_nll(ids: list[int]) -> float:
    from transformers import AutoModelForCausalLM
    path = (MODEL / "model.gguf").resolve()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, torch_dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(x).logits[0].double(), dim=-1)
    return float(-logp[:-1].gather(1, x[0, 1:, None]).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--nll_tokens", type=int, default=1024)
    args = ap.parse_args()
    runs = {"f32": [], "bf16": []}
    for r in range(args.rounds):
        for dtype in runs:
            bw = read_bandwidth(args.threads)
            res = engine(dtype, args)
            res["read_bytes_per_second"] = bw
            runs[dtype].append(res)
            print(f"round {r} {dtype}: {json.dumps(res)}", flush=True)

    med = {d: {k: statistics.median(x[k] for x in v) for k in v[0]} for d, v in runs.items()}
    print(f"\nSmolLM2-135M-Instruct (GGUF Q4_1/Q8_0, dequantized), {args.threads} threads, prompt {args.prompt}, "
          f"decode {args.decode}, ntp_gradient in the layers of ttt.json (C = {med['f32']['chunk']:.0f}); "
          f"medians of {args.rounds} rounds")
    print("| | f32 | bf16 | bf16 / f32 |")
    print("|---|---|---|---|")
    rows = [("prefill tokens/s, TTT off", "prefill_tps_ttt_off"), ("prefill tokens/s, TTT on", "prefill_tps_ttt_on"),
            ("decode tokens/s, batch 1, TTT off", "decode_tps_ttt_off"), ("decode tokens/s, batch 1, TTT on", "decode_tps_ttt_on"),
            ("decode tokens/s, 16 sessions batched", "batched_decode_tps"),
            ("decode tokens/s, 16 sessions one at a time", "sequential_decode_tps"),
            ("GGUF load seconds", "load_seconds")]
    for label, key in rows:
        a, b = med["f32"][key], med["bf16"][key]
        print(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    for d in runs:
        m = med[d]
        frac = m["decode_tps_ttt_off"] * m["weight_bytes"] / m["read_bytes_per_second"]
        print(f"{d}: a decode step reads {m['weight_bytes'] / 1e6:.0f} MB of weights; batch-1 decode (TTT off) moves "
              f"{m['decode_tps_ttt_off'] * m['weight_bytes'] / 1e9:.1f} GB/s = {100 * frac:.0f}% of the "
              f"{m['read_bytes_per_second'] / 1e9:.1f} GB/s a 2-thread read of 1 GiB reaches")

    tok = hf_tokenizer(str(MODEL / "model.gguf"))
    doc = ab.documents(8, args.nll_tokens, tok)[1]  # an odd position: kept out of the sweep
    ids = tok.encode(doc[1]).ids[:args.nll_tokens]
    e32, e16, hf = engine_nll(ids, "f32"), engine_nll(ids, "bf16"), hf_nll(ids)
    print(f"\nheld-out NLL ({len(ids)} tokens of {doc[0]}): engine f32 {e32:.5f}, engine bf16 {e16:.5f}, "
          f"HF transformers f32 {hf:.5f}; |engine f32 - HF| = {abs(e32 - hf):.2e}")


if __name__ == "__main__":
    main()
