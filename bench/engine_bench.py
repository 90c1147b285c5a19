"""Engine benchmark (not a test): adaptd-bench-engine next to HF transformers, ratios in one run.

python bench/engine_bench.py [--threads 2] [--prompt 512] [--decode 64] [--rounds 2]

Makes (once) two ~22M-parameter random Qwen3-shaped In-Place TTT models under runs/bench/ (6
layers; TTT in layer 0 only, the official configuration's density of one layer in six, and in
layers 1, 3, 5; C = 128, so a 512-token prompt completes 4 chunks), then for each alternates
rounds of the C++ engine benchmark and of HF transformers eager (the project's reference TTT patch
on the same checkpoint, same thread count), and prints medians and ratios:
  TTT on / off, prefill and decode (target >= 0.9); engine / HF decode (target >= 1.5);
  16 sessions with distinct dW batched / one at a time (target >= 3).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

import torch
from transformers import Qwen3Config

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.ttt_reference import model as ref_model  # noqa: E402


def make_model(path: pathlib.Path, ttt_layers: list[int]) -> None:
    cfg = Qwen3Config(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                      tie_word_embeddings=True, ttt_mode=True, ttt_layers=ttt_layers, ttt_chunk=128, ttt_lr=0.3,
                      ttt_proj=True, ttt_target="hidden_states", bos_token_id=None, eos_token_id=None)
    cfg.architectures = ["Qwen3ForCausalLM"]
    model = ref_model.from_config(cfg, seed=0)
    with torch.no_grad():
        for i in model.ttt_layers:
            model.hf.model.layers[i].mlp.ttt_conv.weight.normal_(0, 0.05)
    model.save(str(path), max_shard_size="200MB")


@torch.no_grad()
def hf_round(model, prompt: list[int], decode: int, ttt: bool) -> tuple[float, float]:
    """Prefill and decode tokens/s of one session through the reference (HF eager + TTT patch)."""
    model.set_ttt_enabled(ttt)
    session = model.new_session()
    t0 = time.perf_counter()
    model(torch.tensor([prompt]), session)
    prefill = len(prompt) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(decode):
        model(torch.tensor([[(7 * i) % 8192]]), session)
    return prefill, decode / (time.perf_counter() - t0)


def bench(path: pathlib.Path, args) -> None:
    hf = ref_model.load(str(path), torch.float32).eval()
    hf.hf.config._attn_implementation = "eager"
    params = sum(p.numel() for p in hf.parameters())
    prompt = [(7919 + i * 104729) % 8192 for i in range(args.prompt)]

    engine, ref = [], {"on": [], "off": []}
    for _ in range(args.rounds):
        out = subprocess.run([args.binary, f"--model={path}", f"--prompt={args.prompt}", f"--decode={args.decode}",
                              f"--threads={args.threads}", "--repeats=3"], check=True, capture_output=True, text=True)
        engine.append(json.loads(out.stdout))
        for mode in ("on", "off"):
            ref[mode].append(hf_round(hf, prompt, args.decode, mode == "on"))

    def med(key):
        return statistics.median(r[key] for r in engine)

    hf_dec_on = statistics.median(r[1] for r in ref["on"])
    hf_dec_off = statistics.median(r[1] for r in ref["off"])
    rows = [
        ("prefill tok/s, TTT on / off", med("prefill_tps_ttt_on"), med("prefill_tps_ttt_off"), ">= 0.9"),
        ("decode tok/s, TTT on / off", med("decode_tps_ttt_on"), med("decode_tps_ttt_off"), ">= 0.9"),
        ("decode tok/s TTT on, engine / HF eager", med("decode_tps_ttt_on"), hf_dec_on, ">= 1.5"),
        ("decode tok/s TTT off, engine / HF eager", med("decode_tps_ttt_off"), hf_dec_off, ">= 1.5"),
        (f"decode tok/s, {engine[0]['sessions']} sessions batched / one at a time", med("batched_decode_tps"),
         med("sequential_decode_tps"), ">= 3"),
    ]
    print(f"\n{path.name}: {params / 1e6:.1f}M params, TTT layers {hf.ttt_layers} of 6, C = {engine[0]['chunk']}, "
          f"prompt {args.prompt}, decode {args.decode}, threads {args.threads}, "
          f"updates applied per prompt: {engine[0]['updates_applied']}, rounds {args.rounds}\n")
    print("| measure | a | b | a / b | target |\n|---|---|---|---|---|")
    for name, a, b, target in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f} | {target} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", default=str(ROOT / "runs/bench"))
    ap.add_argument("--binary", default=str(ROOT / "build/bin/adaptd-bench-engine"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name, layers in (("ttt-1-of-6", [0]), ("ttt-3-of-6", [1, 3, 5])):
        path = pathlib.Path(args.models) / name
        if not (path / "config.json").exists():
            make_model(path, layers)
        bench(path, args)


if __name__ == "__main__":
    main()
