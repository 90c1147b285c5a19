// The transformer forward of one session: embedding, RMSNorm, RoPE, GQA attention with a KV
// cache, SwiGLU MLP, and In-Place TTT in the TTT layers (architecture.md; paper.md §3-5).
#include <cmath>

#include "model_impl.h"

namespace adaptd::engine {
namespace {

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  xf = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return w * xf.to(x.scalar_type());
}

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// Appends k/v [KV, m, hd] at `len`, growing the buffer geometrically; returns rows [0, len + m).
std::pair<at::Tensor, at::Tensor> AppendKv(KvCache& c, const at::Tensor& k, const at::Tensor& v, int64_t len) {
  const int64_t m = k.size(1);
  if (!c.k.defined() || len + m > c.k.size(1)) {
    const int64_t cap = std::max<int64_t>({64, len + m, c.k.defined() ? 2 * c.k.size(1) : 0});
    at::Tensor nk = at::empty({k.size(0), cap, k.size(2)}, k.options());
    at::Tensor nv = at::empty({v.size(0), cap, v.size(2)}, v.options());
    if (len > 0) {
      nk.narrow(1, 0, len).copy_(c.k.narrow(1, 0, len));
      nv.narrow(1, 0, len).copy_(c.v.narrow(1, 0, len));
    }
    c.k = nk;
    c.v = nv;
  }
  c.k.narrow(1, len, m).copy_(k);
  c.v.narrow(1, len, m).copy_(v);
  return {c.k.narrow(1, 0, len + m), c.v.narrow(1, 0, len + m)};
}

struct Rope {
  at::Tensor cos, sin;  // [m, hd] in the model dtype
};

Rope MakeRope(const Model::Impl& m, int64_t start, int64_t count) {
  at::Tensor pos = at::arange(start, start + count, at::TensorOptions().dtype(at::kFloat).device(m.device));
  at::Tensor freqs = at::outer(pos, m.inv_freq);  // [m, hd/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);   // [m, hd]
  return {emb.cos().to(m.dtype), emb.sin().to(m.dtype)};
}

at::Tensor Attention(const Model::Impl& m, const LayerWeights& L, KvCache& cache, const at::Tensor& h,
                     const Rope& rope, int64_t past) {
  const ModelConfig& c = m.config;
  const int64_t len = h.size(0), hd = c.head_dim;
  at::Tensor q = at::linear(h, L.q).view({len, c.num_heads, hd});     // [m, H, hd]
  at::Tensor k = at::linear(h, L.k).view({len, c.num_kv_heads, hd});  // [m, KV, hd]
  at::Tensor v = at::linear(h, L.v).view({len, c.num_kv_heads, hd});
  if (c.qk_norm) {
    q = RmsNorm(q, L.q_norm, c.rms_norm_eps);
    k = RmsNorm(k, L.k_norm, c.rms_norm_eps);
  }
  q = q.transpose(0, 1);  // [H, m, hd]
  k = k.transpose(0, 1);  // [KV, m, hd]
  v = v.transpose(0, 1);
  q = q * rope.cos + RotateHalf(q) * rope.sin;
  k = k * rope.cos + RotateHalf(k) * rope.sin;
  auto [k_all, v_all] = AppendKv(cache, k, v, past);  // [KV, past + m, hd]
  std::optional<at::Tensor> mask;
  if (len > 1) {  // query i (position past + i) attends to keys j <= past + i
    at::Tensor qpos = at::arange(past, past + len, at::TensorOptions().dtype(at::kLong).device(m.device));
    at::Tensor kpos = at::arange(past + len, at::TensorOptions().dtype(at::kLong).device(m.device));
    mask = kpos.unsqueeze(0) <= qpos.unsqueeze(1);  // [m, past + m]
  }
  at::Tensor o = at::scaled_dot_product_attention(q.unsqueeze(0), k_all.unsqueeze(0), v_all.unsqueeze(0), mask,
                                                  0.0, false, 1.0 / std::sqrt(static_cast<double>(hd)),
                                                  /*enable_gqa=*/c.num_heads != c.num_kv_heads);  // [1, H, m, hd]
  return at::linear(o.squeeze(0).transpose(0, 1).reshape({len, c.num_heads * hd}), L.o);
}

// Z W^T with the session's W for this layer (split: W0 + dW in fp32; parity: whole W).
at::Tensor ApplyW(const LayerWeights& L, const TttLayerState& st, const at::Tensor& z) {
  if (st.whole.defined()) return at::linear(z, st.whole);
  at::Tensor out = at::linear(z, L.down);
  if (!st.delta.defined()) return out;  // no chunk completed: the stock MLP exactly
  return (out.to(at::kFloat) + at::matmul(z.to(at::kFloat), st.delta.t())).to(z.scalar_type());
}

// eta * (conv(T) P)^T Z for one complete chunk, t [C, d], z [C, f] -> [d, f] in t's dtype.
at::Tensor ChunkDelta(const LayerWeights& L, const at::Tensor& t, const at::Tensor& z, double lr) {
  const int64_t d = t.size(1);
  at::Tensor u = at::conv1d(t.t().unsqueeze(0), L.ttt_conv.to(t.scalar_type()), {}, 1, 2, 1, d)
                     .squeeze(0)
                     .t();  // [C, d]
  at::Tensor v = L.ttt_proj.defined() ? at::matmul(u, L.ttt_proj.to(t.scalar_type())) : u;  // P, not P^T
  return at::matmul(v.t(), z) * lr;
}

// Applies one completed chunk to the layer's state; false when the safety checks refuse it.
bool UpdateW(const Model::Impl& m, const LayerWeights& L, TttLayerState& st, const SessionOptions& opt,
             const at::Tensor& t, const at::Tensor& z) {
  const bool parity = opt.numeric == NumericMode::kParity;
  at::Tensor d = parity ? ChunkDelta(L, t, z, m.config.ttt.lr)
                        : ChunkDelta(L, t.to(at::kFloat), z.to(at::kFloat), m.config.ttt.lr);
  const double norm = at::linalg_vector_norm(d.to(at::kFloat)).item<double>();
  if (!std::isfinite(norm)) return false;
  if (opt.clip_tau && norm > *opt.clip_tau) d = d * (*opt.clip_tau / norm);
  if (parity) {
    st.whole = (st.whole.defined() ? st.whole : L.down) + d;
  } else {
    st.delta = st.delta.defined() ? st.delta + d : d;
  }
  return true;
}

at::Tensor ZOf(const LayerWeights& L, const at::Tensor& x) {
  return at::silu(at::linear(x, L.gate)) * at::linear(x, L.up);  // [n, f]
}

// The TTT MLP for m new tokens h [m, d] (targets t [m, d]); chunks align at multiples of C of N.
at::Tensor TttMlp(const Model::Impl& m, const LayerWeights& L, SessionState::Impl& s, TttLayerState& st,
                  const at::Tensor& h, const at::Tensor& t, bool learn) {
  at::Tensor z_new = ZOf(L, h);  // [m, f]
  if (!learn) return ApplyW(L, st, z_new);
  const int64_t C = m.config.ttt.chunk, len = h.size(0);
  const bool embed_target = m.config.ttt.target == TttConfig::Target::kInputEmbed;
  int64_t r = s.n_learned % C;
  std::vector<at::Tensor> outs;
  for (int64_t a = 0; a < len;) {
    const int64_t n = std::min(len - a, C - r);  // rows up to the next chunk boundary
    outs.push_back(ApplyW(L, st, z_new.narrow(0, a, n)));  // apply ...
    st.tail_x.narrow(0, r, n).copy_(h.narrow(0, a, n));
    if (embed_target) st.tail_t.narrow(0, r, n).copy_(t.narrow(0, a, n));
    if (r + n == C) {  // ... then update with the completed chunk
      at::Tensor z = r == 0 ? z_new.narrow(0, a, n) : at::cat({ZOf(L, st.tail_x.narrow(0, 0, r)), z_new.narrow(0, a, n)});
      if (UpdateW(m, L, st, s.options, embed_target ? st.tail_t : st.tail_x, z)) ++s.updates_applied;
      r = 0;
    } else {
      r += n;
    }
    a += n;
  }
  return outs.size() == 1 ? outs[0] : at::cat(outs);
}

}  // namespace

