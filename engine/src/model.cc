// Model and SessionState: loading, sessions, and the exception boundary of the forward pass.
#include "adaptd/engine/model.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <algorithm>
#include <exception>
#include <optional>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gguf_model.h"
#include "model_files.h"
#include "model_impl.h"
#include "status_macros.h"

namespace adaptd::engine {
namespace {

absl::StatusOr<at::Device> ParseDevice(const std::string& name) {
  std::optional<at::Device> device;
  try {
    device.emplace(name);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("bad device '", name, "'"));
  }
  if (device->is_cpu()) return *device;
  if (!device->is_cuda()) return absl::InvalidArgumentError(absl::StrCat("unsupported device '", name, "'"));
  const int gpus = at::hasCUDA() ? at::detail::getCUDAHooks().getNumGPUs() : 0;
  if (gpus == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device ", name, " requested, but no GPU is visible here, or this build has no CUDA (-DADAPTD_CUDA=ON)"));
  }
  if (device->index() >= gpus) {
    return absl::FailedPreconditionError(absl::StrCat("device ", name, " requested, but there are ", gpus, " GPUs"));
  }
  return *device;
}

}  // namespace

absl::Status Poisoned() {
  return absl::FailedPreconditionError("session state is inconsistent after a failed forward pass; reload it");
}

void SetComputeThreads(int threads) { at::set_num_threads(threads); }

bool DeviceAvailable(const std::string& device) { return ParseDevice(device).ok(); }

absl::StatusOr<std::optional<DType>> ParseComputeDType(const std::string& name) {
  if (name.empty()) return std::nullopt;
  if (name == "f32") return DType::kF32;
  if (name == "bf16") return DType::kBF16;
  if (name == "f16") return DType::kF16;
  return absl::InvalidArgumentError(absl::StrCat("dtype '", name, "' must be f32, bf16 or f16"));
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir, const LoadOptions& options) {
  try {
    return LoadImpl(dir, options);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("loading ", dir, ": out of memory"));
  } catch (const std::exception& e) {  // a safety net: files are validated before use
    return absl::InternalError(absl::StrCat("loading ", dir, ": ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Model>> Model::LoadImpl(const std::string& dir, const LoadOptions& options) {
  auto impl = std::make_unique<Impl>();
  ASSIGN_OR_RETURN(ModelFiles files, FindModelFiles(dir, options.ttt_config));
  std::string config_json;
  if (files.gguf.empty()) {
    ASSIGN_OR_RETURN(config_json, ReadConfigJson(files.dir));
  } else {
    ASSIGN_OR_RETURN(impl->gguf, GgufFile::Open(files.gguf));
    ASSIGN_OR_RETURN(auto j, GgufConfigJson(*impl->gguf, files.ttt_json));
    if (!files.adapter.empty()) {
      ASSIGN_OR_RETURN(impl->adapter, SafetensorsFile::Open(files.adapter));
      RETURN_IF_ERROR(ApplyAdapter(*impl->gguf, *impl->adapter, !files.ttt_json.empty(), j));
    }
    config_json = j.dump();
  }
  ASSIGN_OR_RETURN(impl->config, ParseModelConfig(config_json));
  ASSIGN_OR_RETURN(impl->device, ParseDevice(options.device));
  if (impl->device.is_cuda()) {
    // f32 means IEEE f32 on the GPU too: LibTorch lets cuDNN convolutions use TF32 by default
    // (and matrix products where a process asks for it). Process-wide, like the thread count.
    auto& ctx = at::globalContext();
    ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, at::Float32Precision::IEEE);
    ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, at::Float32Precision::IEEE);
  }
  const DType dtype = options.dtype.value_or(impl->config.dtype);
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
    return absl::InvalidArgumentError("compute dtype must be F32, BF16 or F16");
  }
  impl->dtype = dtype == DType::kF32 ? at::kFloat : dtype == DType::kBF16 ? at::kBFloat16 : at::kHalf;
  const WeightFormat& w = options.weights;
  if (w.kind == WeightFormat::Kind::kInt4 ? (w.group != 32 && w.group != 64) : w.group != 0) {
    return absl::InvalidArgumentError(absl::StrCat("weight format: int4 takes groups of 32 or 64 (got ", w.group,
                                                   "), the others none"));
  }
  impl->format = options.weights;
  impl->dense_ttt_down = options.dense_ttt_down && options.weights.quantized();
  impl->dequantize_weights = options.dequantize_weights && options.weights.quantized();
  try {
    at::NoGradGuard no_grad;
    RETURN_IF_ERROR(LoadWeights(files, config_json, *impl));
    if (impl->gguf != nullptr) impl->gguf->ReleasePages();  // the weights are copied out now
    if (options.few_rows_as_gemm) impl->few_rows_as_gemm = *options.few_rows_as_gemm && impl->device.is_cpu();
    if (options.edit_config) options.edit_config(impl->config);
    impl->inv_freq = RopeInvFreq(impl->config).to(impl->device);
    BuildRopeTable(*impl);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("loading ", dir, ": ", e.what()));
  }
  return std::unique_ptr<Model>(new Model(std::move(impl)));
}

