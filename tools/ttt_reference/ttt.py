"""In-Place TTT: the functional core of the project's PyTorch reference.

Written from ../../shared/research/paper.md (§3-5); shares no code with engine/.
Notation: d = hidden size, f = intermediate size, C = chunk size, eta = ttt_lr.
Z = silu(x Wgate^T) * (x Wup^T) [n, f] is the MLP intermediate, T [n, d] the target source,
W [d, f] the down projection (the fast weight). A completed chunk updates
    W <- W + eta * (conv(T_chunk) P)^T Z_chunk
where conv is depthwise, kernel 5, padding 2, zero outside the chunk, and P = ttt_proj.weight
is applied without transpose. A token is processed with the W of every chunk completed before it.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

TARGET_MODES = ("hidden_states", "input_embed")
NUMERIC_MODES = ("split", "parity")

# Defaults of the official inference config class (paper.md §7.1).
CONFIG_DEFAULTS = {
    "ttt_mode": False,
    "ttt_layers": [0, 6, 12, 18, 24, 30],
    "ttt_proj": True,
    "ttt_lr": 0.3,
    "ttt_chunk": 8192,
    "ttt_target": "hidden_states",
}


@dataclasses.dataclass(frozen=True)
class TTTConfig:
    mode: bool
    layers: tuple[int, ...]
    proj: bool
    lr: float
    chunk: int
    target: str

    @classmethod
    def from_dict(cls, cfg: dict) -> "TTTConfig":
        """Reads the ttt_* fields of a config.json dict; missing fields take the defaults."""
        v = {k: cfg.get(k, default) for k, default in CONFIG_DEFAULTS.items()}
        if v["ttt_target"] not in TARGET_MODES:
            raise ValueError(f"ttt_target must be one of {TARGET_MODES}, got {v['ttt_target']!r}")
        if int(v["ttt_chunk"]) < 1:
            raise ValueError(f"ttt_chunk must be >= 1, got {v['ttt_chunk']}")
        return cls(bool(v["ttt_mode"]), tuple(int(i) for i in v["ttt_layers"]), bool(v["ttt_proj"]),
                   float(v["ttt_lr"]), int(v["ttt_chunk"]), v["ttt_target"])

    def to_dict(self) -> dict:
        return {"ttt_mode": self.mode, "ttt_layers": list(self.layers), "ttt_proj": self.proj,
                "ttt_lr": self.lr, "ttt_chunk": self.chunk, "ttt_target": self.target}

    def layer_ids(self, num_layers: int) -> list[int]:
        """TTT layers that exist in a model of num_layers layers (others are ignored)."""
        if not self.mode:
            return []
        return sorted({i for i in self.layers if 0 <= i < num_layers})


def chunk_conv(t: torch.Tensor, kernel: torch.Tensor, chunk: int) -> torch.Tensor:
    """Depthwise conv (kernel [d, 1, 5], padding 2) inside each chunk of C rows.

    t: [..., n, d] with n a multiple of chunk. Rows of different chunks never mix.
    """
    *lead, n, d = t.shape
    assert n % chunk == 0, "pad to a multiple of the chunk first"
    x = t.reshape(-1, chunk, d).transpose(1, 2)  # [B*K, d, C]
    u = F.conv1d(x, kernel, padding=2, groups=d)  # [B*K, d, C]
    return u.transpose(1, 2).reshape(*lead, n, d)


def targets(t: torch.Tensor, kernel: torch.Tensor, proj: torch.Tensor | None,
            chunk: int) -> torch.Tensor:
    """V = conv(T) P for [..., n, d]; n need not be a multiple of C (zero padded, then cut)."""
    n = t.shape[-2]
    pad = (-n) % chunk
    u = chunk_conv(F.pad(t, (0, 0, 0, pad)), kernel, chunk)[..., :n, :]
    return u if proj is None else u @ proj  # P itself, not P^T


def parallel_mlp_out(z: torch.Tensor, t: torch.Tensor, w0: torch.Tensor, kernel: torch.Tensor,
                     proj: torch.Tensor | None, lr: float, chunk: int, decay: float = 0.0) -> torch.Tensor:
    """MLP outputs of whole sequences that start at N = 0 (training and full-sequence path).

    z: [B, n, f], t: [B, n, d], w0: [d, f]. Token p sees W0 + eta * sum_{j < p//C} V_j^T Z_j, so
    O_p = Z_p W0^T + eta * sum_{q in earlier chunks} (Z_p . Z_q) V_q: a block-causal
    "attention" over Z, differentiable and batched, with no [K, d, f] tensor materialised.
    With `decay` (the engine's SessionOptions::decay: dW <- (1 - decay) dW before each update),
    chunk j's term reaches chunk k > j scaled by (1 - decay)^(k - 1 - j).
    """
    out = F.linear(z, w0)  # [B, n, d]
    n = z.shape[-2]
    if n <= chunk:
        return out  # no chunk completed before any token: the stock MLP exactly
    v = targets(t, kernel, proj, chunk)  # [B, n, d]
    pos_chunk = torch.arange(n, device=z.device) // chunk
    earlier = pos_chunk[None, :] < pos_chunk[:, None]  # [n, n]: q in an earlier chunk than p
    if decay:
        age = (pos_chunk[:, None] - pos_chunk[None, :] - 1).clamp_min(0).to(z.dtype)
        earlier = earlier * (1.0 - decay) ** age
    scores = (z @ z.transpose(-1, -2)) * earlier  # [B, n, n]
    return out + lr * (scores @ v)


def chunk_delta(z: torch.Tensor, t: torch.Tensor, kernel: torch.Tensor,
                proj: torch.Tensor | None, lr: float) -> torch.Tensor:
    """eta * (conv(T) P)^T Z for one complete chunk: z [C, f], t [C, d] -> [d, f]."""
    v = targets(t, kernel, proj, t.shape[-2])
    return lr * (v.transpose(-1, -2) @ z)


@dataclasses.dataclass
class LayerState:
    """Fast state of one TTT layer of one session.

    split mode: w0 in the model dtype plus delta (fp32, None while no chunk has completed).
    parity mode: whole (the full W in the model dtype, None until the first update).
    tail_x / tail_t: MLP inputs and target states of the r = N mod C tokens of the open chunk.
    """
    w0: torch.Tensor
    delta: torch.Tensor | None = None
    whole: torch.Tensor | None = None
    tail_x: torch.Tensor | None = None
    tail_t: torch.Tensor | None = None

    def weight(self) -> torch.Tensor:
        """The effective W = W0 + dW, in fp32."""
        if self.whole is not None:
            return self.whole.float()
        return self.w0.float() if self.delta is None else self.w0.float() + self.delta

    def tail_len(self) -> int:
        return 0 if self.tail_x is None else self.tail_x.shape[0]


def apply_w(z: torch.Tensor, st: LayerState) -> torch.Tensor:
    """Z W^T with the session's current W, in the numeric mode the state holds."""
    if st.whole is not None:
        return F.linear(z, st.whole)
    out = F.linear(z, st.w0)
    if st.delta is None:
        return out  # N < C: the stock MLP exactly
    return (out.float() + z.float() @ st.delta.T).to(z.dtype)


def update_w(st: LayerState, z: torch.Tensor, t: torch.Tensor, kernel: torch.Tensor,
             proj: torch.Tensor | None, lr: float, numeric: str, clip_tau: float | None) -> None:
    """Adds one completed chunk's update to the state (split: fp32; parity: model dtype)."""
    if numeric == "parity":
        d = chunk_delta(z, t, kernel, proj, lr)
        if clip_tau is not None:
            d = clip(d, clip_tau)
        base = st.w0 if st.whole is None else st.whole
        st.whole = base + d
        return
    d = chunk_delta(z.float(), t.float(), kernel.float(), None if proj is None else proj.float(), lr)
    if clip_tau is not None:
        d = clip(d, clip_tau)
    st.delta = d if st.delta is None else st.delta + d


def clip(d: torch.Tensor, tau: float) -> torch.Tensor:
    """Frobenius clipping of one chunk's update eta*(UP)^T Z to norm tau."""
    norm = torch.linalg.vector_norm(d.float())
    return d * (tau / norm).to(d.dtype) if norm > tau else d


def stateful_mlp_out(x: torch.Tensor, t: torch.Tensor, z_fn, st: LayerState, kernel: torch.Tensor,
                     proj: torch.Tensor | None, lr: float, chunk: int, numeric: str,
                     learn: bool = True, clip_tau: float | None = None) -> torch.Tensor:
    """MLP outputs of m new tokens of one session, updating its state (paper.md §5.2).

    x: [m, d] MLP inputs, t: [m, d] target states, z_fn: x -> Z. Chunks are aligned at the tail
    start (a multiple of C of N). Tokens with learn=False use the current W and change nothing.
    """
    if not learn:
        return apply_w(z_fn(x), st)
    r = st.tail_len()
    xs = x if r == 0 else torch.cat([st.tail_x, x])  # [r + m, d]
    ts = t if r == 0 else torch.cat([st.tail_t, t])
    z_new = z_fn(x)  # outputs use Z of the new tokens alone (bitwise the stock MLP's)
    zs = z_new if r == 0 else torch.cat([z_fn(st.tail_x), z_new])  # the tail's Z is recomputed
    total = xs.shape[0]
    outs = []
    for start in range(0, total, chunk):
        end = min(start + chunk, total)
        if end > r:
            outs.append(apply_w(zs[max(start, r):end], st))  # apply ...
        if end - start == chunk:  # ... then update, for complete chunks only
            update_w(st, zs[start:end], ts[start:end], kernel, proj, lr, numeric, clip_tau)
    keep = total - total % chunk
    st.tail_x = xs[keep:] if keep < total else None
    st.tail_t = ts[keep:] if keep < total else None
    return torch.cat(outs)