at::Tensor RopeInvFreq(const ModelConfig& c) {
  const int64_t hd = c.head_dim;
  at::Tensor idx = at::arange(0, hd, 2, at::kLong).to(at::kFloat);
  at::Tensor inv = 1.0 / at::pow(c.rope.theta, idx / static_cast<double>(hd));  // [hd/2]
  if (c.rope.type != RopeConfig::Type::kLlama3) return inv;
  const auto& r = c.rope;
  const double old_len = static_cast<double>(r.original_max_position_embeddings);
  const double low_wavelen = old_len / r.low_freq_factor, high_wavelen = old_len / r.high_freq_factor;
  at::Tensor wavelen = 2 * M_PI / inv;
  at::Tensor scaled = at::where(wavelen > low_wavelen, inv / r.factor, inv);
  at::Tensor smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
  at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
  return at::where(medium, smoothed, scaled);
}

at::Tensor ForwardSession(const Model::Impl& m, SessionState::Impl& s, const at::Tensor& ids, bool learn) {
  const ModelConfig& c = m.config;
  const int64_t len = ids.size(0);
  at::Tensor x = at::embedding(m.embed, ids);  // [m, d]
  const at::Tensor embeds = x;  // TTT targets in input_embed mode (x is rebound below)
  const Rope rope = MakeRope(m, s.position, len);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const LayerWeights& L = m.layers[i];
    x = x + Attention(m, L, s.kv[i], RmsNorm(x, L.input_norm, c.rms_norm_eps), rope, s.position);
    at::Tensor h = RmsNorm(x, L.post_norm, c.rms_norm_eps);  // [m, d]
    if (m.is_ttt[i]) {
      x = x + TttMlp(m, L, s, *s.ttt[i], h, embeds, learn);
    } else {
      x = x + at::linear(ZOf(L, h), L.down);
    }
  }
  s.position += len;
  if (learn) s.n_learned += len;
  return at::linear(RmsNorm(x, m.final_norm, c.rms_norm_eps), m.lm_head).to(at::kFloat);  // [m, V]
}

}  // namespace adaptd::engine
