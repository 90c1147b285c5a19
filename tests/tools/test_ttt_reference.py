"""Tests of tools/ttt_reference: closed form, stock parity below one chunk, split invariance,
checkpoint format, and the dump file."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

from tools.ttt_reference import model as ttt_model
from tools.ttt_reference import ttt

C = 8
TOL = dict(atol=2e-5, rtol=1e-5)


def tiny_config(arch: str, **overrides):
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
                  ttt_mode=True, ttt_layers=[0, 2, 7], ttt_chunk=C, ttt_lr=0.5, ttt_proj=True,
                  ttt_target="hidden_states")
    common.update(overrides)
    cls = Qwen3Config if arch == "qwen3" else LlamaConfig
    cfg = cls(**common)
    cfg.architectures = ["Qwen3ForCausalLM" if arch == "qwen3" else "LlamaForCausalLM"]
    return cfg


def make_model(arch="qwen3", seed=0, **overrides) -> ttt_model.TTTModel:
    """A random TTT model whose conv and projection are non-zero (so updates are visible)."""
    model = ttt_model.from_config(tiny_config(arch, **overrides), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for i in model.ttt_layers:
            mlp = model.hf.model.layers[i].mlp
            mlp.ttt_conv.weight.copy_(torch.randn(mlp.ttt_conv.weight.shape, generator=g) * 0.5)
            if mlp.ttt_proj is not None:
                mlp.ttt_proj.weight.copy_(torch.randn(mlp.ttt_proj.weight.shape, generator=g) * 0.3)
    return model.eval()


def ids_of(n, seed=3, vocab=97):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def feed(model, ids, pieces, numeric="split", **kw):
    session = model.new_session(numeric, **kw)
    outs, pos = [], 0
    with torch.no_grad():
        for m in pieces:
            outs.append(model(ids[:, pos:pos + m], session))
            pos += m
    return torch.cat(outs, dim=1), session


def closed_form_third_way(x, t, w0, kernel, proj, lr, chunk):
    """Per-token float64 loops: token p sees W0 + eta * sum over completed chunks j < p//C."""
    x, t, w0, kernel = x.double(), t.double(), w0.double(), kernel.double()
    n, d = t.shape
    u = torch.zeros(n, d, dtype=torch.float64)
    for p in range(n):
        base = (p // chunk) * chunk
        for j in range(5):
            q = p + j - 2
            if base <= q < base + chunk and q < n:
                u[p] += kernel[:, 0, j] * t[q]
    v = u if proj is None else u @ proj.double()
    outs, w = [], w0.clone()
    for p in range(n):
        if p > 0 and p % chunk == 0:
            for q in range(p - chunk, p):
                w += lr * torch.outer(v[q], x[q])
        outs.append(w @ x[p])
    full = (n // chunk) * chunk
    final = w0 + lr * sum((torch.outer(v[q], x[q]) for q in range(full)), torch.zeros_like(w0))
    return torch.stack(outs), final


@pytest.mark.parametrize("use_proj", [True, False])
@pytest.mark.parametrize("n", [C - 1, C, C + 1, 2 * C, 3 * C + 5])
def test_closed_form(n, use_proj):
    g = torch.Generator().manual_seed(n)
    d, f = 6, 10
    z, t = torch.randn(n, f, generator=g), torch.randn(n, d, generator=g)
    w0, kernel = torch.randn(d, f, generator=g), torch.randn(d, 1, 5, generator=g)
    proj = torch.randn(d, d, generator=g) if use_proj else None
    want_out, want_w = closed_form_third_way(z, t, w0, kernel, proj, 0.1, C)
    # the session path, fed at once and token by token
    for pieces in ([n], [1] * n):
        st = ttt.LayerState(w0=w0)
        outs = [ttt.stateful_mlp_out(x, tt, lambda a: a, st, kernel, proj, 0.1, C, "split")
                for x, tt in zip(z.split(pieces), t.split(pieces))]
        torch.testing.assert_close(torch.cat(outs).double(), want_out, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(st.weight().double(), want_w, atol=1e-4, rtol=1e-5)
        assert st.tail_len() == n % C
    # the parallel (training) path
    got = ttt.parallel_mlp_out(z[None], t[None], w0, kernel, proj, 0.1, C)[0]
    torch.testing.assert_close(got.double(), want_out, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("decay", [0.25, 1.0])
def test_parallel_path_with_decay_equals_a_decayed_chunk_loop(decay):
    """The training path's decay is the engine's: dW <- (1 - decay) dW before each update."""
    g = torch.Generator().manual_seed(3)
    n, d, f = 4 * C + 3, 6, 10
    z, t = torch.randn(n, f, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    w0, kernel = torch.randn(d, f, generator=g, dtype=torch.float64), torch.randn(d, 1, 5, generator=g, dtype=torch.float64)
    proj = torch.randn(d, d, generator=g, dtype=torch.float64)
    delta, want = torch.zeros(d, f, dtype=torch.float64), []
    for k in range(0, n, C):  # each chunk is read with the dW of the chunks before it, then updates it
        want.append(z[k:k + C] @ (w0 + delta).T)
        if k + C <= n:
            delta = (1 - decay) * delta + ttt.chunk_delta(z[k:k + C], t[k:k + C], kernel, proj, 0.1)
    got = ttt.parallel_mlp_out(z[None], t[None], w0, kernel, proj, 0.1, C, decay)[0]
    torch.testing.assert_close(got, torch.cat(want), atol=1e-10, rtol=1e-10)
    assert not torch.allclose(got, ttt.parallel_mlp_out(z[None], t[None], w0, kernel, proj, 0.1, C)[0])


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_below_one_chunk_equals_stock_transformers(arch, tmp_path):
    model = make_model(arch)
    model.save(str(tmp_path))
    stock = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()  # ignores ttt_* tensors
    ids = ids_of(3 * C)
    with torch.no_grad():
        want = stock(ids).logits
        at_once = model(ids[:, :C])  # whole-sequence path
    torch.testing.assert_close(at_once, stock(ids[:, :C]).logits, atol=0, rtol=0)
    by_token, _ = feed(model, ids[:, :C], [1] * C)
    with torch.no_grad():
        stock_steps = []
        kv = None
        for p in range(C):
            o = stock(ids[:, p:p + 1], past_key_values=kv, use_cache=True)
            kv = o.past_key_values
            stock_steps.append(o.logits)
    torch.testing.assert_close(by_token, torch.cat(stock_steps, 1), atol=0, rtol=0)
    # negative control: beyond the first chunk TTT changes the logits
    with torch.no_grad():
        later = model(ids)
    assert (later[:, 2 * C:] - want[:, 2 * C:]).abs().max() > 1e-3


SPLITS = {
    "C-1": [C - 1], "C": [C], "C+1": [C + 1], "2C": [2 * C],
    "straddling": [3, C - 1, C + 2, 1, 2 * C + 3],
}


@pytest.mark.parametrize("arch,target,use_proj", [
    ("qwen3", "hidden_states", True), ("qwen3", "input_embed", True),
    ("llama", "hidden_states", False), ("llama", "input_embed", False)])
@pytest.mark.parametrize("name", sorted(SPLITS))
def test_at_once_pieces_and_token_by_token_agree(arch, target, use_proj, name):
    model = make_model(arch, ttt_target=target, ttt_proj=use_proj)
    n = sum(SPLITS[name])
    ids = ids_of(n)
    whole, s_whole = feed(model, ids, [n])
    pieces, s_pieces = feed(model, ids, SPLITS[name])
    tokens, s_tokens = feed(model, ids, [1] * n)
    with torch.no_grad():
        parallel = model(ids)
    for other in (pieces, tokens, parallel):
        torch.testing.assert_close(other, whole, **TOL)
    for s in (s_pieces, s_tokens):
        assert s.n_learned == n
        for layer, st in s.layers.items():
            torch.testing.assert_close(st.weight(), s_whole.layers[layer].weight(), **TOL)
            assert st.tail_len() == n % C
    changed = any((st.weight() != st.w0).any() for st in s_whole.layers.values())
    assert changed == (n >= C)


def test_parity_mode_keeps_whole_w_in_model_dtype():
    model = make_model().to(torch.bfloat16)
    ids = ids_of(2 * C + 3)
    got, s = feed(model, ids, [5, 2 * C - 2], numeric="parity")
    ref, s_split = feed(model, ids, [2 * C + 3], numeric="split")
    for st in s.layers.values():
        assert st.whole is not None and st.whole.dtype == torch.bfloat16 and st.delta is None
    for st in s_split.layers.values():
        assert st.delta.dtype == torch.float32 and st.whole is None
    # same method, different rounding: close at bf16 resolution, not equal
    torch.testing.assert_close(got.float(), ref.float(), atol=0.1, rtol=0.05)


def test_zero_conv_leaves_w_unchanged():
    model = make_model()
    for i in model.ttt_layers:
        torch.nn.init.zeros_(model.hf.model.layers[i].mlp.ttt_conv.weight)
    _, s = feed(model, ids_of(3 * C + 1), [3 * C + 1])
    for st in s.layers.values():
        assert torch.equal(st.weight(), st.w0.float())


def test_learn_false_uses_but_does_not_change_state():
    model = make_model()
    ids = ids_of(2 * C + 2)
    _, s = feed(model, ids, [2 * C + 2])
    before = {i: (st.weight().clone(), st.tail_x.clone()) for i, st in s.layers.items()}
    with torch.no_grad():
        model(ids_of(C + 3, seed=9), s, learn=False)
    assert s.n_learned == 2 * C + 2
    for i, st in s.layers.items():
        assert torch.equal(st.weight(), before[i][0]) and torch.equal(st.tail_x, before[i][1])


def test_clip_bounds_each_chunk_update():
    model = make_model()
    _, s = feed(model, ids_of(C), [C], clip_tau=1e-3)
    for st in s.layers.values():
        assert float(torch.linalg.vector_norm(st.delta)) <= 1e-3 * (1 + 1e-5)


def test_save_load_round_trip_and_format(tmp_path):
    model = make_model("llama", tie_word_embeddings=True)
    model.save(str(tmp_path))
    cfg = json.load(open(tmp_path / "config.json"))
    assert cfg["ttt_mode"] is True and cfg["ttt_chunk"] == C and cfg["ttt_layers"] == [0, 2, 7]
    sd = load_file(str(tmp_path / "model.safetensors"))
    assert sd["model.layers.0.mlp.ttt_conv.weight"].shape == (32, 1, 5)
    assert sd["model.layers.2.mlp.ttt_proj.weight"].shape == (32, 32)
    assert "model.layers.1.mlp.ttt_conv.weight" not in sd
    loaded = ttt_model.load(str(tmp_path))
    ids = ids_of(2 * C + 1)
    torch.testing.assert_close(feed(loaded, ids, [2 * C + 1])[0], feed(model, ids, [2 * C + 1])[0],
                               atol=0, rtol=0)


def test_missing_fields_take_official_defaults():
    cfg = ttt.TTTConfig.from_dict({})
    assert (cfg.mode, cfg.layers, cfg.proj, cfg.lr, cfg.chunk, cfg.target) == (
        False, (0, 6, 12, 18, 24, 30), True, 0.3, 8192, "hidden_states")
    assert ttt.TTTConfig.from_dict({"ttt_mode": True}).layer_ids(13) == [0, 6, 12]
    with pytest.raises(ValueError, match="ttt_target"):
        ttt.TTTConfig.from_dict({"ttt_target": "logits"})


def test_bad_checkpoints_are_rejected(tmp_path):
    make_model().save(str(tmp_path))
    cfg_path = tmp_path / "config.json"
    cfg = json.load(open(cfg_path))
    json.dump({**cfg, "ttt_mode": False}, open(cfg_path, "w"))
    with pytest.raises(ValueError, match="ttt_mode false"):
        ttt_model.load(str(tmp_path))
    json.dump(cfg, open(cfg_path, "w"))
    sd = load_file(str(tmp_path / "model.safetensors"))
    del sd["model.layers.2.mlp.ttt_proj.weight"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="ttt_proj"):
        ttt_model.load(str(tmp_path))


def test_dump_command_writes_logits_and_weights(tmp_path):
    model = make_model()
    model.save(str(tmp_path / "m"))
    ids = ids_of(2 * C + 3)[0].tolist()
    out = tmp_path / "ref.safetensors"
    subprocess.run([sys.executable, "-m", "tools.ttt_reference.dump", "--model", str(tmp_path / "m"),
                    "--ids", ",".join(map(str, ids)), "--pieces", f"5,{2 * C - 2}", "--out", str(out)],
                   check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    got = load_file(str(out))
    logits, s = feed(model, torch.tensor([ids]), [2 * C + 3])
    torch.testing.assert_close(got["logits"], logits[0], **TOL)
    for layer, st in s.layers.items():
        torch.testing.assert_close(got[f"layers.{layer}.weight"], st.weight(), **TOL)
        assert got[f"layers.{layer}.tail_x"].shape == (3, 32)
