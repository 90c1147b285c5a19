"""Engine benchmark (not a test): adaptd-bench-engine next to HF transformers, ratios in one run.

python bench/engine_bench.py [--threads 2] [--prompt 512] [--decode 64] [--rounds 2]
python bench/engine_bench.py --shape qwen3-0.6b --device cuda --dtype bf16   (on a GPU)

--shape small (the default) makes (once) two ~22M-parameter random Qwen3-shaped In-Place TTT
models under runs/bench/ (6 layers; TTT in layer 0 only, the official configuration's density of
one layer in six, and in layers 1, 3, 5; C = 128, so a 512-token prompt completes 4 chunks).
--shape qwen3-0.6b makes one random model shaped like Qwen3-0.6B (28 layers, d 1024, vocab
151936) with TTT in layers 0, 6, 12, 18, 24, C = 128. For each model it alternates rounds of the
C++ engine benchmark and of HF transformers eager (the project's reference TTT patch on the same
checkpoint, same threads, device and dtype), and prints medians and ratios:
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


SHAPES = {
    "small": dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=64),
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128),
}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
MODELS = {  # shape -> (name, TTT layers) of each model benchmarked
    "small": (("ttt-1-of-6", [0]), ("ttt-3-of-6", [1, 3, 5])),
    "qwen3-0.6b": (("qwen3-0.6b-ttt-5", [0, 6, 12, 18, 24]),),
}


def make_model(path: pathlib.Path, shape: str, ttt_layers: list[int], device: str, dtype: torch.dtype) -> None:
    cfg = Qwen3Config(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=True, ttt_mode=True,
                      ttt_layers=ttt_layers, ttt_chunk=128, ttt_lr=0.3, ttt_proj=True, ttt_target="hidden_states",
                      bos_token_id=None, eos_token_id=None)
    cfg.architectures = ["Qwen3ForCausalLM"]
    with torch.device(device):  # random initialisation of large models is fast on the GPU
        model = ref_model.from_config(cfg, seed=0)
        with torch.no_grad():
            for i in model.ttt_layers:
                model.hf.model.layers[i].mlp.ttt_conv.weight.normal_(0, 0.05)
    model.to("cpu", dtype).save(str(path), max_shard_size="2GB")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def hf_round(model, prompt: list[int], decode: int, ttt: bool, device: str) -> tuple[float, float]:
    """Prefill and decode tokens/s of one session through the reference (HF eager + TTT patch)."""
    model.set_ttt_enabled(ttt)
    session = model.new_session()
    vocab = model.config.vocab_size
    sync(device)
    t0 = time.perf_counter()
    model(torch.tensor([prompt], device=device), session)
    sync(device)
    prefill = len(prompt) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(decode):
        model(torch.tensor([[(7 * i) % vocab]], device=device), session)
    sync(device)
    return prefill, decode / (time.perf_counter() - t0)


def bench(path: pathlib.Path, args) -> None:
    hf = ref_model.load(str(path), DTYPES[args.dtype]).to(args.device).eval()
    hf.hf.config._attn_implementation = "eager"
    params = sum(p.numel() for p in hf.parameters())
    vocab = hf.config.vocab_size
    prompt = [(7919 + i * 104729) % vocab for i in range(args.prompt)]

    engine, ref = [], {"on": [], "off": []}
    for _ in range(args.rounds):
        out = subprocess.run([args.binary, f"--model={path}", f"--prompt={args.prompt}", f"--decode={args.decode}",
                              f"--threads={args.threads}", "--repeats=3",
                              f"--device={args.device}", f"--dtype={args.dtype}"], check=True, capture_output=True, text=True)
        engine.append(json.loads(out.stdout))
        for mode in ("on", "off"):
            ref[mode].append(hf_round(hf, prompt, args.decode, mode == "on", args.device))

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
    print(f"\n{path.name}: {params / 1e6:.1f}M params, TTT layers {hf.ttt_layers} of {hf.config.num_hidden_layers}, "
          f"C = {engine[0]['chunk']}, {args.device} {args.dtype}, "
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
    ap.add_argument("--shape", default="small", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="f32", choices=("f32", "bf16"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name, layers in MODELS[args.shape]:
        path = pathlib.Path(args.models) / name
        if not (path / "config.json").exists():
            make_model(path, args.shape, layers, args.device, DTYPES[args.dtype])
        bench(path, args)


if __name__ == "__main__":
    main()
