// Checkpoint loading: every expected tensor present with its shape, nothing unexpected, then
// copied to the device in the compute dtype; and the model fingerprint.
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "adaptd/engine/safetensors.h"
#include "model_impl.h"
#include "nlohmann/json.hpp"
#include "status_macros.h"

namespace adaptd::engine {
namespace {

at::ScalarType ToScalarType(DType d) {
  switch (d) {
    case DType::kF32: return at::kFloat;
    case DType::kBF16: return at::kBFloat16;
    case DType::kF16: return at::kHalf;
    case DType::kF64: return at::kDouble;
    case DType::kI64: return at::kLong;
    case DType::kI32: return at::kInt;
    case DType::kI16: return at::kShort;
    case DType::kI8: return at::kChar;
    case DType::kU8: return at::kByte;
    case DType::kBool: return at::kBool;
  }
  return at::kFloat;
}

// 64-bit FNV-1a over bytes: stable across machines and runs (absl::Hash is not).
struct Fnv64 {
  uint64_t h = 1469598103934665603ull;
  void Add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
  void Add(const std::string& s) { Add(s.data(), s.size() + 1); }
};

// The tensor files of a checkpoint: model.safetensors or the shards of its index.
absl::StatusOr<std::vector<std::unique_ptr<SafetensorsFile>>> OpenFiles(const std::string& dir) {
  std::vector<std::string> names;
  std::ifstream index(dir + "/model.safetensors.index.json");
  if (index) {
    auto j = nlohmann::json::parse(index, nullptr, false);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      return absl::DataLossError(absl::StrCat(dir, "/model.safetensors.index.json: no weight_map object"));
    }
    std::set<std::string> shards;
    for (const auto& [tensor, file] : j["weight_map"].items()) {
      if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos) {
        return absl::DataLossError(absl::StrCat("index: bad shard name for ", tensor));
      }
      shards.insert(file.get<std::string>());
    }
    names.assign(shards.begin(), shards.end());
  } else {
    names = {"model.safetensors"};
  }
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  for (const auto& n : names) {
    ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(dir + "/" + n));
    files.push_back(std::move(f));
  }
  return files;
}

class TensorLoader {
 public:
  TensorLoader(const std::vector<std::unique_ptr<SafetensorsFile>>& files, at::ScalarType dtype, at::Device device)
      : dtype_(dtype), device_(device) {
    for (const auto& f : files) {
      for (const auto& [name, view] : f->tensors()) views_[name] = &view;
    }
  }

  // The tensor `name` with `shape`, on the device in the compute dtype.
  absl::StatusOr<at::Tensor> Get(const std::string& name, std::vector<int64_t> shape) {
    auto it = views_.find(name);
    if (it == views_.end()) return absl::NotFoundError(absl::StrCat("checkpoint lacks tensor ", name));
    used_.insert(name);
    const TensorView& v = *it->second;
    if (v.shape != shape) {
      return absl::InvalidArgumentError(absl::StrFormat("tensor %s has shape [%s], expected [%s]", name,
                                                        Join(v.shape), Join(shape)));
    }
    if (v.dtype != DType::kF32 && v.dtype != DType::kBF16 && v.dtype != DType::kF16) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has dtype ", DTypeName(v.dtype),
                                                     "; F32, BF16 or F16 expected"));
    }
    at::Tensor blob = at::from_blob(const_cast<std::byte*>(v.data), v.shape,
                                    at::TensorOptions().dtype(ToScalarType(v.dtype)));
    return blob.to(device_, dtype_, /*non_blocking=*/false, /*copy=*/true);
  }

  bool Has(const std::string& name) const { return views_.count(name) > 0; }

  // Names present in the files but never asked for (rotary caches are tolerated).
  std::vector<std::string> Unused() const {
    std::vector<std::string> out;
    for (const auto& [name, v] : views_) {
      if (!used_.count(name) && name.find("rotary_emb.inv_freq") == std::string::npos) out.push_back(name);
    }
    return out;
  }

  // Order-independent content hash of every tensor (name, dtype, shape, bytes).
  void Hash(Fnv64& fnv) const {
    for (const auto& [name, v] : views_) {
      fnv.Add(name);
      fnv.Add(DTypeName(v->dtype));
      fnv.Add(v->shape.data(), v->shape.size() * sizeof(int64_t));
      fnv.Add(v->data, v->nbytes);
    }
  }

 private:
  static std::string Join(const std::vector<int64_t>& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) absl::StrAppend(&out, i ? ", " : "", s[i]);
    return out;
  }

  std::map<std::string, const TensorView*> views_;
  std::set<std::string> used_;
  at::ScalarType dtype_;
  at::Device device_;
};

