// The transformer forward of a batch of sessions: embedding, RMSNorm, RoPE, GQA attention over
// each session's KV cache, SwiGLU MLP, and In-Place TTT in the TTT layers with the shared W0
// product batched and each session's dW applied to its own rows (architecture.md; paper.md §3-5).
#include <algorithm>
#include <chrono>
#include <cmath>

#include <ATen/core/grad_mode.h>

#include "cpu_gemv.h"
#include "model_impl.h"

namespace adaptd::engine {
namespace {

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  if (x.scalar_type() == at::kFloat) return at::rms_norm(x, {x.size(-1)}, w, eps);  // one fused op
  // Half precision as transformers does it: normalise in fp32, round, then scale.
  at::Tensor xf = x.to(at::kFloat);
  xf = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return w * xf.to(x.scalar_type());
}

// x W^T for rows x [n, in] and W [out, in], plus `add` if given. On the CPU, with weights that
// stream from memory (few_rows_as_gemm), up to 16 f32 rows (decode) go through cpu_gemv.h where
// the CPU has AVX512 (near the read bandwidth); elsewhere as W X^T with at least two columns: the
// wheel's MKL serves x W^T for one row as a GEMV and for a few rows with a slow GEMM shape, while
// W X^T is a GEMM that streams W at memory speed (bench/small_rows.py, this 2-core machine:
// 1.5-2.6x faster for one row, 1.0-4.5x for 2-16). Weights that stay in the cache are the other
// way round (the GEMV of a 192x512 one is 3x faster), so small models keep x W^T.
// The result may be a transposed view.
at::Tensor Linear(const Model::Impl& m, const at::Tensor& x, const at::Tensor& w, const at::Tensor& add = {}) {
  const int64_t rows = x.size(0);
  if (!m.few_rows_as_gemm || !x.is_cpu() || x.scalar_type() != at::kFloat || rows > 16) {
    return add.defined() ? at::addmm(add, x, w.t()) : at::linear(x, w);
  }
  const bool grad = at::GradMode::is_enabled() &&
                    (x.requires_grad() || w.requires_grad() || (add.defined() && add.requires_grad()));
  if (!grad && CpuGemvAvailable() && w.scalar_type() == at::kFloat) return CpuGemv(x, w, {}, add);  // no derivative
  // One row is doubled, and its first column kept.
  at::Tensor y = rows == 1 ? at::mm(w, x.repeat({2, 1}).t()).narrow(1, 0, 1).t() : at::mm(w, x.t()).t();
  return add.defined() ? y + add : y;
}

// x W^T for a frozen projection: dense as above, quantized through LibTorch's weight-only
// kernels (bf16 activations; quant.h).
at::Tensor Linear(const Model::Impl& m, const at::Tensor& x, const FrozenWeight& w) {
  return w.kind == WeightFormat::Kind::kDense ? Linear(m, x, w.w) : QuantLinear(x, w);
}

// The embedding rows of ids [T] in the model dtype (an int8 embedding dequantizes its rows).
at::Tensor Embed(const Model::Impl& m, const at::Tensor& ids) {
  if (m.embed.kind == WeightFormat::Kind::kDense) return at::embedding(m.embed.w, ids);
  return DequantizeRows(m.embed, ids, m.dtype);
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

Rope ComputeRope(const at::Tensor& inv_freq, int64_t start, int64_t count, at::ScalarType dtype) {
  at::Tensor pos = at::arange(start, start + count, inv_freq.options());
  at::Tensor freqs = at::outer(pos, inv_freq);   // [m, hd/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);  // [m, hd]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

// cos/sin of positions [start, start + count): views of the table made at load, or computed
// (the same way) past its end.
Rope MakeRope(const Model::Impl& m, int64_t start, int64_t count) {
  if (start + count <= m.rope_cos.size(0)) return {m.rope_cos.narrow(0, start, count), m.rope_sin.narrow(0, start, count)};
  return ComputeRope(m.inv_freq, start, count, m.dtype);
}

// Self-attention of every item's rows h [T, d]; each item attends over its own KV window.
at::Tensor Attention(const Model::Impl& m, const LayerWeights& L, int layer, const std::vector<BatchItem>& items,
                     const std::vector<Rope>& ropes, const at::Tensor& h) {
  const ModelConfig& c = m.config;
  const int64_t rows = h.size(0), hd = c.head_dim;
  const auto qkv = Linear(m, h, L.qkv).split_with_sizes({c.num_heads * hd, c.num_kv_heads * hd, c.num_kv_heads * hd}, 1);
  at::Tensor q = qkv[0].reshape({rows, c.num_heads, hd});     // [T, H, hd]
  at::Tensor k = qkv[1].reshape({rows, c.num_kv_heads, hd});  // [T, KV, hd]
  at::Tensor v = qkv[2].reshape({rows, c.num_kv_heads, hd});
  if (c.qk_norm) {
    q = RmsNorm(q, L.q_norm, c.rms_norm_eps);
    k = RmsNorm(k, L.k_norm, c.rms_norm_eps);
  }
  std::vector<at::Tensor> outs;
  for (size_t b = 0; b < items.size(); ++b) {
    const BatchItem& it = items[b];
    const int64_t len = it.ids.size(0), past = it.session->position;
    const Rope& rope = ropes[b];
    at::Tensor qb = q.narrow(0, it.row, len).transpose(0, 1);  // [H, m, hd]
    at::Tensor kb = k.narrow(0, it.row, len).transpose(0, 1);  // [KV, m, hd]
    at::Tensor vb = v.narrow(0, it.row, len).transpose(0, 1);
    qb = qb * rope.cos + RotateHalf(qb) * rope.sin;
    kb = kb * rope.cos + RotateHalf(kb) * rope.sin;
    auto [k_all, v_all] = AppendKv(it.session->kv[layer], kb, vb, past);  // [KV, past + m, hd]
    // GQA without copying K/V per query head: the G = H / KV query heads that share a KV head
    // are stacked as G * m query rows of that KV head (head h reads KV head h / G).
    const int64_t groups = c.num_heads / c.num_kv_heads;
    at::Tensor qg = qb.reshape({c.num_kv_heads, groups * len, hd});  // [KV, G m, hd]
    std::optional<at::Tensor> mask;
    if (len > 1) {  // query i (position past + i) attends to keys j <= past + i
      const auto lng = at::TensorOptions().dtype(at::kLong).device(m.device);
      at::Tensor qpos = at::arange(past, past + len, lng).repeat({groups});  // [G m]
      at::Tensor kpos = at::arange(past + len, lng);
      mask = kpos.unsqueeze(0) <= qpos.unsqueeze(1);  // [G m, past + m]
    }
    at::Tensor o = at::scaled_dot_product_attention(qg.unsqueeze(0), k_all.unsqueeze(0), v_all.unsqueeze(0), mask,
                                                    0.0, false, 1.0 / std::sqrt(static_cast<double>(hd)));
    o = o.reshape({c.num_heads, len, hd});  // [1, KV, G m, hd] -> [H, m, hd]
    outs.push_back(o.transpose(0, 1).reshape({len, c.num_heads * hd}));
  }
  return Linear(m, outs.size() == 1 ? outs[0] : at::cat(outs), L.o);  // [T, d]
}

// Z W^T for rows of one session: base = Z W0^T (computed batched for all rows) plus Z dW^T in
// fp32 (split), or Z W^T with the whole W (parity, once updated).
at::Tensor ApplyW(const Model::Impl& m, const TttLayerState& st, const at::Tensor& z, const at::Tensor& base) {
  if (st.whole.defined()) return Linear(m, z, st.whole);
  if (!st.delta.defined()) return base;  // no chunk completed: the stock MLP exactly
  return Linear(m, z.to(at::kFloat), st.delta, base.to(at::kFloat)).to(z.scalar_type());
}

// The chunk-local depthwise conv (kernel 5, padding 2, zero outside the chunk) of t [C, d]:
// u[i] = sum_k w[:, k] * t[i + k - 2], as five shifted multiply-adds (a grouped conv1d call
// costs more than the arithmetic on the CPU).
at::Tensor ChunkConv(const at::Tensor& t, const at::Tensor& kernel) {
  const int64_t C = t.size(0);
  const at::Tensor w = kernel.squeeze(1).to(t.scalar_type());  // [d, 5]
  at::Tensor u = t * w.select(1, 2);
  for (int64_t k = 0; k < 5; ++k) {
    const int64_t s = k - 2;
    if (s == 0 || std::abs(s) >= C) continue;
    if (s > 0) {
      u.narrow(0, 0, C - s).add_(t.narrow(0, s, C - s) * w.select(1, k));
    } else {
      u.narrow(0, -s, C + s).add_(t.narrow(0, 0, C + s) * w.select(1, k));
    }
  }
  return u;  // [C, d]
}

// eta * (conv(T) P)^T Z for one complete chunk, t [C, d], z [C, f] -> [d, f] in t's dtype.
// Parity mode keeps the official code's order of operations (grouped conv1d, eta applied last),
// since W held whole in bf16 shows every rounding; split mode (fp32) takes the faster order.
at::Tensor ChunkDelta(const LayerWeights& L, const at::Tensor& t, const at::Tensor& z, double lr, bool parity) {
  const int64_t d = t.size(1);
  at::Tensor u = parity ? at::conv1d(t.t().unsqueeze(0), L.ttt_conv.to(t.scalar_type()), {}, 1, 2, 1, d).squeeze(0).t()
                        : ChunkConv(t, L.ttt_conv);  // [C, d]
  at::Tensor v = L.ttt_proj.defined() ? at::matmul(u, L.ttt_proj.to(t.scalar_type())) : u;  // P, not P^T
  return parity ? at::matmul(v.t(), z) * lr : at::matmul((v * lr).t(), z);
}

// Adds one chunk's update d [d, f] to the layer's state (after clipping it to clip_tau and
// decaying the old dW), or refuses it (non-finite, or past the norm ceiling) and leaves the
// state as it was. Returns whether it was applied.
bool ApplyUpdate(const LayerWeights& L, TttLayerState& st, const SessionOptions& opt, at::Tensor d) {
  const bool parity = opt.numeric == NumericMode::kParity;
  const double norm = at::linalg_vector_norm(d.to(at::kFloat)).item<double>();
  if (!std::isfinite(norm)) return false;
  if (opt.clip_tau && norm > *opt.clip_tau) d = d * (*opt.clip_tau / norm);
  const double keep = 1.0 - opt.decay;
  at::Tensor next;  // the new dW (split) or W (parity)
  if (parity) {
    TORCH_CHECK(L.down.kind == WeightFormat::Kind::kDense, "a parity update needs a dense W0");  // NewSession
    const at::Tensor& w0 = L.down.w;
    next = !st.whole.defined() ? w0 + d : opt.decay > 0 ? w0 + (st.whole - w0) * keep + d : st.whole + d;
  } else {
    next = !st.delta.defined() ? d : opt.decay > 0 ? st.delta * keep + d : st.delta + d;
  }
  if (opt.max_delta_norm) {
    at::Tensor delta = parity ? next.to(at::kFloat) - L.down.w.to(at::kFloat) : next;
    if (at::linalg_vector_norm(delta).item<double>() > *opt.max_delta_norm) return false;
  }
  (parity ? st.whole : st.delta) = next;
  return true;
}

// In-Place TTT: one completed chunk's eta (conv(T) P)^T Z, applied.
bool UpdateW(const Model::Impl& m, const LayerWeights& L, TttLayerState& st, const SessionOptions& opt,
             const at::Tensor& t, const at::Tensor& z) {
  const bool parity = opt.numeric == NumericMode::kParity;
  const double lr = m.config.ttt.lr * opt.lr_scale;
  return ApplyUpdate(L, st, opt,
                     parity ? ChunkDelta(L, t, z, lr, true) : ChunkDelta(L, t.to(at::kFloat), z.to(at::kFloat), lr, false));
}

at::Tensor ZOf(const Model::Impl& m, const LayerWeights& L, const at::Tensor& x) {
  const auto gu = Linear(m, x, L.gate_up).chunk(2, -1);  // [n, f] each
  return at::silu(gu[0]) * gu[1];                         // [n, f]
}

// Grows a tail buffer to hold `rows` rows (geometrically, at most C), keeping its first `keep`:
// a short session holds little, and decoding copies one row per token, never O(C).
void ReserveTail(at::Tensor& tail, int64_t keep, int64_t rows, int64_t C, const at::Tensor& like) {
  if (tail.defined() && tail.size(0) >= rows) return;
  const int64_t cap = std::min(C, std::max<int64_t>({64, rows, tail.defined() ? 2 * tail.size(0) : 0}));
  at::Tensor grown = at::empty({cap, like.size(1)}, like.options());  // like: [m, d] rows to store
  if (keep > 0) grown.narrow(0, 0, keep).copy_(tail.narrow(0, 0, keep));
  tail = grown;
}

// The TTT MLP output of one session's m new rows (inputs h, targets t, Z z, base Z W0^T, all
// [m, .]); chunks align at multiples of C of N: apply, then update at each boundary.
at::Tensor SessionTttMlp(const Model::Impl& m, const LayerWeights& L, SessionState::Impl& s, TttLayerState& st,
                         const at::Tensor& h, const at::Tensor& t, const at::Tensor& z, const at::Tensor& base,
                         bool learn) {
  if (!learn || s.options.rule != UpdateRule::kInplace) return ApplyW(m, st, z, base);
  const int64_t C = m.config.ttt.chunk, len = h.size(0);
  const bool embed_target = m.config.ttt.target == TttConfig::Target::kInputEmbed;
  int64_t r = s.n_learned % C;
  std::vector<at::Tensor> outs;
  for (int64_t a = 0; a < len;) {
    const int64_t n = std::min(len - a, C - r);  // rows up to the next chunk boundary
    outs.push_back(ApplyW(m, st, z.narrow(0, a, n), base.narrow(0, a, n)));  // apply ...
    ReserveTail(st.tail_x, r, r + n, C, h);
    if (embed_target) ReserveTail(st.tail_t, r, r + n, C, t);
    st.tail_x.narrow(0, r, n).copy_(h.narrow(0, a, n));
    if (embed_target) st.tail_t.narrow(0, r, n).copy_(t.narrow(0, a, n));
    if (r + n == C) {  // ... then update with the completed chunk (the tail's Z is recomputed)
      at::Tensor zc = r == 0 ? z.narrow(0, a, n) : at::cat({ZOf(m, L, st.tail_x.narrow(0, 0, r)), z.narrow(0, a, n)});
      const auto start = std::chrono::steady_clock::now();
      ++(UpdateW(m, L, st, s.options, embed_target ? st.tail_t : st.tail_x, zc) ? s.updates_applied
                                                                                : s.updates_rejected);
      s.update_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      r = 0;
    } else {
      r += n;
    }
    a += n;
  }
  return outs.size() == 1 ? outs[0] : at::cat(outs);
}

// TTT layer over the whole batch: Z W0^T batched for every row, then per session its own dW.
at::Tensor TttMlp(const Model::Impl& m, const LayerWeights& L, int layer, const std::vector<BatchItem>& items,
                  const at::Tensor& h, const at::Tensor& embeds) {
  const at::Tensor z = ZOf(m, L, h);              // [T, f]
  const at::Tensor base = Linear(m, z, L.down);  // [T, d]
  const at::Tensor& t = m.config.ttt.target == TttConfig::Target::kInputEmbed ? embeds : h;
  std::vector<at::Tensor> outs;
  for (const BatchItem& it : items) {
    const int64_t len = it.ids.size(0);
    if (!it.session->ttt[layer]) {  // no fast weights here (a stock layer another session learns in)
      outs.push_back(base.narrow(0, it.row, len));
      continue;
    }
    // In-place updates need the layer's TTT tensors; ntp_gradient updates after the pass.
    outs.push_back(SessionTttMlp(m, L, *it.session, *it.session->ttt[layer], h.narrow(0, it.row, len),
                                 t.narrow(0, it.row, len), z.narrow(0, it.row, len), base.narrow(0, it.row, len),
                                 it.learn && m.is_ttt[layer]));
  }
  return outs.size() == 1 ? outs[0] : at::cat(outs);
}

}  // namespace

void BuildRopeTable(Model::Impl& m) {
  const int64_t rows = std::clamp<int64_t>(m.config.max_position_embeddings, 1, kRopeTableRows);
  Rope r = ComputeRope(m.inv_freq, 0, rows, m.dtype);
  m.rope_cos = r.cos;
  m.rope_sin = r.sin;
}

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

std::vector<at::Tensor> ForwardBatch(const Model::Impl& m, std::vector<BatchItem>& items, bool all_logits) {
  const ModelConfig& c = m.config;
  std::vector<at::Tensor> ids;
  std::vector<Rope> ropes;
  int64_t rows = 0;
  for (BatchItem& it : items) {
    it.row = rows;
    rows += it.ids.size(0);
    ids.push_back(it.ids);
    ropes.push_back(MakeRope(m, it.session->position, it.ids.size(0)));
  }
  at::Tensor x = Embed(m, ids.size() == 1 ? ids[0] : at::cat(ids));  // [T, d]
  const at::Tensor embeds = x;  // TTT targets in input_embed mode (x is rebound below)
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const LayerWeights& L = m.layers[i];
    x = x + Attention(m, L, i, items, ropes, RmsNorm(x, L.input_norm, c.rms_norm_eps));
    at::Tensor h = RmsNorm(x, L.post_norm, c.rms_norm_eps);  // [T, d]
    const bool fast = m.is_ttt[i] || std::any_of(items.begin(), items.end(), [&](const BatchItem& it) {
      return it.session->ttt[i].has_value();  // ntp_gradient's dW in a layer without TTT tensors
    });
    x = x + (fast ? TttMlp(m, L, i, items, h, embeds) : Linear(m, ZOf(m, L, h), L.down));
  }
  std::vector<at::Tensor> out;
  for (BatchItem& it : items) {
    const int64_t len = it.ids.size(0);
    it.session->position += len;
    if (it.learn) it.session->n_learned += len;
    at::Tensor xr = all_logits ? x.narrow(0, it.row, len) : x.narrow(0, it.row + len - 1, 1);
    out.push_back(xr);
  }
  // lm_head once for all rows that need logits: [R, V] fp32, split per item.
  at::Tensor logits = Linear(m, RmsNorm(at::cat(out), m.final_norm, c.rms_norm_eps), m.lm_head).to(at::kFloat);
  std::vector<int64_t> sizes;
  for (const at::Tensor& r : out) sizes.push_back(r.size(0));
  return logits.split_with_sizes(sizes);
}

namespace {

// ttt_ntp_step rms: layer l's elementwise step scale gbar / RMS_ij (engine/README.md), RMS
// floored at gbar / 100 (a weight the training data never moved is not stepped 1e6x); undefined
// (plain SGD) without statistics, e.g. a layer made fast after load by LoadOptions::edit_config.
at::Tensor NtpScale(const Model::Impl& m, int l) {
  if (l >= static_cast<int>(m.ntp_rms_rows.size()) || !m.ntp_rms_rows[l].defined()) return {};
  at::Tensor rms = at::outer(m.ntp_rms_rows[l], m.ntp_rms_cols[l]);  // [d, f]
  return m.ntp_gbar / rms.clamp_min_(m.ntp_gbar / 100);
}

}  // namespace

void NtpUpdate(const Model::Impl& m, SessionState::Impl& s) {
  const auto start = std::chrono::steady_clock::now();
  const int64_t C = static_cast<int64_t>(s.ntp_ids.size());
  // A scratch session with the same dW as leaves that autograd differentiates.
  SessionState::Impl scratch;
  scratch.options = s.options;
  scratch.kv.resize(m.config.num_layers);
  scratch.ttt.resize(m.config.num_layers);
  if (s.ntp_start > 0 && s.ntp_start + C == s.position) {  // the window before the chunk, as served
    // A buffer with room for the chunk, holding a copy of the context's rows: the pass appends
    // the chunk there, never into the session's own KV.
    const auto context = [&](const at::Tensor& kv) {
      at::Tensor out = at::empty({kv.size(0), s.position, kv.size(2)}, kv.options());
      out.narrow(1, 0, s.ntp_start).copy_(kv.narrow(1, 0, s.ntp_start));
      return out;
    };
    scratch.position = s.ntp_start;
    for (int l = 0; l < m.config.num_layers; ++l) scratch.kv[l] = {context(s.kv[l].k), context(s.kv[l].v)};
  }
  std::vector<int> layers;
  std::vector<at::Tensor> leaves;
  for (int l = 0; l < m.config.num_layers; ++l) {
    if (!s.ttt[l]) continue;
    at::Tensor leaf = s.ttt[l]->delta.defined()
                          ? s.ttt[l]->delta.detach().clone()
                          : at::zeros({m.config.hidden_size, m.config.intermediate_size},
                                      at::TensorOptions().dtype(at::kFloat).device(m.device));
    leaf.requires_grad_(true);
    scratch.ttt[l].emplace();
    scratch.ttt[l]->delta = leaf;
    layers.push_back(l);
    leaves.push_back(leaf);
  }
  if (C >= 2 && !layers.empty()) {
    {
      at::AutoGradMode grad(true);
      at::Tensor ids = at::tensor(std::vector<int64_t>(s.ntp_ids.begin(), s.ntp_ids.end()), at::kLong).to(m.device);
      std::vector<BatchItem> items{{&scratch, ids, /*learn=*/false}};
      at::Tensor logits = ForwardBatch(m, items, /*all_logits=*/true)[0];  // [C, V] fp32
      at::cross_entropy_loss(logits.narrow(0, 0, C - 1), ids.narrow(0, 1, C - 1)).backward();
    }
    const double lr = m.config.ttt.lr * s.options.lr_scale;
    for (size_t k = 0; k < layers.size(); ++k) {
      at::Tensor g = leaves[k].grad();
      if (const at::Tensor scale = NtpScale(m, layers[k]); g.defined() && scale.defined()) g = g * scale;
      const bool applied = g.defined() && ApplyUpdate(m.layers[layers[k]], *s.ttt[layers[k]], s.options, g * -lr);
      ++(applied ? s.updates_applied : s.updates_rejected);
    }
  }
  s.ntp_ids.clear();
  s.ntp_start = -1;
  s.update_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace adaptd::engine