const ModelConfig& Model::config() const { return impl_->config; }
const std::string& Model::fingerprint() const { return impl_->fingerprint; }
const std::string& Model::base_fingerprint() const { return impl_->base_fingerprint; }
const WeightFormat& Model::weight_format() const { return impl_->format; }
int64_t Model::weight_bytes() const { return impl_->weight_bytes; }

int64_t Model::NtpUpdateBytes(int64_t context_tokens) const {
  const ModelConfig& c = impl_->config;
  if (c.ttt.fast_layers.empty()) return 0;
  const int64_t C = c.ttt.chunk, ctx = std::max<int64_t>(context_tokens, 0) + C;
  const int64_t es = static_cast<int64_t>(c10::elementSize(impl_->dtype)), groups = c.num_heads / c.num_kv_heads;
  // A copy of the window's keys and values for every layer (the pass appends the chunk there).
  const int64_t kv = c.num_layers * 2 * c.num_kv_heads * c.head_dim * ctx * es;
  // Per layer from the lowest fast one up: the causal mask of the chunk's G C query rows over the
  // window (bool, and a float copy of it for the CPU flash kernel's forward and another for its
  // backward: 9 bytes an entry) and the chunk's activations (q/k/v/o, the MLP's gate, up and
  // product, norms: < 10 d + 8 f values a row, in f32 at most). Measured by adaptd-bench-engine
  // --ntp_memory, this bounds the peak from above by 4-22% (engine/README.md).
  const int64_t per_layer = groups * C * ctx * 9 + C * (10 * c.hidden_size + 8 * c.intermediate_size) * 4;
  const int64_t layers = c.num_layers - c.ttt.fast_layers.front();
  // The logits of the chunk and their gradient (f32), and each fast layer's dW and its gradient.
  const int64_t head = 3 * C * c.vocab_size * 4;
  const int64_t df = c.hidden_size * c.intermediate_size * 4;
  const int64_t deltas = static_cast<int64_t>(c.ttt.fast_layers.size()) * 3 * df;
  // The rms step's scale of one layer and the scaled gradient, while it is applied.
  const int64_t rms = c.ttt.ntp_step == TttConfig::NtpStep::kRms ? 2 * df : 0;
  return kv + layers * per_layer + head + deltas + rms;
}

absl::Status ValidateSessionOptions(const SessionOptions& o) {
  if (o.rule == UpdateRule::kNtpGradient && o.numeric != NumericMode::kSplit) {
    return absl::InvalidArgumentError("update rule ntp_gradient needs the split numeric mode");
  }
  if (o.clip_tau && !(*o.clip_tau > 0)) return absl::InvalidArgumentError("clip_tau must be > 0");
  if (!(o.decay >= 0 && o.decay <= 1)) return absl::InvalidArgumentError("decay must be in [0, 1]");
  if (o.max_delta_norm && !(*o.max_delta_norm > 0)) return absl::InvalidArgumentError("max_delta_norm must be > 0");
  if (!(o.lr_scale > 0 && o.lr_scale <= 1e3)) return absl::InvalidArgumentError("lr_scale must be in (0, 1000]");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SessionState>> Model::NewSession(const SessionOptions& options) const {
  RETURN_IF_ERROR(ValidateSessionOptions(options));
  if (options.numeric == NumericMode::kParity && impl_->format.quantized() && !impl_->dense_ttt_down &&
      !impl_->dequantize_weights && !impl_->config.ttt.layers.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "parity sessions update the TTT layers' W0 whole in the compute dtype, and this model holds it as ",
        impl_->format.Name(), ": load it with LoadOptions::dense_ttt_down or use the split mode"));
  }
  if (options.rule == UpdateRule::kNtpGradient && impl_->config.ttt.fast_layers.empty()) {
    return absl::FailedPreconditionError(
        "update rule ntp_gradient needs ttt_layers, and this model names none (a GGUF model takes them from a "
        "ttt.json beside it or --ttt_config)");
  }
  auto s = std::make_unique<SessionState::Impl>();
  s->options = options;
  const ModelConfig& c = impl_->config;
  s->kv.resize(c.num_layers);
  s->ttt.resize(c.num_layers);
  // ntp_gradient learns in ttt_layers whatever ttt_mode (a stock checkpoint has no TTT tensors).
  for (int l : options.rule == UpdateRule::kNtpGradient ? c.ttt.fast_layers : c.ttt.layers) s->ttt[l].emplace();
  return std::make_unique<SessionState>(std::move(s));
}