absl::Status LoadLayer(TensorLoader& t, const Model::Impl& m, int i, LayerWeights& L) {
  const ModelConfig& c = m.config;
  const int64_t d = c.hidden_size, f = c.intermediate_size, hd = c.head_dim;
  const std::string p = absl::StrCat("model.layers.", i, ".");
  ASSIGN_OR_RETURN(L.input_norm, t.Get(p + "input_layernorm.weight", {d}));
  ASSIGN_OR_RETURN(L.post_norm, t.Get(p + "post_attention_layernorm.weight", {d}));
  ASSIGN_OR_RETURN(at::Tensor q, t.Get(p + "self_attn.q_proj.weight", {c.num_heads * hd, d}));
  ASSIGN_OR_RETURN(at::Tensor k, t.Get(p + "self_attn.k_proj.weight", {c.num_kv_heads * hd, d}));
  ASSIGN_OR_RETURN(at::Tensor v, t.Get(p + "self_attn.v_proj.weight", {c.num_kv_heads * hd, d}));
  L.qkv = at::cat({q, k, v});  // one GEMM per layer instead of three
  ASSIGN_OR_RETURN(L.o, t.Get(p + "self_attn.o_proj.weight", {d, c.num_heads * hd}));
  if (c.qk_norm) {
    ASSIGN_OR_RETURN(L.q_norm, t.Get(p + "self_attn.q_norm.weight", {hd}));
    ASSIGN_OR_RETURN(L.k_norm, t.Get(p + "self_attn.k_norm.weight", {hd}));
  }
  ASSIGN_OR_RETURN(at::Tensor gate, t.Get(p + "mlp.gate_proj.weight", {f, d}));
  ASSIGN_OR_RETURN(at::Tensor up, t.Get(p + "mlp.up_proj.weight", {f, d}));
  L.gate_up = at::cat({gate, up});
  ASSIGN_OR_RETURN(L.down, t.Get(p + "mlp.down_proj.weight", {d, f}));
  if (m.is_ttt[i]) {
    const std::string conv = p + "mlp.ttt_conv.weight";
    if (!t.Has(conv)) {
      return absl::InvalidArgumentError(absl::StrCat("config.json has ttt_mode true with layer ", i,
                                                     " a TTT layer, but the checkpoint lacks ", conv));
    }
    ASSIGN_OR_RETURN(L.ttt_conv, t.Get(conv, {d, 1, 5}));
    if (c.ttt.proj) {
      ASSIGN_OR_RETURN(L.ttt_proj, t.Get(p + "mlp.ttt_proj.weight", {d, d}));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadWeights(const std::string& dir, Model::Impl& m) {
  const ModelConfig& c = m.config;
  ASSIGN_OR_RETURN(auto files, OpenFiles(dir));
  TensorLoader t(files, m.dtype, m.device);
  m.is_ttt.assign(c.num_layers, false);
  for (int l : c.ttt.layers) m.is_ttt[l] = true;
  ASSIGN_OR_RETURN(m.embed, t.Get("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}));
  ASSIGN_OR_RETURN(m.final_norm, t.Get("model.norm.weight", {c.hidden_size}));
  if (c.tie_word_embeddings && !t.Has("lm_head.weight")) {
    m.lm_head = m.embed;
  } else {
    ASSIGN_OR_RETURN(m.lm_head, t.Get("lm_head.weight", {c.vocab_size, c.hidden_size}));
  }
  m.layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) RETURN_IF_ERROR(LoadLayer(t, m, i, m.layers[i]));
  auto unused = t.Unused();
  if (!unused.empty()) {
    const bool ttt_tensor = unused[0].find(".ttt_") != std::string::npos;
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint has unexpected tensor ", unused[0], " (", unused.size(), " in all)",
        ttt_tensor ? ": TTT tensors, but config.json does not make this layer a TTT layer (ttt_mode/ttt_layers)" : ""));
  }
  int64_t bytes = m.lm_head.nbytes();
  for (const LayerWeights& L : m.layers) bytes += L.qkv.nbytes() + L.o.nbytes() + L.gate_up.nbytes() + L.down.nbytes();
  m.few_rows_as_gemm = m.device.is_cpu() && bytes > kCacheBytes;
  Fnv64 fnv;
  std::ifstream cfg(dir + "/config.json");
  std::stringstream text;
  text << cfg.rdbuf();
  fnv.Add(nlohmann::json::parse(text.str(), nullptr, false).dump());  // canonical: sorted keys
  t.Hash(fnv);
  m.fingerprint = absl::StrFormat("%016x", fnv.h);
  return absl::OkStatus();
}

}  // namespace adaptd::engine
