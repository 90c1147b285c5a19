"""HF transformers Qwen3 / Llama models with In-Place TTT MLPs patched in (the reference).

TTTModel wraps a stock `Qwen3ForCausalLM` / `LlamaForCausalLM` and replaces the MLP of each TTT
layer. Two paths: whole sequences from N = 0 (batched, differentiable: training and full-sequence
forward) and sessions (bs = 1, KV cache plus fast state, fed at once, in pieces or token by token).
Checkpoints use the official format: config.json with ttt_* fields, per TTT layer
`model.layers.{l}.mlp.ttt_conv.weight [d, 1, 5]` and `model.layers.{l}.mlp.ttt_proj.weight [d, d]`.
"""
from __future__ import annotations

import dataclasses
import json
import os

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from . import ttt

SUPPORTED = ("Qwen3ForCausalLM", "LlamaForCausalLM")


class _Context:
    """Per-forward inputs the patched MLPs read: the session (or None) and token embeddings."""
    session: "Session | None" = None
    embeds: torch.Tensor | None = None
    learn: bool = True
    enabled: bool = True  # False: TTT layers run with W0 only (the TTT-off ablation)
    decay: float = 0.0  # the whole-sequence path's dW decay per chunk (SessionOptions::decay)


class InPlaceTTTMLP(nn.Module):
    """The stock gated MLP plus ttt_conv / ttt_proj; down_proj.weight is W0 of the fast weight."""

    def __init__(self, mlp: nn.Module, cfg: ttt.TTTConfig, layer: int, ctx: _Context):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj, self.act_fn = (
            mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn)
        d = self.down_proj.weight.shape[0]
        dtype, dev = self.down_proj.weight.dtype, self.down_proj.weight.device
        self.ttt_conv = nn.Conv1d(d, d, 5, padding=2, groups=d, bias=False, dtype=dtype, device=dev)
        nn.init.zeros_(self.ttt_conv.weight)
        self.ttt_proj = nn.Linear(d, d, bias=False, dtype=dtype, device=dev) if cfg.proj else None
        self.cfg, self.layer, self.ctx = cfg, layer, ctx

    def z(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_fn(self.gate_proj(x)) * self.up_proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, m, d]
        if not self.ctx.enabled:
            return self.down_proj(self.z(x))
        t = x if self.cfg.target == "hidden_states" else self.ctx.embeds.to(x.dtype)
        proj = None if self.ttt_proj is None else self.ttt_proj.weight
        session = self.ctx.session
        if session is None:
            return ttt.parallel_mlp_out(self.z(x), t, self.down_proj.weight, self.ttt_conv.weight,
                                        proj, self.cfg.lr, self.cfg.chunk, self.ctx.decay)
        if x.shape[0] != 1:
            raise ValueError("a session forward takes one sequence")
        st = session.layers[self.layer]
        out = ttt.stateful_mlp_out(x[0], t[0], self.z, st, self.ttt_conv.weight, proj,
                                   self.cfg.lr, self.cfg.chunk, session.numeric,
                                   self.ctx.learn, session.clip_tau)
        return out[None]


@dataclasses.dataclass
class Session:
    """One session's state: KV cache, per-TTT-layer fast state, N (learned tokens)."""
    kv: DynamicCache
    layers: dict[int, ttt.LayerState]
    numeric: str = "split"
    clip_tau: float | None = None
    n_learned: int = 0


class TTTModel(nn.Module):
    def __init__(self, hf: nn.Module, cfg: ttt.TTTConfig):
        super().__init__()
        self.hf, self.ttt_cfg, self.ctx = hf, cfg, _Context()
        hf.config.update(cfg.to_dict())
        layers = hf.model.layers
        self.ttt_layers = cfg.layer_ids(len(layers))
        for i in self.ttt_layers:
            layers[i].mlp = InPlaceTTTMLP(layers[i].mlp, cfg, i, self.ctx)

    @property
    def config(self):
        return self.hf.config

    def set_ttt_enabled(self, enabled: bool) -> None:
        """Off: the TTT layers use W0 and never update (the ablation of the same weights)."""
        self.ctx.enabled = enabled

    def new_session(self, numeric: str = "split", clip_tau: float | None = None) -> Session:
        if numeric not in ttt.NUMERIC_MODES:
            raise ValueError(f"numeric mode must be one of {ttt.NUMERIC_MODES}")
        layers = {i: ttt.LayerState(w0=self.hf.model.layers[i].mlp.down_proj.weight.detach())
                  for i in self.ttt_layers}
        return Session(DynamicCache(), layers, numeric, clip_tau)

    def forward(self, input_ids: torch.Tensor, session: Session | None = None,
                learn: bool = True) -> torch.Tensor:
        """Logits [B, m, vocab]. Without a session: whole sequences from N = 0 (B >= 1).

        With a session (B = 1): the m tokens continue it; learn=False tokens see the current
        fast weights but do not advance N or change them.
        """
        self.ctx.session, self.ctx.learn = session, learn
        self.ctx.embeds = (self.hf.get_input_embeddings()(input_ids)
                           if self.ttt_cfg.target == "input_embed" else None)
        try:
            if session is None:
                return self.hf(input_ids=input_ids, use_cache=False).logits
            out = self.hf(input_ids=input_ids, past_key_values=session.kv, use_cache=True)
            if learn:
                session.n_learned += input_ids.shape[1]
            return out.logits
        finally:
            self.ctx.session, self.ctx.embeds = None, None

    def save(self, path: str, max_shard_size: str = "15MB") -> None:
        self.hf.save_pretrained(path, max_shard_size=max_shard_size, safe_serialization=True)


def from_config(hf_config, seed: int | None = None, dtype=torch.float32) -> TTTModel:
    """A randomly initialised model (conv zero, proj diagonal N(0, initializer_range^2))."""
    if seed is not None:
        torch.manual_seed(seed)
    cfg = ttt.TTTConfig.from_dict(hf_config.to_dict())
    model = TTTModel(AutoModelForCausalLM.from_config(hf_config, dtype=dtype), cfg)
    std = getattr(hf_config, "initializer_range", 0.02)
    for i in model.ttt_layers:
        mlp = model.hf.model.layers[i].mlp
        if mlp.ttt_proj is not None:
            with torch.no_grad():
                mlp.ttt_proj.weight.copy_(torch.diag(torch.randn(mlp.ttt_proj.weight.shape[0]) * std))
    return model


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    sd = {}
    for name in files:
        sd.update(load_file(os.path.join(path, name)))
    return sd


def load(path: str, dtype: torch.dtype | None = None) -> TTTModel:
    """Loads an HF checkpoint directory strictly: every tensor must be expected and present."""
    hf_config = AutoConfig.from_pretrained(path)
    arch = (hf_config.architectures or ["?"])[0]
    if arch not in SUPPORTED:
        raise ValueError(f"unsupported architecture {arch}; supported: {SUPPORTED}")
    sd = _read_state_dict(path)
    dtype = dtype or next(iter(sd.values())).dtype
    model = from_config(hf_config, dtype=dtype)
    expected = model.hf.state_dict()
    tied = getattr(hf_config, "tie_word_embeddings", False)
    missing = [k for k in expected if k not in sd and not (tied and k == "lm_head.weight")]
    unexpected = [k for k in sd if k not in expected]
    if unexpected and any(".ttt_" in k for k in unexpected) and not model.ttt_cfg.mode:
        raise ValueError("checkpoint has ttt_* tensors but config.json has ttt_mode false")
    if missing or unexpected:
        raise ValueError(f"checkpoint mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.hf.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False)
    if tied:
        model.hf.tie_weights()
    return model.eval()