absl::StatusOr<std::unique_ptr<SessionState>> Model::Clone(const SessionState& session) const {
  if (session.impl().poisoned) return Poisoned();
  try {
    auto s = std::make_unique<SessionState::Impl>(session.impl());  // counters and options
    auto copy = [](const at::Tensor& t) { return t.defined() ? t.clone() : t; };
    for (KvCache& c : s->kv) {
      c.k = copy(c.k);
      c.v = copy(c.v);
    }
    for (auto& st : s->ttt) {
      if (!st) continue;
      st->delta = copy(st->delta);
      st->whole = copy(st->whole);
      st->tail_x = copy(st->tail_x);
      st->tail_t = copy(st->tail_t);
    }
    return std::make_unique<SessionState>(std::move(s));
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(absl::StrCat("cloning a session: ", e.what()));
  }
}

absl::Status Model::RewindWindow(SessionState& session, int64_t position) const {
  if (session.impl().poisoned) return Poisoned();
  if (position < 0 || position > session.impl().position) {
    return absl::InvalidArgumentError(
        absl::StrCat("rewind to position ", position, " outside the window [0, ", session.impl().position, "]"));
  }
  SessionState::Impl& s = session.impl();
  s.position = position;  // KV rows past it are overwritten by the next tokens
  if (s.ntp_start + static_cast<int64_t>(s.ntp_ids.size()) > position) s.ntp_start = -1;  // the open chunk's rows
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SessionState>> Model::RereadWindow(const SessionState& session,
                                                                  absl::Span<const int32_t> kept, bool tail) const {
  const SessionState::Impl& s = session.impl();
  const int64_t dropped = s.position - static_cast<int64_t>(kept.size());
  if (tail && dropped < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kept ", kept.size(), " tokens of a window of ", s.position));
  }
  ASSIGN_OR_RETURN(auto bytes, EncodeSession(session, {StateEncoding::kExact, /*include_kv=*/false}));
  ASSIGN_OR_RETURN(auto state, DecodeSession(bytes));
  if (!kept.empty()) RETURN_IF_ERROR(Forward(*state, kept, /*learn=*/false).status());
  if (tail && !s.ntp_ids.empty() && s.ntp_start >= dropped) state->impl().ntp_start = s.ntp_start - dropped;
  return state;
}

absl::Status Model::ValidateIds(absl::Span<const int32_t> ids) const {
  if (ids.empty()) return absl::InvalidArgumentError("no tokens to feed");
  for (int32_t id : ids) {
    if (id < 0 || id >= impl_->config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary [0, ", impl_->config.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> Model::Forward(SessionState& session, absl::Span<const int32_t> ids,
                                                  bool learn) const {
  BatchInput input{&session, ids, learn};
  ASSIGN_OR_RETURN(auto out, ForwardBatch(absl::MakeConstSpan(&input, 1), /*all_logits=*/true));
  return std::move(out[0]);
}

absl::StatusOr<std::vector<std::vector<float>>> Model::ForwardBatch(absl::Span<const BatchInput> inputs,
                                                                    bool all_logits) const {
  if (inputs.empty()) return absl::InvalidArgumentError("empty batch");
  std::set<const SessionState*> seen;
  for (const BatchInput& in : inputs) {
    RETURN_IF_ERROR(ValidateIds(in.ids));
    if (in.session == nullptr || !seen.insert(in.session).second) {
      return absl::InvalidArgumentError("a batch needs distinct, non-null sessions");
    }
    if (in.session->impl().poisoned) return Poisoned();
  }
  try {
    at::NoGradGuard no_grad;
    // Passes until every input is fed. A learning ntp_gradient session's input is cut at its
    // next chunk boundary and the chunk's update runs after the pass, so the tokens after the
    // boundary see the updated weights (apply, then update) however the input was split.
    const int64_t C = impl_->config.ttt.chunk;
    std::vector<size_t> fed(inputs.size(), 0);
    std::vector<std::vector<float>> out(inputs.size());
    for (bool left = true; left;) {
      std::vector<BatchItem> items;
      std::vector<size_t> which;
      for (size_t i = 0; i < inputs.size(); ++i) {
        const BatchInput& in = inputs[i];
        SessionState::Impl& s = in.session->impl();
        size_t n = in.ids.size() - fed[i];
        if (n == 0) continue;
        const bool ntp = in.learn && s.options.rule == UpdateRule::kNtpGradient;
        if (ntp) n = std::min<size_t>(n, static_cast<size_t>(C - s.n_learned % C));
        const auto piece = in.ids.subspan(fed[i], n);
        if (ntp) {  // the chunk keeps its context while its ids enter the window back to back
          if (s.ntp_ids.empty()) {
            s.ntp_start = s.position;
          } else if (s.ntp_start >= 0 && s.ntp_start + static_cast<int64_t>(s.ntp_ids.size()) != s.position) {
            s.ntp_start = -1;
          }
          s.ntp_ids.insert(s.ntp_ids.end(), piece.begin(), piece.end());
        }
        at::Tensor ids = at::tensor(std::vector<int64_t>(piece.begin(), piece.end()), at::kLong);
        items.push_back({&s, ids.to(impl_->device), in.learn});
        which.push_back(i);
        fed[i] += n;
      }
      const auto logits = engine::ForwardBatch(*impl_, items, all_logits);
      left = false;
      for (size_t k = 0; k < items.size(); ++k) {
        const size_t i = which[k];
        at::Tensor cpu = logits[k].contiguous().cpu();  // [m, V] or [1, V]
        if (!all_logits) out[i].clear();  // only the last token's row is kept
        out[i].insert(out[i].end(), cpu.data_ptr<float>(), cpu.data_ptr<float>() + cpu.numel());
        SessionState::Impl& s = *items[k].session;
        if (s.options.rule == UpdateRule::kNtpGradient && static_cast<int64_t>(s.ntp_ids.size()) == C) {
          NtpUpdate(*impl_, s);
        }
        left = left || fed[i] < inputs[i].ids.size();
      }
    }
    return out;
  } catch (const std::exception& e) {
    // Layers before the failure may have changed KV and fast weights: no partial state is
    // ever used again (the owner reloads the sessions from their snapshots and log).
    for (const BatchInput& in : inputs) in.session->impl().poisoned = true;
    return absl::InternalError(absl::StrCat("forward failed: ", e.what()));
  }
}

absl::StatusOr<std::vector<float>> Model::FastWeight(const SessionState& session, int layer) const {
  if (layer < 0 || layer >= impl_->config.num_layers || !session.impl().ttt[layer]) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is not a TTT layer"));
  }
  const TttLayerState& st = *session.impl().ttt[layer];
  try {
    const FrozenWeight& w0 = impl_->layers[layer].down;
    at::Tensor w = st.whole.defined() ? st.whole.to(at::kFloat)
                   : st.delta.defined() ? DequantizeWeight(w0, at::kFloat) + st.delta
                                        : DequantizeWeight(w0, at::kFloat);
    w = w.contiguous().cpu();
    return std::vector<float>(w.data_ptr<float>(), w.data_ptr<float>() + w.numel());
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(absl::StrCat("reading a fast weight: ", e.what()));
  }
}

absl::StatusOr<std::vector<double>> Model::DeltaNorms(const SessionState& session) const {
  std::vector<double> norms;
  try {
    for (size_t layer = 0; layer < session.impl().ttt.size(); ++layer) {
      if (!session.impl().ttt[layer]) continue;
      const TttLayerState& st = *session.impl().ttt[layer];
      const at::Tensor delta =
          st.whole.defined() ? st.whole.to(at::kFloat) - impl_->layers[layer].down.w.to(at::kFloat) : st.delta;
      norms.push_back(delta.defined() ? at::linalg_vector_norm(delta).item<double>() : 0.0);
    }
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(absl::StrCat("delta norms: ", e.what()));
  }
  return norms;
}

SessionState::SessionState(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SessionState::~SessionState() = default;
int64_t SessionState::n_learned() const { return impl_->n_learned; }
int64_t SessionState::position() const { return impl_->position; }
int64_t SessionState::updates_applied() const { return impl_->updates_applied; }
int64_t SessionState::updates_rejected() const { return impl_->updates_rejected; }
double SessionState::update_seconds() const { return impl_->update_seconds; }

}  // namespace adaptd::engine
